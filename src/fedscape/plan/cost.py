"""Planning of the cost table (FedAlign paper, Table 5): every run's metrics.csv and meta.json."""

from __future__ import annotations

from fedscape.core.paths import Results
from fedscape.core.runs import Run


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """cost.csv."""
    return [Results.of(config).table("cost")]
