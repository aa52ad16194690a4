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


@dataclass(frozen=True)
class ServerAdaptiveConfig:
    """Adaptive server optimiser hyperparameters (Reddi et al. 2021, Adaptive Federated Optimization).

    Reddi et al. fix beta1 = 0.9 and beta2 = 0.99 (Sec. 5) and tune the server lr and tau over
    grids of powers of ten; 10^-2 and 10^-3 are the values they most often select, and the Meta
    poster (Nguyen et al.) runs FedAdam with SGD at the clients in the same way.
    """

    server_lr: float = 0.01  # eta (Reddi et al. 2021, grid over 10^-3..10^0)
    beta1: float = 0.9  # Reddi et al. 2021, Sec. 5
    beta2: float = 0.99  # Reddi et al. 2021, Sec. 5 (unused by FedAdagrad)
    tau: float = 1e-3  # adaptivity / epsilon (Reddi et al. 2021, grid over 10^-5..10^-1)

    def __post_init__(self):
        if self.server_lr <= 0 or self.tau <= 0:
            raise ValueError(f"server_lr and tau must be positive, got {self.server_lr} and {self.tau}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")


ADAPTIVE_KINDS = ("adagrad", "adam", "yogi")


class ServerAdaptive(ServerOptimizer):
    """FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2), without bias correction.

    With Delta = -pseudo_grad (the weighted mean client delta): m <- b1 m + (1 - b1) Delta;
    v <- v + Delta^2 (Adagrad), v <- v - (1 - b2) Delta^2 sign(v - Delta^2) (Yogi) or
    v <- b2 v + (1 - b2) Delta^2 (Adam); x <- x + lr m / (sqrt(v) + tau). m starts at 0 and v at
    tau^2 (the algorithm's v_{-1} >= tau^2).
    """

    def __init__(self, kind: str, lr: float, beta1: float, beta2: float, tau: float):
        if kind not in ADAPTIVE_KINDS:
            from fedscape.utils import unknown_name_error

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
