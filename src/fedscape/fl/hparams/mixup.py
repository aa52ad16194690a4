"""Mixup as local training (Zhang et al. 2018; the FedAlign paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, own_passes, refuse_out_of_range


@dataclass(frozen=True)
class MixupConfig(ServerSGDConfig):
    """Mixup hyperparameters."""

    gamma: float = 0.05  # FedAlign paper, Sec. 3.2: lambda ~ Beta(gamma, gamma) with gamma = 0.05

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, gamma=(self.gamma < 0, "non-negative"))


SPECS = (AlgorithmSpec("mixup", MixupConfig, "mixup:Mixup", "Mixup",
                  "Zhang et al. 2018, mixup: Beyond Empirical Risk Minimization; FedAlign paper, Sec. 3.2",
                  requires="pixel_input",
                  uncaptured=(("sequential", own_passes("its local_loss: on the batch mixed with a drawn "
                                                         "permutation")),),
                  per_sample="it mixes whole samples and their one-hot labels (Zhang et al. 2018)"),)
