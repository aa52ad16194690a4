"""The barrier table jobs: interpolation curves gathered, the barrier of each curve, and the layer-wise tables
(torch-free)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.barriers.definitions import (
    BARRIER_COLUMNS,
    BARRIER_SPLIT,
    BN_STATS_COLUMN,
    CONSECUTIVE_COLUMNS,
    END_COLUMNS,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    LINEAR,
    RATIO_COLUMNS,
    RATIO_FLOORS,
    barrier_over_ends,
    barrier_ratio,
    format_averaged,
    grid_t,
    linear_barrier,
    mode_entries,
    parse_averaged,
)
from fedscape.core.io import remake_hint, write_csv
from fedscape.core.runs import RUN_FIELDS, parse_run_id
from fedscape.core.setting import is_iid
from fedscape.models.specs import BN_STATS_BASELINE
from fedscape.outputs.tables import TableError, read_table


def barriers_from_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """One barrier row per (pair, path, aligned, split): max over t of the value minus the straight line between
    its ends (the same definition along the Bezier curve as along the segment; Garipov et al. 2018), with the
    batch-norm statistics its curve was evaluated with (one value per pair: its job's)."""
    rows = []
    for (pair, path, aligned, split), sub in curves.groupby(["pair_id", "path", "aligned", "split"], sort=False):
        barrier = {value: linear_barrier(sub["t"], sub[value]) for value in ("loss", "error")}
        ends = sub.sort_values("t").iloc[[0, -1]]
        rows.append({"pair_id": pair, "run_a": sub["run_a"].iloc[0], "run_b": sub["run_b"].iloc[0], "split": split,
                     "barrier_loss": barrier["loss"], "barrier_error": barrier["error"], "aligned": bool(aligned),
                     "path": path, BN_STATS_COLUMN: sub[BN_STATS_COLUMN].iloc[0],
                     **{f"barrier_{value}_ratio": barrier_ratio(barrier[value], float(ends[value].mean()),
                                                                RATIO_FLOORS[value])
                        for value in ("loss", "error")}})
    return pd.DataFrame(rows, columns=BARRIER_COLUMNS)


def interpolation_tables_job(inputs: list[str | Path], out_interpolation: str | Path, out_barriers: str | Path) -> None:
    """Concatenate the curves into interpolation.csv and compute barriers.csv from them; t as the grid reads
    (`grid_t`), also in curves written before their jobs rounded it."""
    # curves written before alignment (Bezier curves, bn_stats) existed have no `aligned` (`path`, `bn_stats`)
    # column: unaligned (linear, evaluated with the stored statistics)
    fills = (("aligned", False), ("path", LINEAR), (BN_STATS_COLUMN, BN_STATS_BASELINE))
    required = [c for c in INTERPOLATION_COLUMNS if c not in dict(fills)]
    frames = [df.assign(**{column: value for column, value in fills if column not in df.columns},
                        t=df["t"].map(grid_t))
              for df in (read_table(p, required) for p in inputs)]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INTERPOLATION_COLUMNS)
    write_csv(curves[INTERPOLATION_COLUMNS], out_interpolation)
    write_csv(barriers_from_curves(curves), out_barriers)


def _older_layer_rows(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Per-job layer barriers written before `aligned`, `averaged` and `bn_stats` existed: unaligned, the averaged
    layers of their entry (their modes were single, shallow and deep), evaluated with the stored statistics; before
    the ratios and the ends' values: NaN there."""
    if "aligned" not in df.columns:
        df = df.assign(aligned=False)
    df = df.assign(**{c: math.nan for c in (*RATIO_COLUMNS, *END_COLUMNS) if c not in df.columns})
    if BN_STATS_COLUMN not in df.columns:
        df = df.assign(**{BN_STATS_COLUMN: BN_STATS_BASELINE})
    if "averaged" not in df.columns:
        num_layers = df["layer_index"].nunique()
        groups = {(mode, i): format_averaged(group) for mode in ("single", "shallow", "deep")
                  for i, group in mode_entries(num_layers, mode)}
        unknown = sorted(set(df["mode"]) - {"single", "shallow", "deep"})
        if unknown:
            raise TableError(f"{path}: modes {unknown} without an `averaged` column; {remake_hint(path)}")
        df = df.assign(averaged=[groups[(m, int(i))] for m, i in zip(df["mode"], df["layer_index"], strict=True)])
    return df


def _over_ends(df: pd.DataFrame) -> pd.DataFrame:
    """Per-job layer barriers as the jobs compute them now (`barrier_over_ends`, `barrier_ratio`) where an older job
    wrote another rule's: over an end whose loss overflowed it wrote a barrier of -inf ("infinitely better") or NaN,
    a +inf barrier over finite ends got a NaN ratio, and a ratio over ends' mean below its RATIO_FLOORS was written.
    A row whose barrier or ends' mean (END_COLUMNS) is not finite is computed again, the mixed models' value being the
    barrier plus a finite mean (+inf there); a -inf barrier, a value >= 0 minus an infinite mean, is NaN also where
    the ends were not recorded; a row whose ends' mean is below the floor gets its ratio again. Every other row
    already holds the rule's numbers and is kept as written."""
    df = df.copy()
    for value in ("loss", "error"):
        barrier = df[f"barrier_{value}"].astype(float)
        mean = 0.5 * (df[f"end_{value}_a"].astype(float) + df[f"end_{value}_b"].astype(float))  # the job's base
        mean = mean.mask(mean.isna() & (barrier == -math.inf), math.inf)
        redo = mean.notna() & ~(np.isfinite(mean) & np.isfinite(barrier))
        again = [barrier_over_ends(b + m, m) for b, m in zip(barrier[redo], mean[redo], strict=True)]
        df.loc[redo, f"barrier_{value}"] = again
        floor = RATIO_FLOORS[value]
        ratio = redo | (mean.abs() < floor)  # NaN means compare False: rows without recorded ends keep theirs
        df.loc[ratio, f"barrier_{value}_ratio"] = [barrier_ratio(b, m, floor) for b, m in zip(
            df.loc[ratio, f"barrier_{value}"].astype(float), mean[ratio], strict=True)]
    return df


def layer_barrier_tables_job(barriers: list[str | Path], distances: list[str | Path], out_barriers: str | Path,
                             out_distances: str | Path) -> None:
    """Concatenate the per-job layer barriers and distances into layer_barriers.csv and layer_distances.csv; files
    from before alignment, the Fig. 4 modes and bn_stats read as unaligned, with their averaged layers filled in,
    evaluated with the stored statistics; barriers over an end that overflowed as the jobs compute them now
    (`_over_ends`)."""
    frames = [_older_layer_rows(pd.read_csv(p), p) for p in barriers]
    dist = [df if "aligned" in df.columns else df.assign(aligned=False) for df in map(pd.read_csv, distances)]
    checks = ((barriers, frames, LAYER_BARRIER_COLUMNS), (distances, dist, LAYER_DISTANCE_COLUMNS))
    for paths, tables, columns in checks:
        for path, df in zip(paths, tables, strict=True):
            missing = [c for c in columns if c not in df.columns]
            if missing:
                raise TableError(f"{path}: expected the columns {columns}, found {list(df.columns)} (missing "
                                 f"{missing}); {remake_hint(path)}")
    frames = [_over_ends(df) for df in frames]
    for tables, columns, output in ((frames, LAYER_BARRIER_COLUMNS, out_barriers),
                                    (dist, LAYER_DISTANCE_COLUMNS, out_distances)):
        df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
        write_csv(df[columns], output)


def consecutive_table(barriers: pd.DataFrame, pairs: list[str]) -> pd.DataFrame:
    """layer_consecutive.csv from layer_barriers.csv: for each consecutive-round pair of `pairs`, aligned and split,
    the number of rounds t compared and the share of them whose midpoint (w_t + w_{t+1}) / 2 has a strictly lower
    loss (error) than both w_t and w_{t+1} (Adilova et al. 2023, Sec. 2.1), and the mean full-model barrier. The
    midpoint is the row of an averaging mode whose `averaged` holds every layer; rounds not computed (NaN) are left
    out of the counts, and a +inf barrier counts (its midpoint is not better, and the mean barrier is +inf)."""
    rows = []
    sub = barriers[barriers["pair"].isin(pairs) & (barriers["mode"] != "random_direction")]
    num_layers = sub.groupby("pair")["layer_index"].max() + 1
    is_full = pd.Series([len(parse_averaged(cell)) == num_layers[p]
                         for p, cell in zip(sub["pair"], sub["averaged"], strict=True)], index=sub.index, dtype=bool)
    full = sub[is_full].drop_duplicates(["pair", "round", "aligned", "split"])
    for pair in pairs:
        for (aligned, split), g in full[full["pair"] == pair].groupby(["aligned", "split"], sort=False):
            run_id = g["run_id"].iloc[0]  # before the NaN rows go: a pair none of whose rounds was computed keeps it
            g = g.dropna(subset=["barrier_loss", "barrier_error", *END_COLUMNS])
            better = {}
            for value in ("loss", "error"):
                ends = g[[f"end_{value}_a", f"end_{value}_b"]]
                midpoint = g[f"barrier_{value}"] + ends.mean(axis=1)
                better[value] = float((midpoint < ends.min(axis=1)).mean()) if len(g) else math.nan
            rows.append({"pair": pair, "run_id": run_id,
                         "aligned": bool(aligned), "split": split, "rounds": len(g),
                         "midpoint_better_loss": better["loss"], "midpoint_better_error": better["error"],
                         "mean_barrier_loss": float(g["barrier_loss"].mean()) if len(g) else math.nan,
                         "mean_barrier_error": float(g["barrier_error"].mean()) if len(g) else math.nan})
    return pd.DataFrame(rows, columns=CONSECUTIVE_COLUMNS)


def layer_consecutive_table_job(table: str | Path, pairs: list[str], output: str | Path) -> None:
    """layer_consecutive.csv (`consecutive_table`) from the gathered layer_barriers.csv."""
    barriers = read_table(table, ["run_id", "round", "pair", "mode", "layer_index", "split", "barrier_loss",
                                  "barrier_error", "aligned", "averaged", *END_COLUMNS])
    write_csv(consecutive_table(barriers, pairs), output)


def barrier_to_iid_columns(final: pd.DataFrame, barriers: pd.DataFrame | None = None,
                           interpolation: pd.DataFrame | None = None) -> pd.DataFrame:
    """final.csv's barrier_to_iid_{loss,error} per run of `final` (run_id, final_round): the linear barrier of the
    pairs joining the run's final model to the final model of an IID run that differs from it only in alpha (Li
    et al. 2022, Fig. 3c; same seed preferred, else the mean over the seeds, of the computed values: `_mean_to_iid`),
    of the models as trained (not aligned) along the straight line (not the Bezier curve). Without interpolation.csv
    every pair counts as final-to-final."""
    out = pd.DataFrame({"run_id": final["run_id"], "barrier_to_iid_loss": math.nan, "barrier_to_iid_error": math.nan})
    if barriers is None or barriers.empty:
        return out
    final_round = dict(zip(final["run_id"], final["final_round"], strict=True))
    rounds = {}
    if interpolation is not None and not interpolation.empty:
        for pair, sub in interpolation.groupby("pair_id"):
            rounds[pair] = (int(sub["round_a"].iloc[0]), int(sub["round_b"].iloc[0]))
    rows = barriers[barriers["split"] == BARRIER_SPLIT]
    if "aligned" in rows.columns:  # the barrier to IID is that of the models as trained
        rows = rows[~rows["aligned"].astype(bool)]
    if "path" in rows.columns:  # and along the straight line (not the trained Bezier curve)
        rows = rows[rows["path"].astype(str) == LINEAR]
    fields = {rid: parse_run_id(rid) for rid in set(rows["run_a"]) | set(rows["run_b"]) | set(final["run_id"])}
    same = [k for k in RUN_FIELDS if k not in ("seed", "alpha")]
    matches: dict[str, list[tuple[bool, float, float]]] = {}
    for r in rows.itertuples(index=False):
        if r.run_a == r.run_b:
            continue
        ra, rb = rounds.get(r.pair_id, (None, None))
        if interpolation is not None and (ra != final_round.get(r.run_a) or rb != final_round.get(r.run_b)):
            continue  # not a final-to-final pair (e.g. round 1 vs final of one run)
        # an IID-vs-IID pair (the pilot study's control) is one measurement: it counts for its first end alone, so
        # that summary.csv's IID row does not take it twice (two equal values: a zero-width interval)
        control = is_iid(fields[r.run_a]["alpha"]) and is_iid(fields[r.run_b]["alpha"])
        for run, other in ((r.run_a, r.run_b),) if control else ((r.run_a, r.run_b), (r.run_b, r.run_a)):
            fr, fo = fields[run], fields[other]
            if run not in final_round or not is_iid(fo["alpha"]):
                continue
            if any(fr.get(k) != fo.get(k) for k in same):
                continue
            matches.setdefault(run, []).append((fr["seed"] == fo["seed"], r.barrier_loss, r.barrier_error))
    for run, found in matches.items():
        i = out.index[out["run_id"] == run][0]
        out.loc[i, "barrier_to_iid_loss"] = _mean_to_iid(found, 1)
        out.loc[i, "barrier_to_iid_error"] = _mean_to_iid(found, 2)
    return out


def _mean_to_iid(found: list[tuple[bool, float, float]], k: int) -> float:
    """The barrier to IID (value `k` of the (same seed, loss, error) matches of a run): the mean of the computed (not
    NaN) values of the same-seed pairs, else of every IID seed's pair, NaN where none was computed.

    A pair with a diverged end is NaN (not computed): the run's own divergence makes every pair NaN, so the value stays
    NaN; a diverged IID partner is left out, as every statistic over seeds leaves a diverged run out, so one diverged
    IID seed neither empties the mean over the others nor, as the same-seed partner, the run's value. A +inf barrier
    (a loss that overflowed between two usable ends: `linear_barrier`) was computed and is the worst there is: it
    stays, and makes the mean +inf rather than leaving it out.
    """
    for chosen in ([m for m in found if m[0]], found):
        values = [float(m[k]) for m in chosen if not math.isnan(float(m[k]))]
        if values:
            return sum(values) / len(values)
    return math.nan
