"""LEAF's FEMNIST through the workflow: its partition (a torch-free job) and a training run read data_dir."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from helpers.configs import TINY, config_with
from helpers.leaf import write_femnist
from helpers.workflow import copy_workflow, snakemake

from fedscape.models.checkpoint import load_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def test_femnist_partition_and_run_read_leafs_files(tmp_path):
    # Prepare: 3 writers in LEAF's repository layout; one Dirichlet run of 3 clients, 2 rounds
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    write_femnist(tmp_path / "leaf", sizes=(20, 16, 24), files=2, layout="leaf")
    femnist = {"data_dir": str(tmp_path / "leaf"), "proxy_fraction": 0.0}
    config = config_with({}, [{"alpha": 0.5}], datasets={"femnist": femnist}, num_clients=[3],
                         partition={"min_size": 5}, training={**TINY["training"], "rounds": 2, "save_clients_at": []})
    for key in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = "results/train/femnist/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~3/part~1.0/seed~0"
    counts = "results/partitions/femnist/clients~3/alpha~0.5/seed~0/counts.csv"

    # Execute
    snakemake(workdir, f"{run_dir}/trajectory.pt", counts, "--configfile", "c.yaml")

    # Assert: LEAF's 45 training samples (int(0.75 n) per writer) split among 3 clients, 62 classes
    table = pd.read_csv(workdir / counts)
    assert table["num_samples"].sum() == 15 + 12 + 18 and len(table) == 3
    assert [c for c in table.columns if c.startswith("class_")] == [f"class_{k}" for k in range(62)]
    trajectory = load_trajectory(workdir / run_dir / "trajectory.pt")
    meta = trajectory.model_meta
    assert (meta.num_classes, meta.in_channels, meta.image_size) == (62, 1, 28)
    assert trajectory.meta.get("status", "ok") == "ok" and len(trajectory.params) == 3
