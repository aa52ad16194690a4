"""FedAlign (Mendieta et al. 2022, Local Learning Matters): aligned Lipschitz constants of the last block."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy, slimmed_stack_blocker, stacked_gradients
from fedscape.models.loss import stacked_mean_loss


def transmitting_matrix(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """X = pool(h_in)^T h_out / (H W) per sample, [B, C_in, C_out] (Shang et al. 2021; FedAlign eqs. 6-7).

    The larger input map is adaptive-average-pooled to the output's spatial size first (FedAlign, App. A.2).
    """
    if h_in.shape[-2:] != h_out.shape[-2:]:
        h_in = F.adaptive_avg_pool2d(h_in, h_out.shape[-2:])
    a = h_in.flatten(2)  # [B, C_in, HW]
    b = h_out.flatten(2).transpose(1, 2)  # [B, HW, C_out]
    return torch.bmm(a, b) / a.shape[2]


def spectral_norm_power(matrix: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Per-sample spectral norm of [B, m, n] matrices: sqrt of the top eigenvalue of X X^T by power
    iteration from the all-ones vector (FedAlign code); differentiable, [B]."""
    k = torch.bmm(matrix, matrix.transpose(1, 2))
    v = torch.ones(k.shape[0], k.shape[1], 1, device=k.device, dtype=k.dtype)
    norm = torch.ones(k.shape[0], 1, 1, device=k.device, dtype=k.dtype)
    eps = torch.finfo(k.dtype).tiny * 1e8  # keeps the gradient finite for an all-zero matrix (a dead sample)
    for _ in range(iterations):
        m = torch.bmm(k, v)
        norm = (m.square().sum(dim=1, keepdim=True) + eps).sqrt()
        v = m / norm
    return norm.flatten().sqrt()


def lipschitz_estimate(h_in: torch.Tensor, h_out: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """FedAlign's Lipschitz estimate of a block: spectral norm of its transmitting matrix, per sample [B]."""
    return spectral_norm_power(transmitting_matrix(h_in, h_out), iterations)


def stacked_lipschitz(h_in: torch.Tensor, h_out: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """`lipschitz_estimate` of K stacked models' maps in grouped layout [B, K*C, H, W]: [K, B]."""
    def ungrouped(h: torch.Tensor) -> torch.Tensor:
        return h.unflatten(1, (k, -1)).transpose(0, 1).flatten(0, 1)  # [K*B, C, H, W], client k's rows k*B ..

    return lipschitz_estimate(ungrouped(h_in), ungrouped(h_out), iterations).view(k, -1)


def clip_stacked_grad_norm_(grads: list[torch.Tensor | None], max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` of each of K stacked clients over its own gradients [K, *shape] (None: a
    parameter without gradient), in place: client k's scaled by min(1, max_norm / (its total 2-norm + 1e-6))."""
    present = [g for g in grads if g is not None]
    if not present:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in present]),
                                     dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in present:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


class FedAlign(Strategy):
    """FedAlign (Mendieta et al. 2022, Local Learning Matters): align the last block's Lipschitz constants.

    Loss CE + mu * (CE / L_lip) * L_lip with L_lip = MSE(K_S, K_F) between the Lipschitz estimates
    of the last block at full width (K_F, detached) and at width omega_s (K_S), the sub-block
    reusing the full network's (detached) block input; the ratio CE / L_lip is a constant (App. A.2).
    The last "block" is the whole last stage of a ResNet and `last_block` of cnn_small.

    Vectorised training (the ResNets, below full width) computes the same terms for every
    stacked client, each with its own CE / L_lip factor and its own gradient clipping, in two backward passes as the
    sequential step, the second's gradients kept for the clients whose L_lip is positive and finite.
    """

    standard_local_training = False
    vectorized: ClassVar[bool] = True

    def stacked_blocker(self, model: nn.Module, stacked_forward: bool = True, optimizer: str = "sgd") -> str | None:
        if self.config.width >= 1:
            return (f"algorithm {self.name!r} at width 1 runs the full last block twice a step, whose batch norms "
                    "move their running statistics twice (sequential client training only)")
        return slimmed_stack_blocker(self.name, model, stacked_forward, "last_block_width_stacked",
                                     "slims the last block of each client")

    def local_gradients_vectorized(self, params: list[torch.Tensor],
                                   loss: Callable[[list[torch.Tensor]], torch.Tensor]
                                   ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        c, batch = self.config, loss.batch
        k = batch.x.shape[0]
        named = dict(zip(batch.names, params, strict=True))
        h_in, h_out, logits = batch.model.forward_stacked_last_block(named, batch.x, norm=batch.norm(True))
        ce = stacked_mean_loss(logits, batch.y, batch.mask)
        if c.mu == 0 or batch.model.last_stage_whole_at(c.width):
            # No term: at a width that keeps every channel the sub-block is the block, L_lip is 0 but for the two
            # passes' kernels' rounding, which CE / L_lip would magnify (`local_backward` skips it alike).
            return ce.detach(), stacked_gradients(ce, params)
        h_in, h_out = h_in.detach(), h_out.detach()
        sub_in, sub_out = batch.model.last_block_width_stacked(named, h_in, k, c.width, norm=batch.norm(False))
        k_s = stacked_lipschitz(sub_in, sub_out, k, c.power_iterations)
        k_f = stacked_lipschitz(h_in, h_out, k, c.power_iterations)
        lip = ((k_s - k_f).square() * batch.mask).sum(1) / batch.mask.sum(1)  # each client's MSE over its real rows
        lip_value, ce_value = lip.detach(), ce.detach()
        # The sequential step's host test, per client and on the device: the term where L_lip is positive and finite.
        aligned = (lip_value > 0) & torch.isfinite(lip_value)
        zero = torch.zeros_like(lip_value)
        factor = torch.where(aligned, c.mu * ce_value / lip_value, zero)
        # Two backward passes, as the sequential step takes them, the second's gradients kept where the term applies
        # only: a client whose L_lip is not finite would pass 0 x NaN back through its estimates.
        grads = stacked_gradients(ce, params)
        for i, g in enumerate(stacked_gradients(factor * lip, params)):
            if g is None:
                continue
            g = torch.where(aligned.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
            grads[i] = g if grads[i] is None else grads[i] + g
        return ce_value + torch.where(aligned, c.mu * ce_value, zero), grads

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        if self.config.clip_grad_norm > 0:
            clip_stacked_grad_norm_(grads, self.config.clip_grad_norm)

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        h_in, h_out, logits = model.forward_last_block(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        if c.width < 1 and (c.mu == 0 or model.last_stage_whole_at(c.width)):
            # No term, as in the vectorised step: below width 1 the sub-block updates no running statistics, and
            # where it keeps every channel it is the block, so L_lip is 0 but for the rounding of its other kernels
            # (batch statistics without running ones, on a GPU), which CE / L_lip would magnify. At width 1 it runs
            # the full block again, whose batch norms move their running statistics a second time: kept.
            return ce.detach()
        h_in, h_out = h_in.detach(), h_out.detach()
        sub_in, sub_out = model.last_block_width(h_in, c.width)
        k_s = lipschitz_estimate(sub_in, sub_out, c.power_iterations)
        k_f = lipschitz_estimate(h_in, h_out, c.power_iterations)
        lip = F.mse_loss(k_s, k_f)
        # One read from the device per step, not two: each read waits for the GPU to finish the step's queued work.
        lip_value, ce_value = torch.stack([lip.detach(), ce.detach()]).tolist()
        if lip_value > 0 and math.isfinite(lip_value) and c.mu > 0:
            (c.mu * (ce_value / lip_value) * lip).backward()
            return ce.detach() + c.mu * ce_value
        return ce.detach()

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        if self.config.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad_norm)
