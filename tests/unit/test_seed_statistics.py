"""Statements over seeds leave a diverged run out (fl.settings.DIVERGED_LOSS): the client-statistics figure from the
run's diverged round on, and final.csv's barrier to IID where an IID partner diverged (its pair is NaN); a +inf value
that is no divergence (a barrier whose loss overflowed between two usable ends) counts, as the worst there is."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers.figures import assert_figure_files

from fedscape.analysis.barriers.tables import barrier_to_iid_columns
from fedscape.analysis.client_stats.definitions import (
    CLIENT_STATS_COLUMNS,
    CLIENT_STATS_FIGURE_COLUMNS,
    CLIENT_STATS_PANELS,
)
from fedscape.analysis.client_stats.figures import client_stats_figure_job
from fedscape.outputs.stats import t_interval


def rid(alpha, seed):
    return f"digits/cnn_small/init~random/algo~fedavg/alpha~{alpha}/clients~10/part~1.0/seed~{seed}"


# Each seed's statistics while it is healthy: the three 1, 2 and 6 have a mean (3) that is not their median (2), nor
# the four's (2.5), so that a mean over the wrong seeds, or another statistic over them, shows
SEED_VALUES = {0: 1.0, 1: 2.0, 2: 6.0, 3: 3.0}


def _client_stats_figure(tmp_path, diverged: dict[int, int], exploded: float, rounds=(1, 2, 3, 4)):
    """The figure's CSV of four seeds with every statistic SEED_VALUES[seed] (drift_from_aggregate half that, the
    update cosine 0.5), where seed s in `diverged` diverged at round diverged[s]: its client statistics of that round
    are `exploded` (the engine records them before it stops), it has no later rounds and no l2_to_final (no final
    model)."""
    rows, status = [], []
    for seed, healthy in SEED_VALUES.items():
        stop = diverged.get(seed)
        for r in (0, *rounds):
            if stop is not None and r > stop:
                break
            value = exploded if r == stop else healthy
            rows.append({"run_id": rid("0.1", seed), "round": r, "drift_from_start": value,
                         "drift_from_aggregate": value / 2, "gradient_diversity": value, "update_cosine_mean": 0.5,
                         "l2_to_final": math.nan if stop is not None else healthy})
            status.append({"run_id": rid("0.1", seed), "round": r, "status": "diverged" if r == stop else "ok"})
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    pd.DataFrame(status).to_csv(tmp_path / "rounds.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}
    client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv", outputs)
    return assert_figure_files(outputs).set_index("round").sort_index()


@pytest.mark.parametrize("exploded", [1e6, math.inf], ids=["finite", "inf"])
@pytest.mark.parametrize(("diverged", "means", "l2_mean"), [
    # rounds 0-2: the four seeds' mean (1 + 2 + 6 + 3) / 4; rounds 3-4: the three healthy ones' (1 + 2 + 6) / 3
    ({3: 3}, [3.0, 3.0, 3.0, 3.0, 3.0], 3.0),
    # rounds 0-1: the four's; rounds 2-3: seeds 0, 2 and 3's (1 + 6 + 3) / 3; round 4: seeds 0 and 2's
    ({1: 2, 3: 4}, [3.0, 3.0, 10 / 3, 10 / 3, 3.5], 3.5),
], ids=["one_seed", "two_seeds"])
def test_the_client_stats_figure_leaves_a_diverged_run_out_from_its_diverged_round_on(tmp_path, diverged, means,
                                                                                      l2_mean, exploded):
    # Prepare / Execute
    data = _client_stats_figure(tmp_path, diverged, exploded)

    # Assert: every mean is that of the runs counted, however large the diverged round's values; the seed count
    # falls at each run's diverged round; l2_to_final counts the runs that never diverged, at every round
    for stat in ("drift_from_start", "gradient_diversity"):
        assert data[stat].tolist() == pytest.approx(means, rel=1e-12)
    assert data["drift_from_aggregate"].tolist() == pytest.approx([m / 2 for m in means], rel=1e-12)
    expected = [sum(1 for s in SEED_VALUES if diverged.get(s, 99) > r) for r in range(5)]
    assert data["n_seeds"].tolist() == expected
    assert data["n_seeds_l2_to_final"].tolist() == [len(SEED_VALUES) - len(diverged)] * 5
    assert data["l2_to_final"].tolist() == pytest.approx([l2_mean] * 5, rel=1e-12)


def test_an_infinite_statistic_of_a_run_that_did_not_diverge_is_left_out_of_the_mean_and_logged(tmp_path, caplog):
    # Prepare: two seeds, neither diverged; seed 1's updates of round 2 sum to zero exactly (diversity inf)
    rows = [{"run_id": rid("0.1", seed), "round": r, "drift_from_start": 1.0, "drift_from_aggregate": 0.5,
             "gradient_diversity": math.inf if (seed, r) == (1, 2) else 2.0, "update_cosine_mean": -1.0,
             "l2_to_final": 1.0} for seed in (0, 1) for r in (1, 2)]
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    pd.DataFrame(rows)[["run_id", "round"]].assign(status="ok").to_csv(tmp_path / "rounds.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    with caplog.at_level("WARNING", logger="fedscape.client_stats"):
        client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv", outputs)

    # Assert: the finite value's mean, the run still counted, and the log names the value left out
    data = assert_figure_files(outputs).set_index("round")
    assert data["gradient_diversity"].tolist() == [2.0, 2.0] and data["n_seeds"].tolist() == [2, 2]
    assert [r.getMessage() for r in caplog.records] == [
        f"run {rid('0.1', 1)}, round 2: gradient_diversity is inf, left out of the mean over seeds"]


@pytest.mark.parametrize(("panel", "missing"), [
    *((column, math.nan) for column, _ in CLIENT_STATS_PANELS),
    ("gradient_diversity", math.inf),  # updates that sum to 0 exactly: left out of the mean as a missing value
], ids=[*(column for column, _ in CLIENT_STATS_PANELS), "gradient_diversity_inf"])
def test_each_panels_mean_says_how_many_seeds_it_is_over(tmp_path, panel, missing):
    # Prepare: three seeds, none diverged, every statistic 1.0, but seed 2 has no finite value of `panel` in round 2
    # (e.g. an update cosine with one client per round, or a round whose weights the run did not keep)
    rows = [{"run_id": rid("0.1", seed), "round": r, **dict.fromkeys(CLIENT_STATS_COLUMNS[2:], 1.0),
             **({panel: missing} if (seed, r) == (2, 2) else {})} for seed in (0, 1, 2) for r in (1, 2)]
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    pd.DataFrame(rows)[["run_id", "round"]].assign(status="ok").to_csv(tmp_path / "rounds.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv", outputs)

    # Assert: every run counted; the panel's round-2 mean is over the two seeds with a value, the other panels' over
    # all three
    data = assert_figure_files(outputs)
    assert list(data.columns) == CLIENT_STATS_FIGURE_COLUMNS
    data = data.set_index("round").sort_index()
    assert data["n_seeds"].tolist() == [3, 3] and data[panel].tolist() == [1.0, 1.0]
    for column, _ in CLIENT_STATS_PANELS:
        assert data[f"n_seeds_{column}"].tolist() == ([3, 2] if column == panel else [3, 3])


def test_the_client_stats_figure_refuses_runs_that_rounds_csv_does_not_have(tmp_path):
    # Prepare: client_stats.csv of two seeds, rounds.csv of one (tables of different runs: whether seed 1 diverged is
    # unknown)
    rows = [{"run_id": rid("0.1", seed), "round": r, "drift_from_start": 1.0, "drift_from_aggregate": 0.5,
             "gradient_diversity": 1.0, "update_cosine_mean": 0.5, "l2_to_final": 1.0} for seed in (0, 1)
            for r in (1, 2)]
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    pd.DataFrame({"run_id": [rid("0.1", 0)] * 2, "round": [1, 2], "status": ["ok", "ok"]}).to_csv(
        tmp_path / "rounds.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute / Assert
    with pytest.raises(ValueError, match=r"1 run\(s\) have no rows in rounds\.csv \(e\.g\. .*seed~1\).*rounds_table"):
        client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv", outputs)
    assert not (tmp_path / "client_stats.png").exists()


@pytest.mark.parametrize(("partners", "expected"), [
    # no same-seed IID run: the mean over the IID seeds' finite values, one diverged (NaN) seed left out
    ({0: (0.4, 0.1), 2: (math.nan, math.nan)}, (0.4, 0.1)),
    ({0: (0.4, 0.1), 2: (0.6, 0.3), 3: (math.nan, math.nan)}, (0.5, 0.2)),
    # every IID partner diverged, or the run itself did (then every pair is NaN): NaN
    ({0: (math.nan, math.nan), 2: (math.nan, math.nan)}, (math.nan, math.nan)),
    # the same-seed IID run is preferred; where it diverged, the other IID seeds stand in
    ({1: (0.2, 0.05), 0: (0.4, 0.1)}, (0.2, 0.05)),
    ({1: (math.nan, math.nan), 0: (0.4, 0.1), 2: (0.6, 0.3)}, (0.5, 0.2)),
    # a +inf barrier (the path's loss overflowed between usable ends) was computed: it stays, the worst case
    ({0: (math.inf, 0.1), 2: (0.4, 0.3)}, (math.inf, 0.2)),
    ({1: (math.inf, 0.05), 0: (0.4, 0.1)}, (math.inf, 0.05)),
])
def test_the_barrier_to_iid_is_the_mean_of_the_computed_values_of_the_iid_partners(partners, expected):
    # Prepare: run alpha 0.1 seed 1 paired at the final rounds with the IID runs of `partners` ({seed: barriers})
    iid = [rid("iid", seed) for seed in partners]
    final = pd.DataFrame({"run_id": [rid("0.1", 1), *iid], "final_round": 30})
    pairs = [f"p{seed}" for seed in partners]
    barriers = pd.DataFrame({"pair_id": pairs, "run_a": rid("0.1", 1), "run_b": iid, "split": "train",
                             "barrier_loss": [v[0] for v in partners.values()],
                             "barrier_error": [v[1] for v in partners.values()]})
    interpolation = pd.DataFrame({"pair_id": pairs, "round_a": 30, "round_b": 30})

    # Execute
    out = barrier_to_iid_columns(final, barriers, interpolation).set_index("run_id")

    # Assert
    got = out.loc[rid("0.1", 1), ["barrier_to_iid_loss", "barrier_to_iid_error"]].tolist()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert out.drop(index=rid("0.1", 1)).isna().all().all()  # the IID runs have no IID-vs-IID pair here


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0, 3.0], (2.0, math.sqrt(2.0), 2.0 - 12.706204736174707, 2.0 + 12.706204736174707, 2)),
    # NaN (None) is a value not computed: left out, and not counted
    ([1.0, math.nan, 3.0, None], (2.0, math.sqrt(2.0), 2.0 - 12.706204736174707, 2.0 + 12.706204736174707, 2)),
    ([math.nan, None], (math.nan, math.nan, math.nan, math.nan, 0)),
    # an infinite value counts: the mean is that infinity, no spread nor interval can be estimated around it
    ([1.0, math.inf, 2.0, math.nan], (math.inf, math.nan, math.nan, math.nan, 3)),
    ([math.inf], (math.inf, math.nan, math.nan, math.nan, 1)),
    ([math.inf, -math.inf], (math.nan, math.nan, math.nan, math.nan, 2)),
], ids=["finite", "nan_left_out", "none", "inf", "one_inf", "both_signs"])
def test_the_statistics_over_seeds_leave_nan_out_and_keep_an_infinite_value(values, expected):
    # Execute
    got = t_interval(values)

    # Assert
    np.testing.assert_allclose(got[:4], expected[:4], rtol=1e-12)
    assert got[4] == expected[4]
