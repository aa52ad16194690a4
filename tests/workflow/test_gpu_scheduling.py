"""One GPU, many jobs: a local run on a machine with visible GPUs starts at most one GPU job per card, while a
CPU-only machine schedules by cores alone. Tested without a GPU: CUDA_VISIBLE_DEVICES=0 makes the workflow count
one card (fedscape.core.gpus), and the jobs, finding no CUDA in torch, compute on the CPU as they would on it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from helpers.workflow import TINY_CONFIG, copy_workflow, snakemake

from fedscape.plan.resources import GPU_RULES

ONE_CARD = {"CUDA_VISIBLE_DEVICES": "0"}
NO_CARD = {"CUDA_VISIBLE_DEVICES": ""}
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


def dry_run_resources(workdir: Path, env: dict[str, str], *args: str) -> dict[str, set[str]]:
    """rule -> the `resources:` lines of its jobs in a dry run."""
    out = snakemake(workdir, "-n", "--configfile", "sched.yaml", *args, env=env).stdout
    found: dict[str, set[str]] = {}
    for block in out.split("rule ")[1:]:
        name = block.split(":", 1)[0]
        match = re.search(r"resources: ([^\n]*)", block)
        if match:
            found.setdefault(name, set()).add(match.group(1))
    return found


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


@pytest.fixture
def workdir(tmp_path) -> Path:
    workdir = copy_workflow(tmp_path / "wf")
    scheduling_config(workdir)
    return workdir


def test_gpu_jobs_ask_for_a_card_only_where_there_is_one(workdir):
    with_card = dry_run_resources(workdir, ONE_CARD)
    without = dry_run_resources(workdir, NO_CARD)

    # the GPU rules' jobs ask for one card where one is visible, none on a CPU-only machine; light rules never
    assert {rule: lines for rule, lines in with_card.items() if rule in GPU_RULES} == {
        "init": {"tmpdir=/tmp, gpu=1"}, "train": {"tmpdir=/tmp, gpu=1"}}
    assert {rule: lines for rule, lines in without.items() if rule in GPU_RULES} == {
        "init": {"tmpdir=/tmp, gpu=0"}, "train": {"tmpdir=/tmp, gpu=0"}}
    assert all("gpu" not in line for rule, lines in with_card.items() if rule not in GPU_RULES for line in lines)


def test_one_card_runs_one_gpu_job_at_a_time_and_more_when_allowed(workdir):
    # Execute: the same workflow with 3 cores on one card, then again (forced) when 3 jobs may share it
    snakemake(workdir, "--configfile", "sched.yaml", cores=3, env=ONE_CARD)
    serial = job_intervals(workdir, ("init", "train"))
    snakemake(workdir, "--configfile", "sched.yaml", "--forceall", "--resources", "gpu=3", cores=3, env=ONE_CARD)
    shared = job_intervals(workdir, ("init", "train"))

    # Assert: 2 inits and 3 train jobs; none overlapped on one card, while sharing it they did
    assert len(serial) == len(shared) == 5
    assert overlapping(serial) == []
    assert overlapping(shared) != []
