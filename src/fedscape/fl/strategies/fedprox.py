"""FedProx (Li et al. 2020): a proximal term added as a gradient, vectorised too."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy, param_views


def with_prox(grad: torch.Tensor | None, prox: torch.Tensor, mu: float) -> torch.Tensor | None:
    """The gradient `grad` (in place) plus the prox term's mu (w - w_global), `prox` being w - w_global.

    A parameter without data gradient (None: a skipped block or an unused layer) gets the prox term's alone, and
    none at mu = 0, so that the optimiser skips it (weight decay, momentum) as FedAvg's does.
    """
    if grad is None:
        return mu * prox if mu else None
    return grad.add_(prox, alpha=mu)


class FedProx(Strategy):
    """FedProx (Li et al. 2020, MLSys): local loss + mu/2 ||w - w_global||^2, added as a gradient term."""

    standard_local_training = False
    vectorized = True  # the prox gradient is elementwise: adjust_gradients_vectorized

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        ctx.scratch["global_views"] = param_views(ctx.global_params, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        for p, g in zip(model.parameters(), ctx.scratch["global_views"], strict=True):
            p.grad = with_prox(p.grad, p.detach() - g, self.config.mu)

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        """The prox gradient mu (w - w_global) of every stacked client (FedProx, Li et al. 2020)."""
        for i, (p, g) in enumerate(zip(params, global_params, strict=True)):
            grads[i] = with_prox(grads[i], p.detach() - g, self.config.mu)
