"""MOON: model-contrastive local learning (Li et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from fedscape.core.names import unknown_name_error
from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, own_passes, refuse_out_of_range
from fedscape.fl.swa import swa_config
from fedscape.models.specs import MODEL_INFOS

MoonHead = Literal["side", "projection"]
MOON_HEADS = get_args(MoonHead)
MoonReferenceMode = Literal["train", "eval"]
MOON_REFERENCE_MODES = get_args(MoonReferenceMode)


@dataclass(frozen=True)
class MoonConfig(ServerSGDConfig):
    """MOON hyperparameters."""

    mu: float = 1.0  # FedAlign paper, Sec. 3.2: the tuned optimum for MOON
    temperature: float = 0.5  # Li et al. 2021 (MOON) and the FedAlign code
    # The head's output size O (MOON's code: `out_dim` of ModelFedCon); 0 = the feature width D (the FedAlign code's
    # CIFAR ResNet: D -> D -> D). With head projection a width other than D puts a new classifier Linear(O, classes)
    # on the head, as both codes do (the FedAlign code's ImageNet ResNet18: 512 -> 512 -> 256, models/resnet.py).
    projection_dim: int = 0
    # Where the classifier sits. "side": on the backbone's features, the head a side branch feeding only the
    # contrastive term (kept by the strategy; the saved model is the plain classifier). "projection": on the
    # head's output, as in MOON's code (Li et al. 2021, model-contrastive federated learning) and the FedAlign
    # code (models/resnet.py, projection=True): the head is part of the model, trained by both terms, evaluated.
    head: MoonHead = "side"
    # The mode in which the reference models (the round's global model and the client's previous local model) compute
    # their representations. "train" (the baseline): the local model's mode, train mode during local training, so a
    # batch-norm model normalises the references' features with the batch's statistics, as the FedAlign code does
    # (Mendieta et al. 2022, methods/moon.py: its copies of the global and previous models are never put in eval
    # mode). "eval": eval mode, each reference with its own running statistics (the global model's of the round, the
    # previous local model's from the end of its client's last local training), as MOON's code does (Li et al. 2021,
    # github.com/QinbinLi/MOON main.py: global_model.eval() every round and the previous nets .eval(), requires_grad
    # False). They differ for batch-norm models only (no model here has dropout), and there by about MOON's own effect
    # (an earlier measurement on resnet20: the round-2 global model's difference between the two modes was 1.08x
    # MOON's whole departure from FedAvg). Only "train" trains its clients vectorised (`stacked_problem`).
    reference_mode: MoonReferenceMode = "train"

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, temperature=(self.temperature <= 0, "positive"), mu=(self.mu < 0, "non-negative"),
                            projection_dim=(self.projection_dim < 0, "non-negative (0: the feature width)"))
        if self.head not in MOON_HEADS:
            raise unknown_name_error("MOON head", self.head, MOON_HEADS)
        if self.reference_mode not in MOON_REFERENCE_MODES:
            raise unknown_name_error("MOON reference mode", self.reference_mode, MOON_REFERENCE_MODES)
        if self.head == "side" and (self.server_lr != 1 or self.server_momentum):
            raise ValueError(f"MOON with head side averages its head plainly, so server_lr {self.server_lr} and "
                             f"server_momentum {self.server_momentum} would step the model and its head differently: "
                             "use head: projection (the head is then part of the model), or server_lr 1 and "
                             "server_momentum 0")

    def client_state_models(self) -> int:
        # the client's previous local model and its projection head's parameters, beside the model (`head: side`) or
        # in it (`head: projection`, a model larger than its init), and in `reference_mode: eval` its buffers: the
        # head and the buffers counted as one model each, an upper bound wherever the memory matters (ResNet18's head
        # 512 -> 512 -> 512 is 0.5M parameters beside 11M)
        return 2 + int(self.reference_mode == "eval")

    def training_problem(self, training: dict) -> str | None:
        """head side: the strategy keeps the head beside the model, so neither the SWA schedule of the server's lr
        nor the clients' kept optimiser state (both of the model's parameters) reaches it."""
        if self.head != "side":
            return None
        swa = swa_config(training.get("swa"))
        if swa is not None and swa.scheduled_lr == "server":
            return ("MOON with head side averages its head plainly, so swa.scheduled_lr: server would cycle the "
                    "model's server lr but not its head's: use head: projection, or swa.scheduled_lr: client")
        if training.get("keep_optimizer_state"):
            return ("MOON with head side keeps the clients' optimiser state of the model's parameters only "
                    "(training.keep_optimizer_state: true), so its head would restart its momentum every round while "
                    "the model does not: use head: projection, or keep_optimizer_state: false")
        return None

    def stacked_problem(self, model: str, model_options: dict, training: dict) -> str | None:
        # What `Moon.stacked_blocker` says of the built model.
        if self.head != "projection":
            return ("head projection (the side head is a second model, with its own averaged parameters, that the "
                    "stacked step does not carry)")
        if self.reference_mode != "train":
            return ("reference_mode train (eval-mode references normalise with per-client running statistics that "
                    "the stacked step does not carry)")
        info = MODEL_INFOS.get(model)
        if info is None or not info.residual:
            return f"stacked features, which only the ResNets compute (not {model})"
        return None

    def model_options(self) -> dict:
        """head projection: the classifier on the head (`fedscape.models.layers.ProjectedClassifier`), of output
        width projection_dim where set (a network its 0 does not build: the analyses rebuild it from these)."""
        if self.head != "projection":
            return {}
        return {"projection_head": True, **({"projection_dim": self.projection_dim} if self.projection_dim else {})}


SPECS = (AlgorithmSpec("moon", MoonConfig, "moon:Moon", "MOON",
                  "Li et al. 2021, Model-Contrastive Federated Learning",
                  uncaptured=(("sequential", own_passes("its local_loss: beside the global and previous "
                                                         "models' passes")),),
                  per_sample="its contrastive term compares one representation per sample (Li et al. 2021, Eq. 3)"),)
