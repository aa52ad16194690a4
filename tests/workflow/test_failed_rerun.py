"""A finished training job run again (a setting changed) and killed: Snakemake deleted its outputs, and does not make
them again while a figure made from them exists. Every run says so with the command that does, and a run whose targets
are made from it stops before its first job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers.workflow import TINY_CONFIG, copy_workflow, snakemake

RUN = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~4/part~1.0/seed~0"
FIGURE = "results/figures/curves/digits/cnn_small/accuracy.png"  # made from the rounds table, made from the run
LOG = Path(f"logs/train/{RUN}/train.log")
FIRST_OUTPUT = f"results/train/{RUN}/client_updates.csv"  # the first of the train job's outputs by name


def one_run_config(rounds: int) -> dict:
    """The tiny config's IID FedAvg run alone, trained for `rounds` rounds, and nothing analysed."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    keys = ("datasets", "models", "num_clients", "participation", "seeds", "partition", "training")
    cfg = {key: cfg[key] for key in keys} | {"alphas": ["iid"], "algorithms": {"fedavg": {"name": "fedavg"}},
                                             "inits": {"random": {"kind": "random", "seed": 0}}}
    cfg["training"].update(rounds=rounds, local_epochs=1, save_clients_at=[1])
    return cfg


def training_process(session: int) -> int | None:
    """The process id of the Python process of Snakemake's session `session` that runs the train rule's script."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
            args = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session and b"python" in args[0] and any(a.endswith(b".train.py") for a in args):
            return int(stat.parent.name)
    return None


def kill_the_training_job(workdir: Path) -> None:
    """Run the workflow towards FIGURE, and kill its training job's process (SIGKILL, as the kernel's OOM killer or a
    `kill -9`) once it has trained a round; Snakemake itself goes on, and ends on the failed job."""
    cmd = [sys.executable, "-m", "snakemake", FIGURE, "--cores", "1", "--configfile", "one.yaml"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (workdir / LOG).exists() and "round 1/" in (workdir / LOG).read_text():
            if (pid := training_process(proc.pid)) is not None:
                os.kill(pid, signal.SIGKILL)
                break
        time.sleep(0.2)
    assert proc.wait(timeout=120) != 0, "the training job finished before it was killed"


def test_a_killed_rerun_is_named_by_every_run_and_the_figure_is_not_redrawn_from_its_earlier_run(tmp_path):
    # Prepare: a finished run and its figure; then the run trained again for more rounds, and killed
    workdir = copy_workflow(tmp_path / "work")
    (workdir / "one.yaml").write_text(yaml.safe_dump(one_run_config(rounds=2)))
    snakemake(workdir, FIGURE, "--configfile", "one.yaml", cores=1)
    (workdir / "one.yaml").write_text(yaml.safe_dump(one_run_config(rounds=500)))
    kill_the_training_job(workdir)

    # Execute: a dry run; the figure forced; a dry run of the remedy
    dry = snakemake(workdir, FIGURE, "-n", "--configfile", "one.yaml")
    forced = snakemake(workdir, FIGURE, "--forcerun", FIGURE, "--configfile", "one.yaml", check=False, cores=1)
    remedy = snakemake(workdir, FIGURE, "-n", "--forcerun", FIRST_OUTPUT, "--configfile", "one.yaml")

    # Assert: the dry run names the job with the command that makes it again; the forced figure would be drawn from
    # the earlier run's table, so nothing runs; the command plans the job
    said = dry.stdout + dry.stderr
    assert f"fedscape: the job logging to {LOG} was run again and did not finish" in said
    assert f"--forcerun {FIRST_OUTPUT}` (plus the --configfile you run with)" in said
    assert forced.returncode != 0
    assert "the targets are made from a job that was run again and did not finish" in forced.stdout + forced.stderr
    assert "rule curves_figure" not in forced.stdout + forced.stderr and (workdir / FIGURE).exists()
    assert "rule train:" in remedy.stdout + remedy.stderr
