"""The init stage: random, pretrained, IID warm-up and continue inits, their config checks and the DAG."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from helpers.configs import TINY, config_with
from helpers.workflow import copy_workflow, snakemake

from fedscape.models.checkpoint import load_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def test_inits_are_identical_across_the_runs_that_share_them(tiny_run):
    runs = sorted((tiny_run / "results/train").rglob("trajectory.pt"))
    by_init: dict[str, list[torch.Tensor]] = {}
    for path in runs:
        label = next(part for part in path.parts if part.startswith("init~"))
        by_init.setdefault(label, []).append(load_trajectory(path).params[0])

    assert len(runs) == 3 and sorted(by_init) == ["init~pre", "init~random"]
    for label, starts in by_init.items():
        init = load_trajectory(tiny_run / f"results/init/digits/cnn_small/{label}/init.pt").params[0]
        assert all(torch.equal(s, init) for s in starts)


def test_tiny_run_pretrained_init_logs_its_schedule_and_starts_above_chance(tiny_run):
    init = load_trajectory(tiny_run / "results/init/digits/cnn_small/init~pre/init.pt")
    log = (tiny_run / "logs/init/digits/cnn_small/init~pre/init.log").read_text()

    assert init.meta["kind"] == "pretrained" and init.meta["clients_pool_acc"] > 0.3
    assert "pretraining epoch 10/10" in log and "proxy accuracy" in log


# -- workflow --------------------------------------------------------------------------------------
def test_workflow_builds_warmup_and_continue_inits(tmp_path):
    """The 1.0* recipe (continue + lower lr) and an IID warm-up in the DAG of a tiny config."""
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    config = config_with(
        {"warm": {"kind": "iid_warmup", "num_clients": 4, "training": {"lr": 0.02}},
         "cont": {"kind": "continue", "run": {"alpha": 0.5, "init": "random", "algorithm": "fedavg"}}},
        [{"alpha": "iid"}, {"alpha": 0.5}, {"alpha": 0.5, "init": "cont", "algorithm": "lowlr"},
         {"alpha": 0.5, "init": "warm"}],
        algorithms={"fedavg": {"name": "fedavg"}, "lowlr": {"name": "fedavg", "training": {"lr": 0.01}}},
        training={**TINY["training"], "rounds": 2, "save_clients_at": [1]})
    for key in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # grid order matters
    root = "results/init/digits/cnn_small"

    dry = snakemake(workdir, "-n", "--configfile", "c.yaml")
    # executing the warm-up init (partition + init jobs) runs the init script with a named input;
    # the continue init's execution is covered by the library test above (its source run would add
    # a train job to this test)
    snakemake(workdir, f"{root}/init~warm/init.pt", "--configfile", "c.yaml")

    jobs = dry.stdout.split("\n\n")
    cont_job = next(j for j in jobs if f"output: {root}/init~cont/init.pt" in j)
    warm_job = next(j for j in jobs if f"output: {root}/init~warm/init.pt" in j)
    assert "input: results/train/digits/cnn_small/init~random/algo~fedavg/alpha~0.5/" in cont_job
    assert "input: results/partitions/digits/clients~4/alpha~iid/seed~0/partition.npz" in warm_job
    assert "algo~lowlr" in dry.stdout
    warm = load_trajectory(workdir / f"{root}/init~warm/init.pt")
    assert warm.meta["kind"] == "iid_warmup" and warm.meta["num_clients"] == 4 and warm.meta["rounds"] == 1
    assert not (workdir / f"{root}/init~warm/_progress").exists()
    shutil.rmtree(workdir / "results")
