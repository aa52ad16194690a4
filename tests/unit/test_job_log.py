"""A job's log: its own progress lines, other libraries' warnings only, and the error of a failing or stopped job."""

import ast
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fedscape
from fedscape.core.io import is_temporary
from fedscape.core.logs import job_log

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.mark.parametrize(
    ("logger", "level", "kept"),
    [
        ("fedscape.train", logging.INFO, True),
        ("fedscape", logging.INFO, True),
        ("fontTools.subset", logging.INFO, False),  # ~150 lines per PDF figure
        ("fontTools.subset", logging.WARNING, True),
        ("matplotlib", logging.DEBUG, False),
    ],
)
def test_job_log_keeps_fedscape_info_and_other_libraries_warnings(tmp_path, logger, level, kept):
    # Prepare
    path = tmp_path / "logs" / "job.log"

    # Execute
    with job_log(path):
        logging.getLogger(logger).log(level, "the marker line")

    # Assert
    assert ("the marker line" in path.read_text()) is kept
    assert "job done in" in path.read_text()


def test_job_log_writes_a_failing_jobs_error_and_reraises(tmp_path):
    # Prepare
    path = tmp_path / "job.log"

    # Execute
    with pytest.raises(ValueError, match="bad partition"), job_log(path):
        raise ValueError("bad partition in results/partitions/x.npz")

    # Assert
    text = path.read_text()
    assert "job failed: ValueError: bad partition in results/partitions/x.npz" in text
    assert "Traceback" in text
    assert "job done in" not in text


@pytest.mark.parametrize(("error", "hinted"), [
    (lambda: __import__("torch").cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    # CUDA's and its libraries' own errors when a card is full outside torch's allocator (a context on a full card,
    # cuBLAS's workspace), as torch raises them: AcceleratorError (a RuntimeError) or RuntimeError
    (lambda: getattr(__import__("torch"), "AcceleratorError", RuntimeError)("CUDA error: out of memory"), True),
    (lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"), True),
    (lambda: RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (lambda: ValueError("out of memory"), False),  # not an error of the device
])
def test_a_job_out_of_device_memory_says_what_bounds_its_memory(tmp_path, error, hinted):
    # Prepare
    path = tmp_path / "job.log"

    # Execute
    with pytest.raises(type(error())), job_log(path, memory_hint="lower hessian.batch_size (now 512)"):
        raise error()

    # Assert: the hint follows the errors of a full card only
    text = path.read_text()
    assert "job failed: " in text
    assert ("out of device memory: lower hessian.batch_size (now 512)" in text) is hinted


# A job in its own process, inside an atomic write of its output when it says it is ready (file `ready`); it finishes
# once file `go` appears. argv: its folder, and whether its clean-up sends itself a second SIGTERM (as a repeated
# `scancel` would, while the first one's unwinding runs).
STOPPED_JOB = """
import os, signal, sys, time
from pathlib import Path
from fedscape.core.io import atomic_path
from fedscape.core.logs import job_log

folder, again = Path(sys.argv[1]), sys.argv[2] == "again"
with job_log(folder / "job.log"), atomic_path(folder / "out" / "table.csv") as tmp:
    tmp.write_text("half a table")
    try:
        (folder / "ready").touch()
        while not (folder / "go").exists():
            time.sleep(0.01)
    finally:
        if again:
            os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize(("sigterms", "code", "stopped"), [
    (0, 0, False),
    (1, 128 + signal.SIGTERM, True),
    (2, 128 + signal.SIGTERM, True),  # the second during the clean-up
])
def test_a_job_stopped_by_sigterm_unwinds_and_its_log_says_why(tmp_path, sigterms, code, stopped):
    # Prepare: the job's process imports the library this test does
    env = {**os.environ, "PYTHONPATH": str(Path(fedscape.__file__).parents[1])}
    job = subprocess.Popen([sys.executable, "-c", STOPPED_JOB, str(tmp_path), "again" if sigterms == 2 else "once"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # against a hung test only
    while not (tmp_path / "ready").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)

    # Execute
    if sigterms:
        job.send_signal(signal.SIGTERM)
    else:
        (tmp_path / "go").touch()
    _, stderr = job.communicate(timeout=60)

    # Assert: the write in progress is neither finished nor left behind, and the log says why the job stopped
    assert job.returncode == code, stderr
    text = (tmp_path / "job.log").read_text()
    assert ("job stopped by SIGTERM (a scheduler's time limit, scancel, or Snakemake stopping it) after" in text) \
        is stopped
    assert ("its outputs were not (all) written; running the workflow again resumes" in text) is stopped
    assert ("Traceback" in text) is stopped  # where the job was
    assert ("job done in" in text) is not stopped
    assert (tmp_path / "out" / "table.csv").exists() is not stopped
    assert [p.name for p in (tmp_path / "out").iterdir() if is_temporary(p)] == []


@pytest.fixture
def earlier_handler():
    """A SIGTERM handler of the process's own, installed before the job; the one before the test is put back after."""
    def handler(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("fails", [False, True])
def test_job_log_raises_on_sigterm_during_the_job_and_restores_the_earlier_handler(tmp_path, earlier_handler, fails):
    # Prepare
    during = []

    # Execute
    try:
        with job_log(tmp_path / "job.log"):
            during.append(signal.getsignal(signal.SIGTERM))
            if fails:
                raise ValueError("bad partition")
    except ValueError:
        pass

    # Assert
    assert during[0] not in (earlier_handler, signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is earlier_handler


def test_job_log_in_another_thread_leaves_the_sigterm_handler(tmp_path, earlier_handler):
    # Prepare: signal.signal raises ValueError outside the main thread
    during, errors = [], []

    def job():
        try:
            with job_log(tmp_path / "job.log"):
                during.append(signal.getsignal(signal.SIGTERM))
        except BaseException as exc:
            errors.append(exc)

    # Execute
    thread = threading.Thread(target=job)
    thread.start()
    thread.join()

    # Assert
    assert errors == []
    assert during == [earlier_handler]
    assert "job done in" in (tmp_path / "job.log").read_text()


@pytest.mark.parametrize(("written", "unwritten"), [
    (["a.csv", "b.csv"], None),
    (["a.csv"], "declared output results/t/b.csv was not written by the job"),  # Snakemake would delete a.csv
    ([], "declared outputs results/t/a.csv, results/t/b.csv were not written by the job"),
])
def test_a_job_that_did_not_write_a_declared_output_fails_naming_it_and_writes_no_record(tmp_path, monkeypatch,
                                                                                        written, unwritten):
    # Prepare: a job declaring two outputs
    monkeypatch.chdir(tmp_path)
    Path("results/t").mkdir(parents=True)
    record = Path("results/_manifest/t/j.json")
    declared = ["results/t/a.csv", "results/t/b.csv"]

    # Execute
    with pytest.raises(FileNotFoundError) if unwritten else contextlib.nullcontext() as failed:
        with job_log("logs/t/j.log", declared, "results"):
            for name in written:
                Path("results/t", name).write_text(f"{name}\n")

    # Assert: a record of every output, or a failure naming those not written (in the log) and no record
    if unwritten:
        assert str(failed.value) == unwritten
        assert f"job failed: FileNotFoundError: {unwritten}" in Path("logs/t/j.log").read_text()
        assert not record.exists()
    else:
        assert sorted(json.loads(record.read_text())["outputs"]) == ["t/a.csv", "t/b.csv"]


SCRIPTS = Path(__file__).resolve().parents[2] / "workflow" / "scripts"
# The scripts that hand their job its settings from the rule's params (one `settings` param, or every param)
SETTINGS_FROM_PARAMS = ("sm.params.settings", "sm.params.items()")


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda path: path.stem)
def test_a_script_whose_job_takes_its_params_as_settings_records_them(script):
    # Prepare
    text = script.read_text()
    calls = [node for node in ast.walk(ast.parse(text))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "job_log"]

    # Assert: its job's record holds the settings it computed with (`job_log`'s `settings`)
    assert len(calls) == 1
    if any(source in text for source in SETTINGS_FROM_PARAMS):
        assert "settings" in {keyword.arg for keyword in calls[0].keywords}
