"""Gathering per-job CSV tables into the workflow's tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedscape.core.io import write_csv


class TableError(ValueError):
    """A per-job table that does not have the columns the gathered table needs."""


def concat_tables(inputs: list[str | Path], output: str | Path, columns: list[str] | None = None,
                  optional: list[str] | tuple[str, ...] = ()) -> None:
    """Concatenate per-job CSVs into one table (`columns` kept in this order when given).

    With `columns`, every input must have them all: pandas would otherwise fill a missing column with
    empty cells, and the tables built on it would be silently wrong. (Without, inputs may differ, e.g.
    the class columns of the partitions of datasets with different class counts.) The `optional` ones
    among `columns` are those only some jobs write (the SWA model's metrics of runs with SWA): empty elsewhere.
    """
    frames = [pd.read_csv(p) for p in inputs]
    for path, frame in zip(inputs, frames, strict=True):
        missing = [c for c in columns or [] if c not in frame.columns and c not in optional]
        if missing:
            raise TableError(f"{path}: expected the columns {list(columns)}, found {list(frame.columns)} "
                             f"(missing {missing}); delete it and rerun the workflow so that its job writes it again")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
    if columns is not None:
        df = df.reindex(columns=columns)
    write_csv(df, output)
