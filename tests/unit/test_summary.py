"""final.csv and summary.csv: the join of the analyses' headline numbers and the statistics over seeds."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from helpers.tables import ACC, rounds_table, run_id

from fedscape.core.io import write_csv
from fedscape.fl.settings import CODE_VERSION
from fedscape.outputs.stats import t_interval
from fedscape.outputs.tables import TableError, concat_tables, read_table
from fedscape.report.summary import (
    FINAL_COLUMNS,
    GROUP_KEYS,
    SUMMARY_COLUMNS,
    final_table,
    final_table_job,
    metric_values,
    summary_table,
    summary_table_job,
)

# t quantiles (0.975) by hand from a table: df=1 12.7062047, df=2 4.30265273, df=3 3.18244631.
T975 = {1: 12.706204736174698, 2: 4.302652729749464, 3: 3.182446305284263}
def barrier_tables(pairs: list[tuple[str, int, str, int, float]], final_round: int = 3):
    """barriers.csv and interpolation.csv rows of (run_a, round_a, run_b, round_b, loss barrier)."""
    barriers, curves = [], []
    for i, (a, ra, b, rb, value) in enumerate(pairs):
        for split, scale in (("train", 1.0), ("test", 10.0)):
            barriers.append({"pair_id": f"p{i}", "run_a": a, "run_b": b, "split": split,
                             "barrier_loss": value * scale, "barrier_error": value * scale / 2})
            for t in (0.0, 0.5, 1.0):
                curves.append({"pair_id": f"p{i}", "run_a": a, "round_a": ra, "run_b": b, "round_b": rb, "t": t,
                               "split": split, "loss": 1.0, "error": 0.5})
    return pd.DataFrame(barriers), pd.DataFrame(curves)


# -- final.csv -------------------------------------------------------------------------------------
def test_final_has_one_row_per_run_with_last_round_values():
    rounds = rounds_table()

    final = final_table(rounds)

    assert list(final.columns) == FINAL_COLUMNS
    assert len(final) == len(ACC) and final["run_id"].is_unique
    for (alpha, seed), acc in ACC.items():
        row = final[final["run_id"] == run_id(alpha, seed)].iloc[0]
        assert row["final_round"] == 3 and row["status"] == "ok"
        assert row["test_acc"] == pytest.approx(acc)
        assert row["train_loss"] == pytest.approx(2.0 / 4)
        assert row["seconds_per_round"] == pytest.approx((0.5 + 1.0 + 1.5) / 3)  # round 0 is not training
    # IID first, then decreasing alpha
    assert list(final["alpha"].drop_duplicates()) == [math.inf, 0.1]


def test_final_leaves_analyses_nan_when_not_computed(tmp_path):
    rounds = tmp_path / "rounds.csv"
    rounds_table().to_csv(rounds, index=False)
    out = tmp_path / "final.csv"

    final_table_job(rounds, out)

    df = pd.read_csv(out)
    for col in ("barrier_to_iid_loss", "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init",
                "trace_init", "hn", "hd"):
        assert df[col].isna().all(), col
    assert not (df.select_dtypes("number") == -1).any().any()
    header, first = out.read_text().splitlines()[:2]
    assert first.endswith(",,,,,,,,")  # empty fields in the file, not -1 or 'nan'


def test_final_joins_barrier_to_the_matching_iid_run_at_final_rounds():
    rounds = rounds_table()
    barriers, curves = barrier_tables([
        (run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.7),   # final-to-final, same seed: used for 0.1 seed 0
        (run_id("iid", 1), 3, run_id("0.1", 0), 3, 9.0),   # another seed: ignored, a same-seed pair exists
        (run_id("0.1", 1), 3, run_id("iid", 0), 3, 0.2),   # only other-seed pair of 0.1 seed 1 (order b->a)
        (run_id("iid", 2), 1, run_id("0.1", 2), 3, 5.0),   # round 1 is not the final model: ignored
        (run_id("iid", 0), 3, run_id("iid", 1), 3, 0.05),  # IID vs IID (the pilot study's control)
    ])

    final = final_table(rounds, barriers, curves).set_index("run_id")

    assert final.loc[run_id("0.1", 0), "barrier_to_iid_loss"] == pytest.approx(0.7)  # train split, not test
    assert final.loc[run_id("0.1", 0), "barrier_to_iid_error"] == pytest.approx(0.35)
    assert final.loc[run_id("0.1", 1), "barrier_to_iid_loss"] == pytest.approx(0.2)
    assert math.isnan(final.loc[run_id("0.1", 2), "barrier_to_iid_loss"])
    # IID seed 0 is in the control pair (its first end) and in the pairs with 0.1 (whose other end is not IID); the
    # control counts for its first end alone, so IID seed 1 has none
    assert final.loc[run_id("iid", 0), "barrier_to_iid_loss"] == pytest.approx(0.05)
    assert math.isnan(final.loc[run_id("iid", 1), "barrier_to_iid_loss"])
    assert math.isnan(final.loc[run_id("iid", 2), "barrier_to_iid_loss"])


def test_the_iid_control_pair_is_one_value_of_the_iid_row():
    # Prepare: two IID-vs-IID control pairs over three IID seeds
    rounds = rounds_table()
    barriers, curves = barrier_tables([(run_id("iid", 0), 3, run_id("iid", 1), 3, 0.05),
                                       (run_id("iid", 1), 3, run_id("iid", 2), 3, 0.15)])

    # Execute
    row = summary_table(final_table(rounds, barriers, curves)).set_index("alpha").loc[math.inf]

    # Assert: two measurements, two values (each pair once), not four
    assert row["barrier_to_iid_loss_n"] == 2
    assert row["barrier_to_iid_loss_mean"] == pytest.approx(0.1)
    assert row["barrier_to_iid_loss_std"] == pytest.approx(0.0707107, rel=1e-5)



def test_barrier_to_iid_is_that_of_the_models_as_trained_not_after_alignment():
    # Prepare: the same pair once as trained (0.7) and once with b aligned to a (0.1)
    rounds = rounds_table()
    barriers, curves = barrier_tables([(run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.7)])
    aligned = barriers.assign(aligned=True, barrier_loss=0.1)
    barriers = pd.concat([barriers.assign(aligned=False), aligned], ignore_index=True)

    # Execute
    final = final_table(rounds, barriers, curves).set_index("run_id")

    # Assert
    assert final.loc[run_id("0.1", 0), "barrier_to_iid_loss"] == pytest.approx(0.7)


def test_barrier_to_iid_is_that_of_the_straight_line_not_the_bezier_curve():
    # Prepare: the same pair along the straight line (0.7) and along the trained Bezier curve (0.05)
    rounds = rounds_table()
    barriers, curves = barrier_tables([(run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.7)])
    curve = barriers.assign(path="bezier", barrier_loss=0.05)
    barriers = pd.concat([curve, barriers.assign(path="linear")], ignore_index=True)  # the curve's rows first

    # Execute
    final = final_table(rounds, barriers, curves).set_index("run_id")

    # Assert
    assert final.loc[run_id("0.1", 0), "barrier_to_iid_loss"] == pytest.approx(0.7)


def test_final_does_not_match_an_iid_run_of_another_init():
    rounds = rounds_table(inits=("random", "pretrained"))
    barriers, curves = barrier_tables([(run_id("iid", 0, "pretrained"), 3, run_id("0.1", 0, "random"), 3, 0.7)])

    final = final_table(rounds, barriers, curves)

    assert final["barrier_to_iid_loss"].isna().all()


def test_final_takes_hessian_of_aggregate_data_at_final_round_and_round_zero():
    rounds = rounds_table()
    rid = run_id("iid", 0)
    hessian = pd.DataFrame([
        {"run_id": rid, "round": 0, "data": "all", "lambda_1": 50.0, "lambda_2": 20.0, "trace": 400.0,
         "sharpness": 0.5, "adaptive_sharpness": 0.6},
        {"run_id": rid, "round": 3, "data": "all", "lambda_1": 7.0, "lambda_2": 3.0, "trace": 90.0,
         "sharpness": 0.01, "adaptive_sharpness": 0.02},
        {"run_id": rid, "round": 3, "data": "client_0", "lambda_1": 99.0, "lambda_2": 1.0, "trace": 999.0,
         "sharpness": 9.0, "adaptive_sharpness": 9.0},
        {"run_id": run_id("0.1", 0), "round": 1, "data": "all", "lambda_1": 11.0, "lambda_2": 1.0, "trace": 5.0,
         "sharpness": 0.1, "adaptive_sharpness": 0.1},
    ])
    clients = pd.DataFrame([{"run_id": rid, "round": 0, "hn": 1.0, "hd": 0.1},
                            {"run_id": rid, "round": 3, "hn": 2.5, "hd": 0.97}])

    final = final_table(rounds, hessian=hessian, hessian_clients=clients).set_index("run_id")

    assert final.loc[rid, ["lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd", "sharpness",
                           "adaptive_sharpness"]].tolist() == [7.0, 90.0, 50.0, 400.0, 2.5, 0.97, 0.01, 0.02]
    other = final.loc[run_id("0.1", 0)]  # analysed at round 1 only: neither final nor init
    assert other[["lambda_max", "trace", "lambda_max_init", "hn", "sharpness"]].isna().all()
    assert final.drop(index=[rid])["lambda_max"].isna().all()


def test_final_status_and_round_of_a_diverged_run():
    rounds = rounds_table()
    rid = run_id("0.1", 2)
    rounds = rounds[~((rounds["run_id"] == rid) & (rounds["round"] == 3))].copy()
    rounds.loc[(rounds["run_id"] == rid) & (rounds["round"] == 2), "status"] = "diverged"

    final = final_table(rounds).set_index("run_id")
    summary = summary_table(final.reset_index())

    assert final.loc[rid, "final_round"] == 2 and final.loc[rid, "status"] == "diverged"
    row = summary[summary["alpha"] == 0.1].iloc[0]
    assert row["n_seeds"] == 3 and row["n_ok"] == 2
    # the statistics are over the two healthy seeds only; the diverged run keeps its finite accuracy in final.csv
    healthy = final.loc[[run_id("0.1", 0), run_id("0.1", 1)], "test_acc"]
    assert math.isfinite(final.loc[rid, "test_acc"])
    assert row["test_acc_mean"] == pytest.approx(healthy.mean())
    assert row["test_acc_mean"] != pytest.approx(final.loc[[*healthy.index, rid], "test_acc"].mean())


# -- summary.csv -----------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", ["iid", "0.1"])
def test_summary_statistics_match_hand_computation(alpha):
    final = final_table(rounds_table())
    values = [ACC[(alpha, s)] for s in range(3)]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)  # ddof = 1
    half = T975[2] * std / math.sqrt(3)

    summary = summary_table(final)

    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 2  # one row per group, seeds aggregated
    row = summary[summary["alpha"] == (math.inf if alpha == "iid" else 0.1)].iloc[0]
    assert row["n_seeds"] == 3
    assert row["test_acc_mean"] == pytest.approx(mean, abs=1e-12)
    assert row["test_acc_std"] == pytest.approx(std, abs=1e-12)
    assert row["test_acc_ci95_low"] == pytest.approx(mean - half, abs=1e-9)
    assert row["test_acc_ci95_high"] == pytest.approx(mean + half, abs=1e-9)
    assert math.isnan(row["lambda_max_mean"])  # not computed: NaN, not 0 or -1


@pytest.mark.parametrize("n", [2, 3, 4])
def test_t_interval_against_table_quantiles(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).tolist()

    mean, std, lo, hi, count = t_interval(x)

    assert count == n
    assert std == pytest.approx(float(np.std(x, ddof=1)))
    assert hi - mean == pytest.approx(T975[n - 1] * std / math.sqrt(n), rel=1e-9)
    assert mean - lo == pytest.approx(hi - mean)


def test_summary_with_one_seed_has_mean_but_no_spread(tmp_path):
    one = {k: v for k, v in ACC.items() if k[1] == 0}
    final_csv = tmp_path / "final.csv"
    final_table(rounds_table(final_acc=one)).to_csv(final_csv, index=False)
    out = tmp_path / "summary.csv"

    summary_table_job(final_csv, out)

    df = pd.read_csv(out)
    assert (df["n_seeds"] == 1).all()
    assert df["test_acc_mean"].tolist() == pytest.approx([0.91, 0.40])
    assert df[["test_acc_std", "test_acc_ci95_low", "test_acc_ci95_high"]].isna().all().all()


def test_summary_uses_only_finite_values_of_a_metric():
    final = final_table(rounds_table())
    final.loc[final["run_id"] == run_id("iid", 2), "lambda_max"] = 10.0
    final.loc[final["run_id"] == run_id("iid", 1), "lambda_max"] = 14.0

    summary = summary_table(final)

    row = summary[summary["alpha"] == math.inf].iloc[0]
    assert row["lambda_max_mean"] == pytest.approx(12.0)
    assert row["lambda_max_std"] == pytest.approx(math.sqrt(8.0))
    assert row["lambda_max_ci95_high"] - 12.0 == pytest.approx(T975[1] * math.sqrt(8.0) / math.sqrt(2))


def test_a_metric_the_seeds_share_is_one_value_not_a_zero_spread():
    # Prepare: every IID seed carries the same round-0 Hessian (one model, one data set, one estimate); the
    # alpha = 0.1 seeds carry two distinct values, one of them twice
    final = final_table(rounds_table())
    iid = final["alpha"] == math.inf
    final.loc[iid, ["lambda_max_init", "trace_init"]] = [15.5, 66.568321]
    final.loc[~iid, "trace_init"] = [60.0, 70.0, 70.0]

    # Execute
    summary = summary_table(final).set_index("alpha")

    # Assert: IID's is one value: its mean, no std or interval (not std 0 and the interval [x, x])
    row = summary.loc[math.inf]
    assert row["trace_init_mean"] == 66.568321 and row["trace_init_n"] == 1 and row["lambda_max_init_n"] == 1
    assert row[["trace_init_std", "trace_init_ci95_low", "trace_init_ci95_high", "lambda_max_init_std"]].isna().all()
    assert row["n_ok"] == 3 and row["test_acc_n"] == 3  # a metric of each run's own keeps every seed
    # the 0.1 seeds' distinct values, each once
    other = summary.loc[0.1]
    assert other["trace_init_n"] == 2 and other["trace_init_mean"] == pytest.approx(65.0)
    assert other["trace_init_std"] == pytest.approx(math.sqrt(50.0))


@pytest.mark.parametrize(("values", "n"), [
    ([15.5, 15.5 + 2e-7, 15.5 - 1e-7], 1),   # one estimate computed per seed on a card: equal to rounding
    ([15.5, 15.5 * (1 + 1e-3), 15.5], 2),    # two estimates
])
def test_shared_values_that_differ_by_rounding_alone_are_one_value(values, n):
    final = final_table(rounds_table())
    final.loc[final["alpha"] == math.inf, "lambda_max_init"] = values

    row = summary_table(final).set_index("alpha").loc[math.inf]

    assert row["lambda_max_init_n"] == n and row["lambda_max_init_mean"] == pytest.approx(np.mean(
        list(dict.fromkeys(values))[:n] if n == 2 else values[:1]))


def test_a_metric_that_is_not_shared_keeps_equal_values_of_several_seeds():
    final = final_table(rounds_table())
    final["lambda_max"] = 7.0  # equal by chance: three values with no spread

    row = summary_table(final).iloc[0]

    assert row["lambda_max_n"] == 3 and row["lambda_max_std"] == 0.0


def test_summary_says_how_many_values_each_metric_is_over():
    # Prepare: a barrier for 2 of the 3 healthy IID seeds; alpha = 0.1's seed 2 diverged
    rounds = rounds_table()
    rid = run_id("0.1", 2)
    rounds = rounds[~((rounds["run_id"] == rid) & (rounds["round"] == 3))].copy()
    rounds.loc[(rounds["run_id"] == rid) & (rounds["round"] == 2), "status"] = "diverged"
    final = final_table(rounds)
    final.loc[final["run_id"].isin([run_id("iid", 0), run_id("iid", 1)]), "barrier_to_iid_loss"] = [0.1, 0.3]

    # Execute
    summary = summary_table(final).set_index("alpha")

    # Assert: the barrier's interval has one degree of freedom, and the row says so beside n_ok = 3
    iid = summary.loc[math.inf]
    assert iid["n_ok"] == 3 and iid["barrier_to_iid_loss_n"] == 2 and iid["test_acc_n"] == 3
    assert iid["barrier_to_iid_loss_ci95_high"] - 0.2 == pytest.approx(T975[1] * iid["barrier_to_iid_loss_std"]
                                                                       / math.sqrt(2))
    assert iid["lambda_max_n"] == 0 and math.isnan(iid["lambda_max_mean"])
    assert summary.loc[0.1, "n_seeds"] == 3 and summary.loc[0.1, "test_acc_n"] == 2  # the diverged seed: in none
    assert summary.loc[0.1, "train_loss_n"] == 2


def test_summary_csv_writes_the_counts_as_integers_after_every_statistic(tmp_path):
    final_csv = tmp_path / "final.csv"
    final_table(rounds_table()).to_csv(final_csv, index=False)

    summary_table_job(final_csv, tmp_path / "summary.csv")

    header, first = (tmp_path / "summary.csv").read_text().splitlines()[:2]
    columns = header.split(",")
    cells = dict(zip(columns, first.split(","), strict=True))
    versions = columns.index("code_versions")
    assert columns[versions - len(METRICS):versions] == [f"{m}_n" for m in METRICS]
    assert [cells[f"{m}_n"] for m in METRICS] == ["3"] * 5 + ["0"] * 8  # the run's metrics of 3 seeds, no analysis
    assert [cells[f"{m}_n"] for m in APPENDED_METRICS] == ["0", "0"]  # those appended since: their own, after them


# The columns summary.csv had before code_versions, in their order (users' scripts read them by position too).
METRICS = ["test_acc", "test_loss", "train_acc", "train_loss", "seconds_per_round", "barrier_to_iid_loss",
           "barrier_to_iid_error", "lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd"]
COLUMNS_BEFORE_CODE_VERSIONS = ["dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation",
                                "n_seeds", "n_ok", *[f"{m}_{s}" for m in METRICS
                                                     for s in ("mean", "std", "ci95_low", "ci95_high")],
                                *[f"{m}_n" for m in METRICS]]
# The metrics appended after code_versions since (FinalColumns.appended), each with its statistics and its count.
APPENDED_METRICS = ["sharpness", "adaptive_sharpness"]
COLUMNS_AFTER_CODE_VERSIONS = [f"{m}_{s}" for m in APPENDED_METRICS
                               for s in ("mean", "std", "ci95_low", "ci95_high", "n")]
OLD, NEW = "03cc4d73ba9b04f10e7feab0136c777746330ff1", "f8c1c3699bd2e2a1a05b8c4c1f2f1d7e5a6b0c13"
WARNING = "more than one fedscape version"
IID_GROUP = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~10/part~1.0/seed~*"
# The IID seeds' code_version (NaN: a run trained before it was recorded) -> their group's code_versions; the
# alpha = 0.1 seeds are all NEW's.
VERSION_CASES = [
    pytest.param([NEW, NEW, NEW], NEW, id="one-version"),
    pytest.param([NEW, OLD, NEW], f"{OLD};{NEW}", id="two-versions"),
    pytest.param([math.nan] * 3, math.nan, id="none-recorded"),
    pytest.param([NEW, math.nan, OLD], f"{OLD};{NEW};unrecorded", id="recorded-and-unrecorded"),
    pytest.param([NEW, "unrecorded", NEW], f"{NEW};unrecorded", id="a-job-that-could-not-tell"),
]


def _final_of_versions(iid_versions: list) -> pd.DataFrame:
    """final.csv of the hand-made runs, the IID seeds 0-2 trained by `iid_versions`, the alpha = 0.1 ones by NEW."""
    final = final_table(rounds_table())
    final[CODE_VERSION] = final[CODE_VERSION].astype(object)
    final.loc[final["alpha"] == math.inf, CODE_VERSION] = pd.Series(iid_versions, dtype=object).to_numpy()
    final.loc[final["alpha"] == 0.1, CODE_VERSION] = NEW
    return final


def _same_cell(found, expected) -> bool:
    return (pd.isna(found) and pd.isna(expected)) if pd.isna(expected) else found == expected


def test_code_versions_is_appended_after_every_column_summary_csv_had(tmp_path):
    final_csv = tmp_path / "final.csv"
    write_csv(_final_of_versions([NEW] * 3), final_csv)

    summary_table_job(final_csv, tmp_path / "summary.csv")

    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert header == SUMMARY_COLUMNS == [*COLUMNS_BEFORE_CODE_VERSIONS, "code_versions", *COLUMNS_AFTER_CODE_VERSIONS]


@pytest.mark.parametrize(("iid_versions", "expected"), VERSION_CASES)
def test_code_versions_lists_the_versions_that_trained_the_group(iid_versions, expected):
    final = _final_of_versions(iid_versions)

    summary = summary_table(final).set_index("alpha")

    assert _same_cell(summary.loc[math.inf, "code_versions"], expected)
    assert summary.loc[0.1, "code_versions"] == NEW  # per group: the other group's versions are not its own


def test_code_versions_counts_a_diverged_run_as_n_seeds_does():
    # Prepare: the alpha = 0.1 seed 2, trained by OLD, diverged; the other seeds are NEW's
    rounds = rounds_table()
    rid = run_id("0.1", 2)
    rounds = rounds[~((rounds["run_id"] == rid) & (rounds["round"] == 3))].copy()
    rounds.loc[(rounds["run_id"] == rid) & (rounds["round"] == 2), "status"] = "diverged"
    rounds[CODE_VERSION] = np.where(rounds["run_id"] == rid, OLD, NEW)

    # Execute
    row = summary_table(final_table(rounds)).set_index("alpha").loc[0.1]

    # Assert
    assert row["n_seeds"] == 3 and row["n_ok"] == 2 and row["code_versions"] == f"{OLD};{NEW}"


@pytest.mark.parametrize(("iid_versions", "expected"), VERSION_CASES)
def test_summary_csv_reads_back_its_code_versions_and_warns_of_a_mixed_group(tmp_path, caplog, iid_versions,
                                                                             expected):
    # Prepare: final.csv written and read as the workflow does (an unrecorded version: an empty cell)
    final_csv, summary_csv = tmp_path / "final.csv", tmp_path / "summary.csv"
    write_csv(_final_of_versions(iid_versions), final_csv)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedscape.summary"):
        summary_table_job(final_csv, summary_csv)

    # Assert: the cell read back is the one summary_table made; one warning line for a group of several versions
    summary = read_table(summary_csv, SUMMARY_COLUMNS).set_index("alpha")
    assert _same_cell(summary.loc[math.inf, "code_versions"], expected)
    assert summary.loc[0.1, "code_versions"] == NEW
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    if isinstance(expected, str) and ";" in expected:
        assert len(warnings) == 1 and "\n" not in warnings[0]
        assert "1 group(s)" in warnings[0] and f"{IID_GROUP} ({expected})" in warnings[0]
        assert "alpha~0.1" not in warnings[0]
    else:
        assert warnings == []


def test_summary_groups_by_every_setting_but_seed():
    rounds = pd.concat([rounds_table(), rounds_table(inits=("pretrained",))], ignore_index=True)

    summary = summary_table(final_table(rounds))

    assert len(summary) == 4
    assert not summary[GROUP_KEYS].duplicated().any()


# -- gathering per-job tables -------------------------------------------------------------------------
def test_concat_tables_rejects_a_job_table_missing_a_column(tmp_path):
    # Prepare: the second run's metrics.csv lost its train_loss column
    pd.DataFrame({"run_id": ["a"], "round": [1], "train_loss": [0.5]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"run_id": ["b"], "round": [1]}).to_csv(tmp_path / "b.csv", index=False)

    # Execute / Assert
    with pytest.raises(TableError, match=r"b\.csv: expected the columns .*\(missing \['train_loss'\]\)"):
        concat_tables([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out.csv", ["run_id", "round", "train_loss"])
    assert not (tmp_path / "out.csv").exists()


def test_concat_tables_keeps_rows_of_consistent_tables(tmp_path):
    for name, value in (("a", 0.5), ("b", 0.25)):
        pd.DataFrame({"run_id": [name], "train_loss": [value]}).to_csv(tmp_path / f"{name}.csv", index=False)

    concat_tables([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out.csv")

    assert pd.read_csv(tmp_path / "out.csv")["train_loss"].tolist() == [0.5, 0.25]


# -- every reader of a table names the file when a column it needs is missing ---------------------------
def _final_csv(path):
    final_table(rounds_table()).to_csv(path, index=False)


def _rounds_csv(path):
    rounds_table().to_csv(path, index=False)


def _interpolation_csv(path):
    rows = [{"pair_id": "p", "run_a": "a", "round_a": 3, "run_b": "b", "round_b": 3, "t": t, "split": "train",
             "loss": 1.0, "error": 0.5, "aligned": False} for t in (0.0, 0.5, 1.0)]
    pd.DataFrame(rows).to_csv(path, index=False)


def _read_final(path, out):
    from fedscape.report.summary import final_table_job
    final_table_job(path, out / "final.csv")


def _read_summary(path, out):
    summary_table_job(path, out / "summary.csv")


def _read_curves(path, out):
    from fedscape.report.figures import curves_figure_job
    curves_figure_job(path, "digits", "cnn_small", "test_acc", out / "curves")


def _read_accuracy(path, out):
    from fedscape.report.figures import accuracy_figure_job
    accuracy_figure_job(path, "table", "digits", "cnn_small", out / "table")


def _read_interpolation(path, out):
    from fedscape.analysis.barriers.tables import interpolation_tables_job
    interpolation_tables_job([path], out / "interpolation.csv", out / "barriers.csv")


@pytest.mark.parametrize(("write", "read", "dropped"), [
    (_rounds_csv, _read_final, "test_acc"),
    (_final_csv, _read_summary, "test_acc"),
    (_rounds_csv, _read_curves, "test_acc"),
    (_final_csv, _read_accuracy, "status"),
    (_interpolation_csv, _read_interpolation, "loss"),
], ids=["final", "summary", "curves", "accuracy", "interpolation"])
def test_a_table_missing_a_column_is_one_line_naming_the_file_and_the_column(tmp_path, write, read, dropped):
    # Prepare: a valid table, then the same without one column its reader uses
    path = tmp_path / "table.csv"
    write(path)
    pd.read_csv(path).drop(columns=[dropped]).to_csv(path, index=False)

    # Execute
    with pytest.raises(TableError) as err:
        read(path, tmp_path)

    # Assert: not a bare KeyError from deep in pandas
    message = str(err.value)
    assert message.startswith(f"{path}: expected the columns [") and "\n" not in message
    assert f"(missing ['{dropped}'])" in message
    assert f"snakemake --cores 1 --forcerun {path}" in message


@pytest.mark.parametrize("read", [_read_summary, _read_accuracy], ids=["summary", "accuracy"])
@pytest.mark.parametrize(("column", "damaged"), [("test_acc", "0.9x"), ("lambda_max", "--"), ("seed", "one")])
def test_a_damaged_number_of_final_csv_is_refused_naming_its_file_line_and_column(tmp_path, read, column, damaged):
    # Prepare: a valid final.csv whose third run has a cell that is no number
    path = tmp_path / "final.csv"
    _final_csv(path)
    final = pd.read_csv(path, dtype=str)
    final.loc[2, column] = damaged
    final.to_csv(path, index=False)

    # Execute
    with pytest.raises(TableError) as err:
        read(path, tmp_path)

    # Assert: not dropped as NaN from the statistics, nor a bare float() error
    assert str(err.value).startswith(f"{path}, line 4: {column} is {damaged!r}, not a number;")
    assert not (tmp_path / "summary.csv").exists()


@pytest.mark.parametrize(("values", "expected"), [
    ([0.2, math.inf, 0.4], [0.2, math.inf, 0.4]),  # a barrier whose loss overflowed: the worst, kept
    ([0.2, math.nan, 0.4], [0.2, 0.4]),  # not computed: left out
    ([0.2, "x", 0.4], [0.2, 0.4]),
], ids=["inf", "nan", "not-a-number"])
def test_the_statistics_of_a_group_keep_an_infinite_value_and_leave_a_missing_one_out(values, expected):
    # Prepare: three runs of one group
    runs = pd.DataFrame({"barrier_to_iid_loss": values})

    # Execute
    kept = metric_values(runs, "barrier_to_iid_loss")
    mean = t_interval(kept)[0]

    # Assert: an infinite barrier makes the mean infinite rather than vanish from it
    assert kept == expected
    assert mean == (math.inf if math.inf in expected else pytest.approx(0.3))
