"""Shared helpers: atomic writes."""

from __future__ import annotations

import os
import stat

import pytest

from fedscape.core.io import atomic_path, atomic_write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    # Prepare
    saved = os.umask(umask)
    try:
        # Execute
        atomic_write_text(tmp_path / "a.csv", "x\n")
        with open(tmp_path / "plain.csv", "w") as fh:
            fh.write("x\n")
    finally:
        os.umask(saved)

    # Assert: the same permissions as a file written in place, and no temporary file left behind
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "plain.csv"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")

    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_write_removes_the_temporaries_a_killed_writer_left_of_the_same_target(tmp_path):
    # Prepare: what a kill during two earlier writes leaves (0 bytes), and another file's temporary
    stale = [tmp_path / ".rounds.csv.abc123.tmp.csv", tmp_path / ".rounds.csv.x_9.tmp.csv"]
    other = tmp_path / ".final.csv.abc123.tmp.csv"
    for path in (*stale, other):
        path.write_text("")

    # Execute
    atomic_write_text(tmp_path / "rounds.csv", "x\n")

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "rounds.csv"]


# -- log paths: one per results directory ---------------------------------------------------------------
@pytest.mark.parametrize(("results_dir", "log"), [
    (None, "logs/tables/rounds.log"),
    ("results", "logs/tables/rounds.log"),
    ("./results/", "logs/tables/rounds.log"),
    ("study_b", "logs/study_b/tables/rounds.log"),
    ("runs/study_b", "logs/runs/study_b/tables/rounds.log"),
    ("/scratch/me/fedscape", "logs/scratch/me/fedscape/tables/rounds.log"),
])
def test_a_log_mirrors_its_results_directory_and_the_default_keeps_the_plain_layout(results_dir, log):
    from fedscape.core.paths import Results

    config = {} if results_dir is None else {"results_dir": results_dir}

    assert Results.of(config).log("tables/{table}.log", table="rounds") == log


def test_two_results_directories_never_share_a_log_and_their_results_paths_stay_put():
    from fedscape.core.paths import TRAIN_DIR, Results

    default, other = Results.of({}), Results.of({"results_dir": "results_b"})
    fields = {"dataset": "digits", "model": "mlp", "init": "random", "algorithm": "fedavg", "alpha": "iid",
              "num_clients": 4, "participation": "1.0", "seed": 0}

    assert default.log("tables/{table}.log", table="rounds") != other.log("tables/{table}.log", table="rounds")
    assert default.log(TRAIN_DIR, **fields) != other.log(TRAIN_DIR, **fields)
    assert default.table("rounds") == "results/tables/rounds.csv"
    assert other.table("rounds") == "results_b/tables/rounds.csv"
