"""Gathering per-job CSV tables into the workflow's tables."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedscape.core.io import remake_hint, write_csv


class TableError(ValueError):
    """A table that cannot be read or does not have the columns its reader needs."""


def read_table(path: str | Path, columns: Iterable[str] = (), **read_options) -> pd.DataFrame:
    """The CSV table at `path`, which must have `columns`: one line naming the file, the columns expected and
    the ones found, where pandas would raise a bare KeyError later (or fill the column with empty cells)."""
    try:
        df = pd.read_csv(path, **read_options)
    except FileNotFoundError:
        raise TableError(f"{path} does not exist") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a CSV table ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                         f"{remake_hint(path)}") from None
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: expected the columns {columns}, found {list(df.columns)} (missing {missing}); "
                         f"{remake_hint(path)}")
    return df


def concat_tables(inputs: list[str | Path], output: str | Path, columns: list[str] | None = None,
                  optional: list[str] | tuple[str, ...] = ()) -> None:
    """Concatenate per-job CSVs into one table (`columns` kept in this order when given).

    With `columns`, every input must have them all: pandas would otherwise fill a missing column with
    empty cells, and the tables built on it would be silently wrong. (Without, inputs may differ, e.g.
    the class columns of the partitions of datasets with different class counts.) The `optional` ones
    among `columns` are those only some jobs write (the SWA model's metrics of runs with SWA): empty elsewhere.
    """
    required = [c for c in columns or () if c not in optional]
    frames = [read_table(p, required) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
    if columns is not None:
        df = df.reindex(columns=columns)
    write_csv(df, output)
