"""One GPU, many jobs: a local run on a machine with visible GPUs starts at most one GPU job per card, while a
CPU-only machine schedules by cores alone. Tested without a GPU: CUDA_VISIBLE_DEVICES=0 makes the workflow count
one card (fedscape.core.gpus), and the jobs, finding no CUDA in torch, compute on the CPU as they would on it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from helpers.workflow import TINY_CONFIG, copy_workflow, planned_resources, snakemake

from fedscape.plan.resources import GPU_RULES

ONE_CARD = {"CUDA_VISIBLE_DEVICES": "0"}
NO_CARD = {"CUDA_VISIBLE_DEVICES": ""}
ROUNDS_TABLE = "results/tables/rounds.csv"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
STARTED = re.compile(r"job started ([0-9.]+) s after its process")


def scheduling_config(tmp_path: Path) -> Path:
    """The tiny config's runs and inits (two inits and three train jobs that may run together), on `device: auto`,
    without the analyses."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    for section in ("interpolation", "layer_barriers", "hessian", "landscapes", "client_stats"):
        config.pop(section, None)
    config["training"].update(device="auto", rounds=1, save_clients_at=[1])
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dry_run_cards(workdir: Path, env: dict[str, str], *args: str) -> dict[str, set[str]]:
    """rule -> the `gpu` resource of its jobs in a dry run (None where a job declares none)."""
    out = snakemake(workdir, "-n", "--configfile", "sched.yaml", *args, env=env).stdout
    return {rule: {job.get("gpu") for job in jobs} for rule, jobs in planned_resources(out).items()}


def job_intervals(workdir: Path, rules: tuple[str, ...]) -> list[tuple[str, datetime, datetime]]:
    """(log, process start, job done) of the jobs of `rules`, from their logs (`core.logs.job_log` writes both)."""
    intervals = []
    for rule in rules:
        for log in (workdir / "logs").rglob(f"{rule}.log"):
            lines = log.read_text().splitlines()  # appended to by every run of the job: the last one counts
            first = next(line for line in reversed(lines) if STARTED.search(line))
            done = next(line for line in reversed(lines) if "job done" in line)
            started = datetime.strptime(STAMP.match(first).group(1), "%Y-%m-%d %H:%M:%S,%f")
            process = started - timedelta(seconds=float(STARTED.search(first).group(1)))
            intervals.append((str(log.relative_to(workdir)), process,
                              datetime.strptime(STAMP.match(done).group(1), "%Y-%m-%d %H:%M:%S,%f")))
    return intervals


def overlapping(intervals) -> list[tuple[str, str]]:
    ordered = sorted(intervals, key=lambda i: i[1])
    return [(a[0], b[0]) for a, b in zip(ordered, ordered[1:], strict=False) if b[1] < a[2]]


def card_jobs(workdir: Path) -> list[tuple[str, datetime, datetime]]:
    """`job_intervals` of the jobs that take a card: train, and the inits that train (not the random one)."""
    return [i for i in job_intervals(workdir, ("init", "train")) if not i[0].endswith("init~random/init.log")]


@pytest.fixture
def workdir(tmp_path) -> Path:
    workdir = copy_workflow(tmp_path / "wf")
    scheduling_config(workdir)
    return workdir


def test_gpu_jobs_ask_for_a_card_only_where_there_is_one(workdir):
    with_card = dry_run_cards(workdir, ONE_CARD)
    without = dry_run_cards(workdir, NO_CARD)

    # the GPU rules' jobs ask for one card where one is visible (the random init, made on the CPU, for none), none
    # on a CPU-only machine; light rules never
    assert {rule: cards for rule, cards in with_card.items() if rule in GPU_RULES} == {
        "init": {"1", "0"}, "train": {"1"}}
    assert {rule: cards for rule, cards in without.items() if rule in GPU_RULES} == {"init": {"0"}, "train": {"0"}}
    assert all(cards == {None} for rule, cards in with_card.items() if rule not in GPU_RULES)


def test_one_card_runs_one_gpu_job_at_a_time_and_more_when_allowed(workdir):
    # Execute: the runs' table (the jobs that take a card, without the figures after them) with 3 cores on one card,
    # then again (forced) when 3 jobs may share it
    snakemake(workdir, ROUNDS_TABLE, "--configfile", "sched.yaml", cores=3, env=ONE_CARD)
    serial = card_jobs(workdir)
    snakemake(workdir, ROUNDS_TABLE, "--configfile", "sched.yaml", "--forceall", "--resources", "gpu=3", cores=3,
              env=ONE_CARD)
    shared = card_jobs(workdir)

    # Assert: the pretrained init and 3 train jobs take the card; none overlapped on it, while sharing it they did
    assert len(serial) == len(shared) == 4
    assert overlapping(serial) == []
    assert overlapping(shared) != []


def test_a_local_run_given_jobs_beside_cores_is_refused_where_a_card_would_be_shared(workdir):
    # Execute: --jobs beside --cores, which Snakemake plans as a cluster run (no per-card limit), with one card and a
    # GPU job to run (the pretrained init), with one card and a limit of its own, with one card and no GPU job to run
    # (the partitions alone), and on a CPU-only machine
    refused = snakemake(workdir, "--configfile", "sched.yaml", "--jobs", "2", "--until", "init", check=False,
                        env=ONE_CARD)
    limited = snakemake(workdir, "--configfile", "sched.yaml", "--jobs", "2", "--resources", "gpu=1", "--until",
                        "init", "--dry-run", env=ONE_CARD)
    no_gpu_job = snakemake(workdir, "--configfile", "sched.yaml", "--jobs", "2", "--until", "partition", env=ONE_CARD)
    cpu_only = snakemake(workdir, "--configfile", "sched.yaml", "--jobs", "2", "--until", "partition", "--forcerun",
                         "partition", env=NO_CARD)

    # Assert: refused before any job, saying how to start it; the others run (dry, or their partition jobs)
    assert refused.returncode != 0
    assert "given --jobs with --cores" in refused.stderr + refused.stdout
    assert "Finished job" not in refused.stderr + refused.stdout
    assert limited.returncode == 0
    assert no_gpu_job.returncode == 0 and list((workdir / "results").rglob("partition.npz"))
    assert cpu_only.returncode == 0 and "Finished job" in cpu_only.stderr + cpu_only.stdout
