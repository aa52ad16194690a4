"""FedAlign (Mendieta et al. 2022, Local Learning Matters): aligned Lipschitz constants of the last block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.strategies.base import ClientContext, Strategy


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


class FedAlign(Strategy):
    """FedAlign (Mendieta et al. 2022, Local Learning Matters): align the last block's Lipschitz constants.

    Loss CE + mu * (CE / L_lip) * L_lip with L_lip = MSE(K_S, K_F) between the Lipschitz estimates
    of the last block at full width (K_F, detached) and at width omega_s (K_S), the sub-block
    reusing the full network's (detached) block input; the ratio CE / L_lip is a constant (App. A.2).
    The last "block" is the whole last stage of a ResNet and `last_block` of cnn_small.
    """

    standard_local_training = False


    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        h_in, h_out, logits = model.forward_last_block(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
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
