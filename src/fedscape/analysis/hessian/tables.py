"""The Hessian table job: per-job tables gathered into hessian.csv and hessian_clients.csv (torch-free)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fedscape.analysis.hessian.definitions import INTEGER_COLUMNS
from fedscape.core.io import write_csv
from fedscape.core.paths import run_of_path
from fedscape.core.runs import OK
from fedscape.outputs.tables import read_table

log = logging.getLogger("fedscape.hessian")


def gather_tables(inputs: list[str | Path], output: str | Path, columns: list[str]) -> None:
    """Concatenate per-job CSVs with exactly `columns` (in order); a diverged job's NaN rows leave the
    integer columns integers (empty where NaN)."""
    # per-job tables written before the `status` column existed lack it: every such job was computed
    frames = [read_table(p, [c for c in columns if c != "status"], expect=run_of_path(p)) for p in inputs]
    frames = [f if "status" in f.columns or "status" not in columns else f.assign(status=OK) for f in frames]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for col in INTEGER_COLUMNS:
        if col in df.columns and len(df):
            df[col] = df[col].astype("Int64")
    if "status" in df.columns:
        skipped = df.loc[df["status"] != OK, ["run_id", "round", "status"]].drop_duplicates()
        for r in skipped.itertuples(index=False):
            log.warning("run %s, round %s: not computed (status %r): NaN in %s", r.run_id, r.round, r.status, output)
    write_csv(df[columns], output)
