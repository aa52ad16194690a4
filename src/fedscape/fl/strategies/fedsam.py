"""FedSAM and FedASAM: every local step is a SAM step (Foret et al. 2021) or an adaptive one (Kwon et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy, stacked_gradients
from fedscape.models.loss import mean_loss


def sam_perturbation(params: list[torch.Tensor], grads: list[torch.Tensor], rho: float,
                     eta: float | None = None, stacked: bool = False,
                     adaptive: list[bool] | None = None) -> list[torch.Tensor]:
    """The ascent step e of SAM, rho g / ||g|| (Foret et al. 2021), or of ASAM, rho T^2 g / ||T g|| with
    T = |w| + eta elementwise (Kwon et al. 2021, eq. 10); zeros for a zero gradient.

    `stacked`: the tensors hold clients stacked on a leading axis [K, *shape] (the vectorised trainer), and each
    client's ascent takes the norm over its own parameters only, as if it were computed client by client.
    `adaptive`: with an eta, whether each tensor takes T (the others T = 1, in the norm too); None: every one.
    """
    if adaptive is None:
        adaptive = [True] * len(params)
    scales = [p.detach().abs() + eta if eta is not None and scaled else torch.ones_like(p)
              for p, scaled in zip(params, adaptive, strict=True)]
    lead = 1 if stacked else 0  # the dimensions every norm keeps: none, or the client axis
    squares = torch.stack([(t * g).square().reshape(*g.shape[:lead], -1).sum(-1)
                           for t, g in zip(scales, grads, strict=True)])
    norm = squares.sum(0).sqrt()  # a scalar, or one norm per client [K]
    # A zero gradient has no ascent direction: dividing by infinity makes its step exactly zero, without the
    # host synchronisation that testing the norm on the CPU would cost.
    norm = torch.where(norm > 0, norm, torch.inf)
    out = []
    for t, g in zip(scales, grads, strict=True):
        out.append(rho * t * t * g / norm.reshape(norm.shape + (1,) * (g.dim() - lead)))
    return out


class FedSAM(Strategy):
    """FedSAM (Qu et al. 2022; Caldarola et al. 2022): local SGD on the SAM gradient, the gradient of the
    loss at w + rho g / ||g|| (Foret et al. 2021), applied at w. Two forward-backward passes per step.

    Batch norm's running statistics move once a step, by the pass at w: the perturbed pass's update is undone (the
    vectorised step's second pass updates none), so that they are the statistics of the model the step leaves, w
    and not w + e. Caldarola et al.'s code (sam_client.py) runs both passes in train mode, two updates a step, the
    second from w + e.
    """

    standard_local_training = False
    vectorized = True  # local_gradients_vectorized: each client's own ascent on the stacked tensors
    # (Its steps are captured, sequential or stacked: two plain passes per step, at w and at w + e, each back-propagated
    # before the next, so that a replay serves both; fedscape.fl.settings.UNCAPTURED_STEPS names it nowhere.)

    def _eta(self) -> float | None:
        return None

    def _adaptive(self, names: list[str]) -> list[bool] | None:
        """Which of the tensors named `names` take ASAM's scale T (`sam_perturbation`); None: every one."""
        return None

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        loss = self.local_loss(model, x, y, ctx)
        loss.backward()
        named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        params = [p for _, p in named]
        perturbation = sam_perturbation(params, [p.grad for p in params], self.config.rho, self._eta(),
                                        adaptive=self._adaptive([n for n, _ in named]))
        saved = [p.detach().clone() for p in params]
        buffers = [b.detach().clone() for b in model.buffers()]  # batch-norm statistics: of w, not of w + e
        with torch.no_grad():
            for p, e in zip(params, perturbation, strict=True):
                p.add_(e)
        for p in params:
            p.grad = None
        mean_loss(model(x), y).backward()  # the gradient at w + e ...
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)  # ... applied at w (exactly w: no rounding of w + e - e) by the step that follows
            for b, v in zip(model.buffers(), buffers, strict=True):
                b.copy_(v)
        return loss.detach()

    def local_gradients_vectorized(self, params: list[torch.Tensor],
                                   loss: Callable[[list[torch.Tensor]], torch.Tensor]
                                   ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """`local_backward` for stacked clients: every client's ascent from its own gradient norm, then the
        gradient at its w + e (the stacked tensors stay at w, where the optimiser applies it). A tensor the loss
        does not use has no gradient (None), takes no ascent and no part in its norm, as in `local_backward`."""
        losses, grads = super().local_gradients_vectorized(params, loss)
        used = [i for i, g in enumerate(grads) if g is not None]
        with torch.no_grad():
            perturbation = sam_perturbation([params[i] for i in used], [grads[i] for i in used], self.config.rho,
                                            self._eta(), stacked=True,
                                            adaptive=self._adaptive([loss.batch.names[i] for i in used]))
            shifted = [p.detach() for p in params]
            for i, e in zip(used, perturbation, strict=True):
                shifted[i] = params[i] + e
        for s in shifted:
            s.requires_grad_(True)
        return losses, stacked_gradients(loss(shifted), shifted)


class FedASAM(FedSAM):
    """FedASAM (Caldarola et al. 2022): FedSAM with ASAM's adaptive ascent, rho T^2 g / ||T g||, T = |w| + eta
    (Kwon et al. 2021), invariant to rescaling the weights. `adaptive_tensors` says which tensors T scales: all,
    biases and normalisation parameters too, as the paper's eq. 10 writes it (the default), or those named
    `weight`, as ASAM's public code and FedASAM's copy of it do, leaving the others at T = 1 (in one measurement on
    lenet5, one random batch, rho 0.5 and eta 0, the two ascent steps differed by 98% of the norm of the code's)."""

    # Declared again: a subclass of a strategy with non-standard local training is otherwise sequential-only
    # (Strategy.__init_subclass__); only the ascent's scale T differs, which sam_perturbation stacks too.
    vectorized = True

    def _eta(self) -> float | None:
        return self.config.eta

    def _adaptive(self, names: list[str]) -> list[bool] | None:
        if self.config.adaptive_tensors == "all":
            return None
        return ["weight" in n for n in names]  # the codes' own test of a parameter's name
