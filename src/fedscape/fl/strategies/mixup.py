"""Mixup (Zhang et al. 2018) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedscape.data.datasets import host_to_device
from fedscape.fl.strategies.base import ClientContext, Strategy


def mixup_batch(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm] (Zhang et al. 2018, mixup)."""
    return lam * x + (1 - lam) * x[perm]


def _numpy_rng(ctx: ClientContext) -> np.random.Generator:
    rng = ctx.scratch.get("numpy_rng")
    if rng is None:
        seed = int(torch.randint(0, 2**62, (), generator=ctx.generator))
        rng = ctx.scratch["numpy_rng"] = np.random.default_rng(seed)
    return rng


class Mixup(Strategy):
    """Mixup (Zhang et al. 2018) as local training: lam ~ Beta(gamma, gamma), mixed inputs, mixed CE."""

    standard_local_training = False

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        gamma = self.config.gamma
        lam = float(_numpy_rng(ctx).beta(gamma, gamma)) if gamma > 0 else 1.0
        perm = host_to_device(torch.randperm(len(y), generator=ctx.generator), x.device)
        out = model(mixup_batch(x, perm, lam))
        return lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
