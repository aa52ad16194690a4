"""Server optimisers: the mean client delta is a pseudo-gradient (Reddi et al. 2021, FLSim).

FedAvg is server SGD with lr 1 and no momentum, FedAvgM adds server momentum (Hsu et al. 2019);
the adaptive optimisers of Reddi et al. 2021 live here too, so algorithms differ only in this step.
"""

from __future__ import annotations

import torch

from fedscape.core.names import unknown_name_error


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


ADAPTIVE_KINDS = ("adagrad", "adam", "yogi")


class ServerAdaptive(ServerOptimizer):
    """FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2), without bias correction.

    With Delta = -pseudo_grad (the weighted mean client delta): m <- b1 m + (1 - b1) Delta;
    v <- v + Delta^2 (Adagrad), v <- v - (1 - b2) Delta^2 sign(v - Delta^2) (Yogi) or
    v <- b2 v + (1 - b2) Delta^2 (Adam); x <- x + lr m / (sqrt(v) + tau). m starts at 0 and v at
    tau^2 (the algorithm's v_{-1} >= tau^2). The mean weights the clients by their samples, as FedAvg's does (and
    TFF's by default), where Algorithm 2 writes an unweighted one.
    """

    def __init__(self, kind: str, lr: float, beta1: float, beta2: float, tau: float):
        if kind not in ADAPTIVE_KINDS:
            raise unknown_name_error("adaptive server optimiser", kind, ADAPTIVE_KINDS)
        self.kind, self.lr, self.beta1, self.beta2, self.tau = kind, lr, beta1, beta2, tau
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def step(self, params: torch.Tensor, pseudo_grad: torch.Tensor) -> torch.Tensor:
        delta = -pseudo_grad
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        sq = delta * delta
        if self.kind == "adagrad":
            self.v = self.v + sq
        elif self.kind == "yogi":
            self.v = self.v - (1 - self.beta2) * sq * torch.sign(self.v - sq)
        else:
            self.v = self.beta2 * self.v + (1 - self.beta2) * sq
        return params + self.lr * self.m / (self.v.sqrt() + self.tau)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.m is None else {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.m, self.v = state.get("m"), state.get("v")
