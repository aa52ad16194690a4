"""Stochastic Depth (Huang et al. 2016) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy


def survival_probabilities(num_blocks: int, survival_last: float) -> list[float]:
    """Linear decay gamma_l = 1 - l/L (1 - gamma_L), l = 1..L (Huang et al. 2016; FedAlign Sec. 3.2). The FedAlign
    code (models/resnet_stochdepth.py) steps down from 1.0 at the first block to gamma_L at the last over L - 1
    steps, each block but the last surviving more often than here, by at most (1 - gamma_L) / L (the first)."""
    return [1 - (block / num_blocks) * (1 - survival_last) for block in range(1, num_blocks + 1)]


def stochdepth_scales(num_blocks: int, survival_last: float, generator: torch.Generator,
                      scratch: dict[str, Any]) -> list[float]:
    """One step's residual scales: 1 / gamma_l for a surviving block l, 0 for a dropped one, from one uniform draw
    per block of the client's generator (`scratch`: the client's working state of the round). One home for the
    draws both training paths take."""
    probs = scratch.get("survival")
    if probs is None:
        probs = scratch["survival"] = survival_probabilities(num_blocks, survival_last)
    draws = torch.rand(len(probs), generator=generator).tolist()
    return [1.0 / p if u < p else 0.0 for u, p in zip(draws, probs, strict=True)]


class StochDepth(Strategy):
    """Stochastic Depth (Huang et al. 2016) as local training: residual blocks dropped at random.

    Block l survives with probability gamma_l (linear decay to gamma_L); a surviving residual branch is scaled by
    1 / gamma_l during training (the "inverted" form), so that every analysis of the saved models evaluates the plain
    network as saved. Huang et al.'s rule, which the FedAlign code follows (models/resnet_stochdepth.py), trains a
    surviving branch unscaled and evaluates each branch scaled by gamma_l. The two are one network up to a
    re-parameterisation (each branch's last layer scaled by gamma_l), but SGD is not invariant to it: the gradients of
    the re-parameterised tensors are 1 / gamma_l times the other form's, so their steps, in its coordinates,
    1 / gamma_l^2 times as large, and this trains a different model than Huang et al.'s and the FedAlign code's. In one
    measurement (a single seed: resnet20 with group norm, both forms started as the same evaluated function, 100 SGD
    steps of lr 0.05 and momentum 0.9 on the same batches and draws, gamma_L 0.9) their evaluated logits differed by
    up to 1.03, where the Huang form's own logits had moved by up to 3.7.

    Vectorised training takes the same draws (`residual_scales`) and scales each stacked client's branches; a dropped
    branch's parameters, SGD momentum or AdamW moments and step counts, and running statistics stay as they were, as
    a sequential step that never ran the branch leaves them (torch's optimisers skip a parameter whose .grad is None).
    """

    standard_local_training = False
    vectorized: ClassVar[bool] = True
    residual_scaled: ClassVar[bool] = True

    def stacked_blocker(self, model: nn.Module, stacked_forward: bool = True, optimizer: str = "sgd") -> str | None:
        if not (stacked_forward and hasattr(model, "residual_branch_of")):
            return (f"algorithm {self.name!r} scales each residual branch per client, which only the ResNets' own "
                    f"stacked forward does ({type(model).__name__}"
                    f"{'' if stacked_forward else ' under vmap'})")
        return None

    def residual_scales(self, num_blocks: int, generator: torch.Generator, scratch: dict[str, Any]
                        ) -> list[float] | None:
        return stochdepth_scales(num_blocks, self.config.survival_last, generator, scratch)

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        scales = stochdepth_scales(len(model.blocks), self.config.survival_last, ctx.generator, ctx.scratch)
        return F.cross_entropy(model.forward_residual_scaled(x, scales), y)
