"""MOON: model-contrastive local learning (Li et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig


@dataclass(frozen=True)
class MoonConfig(ServerSGDConfig):
    """MOON hyperparameters."""

    mu: float = 1.0  # FedAlign paper, Sec. 3.2: the tuned optimum for MOON
    temperature: float = 0.5  # Li et al. 2021 (MOON) and the FedAlign code
    projection_dim: int = 0  # head output size; 0 = the feature width D (FedAlign code: D -> D -> D)

    def __post_init__(self):
        if self.temperature <= 0 or self.mu < 0 or self.projection_dim < 0:
            raise ValueError("MOON needs temperature > 0, mu >= 0 and projection_dim >= 0")


SPECS = (AlgorithmSpec("moon", MoonConfig, "moon:Moon", "MOON",
                  "Li et al. 2021, Model-Contrastive Federated Learning"),)
