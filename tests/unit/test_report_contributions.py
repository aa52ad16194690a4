"""The analyses' contributions to final.csv: the exact column lists (a contract with users' scripts), each
analysis's columns computed from its tables, the tables planning asks for, and final.csv / summary.csv equal
to those made before the analyses declared their columns (fixtures in tests/data/report/, see its README)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
from helpers.configs import SCHEMA, TINY

from fedscape.analysis.barriers.definitions import BARRIER_COLUMNS, INTERPOLATION_COLUMNS
from fedscape.analysis.contributions import Contribution, FinalColumns, final_contributions
from fedscape.analysis.hessian.definitions import CLIENT_COLUMNS, hessian_columns
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.plan import report as report_plan
from fedscape.plan.workflow import check_config
from fedscape.report.summary import (
    FINAL_COLUMNS,
    FINAL_TABLES,
    SUMMARY_COLUMNS,
    SUMMARY_METRICS,
    final_table,
    final_table_job,
    summary_table_job,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "report"
CASES = ("tiny", "pairs")
# Every column each gathered table has (the columns a contribution reads must be among them).
TABLE_COLUMNS = {"barriers": BARRIER_COLUMNS, "interpolation": INTERPOLATION_COLUMNS,
                 "hessian": hessian_columns(2), "hessian_clients": CLIENT_COLUMNS}


# -- the contract: the exact lists ----------------------------------------------------------------------
def test_final_columns_are_exactly_the_published_list():
    assert FINAL_COLUMNS == [
        "run_id", "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "seed",
        "final_round", "status", "train_loss", "train_acc", "test_loss", "test_acc", "seconds_per_round",
        "barrier_to_iid_loss", "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init",
        "hn", "hd", "code_version",
    ]


def test_summary_columns_are_exactly_the_published_list():
    metrics = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds_per_round", "barrier_to_iid_loss",
               "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd"]

    assert SUMMARY_METRICS == metrics
    # each metric's number of values, then the versions that trained the group, after every earlier column: none of
    # those moved
    assert SUMMARY_COLUMNS == [
        "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "n_seeds", "n_ok",
        *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95_low", "ci95_high")],
        *[f"{m}_n" for m in metrics], "code_versions",
    ]


def test_the_contributions_are_the_barriers_then_the_hessian_with_their_tables():
    assert [(c.analysis, c.final.columns, tuple(c.final.tables)) for c in final_contributions()] == [
        ("barriers", ("barrier_to_iid_loss", "barrier_to_iid_error"), ("barriers", "interpolation")),
        ("hessian", ("lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd"),
         ("hessian", "hessian_clients")),
    ]
    assert FINAL_TABLES == ["barriers", "interpolation", "hessian", "hessian_clients"]
    # the Hessian of the initial model is one estimate for every seed of a group
    assert [c.final.shared for c in final_contributions()] == [(), ("lambda_max_init", "trace_init")]


def test_a_report_refuses_a_shared_or_summarised_column_it_does_not_have():
    with pytest.raises(ValueError, match=r"not \['trace_init'\]"):
        FinalColumns(columns=("trace",), tables={}, compute="tables:f", shared=("trace_init",))
    with pytest.raises(ValueError, match=r"not \['hd'\]"):
        FinalColumns(columns=("trace",), tables={}, compute="tables:f", summarised=("hd",))


@pytest.mark.parametrize("contribution", final_contributions(), ids=lambda c: c.analysis)
def test_a_contribution_reads_only_columns_its_tables_have(contribution):
    for table, columns in contribution.final.tables.items():
        assert set(columns) <= set(TABLE_COLUMNS[table]), table
    assert set(contribution.summarised) <= set(contribution.final.columns)


# -- each contribution's columns from its tables -----------------------------------------------------------
def _fixture_tables(case: str) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(FIXTURES / case / f"{name}.csv") for name in FINAL_TABLES}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("contribution", final_contributions(), ids=lambda c: c.analysis)
def test_a_contribution_computes_its_columns_from_its_tables(contribution, case):
    # Prepare: the runs of the fixture with their final rounds, and the final.csv made before the refactor
    expected = pd.read_csv(FIXTURES / case / "final.csv")
    tables = _fixture_tables(case)

    # Execute
    columns = contribution.function()(expected[["run_id", "final_round"]],
                                      **{name: tables[name] for name in contribution.final.tables})

    # Assert: one row per run, exactly run_id and the declared columns, the values of the old final.csv
    assert list(columns.columns) == ["run_id", *contribution.final.columns]
    assert columns["run_id"].tolist() == expected["run_id"].tolist()
    pd.testing.assert_frame_equal(columns.reset_index(drop=True),
                                  expected[["run_id", *contribution.final.columns]], check_dtype=False)


@pytest.mark.parametrize("contribution", final_contributions(), ids=lambda c: c.analysis)
def test_a_contribution_without_its_tables_is_nan(contribution):
    runs = pd.DataFrame({"run_id": ["a", "b"], "final_round": [3, 5]})

    columns = contribution.function()(runs)

    assert columns["run_id"].tolist() == ["a", "b"]
    assert columns[list(contribution.final.columns)].isna().all().all()


# -- final.csv and summary.csv as before ---------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_final_and_summary_equal_those_made_before(tmp_path, case):
    # Prepare
    inputs = {name: FIXTURES / case / f"{name}.csv" for name in FINAL_TABLES}

    # Execute
    final_table_job(FIXTURES / case / "rounds.csv", tmp_path / "final.csv", **inputs)
    summary_table_job(tmp_path / "final.csv", tmp_path / "summary.csv")

    # Assert: the same files, byte for byte; summary.csv's since appended columns (each metric's number of
    # values, the code versions) aside (no quoted fields in these files: a line's fields are its commas' pieces)
    assert (tmp_path / "final.csv").read_text() == (FIXTURES / case / "final.csv").read_text()
    before = (FIXTURES / case / "summary.csv").read_text().splitlines()
    now = (tmp_path / "summary.csv").read_text().splitlines()
    width = before[0].count(",") + 1
    assert [",".join(line.split(",")[:width]) for line in now] == before
    appended = pd.read_csv(tmp_path / "summary.csv").iloc[:, width:]
    assert list(appended.columns) == [*[f"{m}_n" for m in SUMMARY_METRICS], "code_versions"]
    summary = pd.read_csv(FIXTURES / case / "summary.csv")
    for metric in SUMMARY_METRICS:  # as many values as the mean is over: one without a std, none without a mean
        n = appended[f"{metric}_n"]
        assert (n[summary[f"{metric}_mean"].isna()] == 0).all() and (n[summary[f"{metric}_std"].notna()] >= 2).all()
        assert (n[summary[f"{metric}_mean"].notna() & summary[f"{metric}_std"].isna()] == 1).all()


def test_final_table_takes_tables_by_position_in_the_contributions_order():
    rounds = pd.read_csv(FIXTURES / "pairs" / "rounds.csv")
    tables = _fixture_tables("pairs")

    by_position = final_table(rounds, *[tables[name] for name in FINAL_TABLES])
    by_name = final_table(rounds, **tables)

    pd.testing.assert_frame_equal(by_position, by_name)
    assert by_name["barrier_to_iid_loss"].notna().any() and by_name["hn"].notna().any()


def test_an_unknown_table_is_refused_with_a_suggestion(tmp_path):
    rounds = pd.read_csv(FIXTURES / "pairs" / "rounds.csv")

    with pytest.raises(ValueError, match=r"unknown final.csv input table 'hesian'\. Did you mean 'hessian'\?"):
        final_table(rounds, hesian=None)
    with pytest.raises(ValueError, match=r"'barrier'\. Did you mean 'barriers'\?.*interpolation"):
        final_table_job(FIXTURES / "pairs" / "rounds.csv", tmp_path / "final.csv", barrier=FIXTURES / "x.csv")
    assert not (tmp_path / "final.csv").exists()


@pytest.mark.parametrize(("result", "problem"), [
    (lambda runs: runs[["run_id"]].assign(barrier_to_iid_loss=0.0), r"missing \['barrier_to_iid_error'\]"),
    (lambda runs: pd.concat([runs, runs]).assign(barrier_to_iid_loss=0.0, barrier_to_iid_error=0.0),
     "got 12 rows for 6 runs"),
], ids=["a column", "a run twice"])
def test_a_contribution_that_misses_a_column_or_repeats_a_run_is_an_error(monkeypatch, result, problem):
    # Prepare: the first contribution (barriers) computing a wrong table
    rounds = pd.read_csv(FIXTURES / "pairs" / "rounds.csv")
    monkeypatch.setattr(Contribution, "function", lambda self: lambda runs, **tables: result(runs))

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"barriers analysis's tables:barrier_to_iid_columns must .*{problem}"):
        final_table(rounds)


# -- planning reads the same declarations -------------------------------------------------------------------
def _config(pairs: bool, hessian: bool) -> dict:
    config = copy.deepcopy(TINY)
    if not pairs:
        config["interpolation"]["pairs"] = {}
    config["hessian"]["enabled"] = hessian
    return check_config(config, SCHEMA)


@pytest.mark.parametrize(("pairs", "hessian", "tables"), [
    (True, True, ["barriers", "interpolation", "hessian", "hessian_clients"]),
    (True, False, ["barriers", "interpolation"]),
    (False, True, ["hessian", "hessian_clients"]),
    (False, False, []),
])
def test_final_table_reads_the_tables_the_config_makes(pairs, hessian, tables):
    config = _config(pairs, hessian)

    inputs = report_plan.final_table_inputs(config, build_runs(config))

    results = Results.of(config)
    assert inputs == {name: results.table(name) for name in ["rounds", *tables]}

