"""GradAug as local training (Yang et al. 2020; the FedAlign paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, own_passes, refuse_out_of_range
from fedscape.models.specs import MODEL_INFOS, model_norm

# The largest value torch.rand draws in float32 (`gradaug_draws` asks for float32 whatever the default dtype): the
# largest float32 below 1. A sub-network's width is min_width + u (1 - min_width) for such a u
# (`GradAugConfig.width_at`), so a min_width within about 1e-9 (2**-30) of 1 can draw exactly 1.0.
LARGEST_UNIFORM = 1 - 2**-24
# Below this min_width a layer of 16 channels (the CIFAR ResNets' narrowest) keeps 9 of them at some drawn width and 8
# at a wider one (`models.layers.slim_channels` rounds 16 w below 4 up to 9); stacked sub-network passes sliced every
# layer to the widest client's count before they took the most any client keeps (`stacked_slim_channels`).
NARROW_ROUNDING_BELOW = 0.25


@dataclass(frozen=True)
class GradAugConfig(ServerSGDConfig):
    """GradAug hyperparameters."""

    mu: float = 1.75  # FedAlign paper, Sec. 3.2: the tuned optimum for GradAug
    num_subnets: int = 2  # n (FedAlign paper, Sec. 3.2)
    # The smallest sub-network width: Yang et al. 2020's CIFAR setting (github.com/taoyang1122/GradAug
    # configs/wideresnet_randwidth.yml and pyramidnet_randwidth.yml: min_width 0.8). Neither the FedAlign paper nor its
    # code's defaults give GradAug's: its --width flag, shared with FedAlign's omega_s, defaults to 0.25 (main.py).
    min_width: float = 0.8
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625)  # input sizes 32/28/24/20 of 32 in the FedAlign code

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        refuse_out_of_range(self, num_subnets=(self.num_subnets < 1, "at least 1"),
                            min_width=(not 0 < self.min_width <= 1, "in (0, 1]"), mu=(self.mu < 0, "non-negative"))
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of fractions in (0, 1], got {list(self.scales)}")

    def width_at(self, u: float) -> float:
        """The width of a sub-network drawn at u in [0, 1): uniform in [min_width, 1] (Yang et al. 2020)."""
        return self.min_width + u * (1 - self.min_width)

    def draws_full_width(self) -> bool:
        """Whether a drawn sub-network can be the full network (width exactly 1.0, whose batch norms move their
        running statistics): at min_width 1, and where the widest draw rounds to 1.0."""
        return self.width_at(LARGEST_UNIFORM) >= 1

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        # 1: vectorised runs of a min_width that rounds narrower widths to more channels (above) gave such a client
        # the widest client's channel count, fewer than its own: every run that can train stacked (whether it did
        # is not in its settings: `auto` stacked on a GPU, not on a CPU, and no longer stacks bottleneck blocks on a
        # GPU either), none that cannot; and 1: cnn_small's sub-networks slice its hidden fc layer's outputs too (they
        # kept all 64: models.feedforward.SmallCNN), its runs alone. Group norm's runs are spared: they trained one
        # client after another until its sliced groups stacked (`models.layers.sliced_stacked_group_norm`), which
        # came after the fix, so none of them ever ran the bug.
        stackable = (training.get("client_parallel") != "sequential" and model_norm(model, model_options) != "group"
                     and self.stacked_problem(model, model_options, training) is None)
        return int(self.min_width < NARROW_ROUNDING_BELOW and stackable) + int(model == "cnn_small")

    def stacked_problem(self, model: str, model_options: dict, training: dict) -> str | None:
        info = MODEL_INFOS.get(model)
        if info is None or not info.residual:  # the ResNets, whose forward_widths_stacked runs per-client widths
            return f"each client's sub-networks at its own width, which only the ResNets stack (not {model})"
        if self.draws_full_width():
            return (f"sub-networks below full width (min_width {self.min_width} can draw width 1.0, the full "
                    "network, which moves its running statistics)")
        return None


SPECS = (AlgorithmSpec("gradaug", GradAugConfig, "gradaug:GradAug", "GradAug",
                  "Yang et al. 2020, GradAug: A New Regularization Method for Deep Neural Networks; FedAlign paper",
                  requires="width_sliceable",
                  uncaptured=(("sequential", own_passes("its local_backward: the full network, then sub-networks "
                                                         "at drawn widths")),
                              ("vectorized", "stacked step is not captured (its passes follow draws made on the "
                                             "host every step)")),
                  per_sample="its sub-networks are distilled from the full network's one prediction per sample "
                             "(Yang et al. 2020)"),)
