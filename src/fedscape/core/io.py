"""Atomic file writes: readers (and a killed job) never leave or see a half-written output."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` on success.

    Readers never see a half-written file: the rename is atomic on POSIX file systems, and the file is synced
    before it. Temporary files of the same target left by a killed writer (a kill skips the clean-up below) are
    removed first: one job writes a given output, so they cannot belong to a writer still running.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 minus the
        # umask), so that results in a shared project directory stay readable by the group.
        os.chmod(tmp_path, 0o666 & ~_umask())
        # The contents reach the disk before the name does: after a node's crash the target is the old file or the
        # whole new one, never a renamed empty one (a file system may write the rename first).
        _sync(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# `atomic_path`'s temporary name for a target: `.<name>.<mkstemp's random letters>.tmp<suffix>`
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]+\.tmp(\.[^.]*)?")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is named as `atomic_path`'s temporary file: a write in progress, or one a killed writer left,
    never a finished output."""
    return _TEMPORARY.fullmatch(Path(path).name) is not None


def _sync(path: Path) -> None:
    """Flush the file's contents to its disk (`sync_fd`)."""
    with open(path, "rb") as fh:
        sync_fd(fh.fileno())


def sync_fd(fd: int) -> None:
    """Flush the contents of the file open as `fd` to its disk, before a rename gives it its final name; a file
    system that cannot (some FUSE mounts refuse fsync) keeps the rename's own guarantee."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] = str) -> None:
    """Write `obj` as indented JSON atomically; `default` converts values JSON cannot hold (text by default)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=default))


def write_csv(frame: Any, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame (anything with `to_csv`) as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# A word the shell reads back unchanged without quotes. A tilde inside a word (fedscape's `round~0`) is one, but not
# one that starts the word or follows `=` or `:`, where bash expands it to a home directory.
_SHELL_SAFE = re.compile(r"(?:[\w@%+=:,./-]|(?<=[\w.-])~)+")


def shell_words(words: Iterable[str | os.PathLike]) -> str:
    """`words` as one command line's arguments: each one word in the shell again, quoted only where it must be
    (`shlex.quote` quotes every `~`, which would quote nearly every fedscape path)."""
    return " ".join(w if _SHELL_SAFE.fullmatch(w) else shlex.quote(w) for w in map(str, words))


def remake_hint(path: str | os.PathLike, args: str | None = None) -> str:
    """The command that makes a damaged workflow output again, with everything made from it.

    Deleting the file is not enough: Snakemake does not remake a missing intermediate file while the
    files made from it exist ("Nothing to be done"). `--forcerun <file>` reruns the job that writes it and
    every job downstream. Never say this of a file the user supplied: no job can make it.

    `args`: the user's own Snakemake arguments, shell-quoted (`shlex.join`; targets may be among them: unlike
    `--force`, `--forcerun` reruns only what they need), put in the command;
    None where they are not known: the command then says to add the --configfile you run with.
    """
    command = f"{_snakemake('--cores 1', args)} --forcerun {shell_words([path])}"
    if args is None:
        return (f"make it again with `{command}` (plus the --configfile you run with): it reruns the job that writes "
                "it and every job that reads it")
    return f"make it again with `{command}`: it reruns the job that writes it and every job that reads it"


# How the workflow goes on after a file is made again alone (`remake_alone_hint`): by meaning, the default profile's
# rerun triggers (profiles/default/config.yaml) without file dates, so that what was made from the file, now older
# than it, is not made again (Snakemake compares the checksums of small inputs only: a partition over 1 MB would
# otherwise retrain its runs). Nor with Snakemake's `code` trigger: it reruns every job whose script is newer than its
# outputs, as after a fresh clone. With its cores, as `make status`'s commands that run the workflow: the default
# profile sets none, and without them Snakemake runs no job on this machine (a user's own --cores, given after them,
# wins; the triggers, given after the user's arguments, win over theirs).
_CONTINUE_CORES = "--cores all"
_CONTINUE_TRIGGERS = "--rerun-triggers params input software-env"
CONTINUE_BY_MEANING = f"snakemake {_CONTINUE_CORES} {_CONTINUE_TRIGGERS}"


def remake_alone_hint(path: str | os.PathLike, args: str | None = None) -> str:
    """The commands that make an output again without its job's dependents (for a file its job makes
    bit-identically from a seed, such as a partition: the runs trained on it stay valid where it is, which their
    analyses check, `fedscape.data.partition.check_trained_partition`), then go on by meaning.

    `args`: the user's own Snakemake arguments, shell-quoted (`shlex.join`), put in both commands (before their own
    options, so that a --configfile list ends there); without targets, which `--force` would force too, with every job
    between them and the file. None where they are not known: the commands then say to add the --configfile you run
    with."""
    force = f"{_snakemake('--cores 1', args)} --force {shell_words([path])}"
    go_on = f"snakemake {_CONTINUE_CORES} {args} {_CONTINUE_TRIGGERS}" if args else CONTINUE_BY_MEANING
    each = " (each with the --configfile you run with)" if args is None else ""
    return (f"make it again alone (bit-identical from its seed with the numpy it records) with `{force}`, then "
            f"continue with `{go_on}`{each} so that what was made from it is not made again (the analyses of the "
            "runs trained on it check that it is their split, and refuse one drawn otherwise, as under another numpy)")


def _snakemake(options: str, args: str | None) -> str:
    """'snakemake <options> <args>' (`args`: the user's, shell-quoted; None or '': none): the user's arguments after
    the command's own options, so that theirs win."""
    if not args:
        return f"snakemake {options}"
    return f"snakemake {options} {args}"


def supplied_hint(path: str | os.PathLike, key: str) -> str:
    """What to do about a damaged file the user supplied: no job makes it, so it is never to be deleted."""
    return f"it is your own file (`{key}`), which no job makes: fix or replace it, or point `{key}` to another"
