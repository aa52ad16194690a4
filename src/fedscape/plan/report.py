"""Planning of the report: final.csv and summary.csv, and the figures across runs (curves over rounds,
final accuracy, cost) per dataset and model."""

from __future__ import annotations

import importlib

from fedscape.analysis.contributions import final_contributions
from fedscape.core.config import canonical
from fedscape.core.paths import ACCURACY_FIGURE, COST_FIGURE, CURVES_FIGURE, Results
from fedscape.core.runs import Run
from fedscape.fl.hparams.registry import without_default_hyperparameters
from fedscape.fl.schedule import WORK_KEYS
from fedscape.fl.settings import NEUTRAL_TRAINING_KEYS, RUN_ONLY_TRAINING_KEYS
from fedscape.plan.train import run_training
from fedscape.report import figure_kinds

CURVE_METRICS = tuple(figure_kinds.CURVE_METRICS)
ACCURACY_KINDS = figure_kinds.ACCURACY_KINDS
# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# summary_table 2: a metric shared by a group's runs (FinalColumns.shared: the Hessian of the initial model) has its
# statistics over its distinct values (one estimate: n = 1, no std or interval, where every seed's copy gave std 0),
# and each metric's number of values, `<metric>_n`, follows every other column.
# final_table 2: an IID-vs-IID barrier pair gives barrier_to_iid to its first end only (it was both ends', which the
# summary took as two values). summary_table 3: a shared metric's values that differ by rounding alone (a round-0
# Hessian computed per seed on a card) are one value. summary_table 4: a last column, `code_versions`, names the
# versions that trained each group's runs (no number changes: made again, so that every summary.csv has it).
# accuracy_figure 2: the ranking CSV has a last column, `rank_seed_n`, the seeds of each rank range, and the ranking
# and local-work titles say over how many seeds their means and bars are (a range where cells lost seeds; the
# ranking's said the most of any cell). accuracy_figure 3: the ranking ranks by the means over the seeds every
# algorithm has (a last column, `rank_mean`, beside each point), and the table's bold row is the best by the same
# pairing; a participation fraction is labelled with every digit (0.125: 12.5% sampled, was 12%), in the curves'
# and cost figures too (curves_figure 2, cost_figure 2); a title says where no seed is left (it said "one seed").
# final_table 3, summary_table 5: a barrier whose loss overflowed (+inf) is kept by a run's barrier to IID and by the
# statistics over seeds (the mean +inf, the spread empty), where it was left out as if not computed.
# final_table 4, summary_table 6: the final round's `sharpness` and `adaptive_sharpness` of the aggregate data
# (hessian.csv's; analysis.hessian.definitions.REPORT), final.csv's after `code_version` and, in summary.csv, each
# one's statistics and count after `code_versions` (`FinalColumns.appended`: no earlier column moves); every other
# number is as it was.
# accuracy_figure 4: the headline table ranks (shades, bolds) rows within their setting (alpha or partition, clients,
# participation), grouped by setting, its accuracy with one decimal and its barrier header naming the training loss;
# the ranking drops the panels of one algorithm (named in its title) and labels each point above it; the by-init
# figure wraps its panels into rows to fit a screen, all clients first, draws accuracy in % and says over how many
# seeds it is. curves_figure 3: all-clients panels first (participation descending).
RESULT_VERSIONS = {"final_table": 4, "summary_table": 6, "paired_differences_table": 1, "curves_figure": 3,
                   "accuracy_figure": 4, "cost_figure": 2}


def final_table_inputs(config: dict, runs: list[Run]) -> dict[str, str]:
    """rounds.csv and the analysis tables whose headline numbers final.csv carries (each analysis's REPORT, by
    table name), those that the analysis's plan module (fedscape.plan.<analysis>) targets for this config."""
    results = Results.of(config)
    inputs = {"rounds": results.table("rounds")}
    for contribution in final_contributions():
        made = set(importlib.import_module(f"{__package__}.{contribution.analysis}").targets(config, runs))
        inputs.update({name: results.table(name) for name in contribution.final.tables if results.table(name) in made})
    return inputs


# Training overrides that do not make a label another variant of its algorithm in the local-work figure: its work (the
# figure's x axis), how it computes (memory settings, capture), and what it keeps and evaluates on the way.
NOT_A_VARIANT = frozenset({*WORK_KEYS, *NEUTRAL_TRAINING_KEYS, *RUN_ONLY_TRAINING_KEYS, "save_clients_at"})


def local_work(config: dict, runs: list[Run]) -> dict[str, dict]:
    """Per algorithm label of the runs: its algorithm name and local epochs or steps (its own `training` override
    or the `training` section), for the figure of final accuracy against local work. Work counted in steps
    carries `local_steps` (and `local_epochs` None); work that differs between clients (a list or a draw) is
    None in both: it has no single value to draw. A label that sets more than its work (hyperparameters off their
    defaults, other training overrides) carries them as `variant` text, e.g. "num_subnets 1": labels of one
    algorithm form one line of the figure only where they differ in their work alone."""
    work = {}
    for run in runs:
        training = run_training(config, run)
        spec = config["algorithms"][run.algorithm]
        entry = {"name": spec["name"], "local_epochs": _single(training["local_epochs"])}
        if training.get("local_steps") is not None:
            entry["local_steps"] = _single(training["local_steps"])
        hyperparameters = {k: v for k, v in spec.items() if k not in ("name", "training")}
        own = {**without_default_hyperparameters(spec["name"], hyperparameters),
               **{k: v for k, v in spec["training"].items()
                  if k not in NOT_A_VARIANT and v != config["training"].get(k)}}
        if own:  # a mapping's keys sorted (`canonical`): the YAML's order would change the figure jobs' params
            entry["variant"] = ", ".join(f"{key} {canonical(own[key])}" for key in sorted(own))
        work[run.algorithm] = entry
    return work


def varies_local_work(config: dict, runs: list[Run]) -> bool:
    """Whether `runs` do more than one local work (epochs or steps, per algorithm label): with one, the figure of
    final accuracy against local work has a single x value per panel and says nothing the other figures do not."""
    single = {(w["local_epochs"], w.get("local_steps")) for w in local_work(config, runs).values()}
    return len(single - {(None, None)}) > 1  # (work that differs between clients is not drawn)


def _single(value) -> int | None:
    """An integer local work as it is; None for none or for work that differs between clients."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """final.csv, summary.csv, paired_differences.csv and the curve, accuracy and cost figures of every dataset and
    model (the local work figure where its runs do more than one local work: `varies_local_work`).

    paired_differences.csv is planned for every config, as summary.csv is for one seed: which rows it has depends on
    final.csv (the headline's run groups keep those with an analysis's values), not on the config alone, and a table
    that is always there is one that users' scripts can read without asking whether the grid made it (its header
    alone where no setting has two rows)."""
    results = Results.of(config)
    out = [results.table("final"), results.table("summary"), results.table("paired_differences")]
    for dataset, model in sorted({(run.dataset, run.model) for run in runs}):
        figures = [results.figure(CURVES_FIGURE, dataset=dataset, model=model, metric=m) for m in CURVE_METRICS]
        these = [run for run in runs if (run.dataset, run.model) == (dataset, model)]
        kinds = [k for k in ACCURACY_KINDS if k != "local_work" or varies_local_work(config, these)]
        figures += [results.figure(ACCURACY_FIGURE, dataset=dataset, model=model, kind=k) for k in kinds]
        figures.append(results.figure(COST_FIGURE, dataset=dataset, model=model))
        out += [path for figure in figures for path in figure.values()]
    return out
