"""Mixup (Zhang et al. 2018) as local training, a baseline of the FedAlign paper."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedscape.data.datasets import host_to_device
from fedscape.fl.strategies.base import ClientContext, Strategy


def mixup_batch(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm] (Zhang et al. 2018, mixup)."""
    return lam * x + (1 - lam) * x[perm]


def mixup_draws(n: int, gamma: float, generator: torch.Generator, scratch: dict[str, Any]
                ) -> tuple[float, torch.Tensor]:
    """A step's lam ~ Beta(gamma, gamma) (1 where gamma is 0) and the CPU permutation of its batch of n, drawn from
    the client's generator: on the client's first step a seed for its NumPy generator (kept in `scratch`, the
    client's working state of the round), then the permutation. One home for the order both training paths draw in."""
    lam = float(_numpy_rng(generator, scratch).beta(gamma, gamma)) if gamma > 0 else 1.0
    return lam, torch.randperm(n, generator=generator)


def _numpy_rng(generator: torch.Generator, scratch: dict[str, Any]) -> np.random.Generator:
    rng = scratch.get("numpy_rng")
    if rng is None:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        rng = scratch["numpy_rng"] = np.random.default_rng(seed)
    return rng


class Mixup(Strategy):
    """Mixup (Zhang et al. 2018) as local training: lam ~ Beta(gamma, gamma), mixed inputs, mixed CE.

    Vectorised training takes the same draws (`input_mixing`) and mixes each stacked client's batch after its
    augmentation, as `local_loss` does one client at a time.
    """

    standard_local_training = False
    vectorized: ClassVar[bool] = True

    def input_mixing(self, n: int, generator: torch.Generator, scratch: dict[str, Any]
                     ) -> tuple[float, torch.Tensor] | None:
        return mixup_draws(n, self.config.gamma, generator, scratch)

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        lam, perm = mixup_draws(len(y), self.config.gamma, ctx.generator, ctx.scratch)
        perm = host_to_device(perm, x.device)
        out = model(mixup_batch(x, perm, lam))
        return lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
