"""One federated round in a chosen client_parallel mode, for the tests that compare the vectorised path with the
sequential reference."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.data.federated import FederatedData
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import Strategy
from fedscape.models.registry import build_model


def shard_data(sizes: list[int], seed: int = 0, size: int = 8) -> FederatedData:
    """Random 1-channel images split into contiguous shards of unequal sizes (in torch's default dtype)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]
    return FederatedData(x, y, idx, x[:20], y[:20])


def model_of(name: str = "cnn_small", seed: int = 0, **options) -> nn.Module:
    """A seeded digits-shaped model (8x8, one channel, 10 classes)."""
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=1, image_size=8, **options)


def run_mode(mode: str, strategy: Strategy, data: FederatedData, monkeypatch, model: str = "cnn_small",
             model_options: dict | None = None, **train):
    """run_federated in one client_parallel mode, with momentum and weight decay; the vectorised mode must not
    fall back to the sequential local_train."""
    cfg = TrainConfig(**{"rounds": 1, "local_epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
                         "weight_decay": 1e-3, "participation": 0.75, "seed": 3, "save_clients_at": (1,),
                         "client_parallel": mode, **train})
    with monkeypatch.context() as m:
        if mode == "vectorized":
            def no_sequential(*args, **kwargs):
                raise AssertionError("the vectorised run fell back to sequential local_train")

            m.setattr(sequential_mod, "local_train", no_sequential)
        return run_federated(model_of(model, **(model_options or {})), data, strategy, cfg)
