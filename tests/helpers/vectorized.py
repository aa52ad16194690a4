"""One federated round in a chosen client_parallel mode, for the tests that compare the vectorised path with the
sequential reference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedscape.data.federated import FederatedData
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientResult, Strategy
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model

# The grouped layout's memory orders (`fedscape.models.layers.grouped_memory_format`): a CPU's and a GPU's.
GROUPED_LAYOUTS = {"channels_last": torch.channels_last, "channels_first": torch.contiguous_format}


def model_of(name: str = "cnn_small", seed: int = 0, **options) -> nn.Module:
    """A seeded digits-shaped model (8x8, one channel, 10 classes)."""
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=1, image_size=8, **options)


def run_mode(mode: str, strategy: Strategy, data: FederatedData, monkeypatch,
             model: str | Callable[[], nn.Module] = "cnn_small", model_options: dict | None = None, **train):
    """run_federated in one client_parallel mode, with momentum and weight decay; the vectorised mode must not
    fall back to the sequential local_train. `model`: a registry name (`model_of` with `model_options`) or a function
    building a fresh model."""
    cfg = TrainConfig(**{"rounds": 1, "local_epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
                         "weight_decay": 1e-3, "participation": 0.75, "seed": 3, "save_clients_at": (1,),
                         "client_parallel": mode, **train})
    with monkeypatch.context() as m:
        if mode == "vectorized":
            def no_sequential(*args, **kwargs):
                raise AssertionError("the vectorised run fell back to sequential local_train")

            m.setattr(sequential_mod, "local_train", no_sequential)
        net = model_of(model, **(model_options or {})) if isinstance(model, str) else model()
        return run_federated(net, data, strategy, cfg)


def both_rounds(model: nn.Module, data: FederatedData, cfg: TrainConfig, algorithm: str = "fedavg",
                hparams: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[ClientResult], list[ClientResult]]:
    """One round of every client, vectorised and sequential, from the model's parameters and running statistics:
    (start parameters, start buffers, sequential results, vectorised results)."""
    flat = FlatParams(model)
    start, buffers = flat.get(), flatten_buffers(model)
    strategy = make_strategy(algorithm, hparams or {})
    clients = list(range(data.num_clients))
    vec = VectorizedTrainer(model, data, strategy, cfg).train_round(start, buffers, clients, round_=1)
    seq = [sequential_mod.local_train(model, flat, start, buffers, data, c, 1, strategy, cfg)[0] for c in clients]
    return start, buffers, seq, vec
