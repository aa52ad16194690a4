"""FedProx: a proximal term keeps local models near the global one (Li et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, refuse_out_of_range


@dataclass(frozen=True)
class FedProxConfig(ServerSGDConfig):
    """FedProx hyperparameters."""

    mu: float = 1e-4  # FedAlign paper (Mendieta et al. 2022), Sec. 3.2: the tuned optimum for FedProx

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, mu=(self.mu < 0, "non-negative"))


SPECS = (AlgorithmSpec("fedprox", FedProxConfig, "fedprox:FedProx", "FedProx",
                  "Li et al. 2020, Federated Optimization in Heterogeneous Networks (MLSys)"),)
