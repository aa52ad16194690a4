"""LEAF's FEMNIST through the workflow: its partitions (Dirichlet, and natural: one client per writer; torch-free
jobs) and training runs read data_dir."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml
from helpers.configs import TINY, config_with
from helpers.leaf import write_femnist
from helpers.tables import assert_hd_bounded_or_unresolved
from helpers.workflow import copy_workflow, forcerun_targets, make_status, planned_jobs, snakemake

from fedscape.models.checkpoint import load_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def test_femnist_partition_and_run_read_leafs_files(tmp_path):
    # Prepare: 3 writers in LEAF's repository layout; one Dirichlet run of 3 clients, 2 rounds
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    write_femnist(tmp_path / "leaf", sizes=(20, 16, 24), files=2, layout="leaf")
    femnist = {"data_dir": str(tmp_path / "leaf"), "proxy_fraction": 0.0}
    config = config_with({}, [{"alpha": 0.5}, {"alpha": "writers"}], datasets={"femnist": femnist}, num_clients=[3],
                         partition={"min_size": 5}, training={**TINY["training"], "rounds": 2, "save_clients_at": []},
                         partitions={"writers": {"kind": "natural"}})
    for key in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = "results/train/femnist/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~3/part~1.0/seed~0"
    counts = "results/partitions/femnist/clients~3/alpha~0.5/seed~0/counts.csv"
    natural = run_dir.replace("alpha~0.5", "alpha~writers")

    # Execute
    snakemake(workdir, f"{run_dir}/trajectory.pt", f"{natural}/metrics.csv", counts, "--configfile", "c.yaml")

    # Assert: LEAF's 45 training samples (int(0.75 n) per writer) split among 3 clients, 62 classes
    table = pd.read_csv(workdir / counts)
    assert table["num_samples"].sum() == 15 + 12 + 18 and len(table) == 3
    assert [c for c in table.columns if c.startswith("class_")] == [f"class_{k}" for k in range(62)]
    trajectory = load_trajectory(workdir / run_dir / "trajectory.pt")
    meta = trajectory.model_meta
    assert (meta.num_classes, meta.in_channels, meta.image_size) == (62, 1, 28)
    assert trajectory.meta.get("status", "ok") == "ok" and len(trajectory.params) == 3
    # the natural partition: one client per writer, each with all of its training samples
    by_writer = pd.read_csv(workdir / counts.replace("alpha~0.5", "alpha~writers"))
    assert sorted(by_writer["num_samples"]) == [12, 15, 18]
    assert set(by_writer["partition"]) == {"natural"} and set(by_writer["alpha"]) == {"writers"}
    assert (pd.read_csv(workdir / natural / "metrics.csv")["status"] == "ok").all()


def test_femnist_hessian_with_a_bound_on_the_clients_builds_its_tables(tmp_path):
    # Prepare: one client per writer (3 writers), the Hessian at the init with the per-client Hessians of 2 of them
    # (meta.yaml's FEMNIST Hessian in small)
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    write_femnist(tmp_path / "leaf", sizes=(20, 16, 24), files=2, layout="leaf")
    femnist = {"data_dir": str(tmp_path / "leaf"), "proxy_fraction": 0.0}
    config = config_with({}, [{"alpha": "writers"}], datasets={"femnist": femnist}, num_clients=[3],
                         partition={"min_size": 5}, training={**TINY["training"], "rounds": 1, "save_clients_at": []},
                         partitions={"writers": {"kind": "natural"}},
                         hessian={"enabled": True, "runs": {"alpha": "writers"}, "rounds": [0], "clients": 2,
                                  "trace_probes": 4, "max_iter": 10, "tol": 0.5, "eval_samples": 16,
                                  "density": {"enabled": False}})
    for key in ("interpolation", "layer_barriers", "landscapes", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # Execute
    snakemake(workdir, "results/tables/hessian.csv", "--configfile", "c.yaml")

    # Assert: the aggregate and 2 distinct writers' rows; HN / HD over those 2, said by the `clients` column
    table = pd.read_csv(workdir / "results/tables/hessian.csv")
    clients = [d for d in table["data"] if d != "all"]
    assert len(table) == 3 and table["data"].iloc[0] == "all" and len(set(clients)) == 2
    assert (table["status"] == "ok").all()
    by_clients = pd.read_csv(workdir / "results/tables/hessian_clients.csv")
    assert by_clients.columns.tolist() == ["run_id", "round", "hn", "hd", "clients", "status"]
    assert by_clients["clients"].tolist() == [2]
    assert_hd_bounded_or_unresolved(workdir / "results", by_clients)


def test_status_names_the_results_made_from_other_data_under_the_same_path_and_remakes_them(tmp_path):
    # Prepare: one run on FEMNIST, finished
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    write_femnist(tmp_path / "leaf", sizes=(20, 16, 24), files=2, layout="leaf")
    config = config_with({}, [{"alpha": 0.5}], datasets={"femnist": {"data_dir": str(tmp_path / "leaf")}},
                         num_clients=[3], partition={"min_size": 5},
                         training={**TINY["training"], "rounds": 1, "save_clients_at": []})
    for key in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = "results/train/femnist/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~3/part~1.0/seed~0"
    counts = "results/partitions/femnist/clients~3/alpha~0.5/seed~0/counts.csv"
    snakemake(workdir, f"{run_dir}/metrics.csv", "--configfile", "c.yaml")
    before = make_status(workdir, "c.yaml")

    # Execute: other images under the same path (the labels as they were: the partition's label check passes); then
    # the run alone forced (as a new analysis of it would read the old partition with the new files), then the remake
    train_file = next((tmp_path / "leaf/femnist/data/train").glob("*.json"))
    data = json.loads(train_file.read_text())
    user = next(iter(data["user_data"]))
    data["user_data"][user]["x"][0] = [1.0 - v for v in data["user_data"][user]["x"][0]]
    train_file.write_text(json.dumps(data))
    changed = make_status(workdir, "c.yaml")
    unseen = snakemake(workdir, "-n", f"{run_dir}/metrics.csv", "--configfile", "c.yaml")
    mixed = snakemake(workdir, "--configfile", "c.yaml", "--forcerun", f"{run_dir}/metrics.csv", "--",
                      f"{run_dir}/metrics.csv", check=False)
    train_log = (workdir / "logs" / run_dir.removeprefix("results/") / "train.log").read_text()
    rerun = ("--configfile", "c.yaml", "--forcerun", *forcerun_targets(changed), "--", f"{run_dir}/metrics.csv")
    forced = planned_jobs(workdir, *rerun)
    snakemake(workdir, *rerun)
    remade = make_status(workdir, "c.yaml")

    # Assert: Snakemake sees nothing, make status names the two jobs that read FEMNIST and remakes them
    assert "made from other data" not in before
    assert "Nothing to be done" in unseen.stdout + unseen.stderr
    # a job that would train on the new files with the partition of the old ones stops
    assert mixed.returncode != 0 and "was made from other files of femnist than those there now" in train_log
    assert "made from other data than the files there now: 2 jobs" in changed
    assert f"datasets.femnist ({tmp_path / 'leaf'}) now holds" in changed
    assert f", now 1 changed (train/{train_file.name})" in changed  # which file differs
    assert sorted(forcerun_targets(changed)) == sorted([counts, f"{run_dir}/client_updates.csv"])
    assert forced == {"partition": 1, "train": 1, "total": 2}
    assert "made from other data" not in remade
    # moving the data where the config says is the same data: nothing to remake
    shutil.move(tmp_path / "leaf", tmp_path / "moved")
    config["datasets"]["femnist"]["data_dir"] = str(tmp_path / "moved")
    (workdir / "moved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert "made from other data" not in make_status(workdir, "moved.yaml")
