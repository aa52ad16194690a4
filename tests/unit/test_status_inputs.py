"""`make status` names each run trained from other files than its partition and init files hold now (its meta.json
records the SHA-256 of both, and of the split), with the command that trains it again: Snakemake plans such a run for
its input's newer date alone, or not at all, and a run of the workflow by meaning (as after a partition made again
alone) keeps it, whose analyses then refuse its partition."""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import SCHEMA, TINY

from fedscape.core.io import remake_hint
from fedscape.core.logs import job_log
from fedscape.core.paths import TRAIN_FILE_NAMES, Results
from fedscape.core.runs import build_runs
from fedscape.data.datasets import dataset_from_options
from fedscape.data.partition import load_partition, save_partition
from fedscape.plan import status
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--configfile", "tiny.yaml"]
TABLE = "results/tables/final.csv"  # a target, which the command that trains a run again carries too
HEADER = ("runs trained from other partitions or inits than those there now: 1 (a run of the workflow by meaning does "
          "not train them again; their analyses refuse another split)")
NOTHING_PLANNED = "Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n"


def tiny_config(init_seed: int = 0) -> dict:
    """The tiny config's sections for one IID FedAvg run of one round from a random init of `init_seed`, its results
    in results/ (below the working directory, as Snakemake reads a relative `results_dir`)."""
    config = copy.deepcopy({k: v for k, v in TINY.items() if k in ("datasets", "models", "alphas", "num_clients",
                                                                     "participation", "seeds", "partition",
                                                                     "training")})
    config.update(inits={"random": {"kind": "random", "seed": init_seed}}, alphas=["iid"],
                  algorithms={"fedavg": {"name": "fedavg"}}, results_dir="results")
    config["training"] = {**config["training"], "rounds": 1, "save_clients_at": [], "device": "cpu"}
    return check_config(config, SCHEMA)


def files_of(config: dict) -> dict[str, list[str]]:
    """The outputs of the run's partition, init and train jobs, by job."""
    run, where = build_runs(config)[0], Results.of(config)
    partition = where.partition_file(run)
    return {"partition": [partition, partition.replace("partition.npz", "counts.csv")],
            "init": [where.init_file(dataset=run.dataset, model=run.model, init=run.init)],
            "train": sorted(where.run_file(run, name) for name in TRAIN_FILE_NAMES)}


def make_init(config: dict, path: str) -> None:
    """The init of `config`'s run made by its job at `path`."""
    runs = build_runs(config)
    init_job(init_settings(config, runs, runs[0].dataset, runs[0].model, runs[0].init), path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run's partition, init and train jobs, run in-process into work/results; returns work/."""
    work = tmp_path_factory.mktemp("work")
    config = tiny_config()
    run = build_runs(config)[0]
    files = {job: [str(work / path) for path in paths] for job, paths in files_of(config).items()}
    partition, init, train = files["partition"][0], files["init"][0], files["train"]
    for path in (partition, init, *train):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  files["partition"][1])
    make_init(config, init)
    outputs = {name: str(work / Results.of(config).run_file(run, name)) for name in TRAIN_FILE_NAMES}
    train_job(train_settings(config, run), partition, init, outputs, Path(outputs["meta"]).parent / "_progress")
    return work


def recorded(job: str, outputs: list[str], remake=None) -> None:
    """The job `job` recorded with its `outputs` (through job_log, as every job records its outputs), after `remake`
    (what it writes, where given)."""
    with job_log(f"logs/{job}.log", outputs, "results"):
        if remake is not None:
            remake()


@pytest.fixture
def finished(trained, tmp_path, monkeypatch, restore_logging) -> dict[str, list[str]]:
    """A copy of the finished run in tmp_path (the working directory), each job recorded; the outputs by job."""
    shutil.copytree(trained / "results", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    files = files_of(tiny_config())
    for job, outputs in files.items():
        recorded(job, outputs)
    return files


def dry_runs(monkeypatch, files: dict[str, list[str]], planned: str = NOTHING_PLANNED, config: dict | None = None):
    """status.main's dry run replaced by one that prints `planned`, the dry run of every job (`--forceall`) by one of
    the run's three jobs, and the config by `config` (the tiny one by default)."""
    run = status.subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too
    dag = "Building DAG of jobs...\n" + "".join(
        f"[Mon Nov 23 14:57:18 2026]\nrule {job}:\n    output: {', '.join(outputs)}\n    reason: Forced execution\n"
        for job, outputs in files.items())

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        return status.subprocess.CompletedProcess(cmd, 0, dag if "--forceall" in cmd else planned, "")

    monkeypatch.setattr(status.subprocess, "run", dry_run)
    config = tiny_config() if config is None else config
    monkeypatch.setattr(status, "workflow_config", lambda parsed: config)


def redraw(partition: str) -> None:
    """The partition drawn again into other shards with the same metadata, as the same seed under a numpy whose
    streams changed draws them."""
    part = load_partition(partition)
    with np.load(partition) as f:
        meta = json.loads(str(f["meta"]))
    ds = dataset_from_options(meta["dataset"], tiny_config()["datasets"][meta["dataset"]])
    shards = np.array_split(np.random.default_rng(99).permutation(part.num_samples_total), part.num_clients)
    save_partition(partition, replace(part, client_indices=tuple(np.sort(s) for s in shards)),
                   ds.sample_labels(ds.y_train).numpy(), ds.num_classes,
                   {key: meta[key] for key in ("dataset", "data_sha256") if key in meta})


def rewrite_under_another_numpy(partition: str) -> None:
    """The same split written again, its metadata naming another numpy: other bytes."""
    with np.load(partition, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "numpy": "9.9.9"}))
    with open(partition, "wb") as fh:
        np.savez(fh, **arrays)


def without_inputs(meta: str) -> None:
    """The run's meta.json as runs wrote it before they recorded their inputs."""
    Path(meta).write_text(json.dumps({k: v for k, v in json.loads(Path(meta).read_text()).items() if k != "inputs"}))


def named_line(capsys, named: bool) -> tuple[str, list[str], str | None]:
    """status's output, its lines, and the line after the header of the runs trained from other inputs (None where
    it is not there); asserting that the header is there exactly where `named`."""
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (HEADER in lines) == named
    return out, lines, lines[lines.index(HEADER) + 1] if named else None


def meta_of(files: dict[str, list[str]]) -> str:
    return next(path for path in files["train"] if path.endswith("/meta.json"))


@pytest.mark.parametrize(("change", "named"), [
    ("redrawn by its job", True),  # before: nothing named, "nothing to remake"
    ("as trained", False),
    ("the same split under another numpy", False),
    ("redrawn, the run's meta.json without inputs", False),
    ("redrawn by hand", False),  # not its job's file: named once, made again alone
])
def test_a_run_trained_on_another_split_than_its_partition_holds_is_named(finished, monkeypatch, capsys, change,
                                                                            named):
    # Prepare: the run's partition made again by its job (recorded) into other shards, or with the same split in
    # other bytes; or the run's meta.json of before runs recorded their inputs; or another split put in its place
    files = finished
    partition, meta = files["partition"][0], meta_of(files)
    if change == "redrawn by its job":
        recorded("partition", files["partition"], lambda: redraw(partition))
    elif change == "the same split under another numpy":
        recorded("partition", files["partition"], lambda: rewrite_under_another_numpy(partition))
    elif change == "redrawn, the run's meta.json without inputs":
        recorded("partition", files["partition"], lambda: redraw(partition))
        recorded("train", files["train"], lambda: without_inputs(meta))
    elif change == "redrawn by hand":  # dated after its job, as a file put in its place later is
        redraw(partition)
        later = Path(partition).stat().st_mtime + 3600
        os.utime(partition, (later, later))
    dry_runs(monkeypatch, files)

    # Execute
    assert status.main(ARGS) == 0

    # Assert: another split is named, after the other lines, with the command that trains the runs on it (the user's
    # arguments in it), and there is something to do; the same split, a run that recorded none, and a partition named
    # as not its job's file are not
    out, lines, line = named_line(capsys, named)
    if named:
        run = build_runs(tiny_config())[0]
        assert line.startswith(f"  partition file {partition} is not the split run {run.run_id} was trained on "
                               f"(split SHA-256 ")
        assert f"where its record {meta} names " in line
        assert line.endswith(f"Train the runs on this split: {remake_hint(partition, '--configfile tiny.yaml')}; or "
                             "put back the partition file the runs were trained on")
        assert lines[-2:] == [HEADER, line] and "nothing to remake" not in out
    elif change == "redrawn by hand":
        assert f"  changed: {partition} (" in out
    else:
        assert "nothing to remake" in lines


@pytest.mark.parametrize(("reason", "named"), [
    ("Updated input files: {partition}", True),  # planned for the date alone: a run by meaning keeps it
    ("Params have changed since last execution: before: {{'a': 1}} now: {{'a': 2}}", False),  # trained again anyway
    ("Input files updated by another job: {partition}", False),
])
def test_a_run_the_dry_run_trains_again_whatever_the_triggers_is_not_named(finished, monkeypatch, capsys, reason,
                                                                            named):
    # Prepare: the partition made again into other shards; the dry run plans the run's train job for its newer date,
    # its settings, or a job above it
    files = finished
    partition = files["partition"][0]
    recorded("partition", files["partition"], lambda: redraw(partition))
    planned = (f"Building DAG of jobs...\n[Mon Nov 23 14:57:18 2026]\nrule train:\n    output: "
               f"{', '.join(files['train'])}\n    reason: {reason.format(partition=partition)}\n")
    dry_runs(monkeypatch, files, planned)

    # Execute
    assert status.main(ARGS) == 0

    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert (HEADER in lines) == named
    assert any(line.startswith("  partition file ") for line in lines) == named


@pytest.mark.parametrize(("seed", "named"), [
    (1, True),  # before: nothing named, "nothing to remake"
    (0, False),  # the same init again, bit for bit
])
def test_a_run_trained_from_an_init_made_again_since_is_named(finished, monkeypatch, capsys, seed, named):
    # Prepare: the run's init made again by its job (recorded) from another seed, or from the same
    files = finished
    init, meta = files["init"][0], meta_of(files)
    recorded("init", files["init"], lambda: make_init(tiny_config(seed), init))
    dry_runs(monkeypatch, files, config=tiny_config(seed))

    # Execute
    assert status.main([*ARGS, TABLE]) == 0

    # Assert: named with the command that trains the run again, with the user's arguments (forcing its meta.json:
    # not the init, which would be made again once more)
    out, lines, line = named_line(capsys, named)
    if named:
        run = build_runs(tiny_config())[0]
        assert line.startswith(f"  run {run.run_id} was trained from another init than {init} holds now (SHA-256 ")
        assert f"where its record {meta} names " in line
        assert line.endswith(f"Train the run from this init: {remake_hint(meta, f'--configfile tiny.yaml {TABLE}')}")
        assert "nothing to remake" not in out
    else:
        assert "nothing to remake" in lines


def test_a_partition_many_runs_trained_on_is_hashed_once(finished, monkeypatch):
    # Prepare: a second run (FedProx) on the same partition, its record a copy of the first's; the partition redrawn
    # by its job; the split's digest counted
    files = finished
    config = tiny_config()
    config["algorithms"]["fedprox"] = {"name": "fedprox"}
    config = check_config(config, SCHEMA)
    first, second = build_runs(config)
    where = Results.of(config)
    for name in TRAIN_FILE_NAMES:
        Path(where.run_file(second, name)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(where.run_file(first, name), where.run_file(second, name))
    recorded("partition", files["partition"], lambda: redraw(files["partition"][0]))
    calls = []
    monkeypatch.setattr(status, "split_sha256", lambda path: calls.append(path) or "redrawn")

    # Execute
    found = status.trained_from_other_inputs(config, status.read_records("results"))

    # Assert: both runs named, from one digest of their shared partition
    assert sorted(found) == sorted(run.run_id for run in (first, second))
    assert calls == [files["partition"][0]]
