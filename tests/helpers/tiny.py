"""A tiny federated problem for the engine's tests: random 8x8 images split among clients, and an MLP."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.data.federated import FederatedData
from fedscape.models.registry import build_model


def tiny_data(num_clients: int = 3, n: int = 90, seed: int = 0, sizes: list[int] | None = None) -> FederatedData:
    """`n` seeded random samples, split in order among the clients (`sizes`: unequal shards), the first 30 as the
    test set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    sizes = sizes or [n // num_clients] * num_clients
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]
    return FederatedData(x, y, idx, x[:30], y[:30])


def tiny_model(seed: int = 0) -> nn.Module:
    """An MLP for the 8x8 images, its initial weights from `seed`."""
    torch.manual_seed(seed)
    return build_model("mlp", num_classes=10, in_channels=1, image_size=8)
