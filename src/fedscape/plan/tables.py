"""Planning of the run tables: partitions.csv (every client split) and rounds.csv (every run and round)."""

from __future__ import annotations

from fedscape.core.paths import Results
from fedscape.core.runs import Run
from fedscape.fl.settings import CODE_VERSION, ROUNDS_COLUMNS
from fedscape.fl.swa import SWA_BN_COLUMN, SWA_METRICS
from fedscape.models.specs import uses_batch_norm
from fedscape.plan.train import run_training

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# rounds_table 2: `swa_bn_stats` of a run with SWA from before the column is `stored` only where its model has batch
# norm (empty for the others, which have no statistics to name).
RESULT_VERSIONS = {"partitions_table": 1, "rounds_table": 2}


def partition_counts(config: dict, runs: list[Run]) -> list[str]:
    """The counts.csv of every distinct client split of the runs."""
    results = Results.of(config)
    paths = {results.partition_file(run, "counts.csv") for run in runs}
    return sorted(paths)


def _swa_runs(config: dict, runs: list[Run]) -> list[Run]:
    return [run for run in runs if run_training(config, run).get("swa") is not None]


def swa_bn_models(config: dict, runs: list[Run]) -> list[str]:
    """The models with batch norm of the runs with SWA, sorted: the metrics.csv of those runs has SWA_BN_COLUMN, and
    rounds.csv names a run's statistics only where its model is one of them (`outputs.tables.concat_tables`)."""
    return sorted({run.model for run in _swa_runs(config, runs)
                   if uses_batch_norm(run.model, config["model_options"].get(run.model))})


def _swa_bn(config: dict, runs: list[Run]) -> tuple[str, ...]:
    """(SWA_BN_COLUMN,) when a run with SWA has a batch-norm model (its metrics.csv has the column), else ()."""
    return (SWA_BN_COLUMN,) if swa_bn_models(config, runs) else ()


def rounds_columns(config: dict, runs: list[Run]) -> list[str]:
    """The columns of rounds.csv: every run's metrics, the SWA model's when a run has SWA (empty for the others),
    with the statistics it was evaluated with when a run with SWA has batch norm, and the code version that trained
    each run."""
    with_swa = bool(_swa_runs(config, runs))
    return [*ROUNDS_COLUMNS, *(SWA_METRICS if with_swa else ()), *_swa_bn(config, runs), CODE_VERSION]


def rounds_optional(config: dict, runs: list[Run]) -> list[str]:
    """The columns of rounds.csv that only some runs' metrics.csv hold: the SWA model's, and the code version (absent
    from runs trained before it was recorded)."""
    return [*SWA_METRICS, *_swa_bn(config, runs), CODE_VERSION]


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """partitions.csv and rounds.csv."""
    results = Results.of(config)
    return [results.table("partitions"), results.table("rounds")]
