"""paired_differences.csv: each headline row against its setting's baseline, over the seeds both ran (report.paired)."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pandas as pd
import pytest
from helpers.configs import SCHEMA, TINY

from fedscape.core.io import write_csv
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.plan import report as report_plan
from fedscape.plan.workflow import check_config
from fedscape.report.figures.accuracy import headline_table
from fedscape.report.paired import PAIRED_COLUMNS, baseline_row, paired_differences, paired_differences_table_job
from fedscape.report.summary import FINAL_COLUMNS

# t quantiles (0.975) from a table: df=1 12.7062047, df=2 4.30265273.
T975 = {1: 12.706204736174698, 2: 4.302652729749464}
SETTING = {"dataset": "digits", "model": "cnn_small", "init": "random", "alpha": 0.1, "num_clients": 10,
           "participation": 1.0}
# One setting's final.csv by hand: FedProx has no seed 2; every seed shares one Hessian at init (lambda_max_init).
FINAL = """\
algorithm,seed,status,test_acc,lambda_max,lambda_max_init
fedavg,0,ok,0.50,10.0,7.0
fedavg,1,ok,0.60,12.0,7.0
fedavg,2,ok,0.70,11.0,7.0
fedsam,0,ok,0.52,8.0,7.0
fedsam,1,ok,0.63,9.5,7.0
fedsam,2,ok,0.71,9.0,7.0
fedprox,0,ok,0.49,10.5,7.0
fedprox,1,ok,0.61,12.5,7.0
"""


def final_of(text: str) -> pd.DataFrame:
    """A final.csv frame of the runs in `text` (CSV of run fields and metrics), the run fields it leaves out SETTING's,
    every other column empty."""
    runs = pd.read_csv(io.StringIO(text))
    runs = runs.assign(**{k: v for k, v in SETTING.items() if k not in runs})
    runs["run_id"] = [f"{a}/{s}/{i}" for a, s, i in zip(runs["algorithm"], runs["seed"], runs.index, strict=True)]
    return runs.reindex(columns=FINAL_COLUMNS)


def stats(diffs: list[float], t: float | None) -> dict:
    """The expected statistics of `diffs` (n >= 2 with its t quantile; n 1 a mean alone)."""
    mean = sum(diffs) / len(diffs)
    if t is None:
        return {"n_pairs": len(diffs), "mean_diff": mean, "std_diff": math.nan, "ci95_low": math.nan,
                "ci95_high": math.nan}
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = t * std / math.sqrt(len(diffs))
    return {"n_pairs": len(diffs), "mean_diff": mean, "std_diff": std, "ci95_low": mean - half,
            "ci95_high": mean + half}


def test_each_row_is_its_per_seed_differences_to_fedavg_by_hand():
    # Prepare
    final = final_of(FINAL)
    where = {"dataset": "digits", "model": "cnn_small", "alpha": 0.1, "num_clients": 10, "participation": 1.0}
    # accuracy in % (the headline's scale): FedProx -1, +1 (seed 2 unpaired); FedSAM +2, +3, +1
    # lambda_max: FedProx +0.5, +0.5; FedSAM -2, -2.5, -2; lambda_max_init shared by the seeds: no row
    expected = pd.DataFrame([
        {**where, "metric": "test_acc", "row": "FedProx", "baseline": "FedAvg", **stats([-1, 1], T975[1]),
         "seeds": "0;1"},
        {**where, "metric": "test_acc", "row": "FedSAM", "baseline": "FedAvg", **stats([2, 3, 1], T975[2]),
         "seeds": "0;1;2"},
        {**where, "metric": "lambda_max", "row": "FedProx", "baseline": "FedAvg", **stats([0.5, 0.5], T975[1]),
         "seeds": "0;1"},
        {**where, "metric": "lambda_max", "row": "FedSAM", "baseline": "FedAvg", **stats([-2, -2.5, -2], T975[2]),
         "seeds": "0;1;2"},
    ], columns=PAIRED_COLUMNS)

    # Execute
    table = paired_differences(final)

    # Assert
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-9, atol=1e-12)


def test_the_job_writes_the_table_and_reads_final_csv_back(tmp_path):
    # Prepare
    write_csv(final_of(FINAL), tmp_path / "final.csv")

    # Execute
    paired_differences_table_job(tmp_path / "final.csv", tmp_path / "paired_differences.csv")

    # Assert: the columns exactly, the seeds as text
    written = pd.read_csv(tmp_path / "paired_differences.csv", dtype={"seeds": str})
    assert list(written.columns) == PAIRED_COLUMNS
    assert written["seeds"].tolist() == ["0;1", "0;1;2", "0;1", "0;1;2"]


@pytest.mark.parametrize("text", [
    "algorithm,seed,status,test_acc\nfedavg,0,ok,0.5\nfedavg,1,ok,0.6\n",  # one row in its setting: no rival
    # two settings of one row each: FedAvg and FedSAM are no rivals across settings
    "algorithm,alpha,seed,status,test_acc\nfedavg,0.1,0,ok,0.5\nfedsam,1.0,0,ok,0.6\n",
], ids=["one_row", "one_row_per_setting"])
def test_a_final_csv_without_two_rows_in_a_setting_gives_the_header_alone(tmp_path, text):
    # Prepare
    write_csv(final_of(text), tmp_path / "final.csv")

    # Execute
    paired_differences_table_job(tmp_path / "final.csv", tmp_path / "paired_differences.csv")

    # Assert
    assert (tmp_path / "paired_differences.csv").read_text() == ",".join(PAIRED_COLUMNS) + "\n"


@pytest.mark.parametrize(("diverged", "expected"), [
    # FedSAM's seed 1 diverged: out of its pairs, FedProx's untouched
    ({("fedsam", 1)}, {"FedSAM": ([2, 1], "0;2"), "FedProx": ([-1, 1], "0;1")}),
    # the baseline's seed 0 diverged: out of every row's pairs; FedProx is left one (a mean, no interval)
    ({("fedavg", 0)}, {"FedSAM": ([3, 1], "1;2"), "FedProx": ([1], "1")}),
    # the baseline's seeds 0 and 1 diverged: FedProx has no pair left
    ({("fedavg", 0), ("fedavg", 1)}, {"FedSAM": ([1], "2"), "FedProx": ([], "")}),
], ids=["row", "baseline", "none_left"])
def test_a_diverged_seed_is_dropped_from_both_groups(diverged, expected):
    # Prepare
    final = final_of(FINAL)
    hit = [(a, s) in diverged for a, s in zip(final["algorithm"], final["seed"], strict=True)]
    final.loc[hit, "status"] = "diverged"

    # Execute
    table = paired_differences(final)

    # Assert: accuracy in %
    acc = table[table["metric"] == "test_acc"].set_index("row")
    for row, (diffs, seeds) in expected.items():
        got = acc.loc[row]
        assert (got["n_pairs"], got["seeds"]) == (len(diffs), seeds)
        if diffs:
            assert got["mean_diff"] == pytest.approx(np.mean(diffs))
        else:
            assert math.isnan(got["mean_diff"])
        assert math.isnan(got["ci95_low"]) == (len(diffs) < 2)


def test_a_shared_offset_of_the_seeds_leaves_the_paired_interval_narrow():
    # Prepare: seed s is hard for both algorithms alike (accuracy 0.5 + 0.1 s); FedSAM is 2 points better on each,
    # to within 0.1 points
    fedavg = {s: 0.5 + 0.1 * s for s in range(4)}
    noise = {0: 0.001, 1: -0.001, 2: 0.0, 3: 0.001}
    text = "algorithm,seed,status,test_acc\n" + "".join(
        f"fedavg,{s},ok,{fedavg[s]}\nfedsam,{s},ok,{fedavg[s] + 0.02 + noise[s]}\n" for s in fedavg)
    final = final_of(text)

    # Execute
    paired = paired_differences(final).iloc[0]
    own = headline_table(final).set_index("row")

    # Assert: each group's own interval (the headline's) spans the seeds' offsets and overlaps the other's; the
    # paired one is far narrower and excludes 0
    assert paired["ci95_high"] - paired["ci95_low"] < 0.05 * min(own["ci95_high"] - own["ci95_low"])
    assert own.loc["FedSAM", "ci95_low"] < own.loc["FedAvg", "ci95_high"]
    assert paired["mean_diff"] == pytest.approx(2.025)
    assert 0 < paired["ci95_low"] < paired["mean_diff"] < paired["ci95_high"]


def test_settings_are_compared_within_themselves_each_against_its_own_baseline():
    # Prepare: IID and alpha 0.1, each with FedAvg and FedSAM; FedSAM +1 point at IID, +3 at alpha 0.1
    text = ("algorithm,alpha,seed,status,test_acc\n"
            "fedavg,inf,0,ok,0.90\nfedavg,inf,1,ok,0.92\nfedsam,inf,0,ok,0.91\nfedsam,inf,1,ok,0.93\n"
            "fedavg,0.1,0,ok,0.50\nfedavg,0.1,1,ok,0.60\nfedsam,0.1,0,ok,0.53\nfedsam,0.1,1,ok,0.63\n")
    final = final_of(text)

    # Execute
    table = paired_differences(final)

    # Assert: IID first (the headline's order of settings), labels naming the setting, as the headline's rows do
    assert table[["alpha", "row", "baseline"]].values.tolist() == [
        [math.inf, "FedSAM · IID", "FedAvg · IID"], [0.1, "FedSAM · α=0.1", "FedAvg · α=0.1"]]
    assert table["mean_diff"].tolist() == pytest.approx([1.0, 3.0])


@pytest.mark.parametrize(("groups", "expected"), [
    ([("random", "fedavg"), ("random", "fedsam")], "fedavg random"),
    # no FedAvg: the setting's first row in the headline's order
    ([("random", "fedprox"), ("random", "fedsam")], "fedprox random"),
    # FedAvg under the most common init (random: two rows), not under the other
    ([("pre", "fedavg"), ("random", "fedavg"), ("random", "fedsam")], "fedavg random"),
    # FedAvg only under the rarer init: the first row, not FedAvg
    ([("random", "fedadam"), ("pre", "fedavg"), ("random", "fedsam")], "fedadam random"),
    # the inits tie: random, drawn first
    ([("pre", "fedavg"), ("random", "fedavg")], "fedavg random"),
    ([("pre", "fedavg"), ("zeta", "fedavg")], "fedavg pre"),
], ids=["fedavg", "no_fedavg", "common_init", "rare_init", "tie_random", "tie_by_name"])
def test_the_baseline_is_fedavg_under_the_most_common_init_else_the_first_row(groups, expected):
    # Prepare: a setting's groups in the headline's order
    frame = pd.DataFrame([{"init": i, "algorithm": a, "row": f"{a} {i}"} for i, a in groups])

    # Execute / Assert
    assert baseline_row(frame) == expected


@pytest.mark.parametrize(("fedsam", "fedavg", "expected"), [
    ([math.inf, 1.0], [0.5, 0.5], (math.inf, 2, "0;1")),  # FedSAM's barrier overflowed on seed 0: the worst there is
    ([math.inf, 1.0], [math.inf, 0.5], (0.5, 1, "1")),  # both overflowed on seed 0: no difference, no pair
], ids=["one_infinite", "both_infinite"])
def test_an_infinite_barrier_counts_where_the_other_is_finite(fedsam, fedavg, expected):
    # Prepare
    text = "algorithm,seed,status,test_acc,barrier_to_iid_loss\n" + "".join(
        f"{a},{s},ok,0.5,{v}\n" for a, values in (("fedavg", fedavg), ("fedsam", fedsam)) for s, v in enumerate(values))
    final = final_of(text)

    # Execute
    row = paired_differences(final).set_index("metric").loc["barrier_to_iid_loss"]

    # Assert: mean, n and seeds; no spread around an infinite mean, nor from one pair
    assert (row["mean_diff"], row["n_pairs"], row["seeds"]) == expected
    assert math.isnan(row["ci95_low"])


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]], ids=["one_seed", "three_seeds"])
def test_the_table_is_always_planned(seeds):
    # Prepare: the tiny config (one run per setting but for alpha 0.5), with one seed or several
    config = check_config({**copy.deepcopy(TINY), "seeds": seeds}, SCHEMA)

    # Execute
    targets = report_plan.targets(config, build_runs(config))

    # Assert
    assert Results.of(config).table("paired_differences") in targets
