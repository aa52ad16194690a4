"""Partition kinds through the workflow: `partitions` labels become runs under alpha~<label>/, partitions.csv
gets their rows with a `partition` column, training and the summary take them, and the settings of the
alphas' partitions (so their jobs) stay as they were."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.configs import SCHEMA, TINY
from helpers.workflow import copy_workflow, snakemake

from fedscape.core.runs import build_runs
from fedscape.plan.partition import partition_settings
from fedscape.plan.workflow import check_config

PARTITIONS = {"c2": {"kind": "classes", "classes_per_client": 2}, "qskew": {"kind": "quantity", "beta": 0.5},
              "noise": {"kind": "feature_noise", "sigma": 1.0}}


def _config() -> dict:
    config = copy.deepcopy(TINY)
    config["partitions"] = copy.deepcopy(PARTITIONS)
    config["experiments"] = [{"alpha": "iid"}, {"alpha": "c2"}, {"alpha": "qskew"}, {"alpha": "noise"}]
    config["training"].update(rounds=1, save_clients_at=[])
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["hessian"] = {"enabled": False}
    config["client_stats"] = {"enabled": False}
    return config


def test_labels_join_the_grid_and_leave_the_alphas_settings_unchanged():
    grid = check_config({"alphas": ["iid", 0.1], "partitions": copy.deepcopy(PARTITIONS)}, SCHEMA)
    plain = check_config({"alphas": ["iid", 0.1]}, SCHEMA)

    runs = build_runs(grid)

    assert sorted({r.setting for r in runs}) == ["0.1", "c2", "iid", "noise", "qskew"]
    assert {r.run_id for r in build_runs(plain)} <= {r.run_id for r in runs}
    assert "alpha~c2/" in next(r.run_id for r in runs if r.setting == "c2")
    for alpha in ("iid", "0.1"):  # same settings, so Snakemake reruns none of the alphas' partitions
        assert partition_settings(grid, "digits", alpha, 10, 0) == partition_settings(plain, "digits", alpha, 10, 0)
    assert partition_settings(grid, "digits", "c2", 10, 0)["kind"] == {"kind": "classes", "classes_per_client": 2}


@pytest.mark.slow
def test_partition_kinds_run_through_training_and_the_tables(tmp_path):
    """partition, train, partitions.csv, rounds.csv and summary.csv for IID, #C=2, quantity and noise (~15 jobs)."""
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "kinds.yaml").write_text(yaml.safe_dump(_config()))
    targets = [f"results/tables/{t}.csv" for t in ("partitions", "rounds", "summary")]

    snakemake(workdir, *targets, "--configfile", "kinds.yaml")

    parts = pd.read_csv(workdir / "results/tables/partitions.csv")
    classes = parts[[c for c in parts.columns if c.startswith("class_")]].to_numpy()
    kinds = parts["partition"].to_numpy()
    assert set(kinds) == {"iid", "classes", "quantity", "feature_noise"}
    assert ((classes[kinds == "classes"] > 0).sum(axis=1) == 2).all()
    assert set(parts.loc[parts["partition"] == "classes", "alpha"]) == {"c2"}
    sizes = parts[parts["partition"] == "quantity"]["num_samples"]
    assert sizes.max() > 1.5 * sizes.min()  # Dir(0.5) sizes are unequal
    pool = parts.loc[kinds == "iid", "num_samples"].sum()
    for kind in ("quantity", "feature_noise"):  # every sample of the pool once
        assert parts.loc[kinds == kind, "num_samples"].sum() == pool
    rounds = pd.read_csv(workdir / "results/tables/rounds.csv")
    assert set(rounds["alpha"].astype(str)) == {"inf", "c2", "qskew", "noise"}
    assert (rounds["status"] == "ok").all() and np.isfinite(rounds["train_loss"]).all()
    assert (workdir / "results/train/digits/cnn_small/init~random/algo~fedavg/alpha~c2/clients~4/part~1.0/seed~0"
            / "trajectory.pt").exists()
    summary = pd.read_csv(workdir / "results/tables/summary.csv")
    assert list(summary["alpha"].astype(str)) == ["inf", "c2", "noise", "qskew"]  # IID first, then the labels


def _write_split(path, labels: np.ndarray, order: np.ndarray, clients: int) -> list[np.ndarray]:
    """A split file in the layout Caldarola et al. 2022 publish theirs (LEAF's JSON, img_<index>_label_<label>.png),
    `order` cut into `clients` equal shards, users listed in reverse id order."""
    import json

    shards = np.array_split(order, clients)
    users = list(range(clients))[::-1]
    path.write_text(json.dumps({
        "users": users, "num_samples": [len(shards[u]) for u in users],
        "user_data": {str(u): {"x": [f"img_{i}_label_{labels[i]}.png" for i in shards[u]],
                               "y": [int(labels[i]) for i in shards[u]]} for u in users}}))
    return [np.sort(s) for s in shards]


def test_a_split_file_is_the_partition_jobs_input_and_makes_its_split(tmp_path):
    """Without the file a dry run plans; with it the partition is the file's; a rewritten file remakes it."""
    from fedscape.core.paths import PARTITION_DIR
    from fedscape.data.partition import load_partition
    from fedscape.data.sources import source_from_options

    # Prepare: a tiny config whose one setting is a split file of the digits pool
    workdir = copy_workflow(tmp_path / "wf")
    config = _config()
    config["partitions"] = {"paper": {"kind": "split_file", "path": "splits/paper.json"}}
    config["experiments"] = [{"alpha": "paper"}]
    (workdir / "split.yaml").write_text(yaml.safe_dump(config))
    settings = check_config(copy.deepcopy(config), SCHEMA)
    labels = source_from_options("digits", settings["datasets"]["digits"]).labels
    target = "results/" + PARTITION_DIR.format(dataset="digits", num_clients=4, alpha="paper", seed=0) + \
        "/partition.npz"

    # Execute / Assert: the dry run needs no file; the job reads the file and keeps its split
    snakemake(workdir, "-n", target, "--configfile", "split.yaml")
    (workdir / "splits").mkdir()
    order = np.random.default_rng(5).permutation(len(labels))[: len(labels) - 3]  # 3 samples left out
    expected = _write_split(workdir / "splits/paper.json", labels, order, 4)
    snakemake(workdir, target, "--configfile", "split.yaml")
    part = load_partition(workdir / target)
    assert [ix.tolist() for ix in part.client_indices] == [ix.tolist() for ix in expected]
    assert part.kind == "split_file"
    assert "rule partition" not in snakemake(workdir, "-n", target, "--configfile", "split.yaml").stdout

    # Execute / Assert: a rewritten file remakes the partition (the file is the job's input)
    expected = _write_split(workdir / "splits/paper.json", labels, order[::-1], 4)
    dry = snakemake(workdir, "-n", target, "--configfile", "split.yaml")
    assert "rule partition" in dry.stdout
    snakemake(workdir, target, "--configfile", "split.yaml")
    assert [ix.tolist() for ix in load_partition(workdir / target).client_indices] == \
        [ix.tolist() for ix in expected]
