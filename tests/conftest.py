"""Shared fixtures: single-threaded torch for a module, float64 as the default dtype, logging restored after a job's
log, and one tiny end-to-end run of the workflow."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.vectorized import GROUPED_LAYOUTS
from helpers.workflow import TINY_CONFIG, copy_workflow, snakemake

from fedscape.core import manifest
from fedscape.models.layers import POINTWISE_FORMS


def pytest_configure(config):
    """One torch thread per core in each test worker (`make test` runs pytest-xdist's `-n`): workers that each use
    every core oversubscribe them, as parallel jobs do (`fedscape.models.device.use_threads`)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.hookimpl(tryfirst=True)  # the marks set before pytest-xdist's own hook reads them
def pytest_collection_modifyitems(config, items):
    """The end-to-end workflow tests first and the tests of the one tiny run (`tiny_run`) in one group: with
    several workers (`make test`: `-n ... --dist loadgroup`) the longest tests start first, so that short ones even
    out the workers' ends, and one worker builds the tiny run and runs every test that reads it (some move its files
    aside for a while)."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_run"))
    items.sort(key=lambda item: "workflow" not in item.path.parts)


@pytest.fixture(autouse=True)
def no_earlier_job_notes():
    """Each test starts as a job process does (`core.logs.job_log`): with no note of an earlier job (the data sets a
    job reads are among them, and a job that loads a partition checks their fingerprint)."""
    manifest.start_notes()
    yield
    manifest.start_notes()


@pytest.fixture(scope='module')
def one_thread():
    """Single-threaded torch for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models
    run fastest, and deterministically, on one thread next to other test workers on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype during the test (models, data and optimiser state in float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def smooth_relu(monkeypatch):
    """SiLU in place of torch.nn.functional.relu (which fedscape's models and nn.ReLU call) during the test: a float32
    comparison of two computation paths without ReLU's kink, where a value that rounding puts exactly on 0 in one
    path and not in the other turns a whole gradient term off (docs/architecture.md). float64 compares the kink."""
    monkeypatch.setattr(torch.nn.functional, "relu", torch.nn.functional.silu)


@pytest.fixture(params=sorted(GROUPED_LAYOUTS))
def grouped_format(request, monkeypatch):
    """Each memory order of vectorised training's grouped layout, on this CPU: channels last (a CPU's) and channels
    first (a GPU's; `fedscape.models.layers.grouped_memory_format`)."""
    fmt = GROUPED_LAYOUTS[request.param]
    monkeypatch.setattr("fedscape.models.layers.grouped_memory_format", lambda device: fmt)
    return fmt


@pytest.fixture(params=POINTWISE_FORMS)
def pointwise(request, monkeypatch):
    """Each form of a stacked 1x1 convolution (`fedscape.models.layers.pointwise_form`): grouped, and the batched
    matrix product."""
    monkeypatch.setattr("fedscape.models.layers.pointwise_form", lambda device: request.param)
    return request.param


@pytest.fixture
def restore_logging():
    """The root and fedscape loggers as they were before the test: `job_log` reconfigures them for a job process."""
    root, fedscape = logging.getLogger(), logging.getLogger("fedscape")
    saved = (root.level, list(root.handlers), fedscape.level)
    yield
    for handler in root.handlers:
        if handler not in saved[1]:
            handler.close()
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    fedscape.setLevel(saved[2])


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory) -> Path:
    """The workflow run once on tests/data/tiny_config.yaml; returns the working directory."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    shutil.copy2(TINY_CONFIG, workdir / "tiny.yaml")
    snakemake(workdir, "--configfile", "tiny.yaml")
    return workdir
