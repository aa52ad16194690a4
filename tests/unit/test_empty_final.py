"""A final.csv of its header alone (a valid table: a user's hand-made file, a grid that made no row): each report job
that reads it writes its table's header alone, or the figure that says there are no runs, as it does for a dataset and
model without rows (fedscape.outputs.tables.read_table reads such a table's numeric columns as numbers)."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from fedscape.outputs.tables import TableError, read_table
from fedscape.report.figure_kinds import ACCURACY_KINDS, accuracy_figure
from fedscape.report.figures import accuracy_figure_job
from fedscape.report.paired import PAIRED_COLUMNS, paired_differences_table_job
from fedscape.report.summary import FINAL_COLUMNS, SUMMARY_COLUMNS, summary_table_job

TABLES = {"summary": (summary_table_job, SUMMARY_COLUMNS), "paired_differences": (paired_differences_table_job,
                                                                                 PAIRED_COLUMNS)}


@pytest.fixture
def header_only(tmp_path):
    """final.csv with FINAL_COLUMNS and no row."""
    path = tmp_path / "final.csv"
    pd.DataFrame(columns=FINAL_COLUMNS).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("table", list(TABLES))
def test_a_table_of_a_header_only_final_csv_is_its_header_alone(tmp_path, header_only, table):
    # Prepare
    job, columns = TABLES[table]
    output = tmp_path / f"{table}.csv"

    # Execute
    job(header_only, output)

    # Assert: the table's columns, no row
    assert output.read_text() == ",".join(columns) + "\n"


@pytest.mark.parametrize("kind", ACCURACY_KINDS)
def test_a_figure_of_a_header_only_final_csv_says_there_are_no_runs(tmp_path, monkeypatch, header_only, kind):
    # Prepare: what the figure's module asks its empty figure to say
    said = []
    module = sys.modules[accuracy_figure(kind)[1].__module__]
    real = module.empty_figure
    monkeypatch.setattr(module, "empty_figure", lambda message, *args, **kwargs:
                        said.append(message) or real(message, *args, **kwargs))
    base = tmp_path / kind

    # Execute
    accuracy_figure_job(header_only, kind, "digits", "cnn_small", base, work={})

    # Assert: the figure of a dataset and model without runs, and its data's header alone
    assert len(said) == 1 and said[0].endswith("runs of digits / cnn_small in final.csv")
    assert all(base.with_suffix(suffix).stat().st_size > 0 for suffix in (".png", ".pdf"))
    assert pd.read_csv(base.with_suffix(".csv")).empty


@pytest.mark.parametrize(("cells", "error"), [
    ([], None),  # the header alone: its numeric columns are numbers, of no rows
    (["1", "ok"], None),
    (["x", "ok"], r"t\.csv, line 2: n is 'x', not a number"),
])
def test_read_table_takes_a_header_alone_and_refuses_text_in_a_numeric_column(tmp_path, cells, error):
    # Prepare
    path = tmp_path / "t.csv"
    path.write_text("n,status\n" + (",".join(cells) + "\n" if cells else ""))

    # Execute / Assert
    if error is not None:
        with pytest.raises(TableError, match=error):
            read_table(path, ["n", "status"], numeric=["n"])
        return
    df = read_table(path, ["n", "status"], numeric=["n"])
    assert len(df) == len(cells) // 2 and pd.api.types.is_numeric_dtype(df["n"])

