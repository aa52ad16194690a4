"""Saved progress a job cannot resume from, and what a job says of resuming: an IID warm-up init whose saved strategy
state does not load starts afresh (as the engine does with a progress file it cannot read), where it stopped on every
rerun until `_progress/` was deleted by hand; a run whose strategy state fails to load part-way starts from the state
as set up; and a train job's log names the commands a rerun that resumes takes."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch
import yaml
from helpers.resume import killed_after_round
from helpers.workflow import ROOT, TINY_CONFIG

from fedscape.core.config import load_schema
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import make_partition
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.registry import build_model
from fedscape.plan.init import init_input_paths, init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def _config(tmp_path: Path) -> dict:
    """The tiny config's data and training, one IID run from the random init and one from a 2-round IID warm-up."""
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    config = {key: raw[key] for key in ("datasets", "models", "num_clients", "partition", "training")}
    config.update(results_dir=str(tmp_path / "results"), alphas=["iid"], seeds=[0], participation=[1.0],
                  inits={"random": {"kind": "random", "seed": 0}, "warm": {"kind": "iid_warmup", "rounds": 2}},
                  algorithms={"fedavg": {"name": "fedavg"}}, experiment_defaults={"algorithm": "fedavg"},
                  experiments=[{"init": "random"}, {"init": "warm"}])
    config["training"] = {**config["training"], "rounds": 1, "save_clients_at": [], "device": "cpu"}
    return check_config(config, load_schema(SCHEMA))


def _warmup(config: dict) -> tuple[dict, dict]:
    """The warm-up init's settings and inputs, its IID partition written where the workflow puts it."""
    runs = build_runs(config)
    inputs = init_input_paths(config, runs, "digits", "cnn_small", "warm")
    spec = config["inits"]["warm"]
    Path(inputs["partition"]).parent.mkdir(parents=True, exist_ok=True)
    partition_job(partition_settings(config, "digits", "iid", spec["num_clients"], spec["partition_seed"]),
                  inputs["partition"], Path(inputs["partition"]).with_name("counts.csv"))
    return init_settings(config, runs, "digits", "cnn_small", "warm"), inputs


def _no_strategy(state: dict) -> None:
    del state["strategy"]


def _strategy_not_a_mapping(state: dict) -> None:
    state["strategy"] = [1, 2]


def _server_state_not_a_mapping(state: dict) -> None:
    state["strategy"] = {"server_opt": "damaged"}


@pytest.mark.parametrize("damage", [None, _no_strategy, _strategy_not_a_mapping, _server_state_not_a_mapping],
                         ids=["intact", "no_strategy", "strategy_not_a_mapping", "server_state_not_a_mapping"])
def test_a_warmup_whose_saved_strategy_state_does_not_load_starts_afresh(tmp_path, monkeypatch, caplog, damage):
    # Prepare: the warm-up killed after its round 1, its saved state then damaged (or left as it is)
    settings, inputs = _warmup(_config(tmp_path))
    progress = tmp_path / "_progress"
    killed_after_round(monkeypatch, 1, lambda: init_job(settings, tmp_path / "init.pt", inputs, progress))
    if damage is not None:
        state = torch.load(progress / "state.pt", weights_only=True)
        damage(state)
        torch.save(state, progress / "state.pt")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        init_job(settings, tmp_path / "init.pt", inputs, progress)

    # Assert: intact progress resumes, damaged progress is named and the warm-up redone; either way the init is an
    # unbroken warm-up's, and the progress is gone
    assert ("resuming after round 1/2" in caplog.text) == (damage is None)
    assert (f"cannot resume from {progress} (" in caplog.text) == (damage is not None)
    init_job(settings, tmp_path / "unbroken.pt", inputs, tmp_path / "unbroken_progress")
    assert torch.equal(load_trajectory(tmp_path / "init.pt").params, load_trajectory(tmp_path / "unbroken.pt").params)
    assert not progress.exists()


@pytest.fixture(scope="module")
def digits() -> FederatedData:
    """Digits on 4 IID clients."""
    ds = load_dataset("digits", proxy_fraction=0.2)
    split = make_partition(ds.y_train.numpy(), 4, float("inf"), 0, 10, 1000)
    return FederatedData(ds.x_train, ds.y_train, [torch.as_tensor(i) for i in split.client_indices], ds.x_test,
                         ds.y_test)


def _scaffold_run(data: FederatedData, progress: Path) -> torch.Tensor:
    """2 rounds of SCAFFOLD (a server control variate and the clients') from a seeded model; its global models."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=32, lr=0.05, momentum=0.0, seed=0)
    return run_federated(model, data, make_strategy("scaffold"), cfg, progress_dir=progress, progress_key="k").params


@pytest.mark.parametrize(("drop", "resumes"), [(None, True), ("c_clients", False)])
def test_a_run_whose_strategy_state_fails_to_load_part_way_starts_from_the_state_as_set_up(digits, tmp_path,
                                                                                          monkeypatch, caplog, drop,
                                                                                          resumes):
    # Prepare: killed after round 1, with the clients' control variates dropped from the saved state, so that its load
    # fails after the server's control variate (learnt in round 1, not zero) has been taken
    progress = tmp_path / "_progress"
    killed_after_round(monkeypatch, 1, lambda: _scaffold_run(digits, progress))
    state = torch.load(progress / "state.pt", weights_only=True)
    assert state["strategy"]["c"].abs().sum() > 0
    if drop is not None:
        del state["strategy"][drop]
        torch.save(state, progress / "state.pt")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        rerun = _scaffold_run(digits, progress)

    # Assert: resumed or redone, the run is an unbroken run's (redone from the saved control variate, it would not be)
    assert ("resuming after round 1/2" in caplog.text) == resumes
    assert ("cannot resume from" in caplog.text) == (not resumes)
    assert torch.equal(rerun, _scaffold_run(digits, tmp_path / "unbroken"))


def test_a_train_jobs_log_says_how_a_rerun_resumes_it_after_a_kill(tmp_path, caplog):
    # Prepare: the random-init IID run of 1 round, its partition and init made
    config = _config(tmp_path)
    run = next(run for run in build_runs(config) if run.init == "random")
    partition = tmp_path / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  tmp_path / "counts.csv")
    init_job(init_settings(config, build_runs(config), run.dataset, run.model, run.init), tmp_path / "init.pt")
    outputs = {name: str(tmp_path / "run" / file) for name, file in TRAIN_FILE_NAMES.items()}
    (tmp_path / "run").mkdir()

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        train_job(train_settings(config, run), partition, tmp_path / "init.pt", outputs, tmp_path / "_progress")

    # Assert: the line names the progress folder, and the command of a rerun whose outputs Snakemake deleted (a
    # plain run does not make them again while files made from them exist: `core.manifest.FailedRerun`)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress is kept in")]
    assert line.startswith(f"progress is kept in {tmp_path / '_progress'} after every round: if this job is killed, "
                           "run the workflow again and it resumes from there")
    assert "--rerun-incomplete" in line and "the --forcerun command the workflow gives" in line


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.40 GiB"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   *([torch.AcceleratorError("CUDA error: unspecified launch failure")]
                                     if hasattr(torch, "AcceleratorError") else [])],
                         ids=lambda e: type(e).__name__)
def test_a_card_that_fails_while_a_run_resumes_fails_the_job_and_keeps_its_progress(digits, tmp_path, monkeypatch,
                                                                                    error):
    # Prepare: killed after round 1; the saved state then fails to load as a card fails (out of memory while it is
    # copied onto the card, a device error): the progress is sound
    from fedscape.fl.strategies.scaffold import Scaffold

    progress = tmp_path / "_progress"
    killed_after_round(monkeypatch, 1, lambda: _scaffold_run(digits, progress))
    saved = sorted(p.name for p in progress.iterdir())

    calls = []

    def failing(self, state):  # once: a load that recovers would reload the state as set up
        calls.append(1)
        if len(calls) == 1:
            raise error
        return loads(self, state)

    loads = Scaffold.load_state_dict

    # Execute / Assert: the error reaches the job, and the progress is as it was (not discarded as a damaged state)
    with monkeypatch.context() as patch:
        patch.setattr(Scaffold, "load_state_dict", failing)
        with pytest.raises(type(error)):
            _scaffold_run(digits, progress)
    assert sorted(p.name for p in progress.iterdir()) == saved


@pytest.mark.parametrize(("error", "kept"), [(OSError(errno.EIO, "Input/output error"), True),
                                             (OSError(errno.ESTALE, "Stale file handle"), True), (MemoryError(), True),
                                             (OSError(errno.EINVAL, "Invalid argument"), False),  # torch.load: cut
                                             (EOFError(), False)],
                         ids=["EIO", "ESTALE", "MemoryError", "EINVAL", "EOFError"])
def test_a_saved_round_the_machine_cannot_read_now_fails_the_job_and_keeps_the_progress(digits, tmp_path, monkeypatch,
                                                                                        error, kept):
    # Prepare: killed after round 1; the next read of a saved file fails once, as a failing disk or file server does
    # (kept), or as a file cut short by a kill does (discarded: the run is redone)
    from fedscape.fl import engine as engine_mod

    progress = tmp_path / "_progress"
    killed_after_round(monkeypatch, 1, lambda: _scaffold_run(digits, progress))
    saved = sorted(p.name for p in progress.iterdir())
    calls = []
    load = engine_mod._Progress._load

    def failing(self, path):
        calls.append(path)
        if len(calls) == 1:
            raise error
        return load(self, path)

    # Execute
    with monkeypatch.context() as patch:
        patch.setattr(engine_mod._Progress, "_load", failing)
        if kept:
            with pytest.raises(type(error)):
                _scaffold_run(digits, progress)
        else:
            rerun = _scaffold_run(digits, progress)

    # Assert: kept as it was, or redone to an unbroken run's models
    if kept:
        assert sorted(p.name for p in progress.iterdir()) == saved
    else:
        assert torch.equal(rerun, _scaffold_run(digits, tmp_path / "unbroken"))
