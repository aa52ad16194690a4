"""The Makefile's own checks (the two commands a newcomer runs: make run, make test)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("study", [True, False])
def test_clean_deletes_the_default_runs_results_and_keeps_other_studies(tmp_path, study):
    # Prepare: the default run's results and logs, smoke32's, and (or not) a paper study's results_dir below results/
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    default = ["results/train/r/trajectory.pt", "results/tables/rounds.csv", "results/_manifest/a.json",
               "results/.hidden", "logs/train/r.log", "logs/results/other/x.log", "results_smoke32/t.csv",
               ".snakemake/metadata/m"]
    other = ["results/heterogeneity_digits/_manifest/a.json", "results/heterogeneity_digits/train/r/trajectory.pt",
             "logs/results/heterogeneity_digits/train/r.log"]
    _tree(tmp_path, default + (other if study else []))

    # Execute
    proc = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True)

    # Assert: the default run's files gone; a study's results, its logs and Snakemake's records kept, and said
    assert proc.returncode == 0, proc.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name != "Makefile")
    assert left == (sorted([*other, ".snakemake/metadata/m"]) if study else [])
    assert ("kept the results and logs of other studies below results/ and logs/results/: heterogeneity_digits"
            in proc.stdout) is study

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
