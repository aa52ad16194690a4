"""Logging of workflow jobs: the rule's log file and stderr, and a failing job's error in its log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("fedscape")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(path: str | Path | None) -> None:
    """Log to a file (the rule's log) and to stderr, with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="a"))
    logging.basicConfig(level=logging.INFO, format=FORMAT, handlers=handlers, force=True)


@contextlib.contextmanager
def job_log(path: str | Path | None) -> Iterator[None]:
    """Set up a job's logging; an exception is written to the log (type, message, traceback) and re-raised.

    Snakemake points the user at the rule's log when a job fails: the reason must be there, not only
    on the console.
    """
    setup_logging(path)
    try:
        yield
    except BaseException as exc:
        log.error("job failed: %s: %s", type(exc).__name__, exc, exc_info=True)
        raise
