"""Planning of the run tables: partitions.csv (every client split) and rounds.csv (every run and round)."""

from __future__ import annotations

from fedscape.core.paths import Results
from fedscape.core.runs import Run
from fedscape.fl.settings import ROUNDS_COLUMNS
from fedscape.fl.swa import SWA_METRICS
from fedscape.plan.train import run_training


def partition_counts(config: dict, runs: list[Run]) -> list[str]:
    """The counts.csv of every distinct client split of the runs."""
    results = Results.of(config)
    paths = {results.partition_file(run, "counts.csv") for run in runs}
    return sorted(paths)


def rounds_columns(config: dict, runs: list[Run]) -> list[str]:
    """The columns of rounds.csv: every run's metrics, and the SWA model's when a run has SWA (empty for the others)."""
    with_swa = any(run_training(config, run).get("swa") is not None for run in runs)
    return [*ROUNDS_COLUMNS, *(SWA_METRICS if with_swa else ())]


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """partitions.csv and rounds.csv."""
    results = Results.of(config)
    return [results.table("partitions"), results.table("rounds")]
