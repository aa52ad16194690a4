"""Shared fixtures: a copy of the workflow in a temporary directory and one tiny end-to-end run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs")  # envs: the rules' conda files


def copy_workflow(dest: Path) -> Path:
    """Copy the Snakefile, rules, scripts, schemas and configs into `dest` (results go there too)."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run snakemake (from this interpreter's environment) in `workdir`."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models
    run fastest, and deterministically, on one thread next to other test workers on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The workflow run once on tests/data/tiny_config.yaml; returns the working directory."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    shutil.copy2(TINY_CONFIG, workdir / "tiny.yaml")
    snakemake(workdir, "--configfile", "tiny.yaml")
    return workdir
