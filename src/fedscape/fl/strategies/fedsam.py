"""FedSAM and FedASAM: every local step is a SAM step (Foret et al. 2021) or an adaptive one (Kwon et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy


def sam_perturbation(params: list[torch.Tensor], grads: list[torch.Tensor], rho: float,
                     eta: float | None = None) -> list[torch.Tensor]:
    """The ascent step e of SAM, rho g / ||g|| (Foret et al. 2021), or of ASAM, rho T^2 g / ||T g|| with
    T = |w| + eta elementwise (Kwon et al. 2021, eq. 10); zeros for a zero gradient."""
    scales = [torch.ones_like(p) if eta is None else p.detach().abs() + eta for p in params]
    norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(scales, grads, strict=True)))
    if float(norm) == 0.0:
        return [torch.zeros_like(g) for g in grads]
    return [rho * t * t * g / norm for t, g in zip(scales, grads, strict=True)]


class FedSAM(Strategy):
    """FedSAM (Qu et al. 2022; Caldarola et al. 2022): local SGD on the SAM gradient, the gradient of the
    loss at w + rho g / ||g|| (Foret et al. 2021), applied at w. Two forward-backward passes per step."""

    standard_local_training = False
    vectorized = False  # two gradient evaluations per step with a per-client ascent: sequential path only

    def _eta(self) -> float | None:
        return None

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        loss = self.local_loss(model, x, y, ctx)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        perturbation = sam_perturbation(params, [p.grad for p in params], self.config.rho, self._eta())
        saved = [p.detach().clone() for p in params]
        buffers = [b.detach().clone() for b in model.buffers()]  # batch-norm statistics: of w, not of w + e
        with torch.no_grad():
            for p, e in zip(params, perturbation, strict=True):
                p.add_(e)
        for p in params:
            p.grad = None
        F.cross_entropy(model(x), y).backward()  # the gradient at w + e ...
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)  # ... applied at w (exactly w: no rounding of w + e - e) by the step that follows
            for b, v in zip(model.buffers(), buffers, strict=True):
                b.copy_(v)
        return loss.detach()


class FedASAM(FedSAM):
    """FedASAM (Caldarola et al. 2022): FedSAM with ASAM's adaptive ascent, rho T^2 g / ||T g||, T = |w| + eta
    (Kwon et al. 2021), invariant to rescaling the weights."""

    def _eta(self) -> float | None:
        return self.config.eta
