"""Planning of the run tables: partitions.csv (every client split) and rounds.csv (every run and round)."""

from __future__ import annotations

from fedscape.core.paths import Results
from fedscape.core.runs import Run


def partition_counts(config: dict, runs: list[Run]) -> list[str]:
    """The counts.csv of every distinct client split of the runs."""
    results = Results.of(config)
    paths = {results.partition_file(run, "counts.csv") for run in runs}
    return sorted(paths)


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """partitions.csv and rounds.csv."""
    results = Results.of(config)
    return [results.table("partitions"), results.table("rounds")]
