"""How `make test` shares the suite among pytest-xdist workers (tests/conftest.py): the end-to-end workflow tests
first, every test of the one tiny run in one group, one torch thread per worker per core."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _conftest():
    spec = importlib.util.spec_from_file_location("suite_conftest", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Item(SimpleNamespace):
    def add_marker(self, mark):
        self.marks.append(mark.mark)


def test_workflow_tests_come_first_and_the_tiny_run_s_tests_share_one_group():
    # Prepare: unit and workflow tests, some reading the tiny run, in collection order
    root = CONFTEST.parent
    items = [_Item(name=name, path=root / where / "test_x.py", fixturenames=fixtures, marks=[])
             for name, where, fixtures in [("u1", "unit", ["tmp_path"]), ("u2", "unit", ["tiny_run"]),
                                           ("w1", "workflow", ["tmp_path"]), ("u3", "unit", []),
                                           ("w2", "workflow", ["tiny_run", "tmp_path"])]]

    # Execute
    _conftest().pytest_collection_modifyitems(None, items)

    # Assert: the workflow tests first, each part in its own order; the tiny run's readers, and only they, grouped
    assert [item.name for item in items] == ["w1", "w2", "u1", "u2", "u3"]
    groups = {item.name: [m.args for m in item.marks if m.name == "xdist_group"] for item in items}
    assert groups == {"w1": [], "w2": [("tiny_run",)], "u1": [], "u2": [("tiny_run",)], "u3": []}


@pytest.mark.parametrize(("workers", "expected"), [(None, 2), ("1", 2), ("2", 1), ("4", 1)])
def test_each_of_several_workers_takes_its_share_of_the_cores(monkeypatch, workers, expected):
    # Prepare: the threads torch had, and the worker count pytest-xdist gives its workers
    before = torch.get_num_threads()
    if workers is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    torch.set_num_threads(2)
    try:
        # Execute
        _conftest().pytest_configure(None)
        # Assert: one process keeps torch's threads; two or more share 2 cores at a thread each, never none
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_two_workers_build_the_tiny_run_once_and_run_every_test_that_reads_it(tmp_path):
    # Prepare: a suite with this conftest's collection hook, six tests reading a session fixture `tiny_run` that
    # records the worker building it, and six that do not (on pytest 9.2, pytest-xdist's groups silently stopped
    # taking, and each worker built the tiny run of its own)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(f"""import importlib.util, os, pytest
spec = importlib.util.spec_from_file_location("suite_conftest", {str(CONFTEST)!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_collection_modifyitems = suite.pytest_collection_modifyitems


def _record(name):
    with open(name, "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.fixture(scope="session")
def tiny_run():
    _record("built")
""")
    (tmp_path / "test_suite.py").write_text("""import pytest
from conftest import _record


@pytest.mark.parametrize("i", range(6))
def test_reads(tiny_run, i):
    _record("read")


@pytest.mark.parametrize("i", range(6))
def test_other(i):
    pass
""")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}

    # Execute: as `make test` runs the suite
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(CONFTEST.parent),
                                                                                  env.get("PYTHONPATH")]))})

    # Assert: one build, and every reader on its worker
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = (tmp_path / "built").read_text().split()
    assert len(built) == 1 and (tmp_path / "read").read_text().split() == built * 6
