"""The analyses' contributions to final.csv: the exact column lists (a contract with users' scripts), each
analysis's columns computed from its tables, the tables planning asks for, and final.csv / summary.csv equal
to those made before the analyses declared their columns (fixtures in tests/data/report/, see its README)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
from helpers.configs import SCHEMA, TINY

from fedscape.analysis.barriers.definitions import BARRIER_COLUMNS, INTERPOLATION_COLUMNS
from fedscape.analysis.contributions import Contribution, FinalColumns, final_contributions
from fedscape.analysis.hessian.definitions import CLIENT_COLUMNS, SHARPNESS_COLUMNS, hessian_columns
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.plan import report as report_plan
from fedscape.plan.workflow import check_config
from fedscape.report.summary import (
    FINAL_COLUMNS,
    FINAL_TABLES,
    SUMMARY_COLUMNS,
    SUMMARY_METRICS,
    SUMMARY_STATS,
    final_table,
    final_table_job,
    summary_table,
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
        "hn", "hd", "code_version", "sharpness", "adaptive_sharpness",
    ]


def test_summary_columns_are_exactly_the_published_list():
    metrics = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds_per_round", "barrier_to_iid_loss",
               "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd"]
    appended = ["sharpness", "adaptive_sharpness"]

    assert SUMMARY_METRICS == [*metrics, *appended]
    # each metric's number of values, then the versions that trained the group, after every earlier column: none of
    # those moved; the metrics appended since after them, each with its statistics and its number of values
    assert SUMMARY_COLUMNS == [
        "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "n_seeds", "n_ok",
        *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95_low", "ci95_high")],
        *[f"{m}_n" for m in metrics], "code_versions",
        *[f"{m}_{s}" for m in appended for s in ("mean", "std", "ci95_low", "ci95_high", "n")],
    ]


# The tables' columns as published at final_table 3 / summary_table 5, before the sharpness columns: users read them
# by position too, so each list is where today's begins.
PUBLISHED_FINAL_COLUMNS = [
    "run_id", "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "seed",
    "final_round", "status", "train_loss", "train_acc", "test_loss", "test_acc", "seconds_per_round",
    "barrier_to_iid_loss", "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init",
    "hn", "hd", "code_version",
]
_PUBLISHED_METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds_per_round", "barrier_to_iid_loss",
                      "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd"]
PUBLISHED_SUMMARY_COLUMNS = [
    "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "n_seeds", "n_ok",
    *[f"{m}_{s}" for m in _PUBLISHED_METRICS for s in ("mean", "std", "ci95_low", "ci95_high")],
    *[f"{m}_n" for m in _PUBLISHED_METRICS], "code_versions",
]


@pytest.mark.parametrize(("published", "today"), [(PUBLISHED_FINAL_COLUMNS, FINAL_COLUMNS),
                                                  (PUBLISHED_SUMMARY_COLUMNS, SUMMARY_COLUMNS)],
                         ids=["final.csv", "summary.csv"])
def test_every_published_column_keeps_its_position(published, today):
    assert today[: len(published)] == published


def test_the_contributions_are_the_barriers_then_the_hessian_with_their_tables():
    assert [(c.analysis, c.final.columns, tuple(c.final.tables)) for c in final_contributions()] == [
        ("barriers", ("barrier_to_iid_loss", "barrier_to_iid_error"), ("barriers", "interpolation")),
        ("hessian", ("lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd", "sharpness",
                     "adaptive_sharpness"), ("hessian", "hessian_clients")),
    ]
    assert FINAL_TABLES == ["barriers", "interpolation", "hessian", "hessian_clients"]
    # the Hessian of the initial model is one estimate for every seed of a group
    assert [c.final.shared for c in final_contributions()] == [(), ("lambda_max_init", "trace_init")]
    # the sharpness columns came after the tables were published: they follow code_version / code_versions
    assert [c.final.appended for c in final_contributions()] == [(), ("sharpness", "adaptive_sharpness")]


@pytest.mark.parametrize("field", ["shared", "summarised", "appended"])
def test_a_report_refuses_a_shared_summarised_or_appended_column_it_does_not_have(field):
    # Execute / Assert: a column of its own is taken, another one refused
    FinalColumns(columns=("trace", "hd"), tables={}, compute="tables:f", **{field: ("hd",)})
    with pytest.raises(ValueError, match=r"not \['hd'\]"):
        FinalColumns(columns=("trace",), tables={}, compute="tables:f", **{field: ("hd",)})


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

    # Assert: one row per run, exactly run_id and the declared columns, the values of the old final.csv (which
    # predates the columns appended since: test_final_and_summary_carry_the_sharpness_of_each_run)
    older = [c for c in contribution.final.columns if c not in contribution.final.appended]
    assert list(columns.columns) == ["run_id", *contribution.final.columns]
    assert columns["run_id"].tolist() == expected["run_id"].tolist()
    pd.testing.assert_frame_equal(columns[["run_id", *older]].reset_index(drop=True),
                                  expected[["run_id", *older]], check_dtype=False)


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

    # Assert: the same files, byte for byte, with the columns added since after them: final.csv's sharpness columns,
    # summary.csv's numbers of values of each earlier metric, the code versions and the sharpness metrics (no quoted
    # fields in these files: a line's fields are its commas' pieces)
    earlier = [m for m in SUMMARY_METRICS if m not in SHARPNESS_COLUMNS]
    added = {"final.csv": list(SHARPNESS_COLUMNS),
             "summary.csv": [*[f"{m}_n" for m in earlier], "code_versions",
                             *[f"{m}_{s}" for m in SHARPNESS_COLUMNS for s in (*SUMMARY_STATS, "n")]]}
    for table, since in added.items():
        before = (FIXTURES / case / table).read_text().splitlines()
        now = (tmp_path / table).read_text().splitlines()
        width = before[0].count(",") + 1
        assert [",".join(line.split(",")[:width]) for line in now] == before
        assert now[0].split(",")[width:] == since
    summary = pd.read_csv(tmp_path / "summary.csv")
    for metric in SUMMARY_METRICS:  # as many values as the mean is over: one without a std, none without a mean
        n = summary[f"{metric}_n"]
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


# -- the sharpness columns -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "expected"), [
    # the final round's aggregate row gives them, not round 0's nor a client's
    ([("all", 0, 9.0, 9.5), ("all", 3, 0.2, 0.7), ("client_0", 3, 5.0, 5.5)], (0.2, 0.7)),
    ([("all", 3, math.nan, math.nan)], (math.nan, math.nan)),  # `hessian.sharpness` off: hessian.csv's empty cells
    ([("all", 3, math.inf, 0.7)], (math.inf, 0.7)),  # a perturbed model's logits overflowed: kept
    ([("all", 0, 9.0, 9.5)], (math.nan, math.nan)),  # no Hessian of the final round
], ids=["final aggregate", "off", "overflowed", "no final round"])
def test_final_csv_takes_the_sharpness_of_the_final_round_s_aggregate_data(rows, expected):
    # Prepare: one run of 3 rounds and its hessian.csv rows (data, round, sharpness, adaptive_sharpness)
    runs = pd.DataFrame({"run_id": ["r"], "final_round": [3]})
    hessian = pd.DataFrame([{"run_id": "r", "round": r, "data": data, "lambda_1": 1.0, "trace": 2.0, "sharpness": s,
                             "adaptive_sharpness": a} for data, r, s, a in rows])
    (contribution,) = [c for c in final_contributions() if c.analysis == "hessian"]

    # Execute
    columns = contribution.function()(runs, hessian=hessian)

    # Assert
    assert tuple(columns.loc[0, list(SHARPNESS_COLUMNS)]) == pytest.approx(expected, nan_ok=True)


def test_final_and_summary_carry_the_sharpness_of_each_run():
    # Prepare: the pairs fixture, whose hessian.csv rows each have a sharpness of lambda_1 / 100 and an adaptive
    # sharpness of trace / 100 (make_pairs.py)
    rounds = pd.read_csv(FIXTURES / "pairs" / "rounds.csv")
    tables = _fixture_tables("pairs")

    # Execute
    final = final_table(rounds, **tables)
    summary = summary_table(final)

    # Assert: each run's are its final lambda_max's and trace's rows'; summary.csv takes their statistics
    assert final["sharpness"].notna().any()
    pd.testing.assert_series_equal(final["sharpness"], final["lambda_max"] / 100, check_names=False)
    pd.testing.assert_series_equal(final["adaptive_sharpness"], final["trace"] / 100, check_names=False)
    for metric, source in (("sharpness", "lambda_max"), ("adaptive_sharpness", "trace")):
        for stat in ("mean", "std", "n"):
            scale = 1 if stat == "n" else 100
            pd.testing.assert_series_equal(summary[f"{metric}_{stat}"], summary[f"{source}_{stat}"] / scale,
                                           check_names=False, check_dtype=False)
