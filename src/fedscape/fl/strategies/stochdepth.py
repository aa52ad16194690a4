"""Stochastic Depth (Huang et al. 2016) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy


def survival_probabilities(num_blocks: int, survival_last: float) -> list[float]:
    """Linear decay gamma_l = 1 - l/L (1 - gamma_L), l = 1..L (Huang et al. 2016; FedAlign Sec. 3.1)."""
    return [1 - (block / num_blocks) * (1 - survival_last) for block in range(1, num_blocks + 1)]


class StochDepth(Strategy):
    """Stochastic Depth (Huang et al. 2016) as local training: residual blocks dropped at random.

    Block l survives with probability gamma_l (linear decay to gamma_L); a surviving residual branch
    is scaled by 1 / gamma_l during training (the "inverted" form), so that the trained weights
    are used as they are at evaluation: every analysis of the saved models evaluates the plain
    network, which is what Huang et al.'s test-time rule (branch scaled by gamma_l) computes, up to
    that re-parameterisation of the residual branches.
    """

    standard_local_training = False


    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        probs = ctx.scratch.get("survival")
        if probs is None:
            probs = ctx.scratch["survival"] = survival_probabilities(len(model.blocks), self.config.survival_last)
        draws = torch.rand(len(probs), generator=ctx.generator).tolist()
        scales = [1.0 / p if u < p else 0.0 for u, p in zip(draws, probs, strict=True)]
        return F.cross_entropy(model.forward_residual_scaled(x, scales), y)
