"""Shared helpers: atomic writes."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fedscape.core.io import atomic_path, atomic_write_text, is_temporary


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


def test_the_new_contents_are_synced_to_disk_before_the_rename(tmp_path, monkeypatch):
    # Prepare: record the syncs (with the bytes the synced file holds then) and the renames, in order
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.pread(fd, 100, 0)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    # Execute
    atomic_write_text(tmp_path / "out.txt", "new contents")

    # Assert: the whole new contents reach the disk, then the name points at them
    assert events == [("fsync", b"new contents"), ("replace", "out.txt")]


@pytest.mark.parametrize("code, written", [(errno.EINVAL, True), (errno.EOPNOTSUPP, True), (errno.EIO, False)])
def test_a_file_system_that_refuses_fsync_still_gets_the_file_and_a_failing_disk_an_error(tmp_path, monkeypatch,
                                                                                          code, written):
    # Prepare: fsync fails with `code`
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    (tmp_path / "out.txt").write_text("old")

    # Execute
    if written:
        atomic_write_text(tmp_path / "out.txt", "new")
    else:
        with pytest.raises(OSError):
            atomic_write_text(tmp_path / "out.txt", "new")

    # Assert: written where fsync is not supported; on an I/O error the old file stays, with no temporary
    assert (tmp_path / "out.txt").read_text() == ("new" if written else "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


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


# Every rule's log for one job of it, as the logs have always been laid out: a log that moved would rerun nothing but
# would leave users' earlier logs where nobody looks for them. (Filled in, so that the wildcards' names may change.)
JOB_LOG_FIELDS = {"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg", "alpha": "0.1",
                  "setting": "0.1", "num_clients": 10, "participation": "1.0", "seed": 0, "round": 30, "pair": "p",
                  "surface": "s", "data": "train", "chunk": 2, "metric": "accuracy", "kind": "table"}
RUN_LOGS = "train/digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~10/part~1.0/seed~0"
SURFACE_LOGS = "landscape/digits/cnn_small/s/train"
EXPECTED_JOB_LOGS = {
    "partition": "partitions/digits/clients~10/alpha~0.1/seed~0/partition.log",
    "init": "init/digits/cnn_small/init~random/init.log",
    "train": f"{RUN_LOGS}/train.log",
    "partitions_table": "tables/partitions.log",
    "rounds_table": "tables/rounds.log",
    "cost_table": "tables/cost.log",
    "client_stats": "tables/client_stats.log",
    "client_stats_figure": "figures/client_stats.log",
    "hessian": f"hessian/{RUN_LOGS.removeprefix('train/')}/round~30/hessian.log",
    "hessian_plane": f"hessian/{RUN_LOGS.removeprefix('train/')}/round~30/eigen_plane.log",
    "hessian_tables": "tables/hessian.log",
    "hessian_by_algorithm_figure": "figures/hessian/lambda_trace_by_algorithm.log",
    "hessian_by_init_figure": "figures/hessian/lambda_trace_by_init.log",
    "hessian_density_figure": "figures/hessian/spectral_density.log",
    "interpolation": "barriers/interpolation/p.log",
    "interpolation_tables": "tables/interpolation.log",
    "interpolation_figure": "figures/barriers/interpolation.log",
    "layer_barriers": "barriers/layerwise/p/round~30.log",
    "layer_barrier_tables": "tables/layer_barriers.log",
    "layer_consecutive_table": "tables/layer_consecutive.log",
    "layer_barrier_figures": "figures/barriers/layerwise/p.log",
    "layer_distance_figure": "figures/barriers/layerwise/p_distances.log",
    "layer_cumulation_figures": "figures/barriers/layerwise/p_cumulation.log",
    "layer_aligned_figures": "figures/barriers/layerwise/p_aligned.log",
    "layer_training_figure": "figures/barriers/layerwise/p_over_training.log",
    "landscape_plane": "landscape/digits/cnn_small/s/plane.log",
    "landscape_chunk": f"{SURFACE_LOGS}/chunk~2.log",
    "landscape_gather": f"{SURFACE_LOGS}/gather.log",
    "landscape_figure": f"{SURFACE_LOGS}/figure.log",
    "surfaces_table": "tables/surfaces.log",
    "final_table": "tables/final.log",
    "summary_table": "tables/summary.log",
    "paired_differences_table": "tables/paired_differences.log",
    "curves_figure": "figures/curves/digits/cnn_small/accuracy.log",
    "accuracy_figure": "figures/accuracy/digits/cnn_small/table.log",
    "cost_figure": "figures/cost/digits/cnn_small.log",
}


@pytest.mark.parametrize(("results_dir", "logs"), [("results", "logs"), ("/scratch/me/study", "logs/scratch/me/study")])
def test_every_job_log_stays_where_it_was(results_dir, logs):
    from fedscape.core.paths import JOB_LOGS, Results, fill

    # Execute
    paths = {rule: fill(Results.of({"results_dir": results_dir}).job_log(rule), **JOB_LOG_FIELDS) for rule in JOB_LOGS}

    # Assert
    assert paths == {rule: f"{logs}/{path}" for rule, path in EXPECTED_JOB_LOGS.items()}


def test_a_rule_without_a_log_template_is_named_with_the_closest():
    from fedscape.core.paths import Results

    with pytest.raises(ValueError, match=r"rule 'cost_tabel' has no log template: add one to JOB_LOGS in "
                                         r"fedscape.core.paths. Did you mean 'cost_table'\?"):
        Results.of({}).job_log("cost_tabel")


@pytest.mark.parametrize(("name", "suffix"), [("final.json", None), ("trees.json.gz", ".gz"), ("plain", None)])
def test_the_temporary_file_of_an_atomic_write_is_named_temporary_and_its_target_is_not(tmp_path, name, suffix):
    # Execute: the name atomic_path gives the file it writes
    with atomic_path(tmp_path / name, suffix) as tmp:
        temporary = is_temporary(tmp)

    # Assert
    assert temporary
    assert not is_temporary(tmp_path / name) and not is_temporary(tmp_path / f".{name}")
