"""Logging of workflow jobs: the rule's log file and stderr, and a failing or stopped job's error in its log."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from fedscape.core.config import digest
from fedscape.core.manifest import manifest_path, mark_started, note, start_job, write_record
from fedscape.core.paths import Results

log = logging.getLogger("fedscape")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(path: str | Path | None) -> None:
    """Log to a file (the rule's log) and to stderr, with timestamps: fedscape's INFO, other libraries' warnings.

    Libraries log at INFO too (fontTools writes ~150 lines per PDF figure), which would bury the job's own
    progress lines.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="a"))
    logging.basicConfig(level=logging.WARNING, format=FORMAT, handlers=handlers, force=True)
    log.setLevel(logging.INFO)


@contextlib.contextmanager
def job_log(path: str | Path | None, outputs: Iterable[str] = (), results_dir: str | None = None,
            memory_hint: str | None = None, settings: Mapping | None = None) -> Iterator[None]:
    """Set up a job's logging; an exception is written to the log (type, message, traceback) and re-raised.

    Snakemake points the user at the rule's log when a job fails: the reason must be there, not only
    on the console. A job that ends without writing one of its `outputs` fails, naming it. With `results_dir` (the
    config's), a job that succeeds records its `outputs` (SHA-256, size) and what made them below the results'
    manifest (`fedscape.core.manifest`), for `make verify`; the code version
    it names is taken here, before the job's work (`start_job`), and a mark that the record removes is left beside it
    (`mark_started`): a job that fails or is killed keeps it, and where it had finished before (a rerun, after which
    Snakemake does not make its deleted outputs again while files made from them exist) its log says so and every run
    of the workflow warns of it (`core.manifest.failed_reruns`). A job that runs out of device memory
    (`out_of_device_memory`) also logs `memory_hint`: what the user can change (`fedscape.plan.resources.memory_hint`).
    A SIGTERM during the job raises `Terminated` in it (in the main thread, the only one Python gives signals to):
    the job unwinds, its log says why it stopped, and the handler before it is restored.

    `settings` (a job's `params.settings`, less its data's locations) go into the record as the job computed with
    them, with their `settings_digest` (`fedscape.core.config.digest`). Snakemake's own record of a job's params keeps
    the text of the run that made its outputs where the settings' meaning has not changed since (neutral fields,
    defaults written out: `core.jobs.kept_record`), so a forced rerun under a lowered evaluation batch computes with it
    and says so here (and in its `meta.json` or `hessian.json`, for the jobs that keep their settings there), not in
    Snakemake's record.
    """
    setup_logging(path)
    start_job()
    age = process_age()
    t0, started = time.perf_counter(), time.time()
    if age is not None:  # the job's fixed cost: interpreter, Snakemake's script preamble, imports
        log.info("job started %.2f s after its process", age)
    previous = _stop_on_sigterm()
    record = None
    try:
        if results_dir is not None and path:
            results = Results.of({"results_dir": results_dir})
            record = manifest_path(results.root, results.logs, path)
            mark_started(record)  # (its record removes it: one left names a job that did not finish)
        if settings is not None:
            plain = json.loads(json.dumps(dict(settings), default=str))  # as the record's JSON will hold it
            note(settings=plain, settings_digest=digest(plain))
        yield
        outputs = [str(output) for output in outputs]
        # Snakemake deletes the outputs of a job that misses one (MissingOutputException): a record of the others
        # would name files that are gone, and the log would not say which one the job did not write (no rule declares
        # a directory, so every output is a file)
        if unwritten := [output for output in outputs if not Path(output).is_file()]:
            several = len(unwritten) > 1
            raise FileNotFoundError(f"declared output{'s' if several else ''} {', '.join(unwritten)} "
                                    f"{'were' if several else 'was'} not written by the job")
        if record is not None:
            write_record(record, outputs, started - (age or 0.0), path, root=results.root)
        log.info("job done in %.2f s", time.perf_counter() - t0)
    except Terminated:
        log.error("job stopped by SIGTERM (a scheduler's time limit, scancel, or Snakemake stopping it) after %.0f s: "
                  "its outputs were not (all) written; running the workflow again resumes from the job's last saved "
                  "progress (training keeps it every round, pretraining every epoch)", time.perf_counter() - t0,
                  exc_info=True)
        _log_rerun(record)
        raise
    except BaseException as exc:
        log.error("job failed: %s: %s", type(exc).__name__, exc, exc_info=True)
        if memory_hint and out_of_device_memory(exc):
            log.error("out of device memory: %s", memory_hint)
        _log_rerun(record)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _log_rerun(record: Path | None) -> None:
    """Where the job that failed had finished before (its `record` is there), say in its log that a plain run of the
    workflow may not run it again (`core.manifest.FailedRerun`, which every run of the workflow warns of)."""
    if record is not None and record.is_file():
        log.error("this job had finished before (its record %s): Snakemake deleted its outputs to run it again, and "
                  "does not make a missing file again while files made from it exist; every run of the workflow names "
                  "this job with the command that makes it again", record)


class Terminated(SystemExit):
    """A job stopped by SIGTERM (`job_log`): SLURM's time limit, `scancel` and preemption send it (then SIGKILL after
    its KillWait, ~30 s), and Snakemake stops its local jobs with it. Raised in the job, it unwinds it: `finally`
    blocks run, so `core.io.atomic_path` removes its temporary files. A SystemExit, so that `except Exception` in
    library code lets it through, with the shell's exit code of a process killed by SIGTERM (128 + 15)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    # Further SIGTERMs are ignored, not left to raise again or to kill: a second one (a repeated `scancel` or `kill`,
    # or one signal both sent to the process group and passed on by a parent) would cut the clean-up short inside a
    # `finally`, leaving the temporary files that the first one's unwinding removes. A stuck clean-up is still ended:
    # SLURM's SIGKILL follows, and a user's Ctrl-C (SIGINT) or SIGKILL.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def _stop_on_sigterm() -> signal.Handlers | Callable | None:
    """Make SIGTERM raise `Terminated`; returns the handler to restore, None where none was replaced: Python runs
    signal handlers in the main thread only, and `signal.signal` refuses any other."""
    if threading.current_thread() is not threading.main_thread():
        return None
    # None: a handler installed outside Python, which cannot be put back (signal.signal refuses None): the default
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_terminated)
    return signal.SIG_DFL if previous is None else previous


# What CUDA and its libraries say when a card's memory is full outside torch's caching allocator (which raises
# torch.OutOfMemoryError): the context of a job that starts on a full card, cuBLAS's and cuDNN's workspaces.
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                 "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def out_of_device_memory(exc: BaseException) -> bool:
    """Whether `exc` says a card ran out of memory: torch's OutOfMemoryError (named, so that this module needs no
    torch), or CUDA's and its libraries' own errors (`RuntimeError`, torch's `AcceleratorError`) with their
    messages."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(message in str(exc) for message in _OOM_MESSAGES)


# What an OSError says of a file it could not read now, not of its bytes: a failing disk or file server, a stale NFS
# handle, a timeout, no permission, no memory, an interrupted call. (A file cut short by a kill gives EINVAL from
# torch.load, EOFError or a RuntimeError: damaged.)
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EACCES, errno.EPERM, errno.ENOMEM,
                               errno.EINTR, errno.EAGAIN})


def device_failure(exc: BaseException) -> bool:
    """Whether `exc` is the machine's failure, not its input's: out of memory (`out_of_device_memory`, or the host's
    MemoryError), a device error (torch's `AcceleratorError`, a CUDA error's RuntimeError), or a read that failed for
    the disk's or the file server's sake (`_TRANSIENT_ERRNOS`). A job that meets one while it loads its saved progress
    fails and keeps the progress, where a damaged one is discarded."""
    return (out_of_device_memory(exc) or isinstance(exc, MemoryError) or type(exc).__name__ == "AcceleratorError"
            or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))
            or (isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS))


def process_age() -> float | None:
    """Seconds since this process started (from /proc on Linux; None where that is not available)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
