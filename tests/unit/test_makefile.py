"""The Makefile's own checks (the two commands a newcomer runs: make run, make test)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedscape.core.paths import DEFAULT_LOG_PARTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_install_stops_before_writing_anything_where_the_disk_cannot_hold_the_venv(tmp_path):
    # Prepare: the Makefile and the project file, asking for more free space than any disk has
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)

    # Execute
    proc = subprocess.run(["make", "install", "VENV_GIB=1000000", f"PYTHON={sys.executable}"], cwd=tmp_path,
                          capture_output=True, text=True)

    # Assert: a clear error naming what is needed and what is free, and no half-made venv
    assert proc.returncode != 0
    assert "make install needs about 1000000 GiB free here for .venv" in proc.stderr
    assert "GiB are free" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "pyproject.toml"]


def _tree(root: Path, paths: list[str]) -> None:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def _record(folder: str, output: str) -> str:
    """Snakemake's record of `output` below .snakemake/<folder> (metadata or incomplete), named as
    snakemake.persistence.file names it: urlsafe base64 of the path, in parts of a 255-character file name, each but
    the last with a leading @."""
    name = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [name[i:i + 254] for i in range(0, len(name), 254)]
    return "/".join([".snakemake", folder, *(f"@{part}" for part in parts[:-1]), parts[-1]])


# the default run's logs: one below each first part of its log templates, so that a new one is deleted too
DEFAULT_LOGS = sorted(f"logs/{part}/x.log" for part in DEFAULT_LOG_PARTS)
STUDY = ["results/heterogeneity_digits/_manifest/a.json", "results/heterogeneity_digits/train/r/trajectory.pt",
         "logs/results/heterogeneity_digits/train/r.log",
         _record("metadata", "results/heterogeneity_digits/train/r/trajectory.pt")]
# a results_dir elsewhere (README: /scratch on a cluster) and one beside results/, with their logs and records (one
# of a path too long for one file name)
DEEP = "/scratch/me/fedscape/landscape/" + "d" * 200
OTHER = ["logs/scratch/me/fedscape/train/r.log", "logs/mine/tables/rounds.log",
         _record("metadata", "/scratch/me/fedscape/train/r/trajectory.pt"), _record("metadata", f"{DEEP}/plane.pt"),
         _record("incomplete", "/scratch/me/fedscape/tables/rounds.csv"), _record("metadata", "mine/tables/rounds.csv")]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize(("kept", "said"), [
    ([], []),
    (STUDY, ["kept the results and logs of other studies below results/ and logs/results/: heterogeneity_digits"]),
    (OTHER, ["kept the logs of other results directories below logs/ and Snakemake's records of their results in "
             ".snakemake: mine scratch"]),
], ids=["default_only", "study_below_results", "other_results_dirs"])
def test_clean_deletes_the_default_runs_results_and_keeps_other_studies(tmp_path, kept, said):
    # Prepare: the default run's results, logs and Snakemake records, smoke32's, and those of another study (or none)
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    default = ["results/train/r/trajectory.pt", "results/tables/rounds.csv", "results/_manifest/a.json",
               "results/.hidden", *DEFAULT_LOGS, "logs/results/other/x.log", "results_smoke32/t.csv",
               "logs/results_smoke32/train/r.log", _record("metadata", "results/train/r/trajectory.pt"),
               _record("incomplete", "results/tables/rounds.csv"), _record("metadata", "results_smoke32/t.csv")]
    assert len(_record("metadata", f"{DEEP}/plane.pt").split("/")) == 4  # (its name is cut in two)
    _tree(tmp_path, default + kept)

    # Execute
    proc = subprocess.run(["make", "--no-print-directory", "clean", f"PYTHON={sys.executable}"], cwd=tmp_path,
                          capture_output=True, text=True)  # no "Entering directory" lines under an outer make

    # Assert: the default run's files gone (and .snakemake, where no other record is left); the others' kept, and said
    assert proc.returncode == 0, proc.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name != "Makefile")
    assert left == sorted(kept)
    assert (tmp_path / ".snakemake").exists() is bool(kept)
    assert [line.removeprefix("make clean ").split(" (make clean-all")[0] for line in proc.stdout.splitlines()] == said

    # Execute / Assert: clean-all deletes everything
    subprocess.run(["make", "clean-all"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize(("given", "code", "out", "err"), [
    # no CONFIG=: the default config (it was an IndexError)
    (False, 0, "no CONFIG= given: checking the default config config/config.yaml", ""),
    # an invalid one: its problem alone (it was a traceback before it)
    (True, 2, "", "a config is a mapping of keys"),
])
def test_check_config_checks_the_default_config_and_prints_problems_without_a_traceback(tmp_path, given, code, out,
                                                                                         err):
    # Prepare: a config that is a list; this Python's folder as the venv's (install is not made: -o install)
    bad = tmp_path / "my.yaml"
    bad.write_text("- a list, not a mapping\n")
    config = [f"CONFIG={bad}"] if given else []

    # Execute
    proc = subprocess.run(["make", "-s", "-o", "install", "check-config", f"BIN={Path(sys.executable).parent}",
                           *config], cwd=ROOT, capture_output=True, text=True)

    # Assert: make's exit status (2 where the command failed), and no traceback
    assert proc.returncode == code, proc.stderr
    assert out in proc.stdout and err in proc.stderr and "Traceback" not in proc.stderr
