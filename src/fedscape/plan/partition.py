"""Planning of the partition stage: the settings of one client split."""

from __future__ import annotations

from fedscape.core.config import canonical
from fedscape.core.runs import Run


def partition_settings(config: dict, dataset: str, alpha: str, num_clients: int, seed: int) -> dict:
    """Everything a partition job needs: the dataset's options, alpha, client count, seed and `partition`."""
    return canonical({"dataset": dataset, "dataset_options": config["datasets"][dataset], "alpha": alpha,
                      "num_clients": int(num_clients), "seed": int(seed), **config["partition"]})


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: partitions are reached through the runs and the partitions table."""
    return []
