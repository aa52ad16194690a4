"""The Hessian table job: per-job tables gathered into hessian.csv and hessian_clients.csv (torch-free)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fedscape.analysis.hessian.definitions import INTEGER_COLUMNS
from fedscape.core.io import write_csv
from fedscape.core.runs import OK

log = logging.getLogger("fedscape.hessian")


def gather_tables(inputs: list[str | Path], output: str | Path, columns: list[str]) -> None:
    """Concatenate per-job CSVs with exactly `columns` (in order); a diverged job's NaN rows leave the
    integer columns integers (empty where NaN)."""
    frames = [pd.read_csv(p) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if "status" in columns and "status" not in df.columns and len(df):
        df["status"] = OK  # per-job tables written before the column existed: every job was computed
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"per-job Hessian tables lack columns {missing}; rerun the hessian jobs")
    for col in INTEGER_COLUMNS:
        if col in df.columns and len(df):
            df[col] = df[col].astype("Int64")
    if "status" in df.columns:
        skipped = df.loc[df["status"] != OK, ["run_id", "round", "status"]].drop_duplicates()
        for r in skipped.itertuples(index=False):
            log.warning("run %s, round %s: not computed (status %r): NaN in %s", r.run_id, r.round, r.status, output)
    write_csv(df[columns], output)
