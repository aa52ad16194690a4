"""Server optimisers: the mean client delta is a pseudo-gradient (Reddi et al. 2021, FLSim).

FedAvg is server SGD with lr 1 and no momentum, FedAvgM adds server momentum (Hsu et al. 2019);
the adaptive optimisers of Reddi et al. 2021 live here too, so algorithms differ only in this step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ServerSGDConfig:
    """Server SGD; lr 1 and momentum 0 is exactly FedAvg's model averaging."""

    server_lr: float = 1.0  # McMahan et al. 2017: the new global model is the weighted mean
    server_momentum: float = 0.0  # FedAvgM (Hsu et al. 2019) uses 0.9


class ServerOptimizer:
    """Steps the global parameters with a pseudo-gradient g = -(mean client delta)."""

    def step(self, params: torch.Tensor, pseudo_grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class ServerSGD(ServerOptimizer):
    """x <- x - lr * (momentum * m + g), the heavy-ball form used by FedAvgM."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.0):
        self.lr, self.momentum = lr, momentum
        self.buf: torch.Tensor | None = None

    def step(self, params: torch.Tensor, pseudo_grad: torch.Tensor) -> torch.Tensor:
        direction = pseudo_grad
        if self.momentum:
            self.buf = pseudo_grad.clone() if self.buf is None else self.momentum * self.buf + pseudo_grad
            direction = self.buf
        return params - self.lr * direction

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.buf is None else {"momentum_buffer": self.buf}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buf = state.get("momentum_buffer")
