"""Gathering per-job CSV tables into the workflow's tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedscape.core.io import write_csv


def concat_tables(inputs: list[str | Path], output: str | Path, columns: list[str] | None = None) -> None:
    """Concatenate per-job CSVs into one table (`columns` kept in this order when given)."""
    frames = [pd.read_csv(p) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
    if columns is not None:
        df = df[columns]
    write_csv(df, output)
