"""Gathering per-job CSV tables into the workflow's tables."""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import pandas as pd

from fedscape.core.io import remake_hint, write_csv
from fedscape.core.paths import run_of_path
from fedscape.core.provenance import belongs_problem, csv_cut_problem
from fedscape.fl.settings import NUMERIC_ROUND_METRICS
from fedscape.fl.swa import SWA_BN_COLUMN
from fedscape.models.specs import BN_STATS_BASELINE


class TableError(ValueError):
    """A table that cannot be read or does not have the columns its reader needs."""


# A table cell for what a result made before it was recorded cannot say (how a run trained, in which precision, on
# which card).
UNRECORDED = "unrecorded"


def read_table(path: str | Path, columns: Iterable[str] = (), numeric: Iterable[str] = (),
               expect: Mapping[str, object] | None = None, **read_options) -> pd.DataFrame:
    """The CSV table at `path`, read strictly; a TableError names the file (and the line) and the fix:

    - the file must be whole: every line ends with a newline and has as many fields as the header (a file cut
      mid-line, as a kill or a full disk leaves it, would otherwise give a short last row that pandas pads with
      empty cells, or a cut-off number that still parses);
    - it must have `columns` (pandas would raise a bare KeyError later, or fill the column with empty cells);
    - the `numeric` columns must hold numbers (empty cells, pandas' NaN, are allowed); a table of its header alone is
      valid (a hand-made file, a grid that made no row): its readers make their own tables' headers alone, or say
      there is nothing to draw;
    - with `expect` ({column: value}), every row must hold that value: a per-run table (a run's metrics.csv)
      records its `run_id`, so another run's file put in its place is caught (`core.provenance`).
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TableError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a CSV table ({type(exc).__name__}: {exc}); {remake_hint(path)}") from None
    _check_whole(path, text)
    try:
        df = pd.read_csv(io.StringIO(text), **read_options)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise TableError(f"{path}: not a CSV table ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                         f"{remake_hint(path)}") from None
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: expected the columns {columns}, found {list(df.columns)} (missing {missing}); "
                         f"{remake_hint(path)}")
    for column in numeric:
        if column in df.columns and not pd.api.types.is_numeric_dtype(df[column]):
            values = pd.to_numeric(df[column], errors="coerce")
            if df.empty:  # a table of its header alone, whose columns pandas reads as text: numbers of no rows
                df[column] = values
                continue
            bad = int((values.isna() & df[column].notna()).to_numpy().argmax())
            raise TableError(f"{path}, line {bad + 2}: {column} is {df[column].iloc[bad]!r}, not a number; "
                             f"{remake_hint(path)}")
    for column, value in (expect or {}).items():
        found = df[column].astype(str) if column in df.columns else pd.Series([], dtype=str)
        wrong = (found != str(value)).to_numpy()
        if wrong.any():
            line = int(wrong.argmax())
            problem = belongs_problem(f"{path}, line {line + 2}", f"a table of {column} {value}", {column: str(value)},
                                      {column: found.iloc[line]})
            raise TableError(f"{problem}; {remake_hint(path)}")
    return df


def _check_whole(path: str | Path, text: str) -> None:
    """TableError naming the first line of `text` that is cut short or has another field count than the header."""
    problem = csv_cut_problem(path, text)
    if problem is not None:
        raise TableError(f"{problem}; {remake_hint(path)}")


def concat_tables(inputs: list[str | Path], output: str | Path, columns: list[str] | None = None,
                  optional: list[str] | tuple[str, ...] = (), bn_models: Collection[str] = ()) -> None:
    """Concatenate per-job CSVs into one table (`columns` kept in this order when given).

    With `columns`, every input must have them all: pandas would otherwise fill a missing column with
    empty cells, and the tables built on it would be silently wrong. (Without, inputs may differ, e.g.
    the class columns of the partitions of datasets with different class counts.) The `optional` ones
    among `columns` are those only some jobs write (the SWA model's metrics of runs with SWA): empty elsewhere.
    The SWA model's `swa_bn_stats` of a run with SWA from before the column is its baseline, `stored`, where the
    run's model is one of `bn_models` (those with batch norm); empty for the others, which have no statistics to name.
    """
    required = [c for c in columns or () if c not in optional]
    # a run's own table (its metrics.csv) holds that run's rows only: another run's file in its place is refused
    # and its metrics are numbers: a damaged cell is caught here, at the file it is in
    frames = [read_table(p, required, numeric=NUMERIC_ROUND_METRICS, expect=run_of_path(p)) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
    if columns is not None:
        df = df.reindex(columns=columns)
    if SWA_BN_COLUMN in df.columns and "swa_models" in df.columns:
        before = df["swa_models"].notna() & df[SWA_BN_COLUMN].isna() & df["model"].isin(list(bn_models))
        df.loc[before, SWA_BN_COLUMN] = BN_STATS_BASELINE
    write_csv(df, output)


def partitions_table_job(inputs: list[str | Path], output: str | Path) -> None:
    """partitions.csv: every client split's label counts (partitions of datasets with other class counts have other
    class columns, so the columns are not fixed)."""
    concat_tables(inputs, output)


def rounds_table_job(inputs: list[str | Path], output: str | Path, columns: list[str],
                     optional: list[str] | tuple[str, ...], bn_models: list[str]) -> None:
    """rounds.csv: every run's metrics.csv with exactly `columns`, the `optional` ones empty where a run has none;
    `bn_models` are the models with batch norm (`plan.tables.swa_bn_models`), whose SWA runs name their statistics."""
    concat_tables(inputs, output, columns, optional, bn_models)
