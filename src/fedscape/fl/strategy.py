"""Algorithms as small strategy classes over one engine (Flower-style hooks, FLSim server update).

A strategy has client-side hooks (`local_loss`, `adjust_gradients`) used by the engine's local
SGD loop, and one server-side hook (`server_update`): aggregate the client deltas weighted by
sample counts, treat the mean delta as a pseudo-gradient and step a server optimiser.
Hyperparameters live in one frozen dataclass per algorithm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.aggregate import mean_delta, sample_weights, weighted_mean
from fedscape.fl.server_opt import ServerOptimizer, ServerSGD, ServerSGDConfig
from fedscape.utils import suggest, unknown_name_error


@dataclass
class ClientContext:
    """What a client's local training sees in one round."""

    round: int
    client_id: int
    global_params: torch.Tensor  # flat, on the training device; never modified
    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator


@dataclass(frozen=True)
class ClientResult:
    """A client's model after local training."""

    client_id: int
    num_samples: int
    params: torch.Tensor
    buffers: torch.Tensor
    train_loss: float


class Strategy:
    """FedAvg (McMahan et al. 2017): local SGD on cross-entropy, sample-weighted model averaging."""

    name: ClassVar[str] = "fedavg"
    Config: ClassVar[type] = ServerSGDConfig

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.Config()
        self.server_opt = self.make_server_optimizer()

    # -- set-up and state -------------------------------------------------------------------
    def make_server_optimizer(self) -> ServerOptimizer:
        return ServerSGD(self.config.server_lr, self.config.server_momentum)

    def setup(self, num_clients: int, num_params: int, device: torch.device) -> None:
        """Allocate per-run state (control variates, previous models); nothing for FedAvg."""

    def state_dict(self) -> dict[str, Any]:
        return {"server_opt": self.server_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_opt.load_state_dict(state.get("server_opt", {}))

    # -- client side --------------------------------------------------------------------------
    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """The local objective on one batch; FedAvg minimises the plain cross-entropy."""
        return F.cross_entropy(model(x), y)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        """Change gradients after backward, before the local optimiser step (SCAFFOLD's correction)."""

    # -- server side --------------------------------------------------------------------------
    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        """New global parameters from the client results (weighted mean delta -> server optimiser)."""
        weights = sample_weights([r.num_samples for r in results])
        client_params = torch.stack([r.params for r in results])
        delta = mean_delta(global_params, client_params, weights)
        return self.server_opt.step(global_params, -delta)

    def aggregate_buffers(self, results: list[ClientResult]) -> torch.Tensor:
        """Floating buffers (batch-norm statistics) are averaged with the same sample weights."""
        weights = sample_weights([r.num_samples for r in results])
        return weighted_mean(torch.stack([r.buffers for r in results]), weights)


class FedAvgM(Strategy):
    """FedAvgM (Hsu et al. 2019): FedAvg with server momentum."""

    name = "fedavgm"

    @dataclass(frozen=True)
    class Config(ServerSGDConfig):
        server_momentum: float = 0.9  # Hsu et al. 2019 use beta = 0.9


ALGORITHMS: dict[str, type[Strategy]] = {cls.name: cls for cls in (Strategy, FedAvgM)}


def algorithm_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's hyperparameter dataclass with `overrides` applied; unknown keys fail clearly."""
    if name not in ALGORITHMS:
        raise unknown_name_error("algorithm", name, ALGORITHMS)
    cls = ALGORITHMS[name].Config
    overrides = dict(overrides or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in valid:
            raise ValueError(
                f"algorithm {name!r} has no hyperparameter {key!r}.{suggest(key, valid)} "
                f"Valid: {', '.join(sorted(valid)) or '(none)'}"
            )
    return cls(**overrides)


def make_strategy(name: str, overrides: dict[str, Any] | None = None) -> Strategy:
    """Build a strategy by name with hyperparameter overrides from the config."""
    return ALGORITHMS[name](algorithm_config(name, overrides))
