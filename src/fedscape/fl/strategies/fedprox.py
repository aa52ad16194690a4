"""FedProx (Li et al. 2020): a proximal term added as a gradient, vectorised too."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy, param_views


class FedProx(Strategy):
    """FedProx (Li et al. 2020, MLSys): local loss + mu/2 ||w - w_global||^2, added as a gradient term."""

    standard_local_training = False
    vectorized = True  # the prox gradient is elementwise: adjust_gradients_vectorized

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        ctx.scratch["global_views"] = param_views(ctx.global_params, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        mu = self.config.mu
        for p, g in zip(model.parameters(), ctx.scratch["global_views"], strict=True):
            prox = p.detach() - g
            if p.grad is None:
                # no data gradient in this step (a skipped block): the prox term's alone, and none at mu = 0, so
                # that the optimiser skips the parameter (weight decay, momentum) as FedAvg's does
                if mu:
                    p.grad = mu * prox
            else:
                p.grad.add_(prox, alpha=mu)

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor]) -> None:
        """The prox gradient mu (w - w_global) of every stacked client (FedProx, Li et al. 2020)."""
        for grad, p, g in zip(grads, params, global_params, strict=True):
            grad.add_(p.detach() - g, alpha=self.config.mu)
