"""Planning of the cost table (FedAlign paper, Table 5): every run's metrics.csv and meta.json."""

from __future__ import annotations

from fedscape.core.paths import Results
from fedscape.core.runs import Run

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# cost_table 2: runs are compared within one execution (clients trained at once, one by one, or from CUDA graphs).
# cost_table 3: and within one precision (column `precision`, each attempt's rounds in its own).
RESULT_VERSIONS = {"cost_table": 3}


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """cost.csv."""
    return [Results.of(config).table("cost")]
