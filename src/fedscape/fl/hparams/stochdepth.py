"""Stochastic Depth as local training (Huang et al. 2016; the FedAlign paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, own_passes, refuse_out_of_range


@dataclass(frozen=True)
class StochDepthConfig(ServerSGDConfig):
    """Stochastic Depth hyperparameters."""

    survival_last: float = 0.9  # gamma_L, the last block's survival probability (FedAlign paper, Sec. 3.2)

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, survival_last=(not 0 < self.survival_last <= 1, "in (0, 1]"))

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        # 1: a client's kept AdamW state holds each parameter's own step count (a dropped branch skips steps), not
        # the largest for all, which lengthened a skipped parameter's next step up to 3 lr
        return int(training.get("optimizer") == "adamw" and bool(training.get("keep_optimizer_state")))


SPECS = (AlgorithmSpec("stochdepth", StochDepthConfig, "stochdepth:StochDepth", "StochDepth",
                  "Huang et al. 2016, Deep Networks with Stochastic Depth; FedAlign paper, Sec. 3.2",
                  requires="residual",
                  uncaptured=(("sequential", own_passes("its local_loss: the residual-scaled forward, branches "
                                                         "dropped per step")),),
                  per_sample="its residual-scaled forward gives one prediction per sample (forward_residual_scaled)"),)
