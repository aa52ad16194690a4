"""FedAlign: align the last block's Lipschitz constants at two widths (Mendieta et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, own_passes, refuse_out_of_range
from fedscape.models.specs import MODEL_INFOS


@dataclass(frozen=True)
class FedAlignConfig(ServerSGDConfig):
    """FedAlign hyperparameters."""

    mu: float = 0.05  # FedAlign paper, Table 6 and App. A.1 (default mu)
    width: float = 0.8  # omega_s, the sub-block width (FedAlign paper, Table 6 and App. A.1)
    power_iterations: int = 10  # power-iteration steps of the spectral norm (FedAlign code, top_eigenvalue)
    clip_grad_norm: float = 10.0  # the FedAlign code clips the local gradient norm at 10; 0 turns it off

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, width=(not 0 < self.width <= 1, "in (0, 1]"), mu=(self.mu < 0, "non-negative"),
                            power_iterations=(self.power_iterations < 1, "at least 1"),
                            clip_grad_norm=(self.clip_grad_norm < 0, "non-negative (0 turns clipping off)"))

    def stacked_problem(self, model: str, model_options: dict, training: dict) -> str | None:
        info = MODEL_INFOS.get(model)
        if info is None or not info.residual:  # the ResNets, whose forward_stacked slims their last stage
            return f"its last block slimmed per client, which only the ResNets stack (not {model})"
        if self.width >= 1:
            return "a width below 1 (at width 1 the full last block runs twice a step)"
        return None


SPECS = (AlgorithmSpec("fedalign", FedAlignConfig, "fedalign:FedAlign", "FedAlign",
                  "Mendieta et al. 2022, Local Learning Matters: Rethinking Data Heterogeneity in Federated Learning",
                  requires="width_sliceable",
                  uncaptured=(("sequential", own_passes("its local_backward: the full pass, then its last block "
                                                         "slimmed")),),
                  per_sample="its Lipschitz regulariser compares one final representation per sample "
                             "(Mendieta et al. 2022, Eq. 4)"),)
