"""FedAvg (McMahan et al. 2017) and the server-optimiser family: FedAvgM (Hsu et al. 2019, the same
strategy with server momentum) and FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021)."""

from __future__ import annotations

from typing import ClassVar

from fedscape.fl.server_opt import ServerAdaptive, ServerOptimizer
from fedscape.fl.strategies.base import Strategy


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017); with `server_momentum` > 0 it is FedAvgM (Hsu et al. 2019)."""


class _FedAdaptive(Strategy):
    """Base of the adaptive server optimisers of Reddi et al. 2021 (Adaptive Federated Optimization)."""

    kind: ClassVar[str] = "adam"

    def make_server_optimizer(self) -> ServerOptimizer:
        c = self.config
        return ServerAdaptive(self.kind, c.server_lr, c.beta1, c.beta2, c.tau)


class FedAdam(_FedAdaptive):
    """FedAdam (Reddi et al. 2021): server Adam on the mean client delta, no bias correction."""

    kind = "adam"


class FedYogi(_FedAdaptive):
    """FedYogi (Reddi et al. 2021): server Yogi on the mean client delta, no bias correction."""

    kind = "yogi"


class FedAdagrad(_FedAdaptive):
    """FedAdagrad (Reddi et al. 2021): server Adagrad on the mean client delta."""

    kind = "adagrad"
