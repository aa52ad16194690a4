"""FedDyn: dynamic regularisation of the local objectives (Acar et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.fl.hparams.base import AlgorithmSpec, ServerSGDConfig, refuse_out_of_range


@dataclass(frozen=True)
class FedDynConfig(ServerSGDConfig):
    """FedDyn hyperparameters."""

    alpha: float = 0.01  # Acar et al. 2021 search alpha in {0.1, 0.01, 0.001}; 0.01 in their CIFAR runs

    def __post_init__(self):
        super().__post_init__()
        refuse_out_of_range(self, alpha=(self.alpha <= 0, "positive"))

    def client_state_models(self) -> int:
        return 1  # its gradient correction g_k

    def training_problem(self, training: dict) -> str | None:
        """adamw with weight decay: the g_k update reads the end of local training as a stationary point of the local
        objective, which AdamW's decoupled decay moves (SGD's weight decay is an L2 term of that objective)."""
        decay = training.get("weight_decay", 0.0)
        if training.get("optimizer", "sgd") != "adamw" or not decay:
            return None
        return (f"feddyn cannot train its clients with adamw's decoupled weight decay (training.optimizer: adamw, "
                f"weight_decay: {decay}): its update g_k <- g_k - alpha (w_k - w_global) is the gradient of the "
                "client's loss at w_k only where local training ends at a stationary point of L_k(w) - <g_k, w> + "
                "alpha/2 ||w - w_global||^2 (Acar et al. 2021, the first-order condition of their local objective), "
                "and AdamW's decay, no gradient of that objective, moves that point; use optimizer: sgd (its weight "
                "decay is an L2 term of the objective) or weight_decay: 0")

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        # 1: the server state h weights each client's change by its share of the samples (it was 1/N beside
        # sample-weighted models: fedscape.fl.strategies.feddyn)
        return 1


SPECS = (AlgorithmSpec("feddyn", FedDynConfig, "feddyn:FedDyn", "FedDyn",
                  "Acar et al. 2021, Federated Learning Based on Dynamic Regularization"),)
