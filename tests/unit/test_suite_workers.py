"""How `make test` shares the suite among pytest-xdist workers (tests/conftest.py): the end-to-end workflow tests
first, every test of the one tiny run in one group, one torch thread per worker per core."""

from __future__ import annotations

import importlib.util
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
