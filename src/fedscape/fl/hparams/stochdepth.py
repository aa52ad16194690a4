"""Stochastic Depth as local training (Huang et al. 2016; the FedAlign paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig


@dataclass(frozen=True)
class StochDepthConfig(ServerSGDConfig):
    """Stochastic Depth hyperparameters."""

    survival_last: float = 0.9  # gamma_L, the last block's survival probability (FedAlign paper, Sec. 3.2)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.survival_last <= 1:
            raise ValueError(f"survival_last must be in (0, 1], got {self.survival_last}")

    def stacked_problem(self, model: str, model_options: dict, training: dict) -> str | None:
        optimizer = training.get("optimizer", "sgd")
        if optimizer != "sgd":  # the stacked step keeps a dropped branch as torch's SGD skips it
            return f"optimizer sgd (training.optimizer {optimizer} also counts each parameter's steps)"
        return None


SPECS = (AlgorithmSpec("stochdepth", StochDepthConfig, "stochdepth:StochDepth", "StochDepth",
                  "Huang et al. 2016, Deep Networks with Stochastic Depth; FedAlign paper, Sec. 3.2",
                  requires="residual",
                  per_sample="its residual-scaled forward gives one prediction per sample (forward_residual_scaled)",
                  skips_parameters="a dropped residual branch takes no gradient in that step"),)
