"""Aggregated tables: one row per run (final.csv) and mean / std / 95% interval over seeds (summary.csv).

final.csv gathers each run's last evaluated round from rounds.csv (for a run with server-side SWA, the
losses and accuracies of its SWA model, the run's final model: fedscape.fl.swa) and the analyses' headline numbers
where the config computed them. Each analysis declares its columns and the tables they are read from in its
definitions (`REPORT`, found by fedscape.analysis.contributions): the linear barrier to the matching IID run (Li et
al. 2022, Fig. 3c; barriers), lambda_max and the Hessian trace of the final and the initial global model
(PyHessian, Yao et al. 2020; FedAlign Table 1), HN / HD across clients (FedAlign Table 1) and the sharpness of the
final global model (Foret et al. 2021; Kwon et al. 2021; hessian). An analysis that was not computed leaves its
columns empty (NaN).

summary.csv groups the runs that differ only in their seed (dataset x model x init x algorithm x alpha
x num_clients x participation, FedAlign Tables 1-4 and 7 as rows) and reports, per metric, the mean,
the sample standard deviation (ddof=1), the Student-t 95% interval of the mean and the number of values they are
over (`<metric>_n`, after the statistics), then the fedscape versions that trained the group's runs
(`code_versions`), so that means over runs of two versions (seeds rerun after a code change) say so. After
`code_versions` come only the metrics the analyses added since (`FinalColumns.appended`: the sharpness columns),
each with its statistics and its `<metric>_n`, as they follow final.csv's `code_version`.
A metric whose runs share one computation (an analysis's `FinalColumns.shared`, e.g. the Hessian of the common
initial model) counts each distinct value once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.contributions import final_contributions
from fedscape.core.io import write_csv
from fedscape.core.names import unknown_name_error
from fedscape.core.runs import OK, RUN_FIELDS, RUN_ID
from fedscape.core.setting import format_fraction, format_setting, setting_order_key
from fedscape.fl.settings import CODE_VERSION, ROUNDS_COLUMNS
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.tables import UNRECORDED, read_table

log = logging.getLogger("fedscape.summary")

RUN_KEYS = ["run_id", *RUN_FIELDS]
GROUP_KEYS = [f for f in RUN_FIELDS if f != "seed"]
# A run's own metrics (rounds.csv); the ones summarised over seeds, in column order.
RUN_METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "seconds_per_round"]
RUN_SUMMARY_METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds_per_round"]
# The analyses' columns follow (fedscape.analysis.contributions), each analysis's in its declared order. Users'
# scripts read these columns by name and by position: none is renamed, dropped or moved
# (tests/unit/test_report_contributions.py holds the lists).
CONTRIBUTED_COLUMNS = [c for contribution in final_contributions() for c in contribution.final.columns]
# The columns the analyses added after code_version closed final.csv (FinalColumns.appended), in the same order.
APPENDED_COLUMNS = [c for x in final_contributions() for c in x.final.columns if c in x.final.appended]
# The version that trained the run follows every column final.csv had before it; only those appended since follow it.
FINAL_COLUMNS = [*RUN_KEYS, "final_round", "status", *RUN_METRICS,
                 *(c for c in CONTRIBUTED_COLUMNS if c not in APPENDED_COLUMNS), CODE_VERSION, *APPENDED_COLUMNS]
# The columns of final.csv that hold numbers, read with read_table's check: a damaged cell is refused, named, where it
# would drop out of every statistic as NaN (metric_values) or stop a figure with a bare error.
FINAL_NUMERIC = ["num_clients", "participation", "seed", "final_round", *RUN_METRICS, *CONTRIBUTED_COLUMNS]
# Metrics summarised over seeds, in column order: those summary.csv had before code_versions, then those appended.
_SUMMARISED = [c for x in final_contributions() for c in x.summarised]
_EARLIER_METRICS = [*RUN_SUMMARY_METRICS, *(c for c in _SUMMARISED if c not in APPENDED_COLUMNS)]
_APPENDED_METRICS = [c for c in _SUMMARISED if c in APPENDED_COLUMNS]
SUMMARY_METRICS = [*_EARLIER_METRICS, *_APPENDED_METRICS]
SUMMARY_STATS = ("mean", "std", "ci95_low", "ci95_high")
# The versions that trained a group's runs (`code_versions`: summary_table).
CODE_VERSIONS = "code_versions"
# Each metric's number of values (`<metric>_n`), then CODE_VERSIONS, come after every column that summary.csv had
# before them, so that no column moves (users read them by name and by position). The metrics appended since follow
# CODE_VERSIONS, each with its statistics and its number of values together, so that one appended later moves none.
SUMMARY_COLUMNS = [*GROUP_KEYS, "n_seeds", "n_ok", *[f"{m}_{s}" for m in _EARLIER_METRICS for s in SUMMARY_STATS],
                   *[f"{m}_n" for m in _EARLIER_METRICS], CODE_VERSIONS,
                   *[f"{m}_{s}" for m in _APPENDED_METRICS for s in (*SUMMARY_STATS, "n")]]
# Joins the versions of a CODE_VERSIONS cell: no code_version label (core.manifest.code_label) holds it, nor does CSV
# quote it.
VERSION_SEPARATOR = ";"
# The metrics whose value is one computation shared by the runs of a group (FinalColumns.shared).
SHARED_METRICS = frozenset(c for contribution in final_contributions() for c in contribution.final.shared)
# The analyses' tables final.csv reads, in the contributions' order (final_table's positional tables).
FINAL_TABLES = [name for contribution in final_contributions() for name in contribution.final.tables]


def _read(path: str | Path | None, columns) -> pd.DataFrame | None:
    """The CSV at `path` with `columns`, or None when no path is given (the analysis is not part of the config)."""
    if path is None or path == "":
        return None
    return read_table(path, list(columns))


def _last_rows(rounds: pd.DataFrame) -> pd.DataFrame:
    """Each run's row of its last evaluated round, with the mean seconds per training round."""
    rounds = rounds.sort_values(["run_id", "round"], kind="stable")
    last = rounds.groupby("run_id", sort=False).tail(1).set_index("run_id")
    trained = rounds[rounds["round"] > 0]
    seconds = trained.groupby("run_id")["seconds"].mean()
    status = rounds.groupby("run_id")["status"].agg(lambda s: OK if (s == OK).all() else s[s != OK].iloc[0])
    out = last[[k for k in RUN_KEYS if k != "run_id"]].copy()
    out["final_round"] = last["round"].astype(int)
    out["status"] = status
    # A run with SWA reports its SWA model (Caldarola et al. 2022); rounds.csv keeps both models' metrics.
    swa = last["swa_models"].fillna(0) > 0 if "swa_models" in last.columns else pd.Series(False, index=last.index)
    for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
        out[col] = last[f"swa_{col}"].where(swa, last[col]) if swa.any() else last[col]
    out["seconds_per_round"] = seconds.reindex(out.index)
    # the version that trained the run (a run resumed across versions: the one that finished it)
    out[CODE_VERSION] = last[CODE_VERSION] if CODE_VERSION in last.columns else pd.NA
    return out.reset_index()


def _named_tables(positional: tuple, named: dict) -> dict[str, pd.DataFrame | None]:
    """The analysis tables of final_table by name: positional ones in the order of FINAL_TABLES."""
    if len(positional) > len(FINAL_TABLES):
        raise TypeError(f"final_table takes at most {len(FINAL_TABLES)} tables after rounds "
                        f"({', '.join(FINAL_TABLES)}), got {len(positional)}")
    unknown = [name for name in named if name not in FINAL_TABLES]
    if unknown:
        raise unknown_name_error("final.csv input table", unknown[0], FINAL_TABLES)
    twice = [name for name in FINAL_TABLES[: len(positional)] if name in named]
    if twice:
        raise TypeError(f"final_table got the table {twice[0]!r} both by position and by name")
    return {**dict(zip(FINAL_TABLES, positional, strict=False)), **named}


def final_table(rounds: pd.DataFrame, *tables: pd.DataFrame | None, **named: pd.DataFrame | None) -> pd.DataFrame:
    """One row per run: its final metrics and the analyses' headline numbers (NaN where not computed).

    The analyses' tables are given by name (`barriers=`, `hessian=`, ...: FINAL_TABLES) or by position in that
    order; a table not given is one the config does not make.
    """
    given = _named_tables(tables, named)
    final = _last_rows(rounds)
    runs = final[["run_id", "final_round"]]
    for contribution in final_contributions():
        inputs = {name: given.get(name) for name in contribution.final.tables}
        columns = contribution.function()(runs, **inputs)
        missing = [c for c in ["run_id", *contribution.final.columns] if c not in columns.columns]
        if missing or sorted(columns["run_id"]) != sorted(runs["run_id"]):
            raise ValueError(f"the {contribution.analysis} analysis's {contribution.final.compute} must return one row "
                             f"per run of final.csv with run_id and {list(contribution.final.columns)}; got "
                             f"{len(columns)} rows for {len(runs)} runs" + (f", missing {missing}" if missing else ""))
        final = final.merge(columns[["run_id", *contribution.final.columns]], on="run_id", how="left")
    return final[FINAL_COLUMNS].sort_values(RUN_KEYS[1:], key=_sort_key, kind="stable").reset_index(drop=True)


def _sort_key(col: pd.Series) -> pd.Series:
    """Sort alpha from IID to severe skew, everything else naturally."""
    if col.name == "alpha":
        return col.map(setting_order_key)
    return col


def metric_values(runs: pd.DataFrame, metric: str) -> list[float]:
    """The values of `metric` that statistics over `runs` (a group's runs that did not diverge) are taken over: its
    computed values (NaN, not computed, left out; an infinite one kept: a barrier whose loss overflowed is the worst
    one, and `outputs.stats.t_interval` makes the mean infinite and the spread empty rather than drop it), each
    distinct one once for a metric the runs share (SHARED_METRICS; values within SHARED_RTOL are one): one estimate
    repeated per seed is one value (n = 1: a mean, no std or interval), not n values with zero spread."""
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    if metric in SHARED_METRICS:
        values = _distinct(values)
    return values.tolist()


# Values of a shared metric this close are one estimate computed again (on a card, to rounding: models.device's
# use_precision; float32 Hessian products agree to ~1e-6 relative), not two estimates.
SHARED_RTOL = 1e-5


def _distinct(values: np.ndarray) -> np.ndarray:
    """`values` with each that lies within SHARED_RTOL of an earlier kept one left out, in their order."""
    kept: list[float] = []
    for v in values:
        if not any(np.isclose(v, k, rtol=SHARED_RTOL, atol=0.0) for k in kept):
            kept.append(float(v))
    return np.asarray(kept, dtype=float)


def code_versions(runs: pd.DataFrame) -> str | float:
    """The CODE_VERSIONS cell of a group's `runs` (every one, diverged ones included: they are in n_seeds): their
    distinct code_version values, sorted, joined by VERSION_SEPARATOR, then UNRECORDED where some runs have none
    (trained before the version was recorded, or by a job that could not tell: code_label's own UNRECORDED); NaN, an
    empty cell as read_table reads it back, where no run has one."""
    values = {"" if pd.isna(v) else str(v) for v in runs[CODE_VERSION]}
    recorded = sorted(values - {"", UNRECORDED})
    if not recorded:
        return np.nan
    return VERSION_SEPARATOR.join([*recorded, *([UNRECORDED] if values & {"", UNRECORDED} else [])])


def summary_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per group of runs differing only in seed: n_seeds, n_ok and mean / std / 95% t-interval (the columns
    `<metric>_ci95_*` say the level, so it is not a parameter) per metric, the number of values each metric's
    statistics are over (`<metric>_n`) and the versions that trained the runs (`code_versions`).

    The statistics are over the n_ok runs that did not diverge (`did_not_diverge`). Each metric uses
    those runs' finite values (`metric_values`: a shared metric's distinct ones); a metric with one value has NaN
    std and interval, one with none is NaN throughout (n 0).
    """
    rows = []
    for keys, sub in final.groupby(GROUP_KEYS, sort=False, dropna=False):
        row = dict(zip(GROUP_KEYS, keys, strict=True))
        row["n_seeds"] = int(sub["seed"].nunique())
        ok = did_not_diverge(sub)
        row["n_ok"] = len(ok)
        for metric in SUMMARY_METRICS:
            mean, std, lo, hi, n = t_interval(metric_values(ok, metric), 0.95)
            row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95_low": lo,
                        f"{metric}_ci95_high": hi, f"{metric}_n": n})
        row[CODE_VERSIONS] = code_versions(sub)
        rows.append(row)
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return df.sort_values(GROUP_KEYS, key=_sort_key, kind="stable").reset_index(drop=True)


def final_table_job(rounds: str | Path, output: str | Path, **tables: str | Path | None) -> None:
    """Write results/tables/final.csv from rounds.csv and the analysis tables the config produces (paths by
    their name in FINAL_TABLES: `barriers=`, `hessian=`, ...)."""
    unknown = [name for name in tables if name not in FINAL_TABLES]
    if unknown:
        raise unknown_name_error("final.csv input table", unknown[0], FINAL_TABLES)
    columns = {name: cols for contribution in final_contributions()
               for name, cols in contribution.final.tables.items()}
    df = final_table(read_table(rounds, ROUNDS_COLUMNS),
                     **{name: _read(path, columns[name]) for name, path in tables.items()})
    write_csv(df, output)
    computed = [c for c in CONTRIBUTED_COLUMNS if df[c].notna().any()]
    log.info("final.csv: %d runs; headline numbers present: %s", len(df), ", ".join(computed) or "none")


def _group_name(row: pd.Series) -> str:
    """A group of summary.csv in one word: its runs' id with every seed (`.../part~1.0/seed~*`)."""
    return RUN_ID.format(**{**row[GROUP_KEYS].to_dict(), "alpha": format_setting(row["alpha"]),
                            "participation": format_fraction(row["participation"]), "seed": "*"})


def summary_table_job(final: str | Path, output: str | Path) -> None:
    """Write results/tables/summary.csv from final.csv; warn of the groups whose runs more than one version trained."""
    df = summary_table(read_table(final, FINAL_COLUMNS, numeric=FINAL_NUMERIC))
    write_csv(df, output)
    log.info("summary.csv: %d groups from %d seeds at most", len(df), int(df["n_seeds"].max()) if len(df) else 0)
    mixed = df[df[CODE_VERSIONS].map(lambda v: isinstance(v, str) and VERSION_SEPARATOR in v)]
    if len(mixed):
        log.warning("summary.csv: the statistics of %d group(s) are over runs of more than one fedscape version "
                    "(column %s; rerun the older seeds to compare like with like): %s", len(mixed), CODE_VERSIONS,
                    ", ".join(f"{_group_name(row)} ({row[CODE_VERSIONS]})" for _, row in mixed.iterrows()))
