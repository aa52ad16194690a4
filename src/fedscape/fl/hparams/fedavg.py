"""FedAvg and the server-optimiser family: FedAvgM, FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmConfig, AlgorithmSpec, ServerSGDConfig, refuse_out_of_range


@dataclass(frozen=True)
class FedAvgMConfig(ServerSGDConfig):
    """FedAvgM hyperparameters."""

    server_momentum: float = 0.9  # Hsu et al. 2019 use beta = 0.9


@dataclass(frozen=True)
class ServerAdaptiveConfig(AlgorithmConfig):
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
        refuse_out_of_range(self, server_lr=(self.server_lr <= 0, "positive"), tau=(self.tau <= 0, "positive"),
                            beta1=(not 0 <= self.beta1 < 1, "in [0, 1)"), beta2=(not 0 <= self.beta2 < 1, "in [0, 1)"))


@dataclass(frozen=True)
class FedAdagradConfig(ServerAdaptiveConfig):
    """FedAdagrad hyperparameters."""

    # Adagrad's accumulator never decays, so its steps are about 10x smaller than Adam's at the
    # same lr (without bias correction); Reddi et al. 2021 tune it on the same grid and fedscape
    # takes the next decade, 10^-1.
    server_lr: float = 0.1


_REDDI = "Reddi et al. 2021, Adaptive Federated Optimization"
SPECS = (
    AlgorithmSpec("fedavg", ServerSGDConfig, "fedavg:FedAvg", "FedAvg",
                  "McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from Decentralized Data"),
    AlgorithmSpec("fedavgm", FedAvgMConfig, "fedavg:FedAvg", "FedAvgM",
                  "Hsu et al. 2019, Measuring the Effects of Non-Identical Data Distribution"),
    AlgorithmSpec("fedadam", ServerAdaptiveConfig, "fedavg:FedAdam", "FedAdam", _REDDI),
    AlgorithmSpec("fedyogi", ServerAdaptiveConfig, "fedavg:FedYogi", "FedYogi", _REDDI),
    AlgorithmSpec("fedadagrad", FedAdagradConfig, "fedavg:FedAdagrad", "FedAdagrad", _REDDI),
)
