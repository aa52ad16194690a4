"""FedDyn: dynamic regularisation of the local objectives (Acar et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig


@dataclass(frozen=True)
class FedDynConfig(ServerSGDConfig):
    """FedDyn hyperparameters."""

    alpha: float = 0.01  # Acar et al. 2021 search alpha in {0.1, 0.01, 0.001}; 0.01 in their CIFAR runs

    def __post_init__(self):
        super().__post_init__()
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    def client_state_models(self) -> int:
        return 1  # its gradient correction g_k

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        # 1: the server state h weights each client's change by its share of the samples (it was 1/N beside
        # sample-weighted models: fedscape.fl.strategies.feddyn)
        return 1


SPECS = (AlgorithmSpec("feddyn", FedDynConfig, "feddyn:FedDyn", "FedDyn",
                  "Acar et al. 2021, Federated Learning Based on Dynamic Regularization"),)
