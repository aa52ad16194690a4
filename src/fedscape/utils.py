"""Small shared helpers: clear errors for unknown names, atomic writes, seeding."""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    """A ValueError naming the bad value, the closest valid one and every valid one."""
    valid = sorted(str(v) for v in valid)
    return ValueError(f"unknown {kind} {name!r}.{suggest(name, valid)} Valid {kind}s: {', '.join(valid)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` on success.

    Readers never see a half-written file: the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 minus the
        # umask), so that results in a shared project directory stay readable by the group.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. run seed, round, client id).

    Deriving every random stream from (seed, round, client) makes training resumable at any
    round without saving random-generator states, and keeps runs bit-identical.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
