"""FedAlign: align the last block's Lipschitz constants at two widths (Mendieta et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig


@dataclass(frozen=True)
class FedAlignConfig(ServerSGDConfig):
    """FedAlign hyperparameters."""

    mu: float = 0.05  # FedAlign paper, Table 6 and App. A.1 (default mu)
    width: float = 0.8  # omega_s, the sub-block width (FedAlign paper, Table 6 and App. A.1)
    power_iterations: int = 10  # power-iteration steps of the spectral norm (FedAlign code, top_eigenvalue)
    clip_grad_norm: float = 10.0  # the FedAlign code clips the local gradient norm at 10; 0 turns it off

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.width <= 1 or self.mu < 0 or self.power_iterations < 1 or self.clip_grad_norm < 0:
            raise ValueError("FedAlign needs 0 < width <= 1, mu >= 0, power_iterations >= 1 and clip_grad_norm >= 0")


SPECS = (AlgorithmSpec("fedalign", FedAlignConfig, "fedalign:FedAlign", "FedAlign",
                  "Mendieta et al. 2022, Local Learning Matters: Rethinking Data Heterogeneity in Federated Learning",
                  requires="width_sliceable",
                  per_sample="its Lipschitz regulariser compares one final representation per sample "
                             "(Mendieta et al. 2022, Eq. 4)"),)
