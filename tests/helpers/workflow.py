"""Running the workflow in tests: a copy of it in a temporary directory, and snakemake on that copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"
# envs: the rules' conda files; profiles: the default profile, which decides what reruns
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs", "profiles")


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


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900, cores: int = 2,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run snakemake (from this interpreter's environment) in `workdir`; `env`: variables set on top of ours."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def snakemake_records(workdir: Path) -> list[dict]:
    """Snakemake's record of every finished job's output in `workdir` (`.snakemake/metadata`: its rule, log, params
    as text, ...), one per output file."""
    return [json.loads(p.read_text()) for p in (workdir / ".snakemake" / "metadata").iterdir()]


def make_status(workdir: Path, config: str, env: dict[str, str] | None = None) -> str:
    """What `make status` prints for `workdir` with `--configfile config`; `env`: variables set on top of ours."""
    proc = subprocess.run([sys.executable, "-m", "fedscape.plan.status", "--configfile", config], cwd=workdir,
                          capture_output=True, text=True, timeout=600,
                          env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def forcerun_targets(status: str) -> list[str]:
    """The files `make status`'s command (`make_status`) forces."""
    command = next(line for line in status.splitlines() if "--forcerun" in line).split()
    return command[command.index("--forcerun") + 1:]


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """rule -> number of jobs that a dry run (`snakemake -n --quiet rules`) of `workdir` plans."""
    proc = snakemake(workdir, "-n", "--quiet", "rules", *args, timeout=300)
    jobs = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def planned_resources(stdout: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` of each of its jobs, as a dry run (`snakemake -n`) prints them."""
    resources: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in stdout.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
            resources.setdefault(rule, []).append(fields)
    return resources
