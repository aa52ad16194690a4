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
