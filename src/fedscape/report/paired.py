"""Paired differences over seeds (results/tables/paired_differences.csv): each row of the headline table against its
setting's baseline, seed by seed.

Every run group of a setting runs on the config's seeds, and a seed fixes the run's partition, its client sampling
and its batch order, so a hard seed (a partition that starves some classes) lowers every row of its setting alike.
The per-seed difference leaves that shared offset out: its t interval is narrower than the groups' own intervals
(the headline table's, each over its own seeds), and it says whether one algorithm is flatter or more accurate than
another on the same partitions (is FedSAM flatter than FedAvg at alpha 0.1?), which two overlapping intervals cannot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fedscape.core.io import write_csv
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.tables import read_table
from fedscape.report.figures.accuracy import HEADLINE_METRICS, HEADLINE_SETTING, headline_table
from fedscape.report.figures.common import CURVE_GROUP, init_order, select_model, setting_panels
from fedscape.report.summary import FINAL_COLUMNS, FINAL_NUMERIC, SHARED_METRICS

log = logging.getLogger("fedscape.paired")

PAIRED_COLUMNS = ["dataset", "model", *HEADLINE_SETTING, "metric", "row", "baseline", "n_pairs", "mean_diff",
                  "std_diff", "ci95_low", "ci95_high", "seeds"]
# The algorithm label a setting's rows are compared against where the setting has it (with its most common init).
BASELINE_ALGORITHM = "fedavg"
# Joins the paired seeds of a `seeds` cell, as summary.csv's code_versions joins versions: CSV does not quote it.
SEED_SEPARATOR = ";"
# The headline's order of the rows within a setting (its figure's `_setting_sorted(..., ["algorithm", "init"])`).
ROW_ORDER = ["algorithm", "init"]


def baseline_row(groups: pd.DataFrame) -> str:
    """The headline row label that a setting's other rows are compared against; `groups`: the setting's run groups
    (init, algorithm, row) in the headline's order. The group of algorithm label BASELINE_ALGORITHM (`fedavg`, the
    reference every paper compares against) under the setting's most common init (a tie: the init the figures draw
    first, `random`, then by name), else the setting's first row, so that a setting without it has a baseline too."""
    inits = groups["init"].astype(str)
    counts = inits.value_counts()
    common = next(init for init in init_order(inits) if counts[init] == counts.max())
    fedavg = groups[(groups["algorithm"].astype(str) == BASELINE_ALGORITHM) & (inits == common)]
    return str((fedavg if len(fedavg) else groups).iloc[0]["row"])


def paired_differences(final: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset, model, setting (HEADLINE_SETTING), headline metric and row of the headline table other
    than its setting's baseline (`baseline_row`): the statistics over seeds of row - baseline, in the headline's
    scale (an accuracy in %).

    The rows are the headline table's run groups and labels (`headline_table` of each dataset and model: where an
    analysis is computed, only the groups with its values), its metrics those it shows except the ones the seeds
    share (SHARED_METRICS: the Hessian at init is one estimate, no per-seed difference). A pair is a seed that both
    groups ran and neither diverged (`did_not_diverge`), with a value in both; a seed where both values are the same
    infinity (two barriers whose loss overflowed) has no difference and is no pair. `n_pairs` counts the pairs,
    `seeds` names them ("0;1;2"); mean_diff, std_diff (ddof=1) and the Student-t 95% interval are
    `outputs.stats.t_interval`'s: with one pair a mean and NaN spread, with none NaN throughout; with an infinite
    difference among them the mean is that infinity (NaN where both signs occur) and the spread and interval NaN.
    """
    rows = []
    for dataset, model in sorted({(str(d), str(m)) for d, m in final[["dataset", "model"]].itertuples(index=False)}):
        runs = select_model(final, dataset, model)
        rows.extend(_model_rows(dataset, model, runs, headline_table(runs)))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def model_paired_differences(dataset: str, model: str, runs: pd.DataFrame, headline: pd.DataFrame) -> pd.DataFrame:
    """`paired_differences` of `runs`, the final.csv rows of `dataset` and `model` (`select_model`), whose headline
    table (`headline_table(runs)`) is `headline`: the paired figure draws the headline's settings too."""
    return pd.DataFrame(_model_rows(dataset, model, runs, headline), columns=PAIRED_COLUMNS)


def _model_rows(dataset: str, model: str, runs: pd.DataFrame, headline: pd.DataFrame) -> list[dict]:
    rows = []
    groups = headline.drop_duplicates(CURVE_GROUP)[[*CURVE_GROUP, "row"]]
    metrics = [m for m in HEADLINE_METRICS if m in set(headline["metric"]) and m not in SHARED_METRICS]
    counted = did_not_diverge(runs).merge(groups, on=CURVE_GROUP)
    for setting, these in setting_panels(groups):
        these = these.sort_values(ROW_ORDER, kind="stable")
        baseline = baseline_row(these)
        labels = these["row"].tolist()
        here = counted[counted["row"].isin(labels)]
        fields = {"dataset": dataset, "model": model, **dict(zip(HEADLINE_SETTING, setting, strict=True))}
        for metric in metrics:
            scale = HEADLINE_METRICS[metric][1]
            per_seed = here.pivot_table(index="seed", columns="row", values=metric, aggfunc="first")
            per_seed = per_seed.reindex(columns=labels) * scale  # a row without a value: a column of NaN
            for label in labels:
                if label == baseline:
                    continue
                diff = (per_seed[label] - per_seed[baseline]).dropna()
                mean, std, lo, hi, n = t_interval(diff.tolist())
                rows.append({**fields, "metric": metric, "row": label, "baseline": baseline, "n_pairs": n,
                             "mean_diff": mean, "std_diff": std, "ci95_low": lo, "ci95_high": hi,
                             "seeds": SEED_SEPARATOR.join(str(int(s)) for s in sorted(diff.index))})
    return rows


def paired_differences_table_job(final: str | Path, output: str | Path) -> None:
    """Write results/tables/paired_differences.csv from final.csv (its header alone where no setting has two rows)."""
    df = paired_differences(read_table(final, FINAL_COLUMNS, numeric=FINAL_NUMERIC))
    write_csv(df, output)
    log.info("paired_differences.csv: %d comparisons, %d of them over 2 seeds or more", len(df),
             int((df["n_pairs"] >= 2).sum()))
