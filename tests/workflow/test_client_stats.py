"""Client-update statistics: drift, gradient diversity, update cosine, L2 to final; engine hook and backfill."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS
from fedscape.analysis.client_stats.stage import backfill_client_updates
from fedscape.fl.settings import CLIENT_UPDATES_COLUMNS


def test_client_stats_table_of_tiny_run(tiny_run):
    df = pd.read_csv(tiny_run / "results/tables/client_stats.csv")
    rounds = pd.read_csv(tiny_run / "results/tables/rounds.csv")

    assert list(df.columns) == CLIENT_STATS_COLUMNS
    assert len(df) == len(rounds)  # one row per run and round 0..R, like rounds.csv
    assert set(df["run_id"]) == set(rounds["run_id"])
    first = df[df["round"] == 0]
    assert first[CLIENT_STATS_COLUMNS[2:-1]].isna().all().all()  # no update before round 1
    assert (first["l2_to_final"] > 0).all()
    later = df[df["round"] > 0]
    assert later[CLIENT_STATS_COLUMNS[2:]].notna().all().all()
    assert (later["gradient_diversity"] >= 1 / 4 - 1e-9).all()  # >= 1/M for M = 4 clients
    assert later["update_cosine_mean"].between(-1, 1).all()
    final = df.loc[df.groupby("run_id")["round"].idxmax()]
    assert (final["l2_to_final"] == 0).all()
    for name in ("png", "pdf", "csv"):
        assert (tiny_run / f"results/figures/client_stats/client_stats.{name}").stat().st_size > 0


def test_backfill_from_checkpoints_reproduces_the_engine_rows(tiny_run, tmp_path):
    run_dir = next((tiny_run / "results/train").rglob("alpha~iid/**/client_updates.csv")).parent
    old = tmp_path / "old_run"
    old.mkdir()
    for name in ("trajectory.pt", "clients.pt"):  # a run trained before the hook: no client_updates.csv
        shutil.copy2(run_dir / name, old / name)

    backfill_client_updates(old)  # a run trained before the hook: no client_updates.csv

    backfilled = pd.read_csv(old / "client_updates.csv")
    engine = pd.read_csv(run_dir / "client_updates.csv")
    assert list(backfilled.columns) == list(engine.columns) == CLIENT_UPDATES_COLUMNS
    assert backfilled["round"].tolist() == [1, 3]  # tiny config: save_clients_at [1, 3]
    expected = engine.set_index("round").loc[[1, 3]].reset_index()
    pd.testing.assert_frame_equal(backfilled, expected[CLIENT_UPDATES_COLUMNS], rtol=1e-9)
    with pytest.raises(FileExistsError):
        backfill_client_updates(old)  # an existing file is not overwritten without overwrite=True
