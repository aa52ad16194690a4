"""The barrier table jobs: interpolation curves gathered, and the barrier of each curve (torch-free)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedscape.analysis.barriers.definitions import BARRIER_COLUMNS, INTERPOLATION_COLUMNS, linear_barrier
from fedscape.core.io import write_csv
from fedscape.outputs.tables import read_table


def barriers_from_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """One barrier row per (pair, aligned, split): max over t of the value minus the straight line."""
    rows = []
    for (pair, aligned, split), sub in curves.groupby(["pair_id", "aligned", "split"], sort=False):
        rows.append({"pair_id": pair, "run_a": sub["run_a"].iloc[0], "run_b": sub["run_b"].iloc[0], "split": split,
                     "barrier_loss": linear_barrier(sub["t"], sub["loss"]),
                     "barrier_error": linear_barrier(sub["t"], sub["error"]), "aligned": bool(aligned)})
    return pd.DataFrame(rows, columns=BARRIER_COLUMNS)


def interpolation_tables(inputs: list[str | Path], out_interpolation: str | Path, out_barriers: str | Path) -> None:
    """Concatenate the curves into interpolation.csv and compute barriers.csv from them."""
    # curves written before alignment existed have no `aligned` column: they are unaligned
    required = [c for c in INTERPOLATION_COLUMNS if c != "aligned"]
    frames = [df if "aligned" in df.columns else df.assign(aligned=False)
              for df in (read_table(p, required) for p in inputs)]
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INTERPOLATION_COLUMNS)
    write_csv(curves[INTERPOLATION_COLUMNS], out_interpolation)
    write_csv(barriers_from_curves(curves), out_barriers)
