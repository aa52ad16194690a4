"""Small seeded synthetic data and models for unit tests (digits-shaped: 1 x 8 x 8 inputs, 10 classes)."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.data.federated import FederatedData
from fedscape.models.registry import build_model


def shard_data(sizes: list[int], seed: int = 0, size: int = 8) -> FederatedData:
    """Clients holding consecutive shards of `sizes` random 1-channel `size` x `size` samples (in torch's default
    dtype); the first 20 samples are the test set."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]
    return FederatedData(x, y, idx, x[:20], y[:20])


def mlp(seed: int = 0) -> nn.Module:
    """The registry's mlp for digits-shaped inputs, initialised from `seed`."""
    torch.manual_seed(seed)
    return build_model("mlp", num_classes=10, in_channels=1, image_size=8)


def digits_like(n: int = 96, seed: int = 0) -> dict:
    """n random digits-shaped samples split in halves: {"train": (x, y), "test": (x, y)}."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return {"train": (x[: n // 2], y[: n // 2]), "test": (x[n // 2 :], y[n // 2 :])}
