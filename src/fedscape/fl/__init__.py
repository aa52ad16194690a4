"""Federated training: strategies (algorithms) over one engine."""

from fedscape.fl.engine import FederatedData, RunResult, TrainConfig, run_federated
from fedscape.fl.strategy import ALGORITHMS, Strategy, make_strategy

__all__ = ["ALGORITHMS", "FederatedData", "RunResult", "Strategy", "TrainConfig", "make_strategy", "run_federated"]
