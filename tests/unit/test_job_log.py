"""A job's log: its own progress lines, other libraries' warnings only, and the error of a failing job."""

import logging

import pytest

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
