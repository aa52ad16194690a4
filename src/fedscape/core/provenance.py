"""Does a file belong to the job that reads it? One check for every reader (partitions, checkpoints, tables).

A valid file of another run (another alpha or seed, copied or restored into the wrong place) reads without error, and
every analysis computed on it would be silently wrong. Each file records what it belongs to (a partition its dataset,
setting, seed and client count; a checkpoint its run id and model; a per-run table its `run_id` column), and each
reader compares that record with what the job expects, through `belongs_problem`, so that the message is the same
everywhere: the file, what was expected, what was found, and the command that remakes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def belongs_problem(path: str | Path, what: str, expected: Mapping, found: Mapping) -> str | None:
    """None when `found` agrees with `expected` on every key of `expected`, else one line naming the file and each
    difference: `<path> is not <what>: run_id 'b' (expected 'a'), ...`."""
    differ = [f"{key} {found.get(key)!r} (expected {value!r})" for key, value in expected.items()
              if found.get(key) != value]
    if not differ:
        return None
    return f"{path} is not {what}: {', '.join(differ)}; the file belongs to another job"


def check_belongs(path: str | Path, what: str, expected: Mapping, found: Mapping, hint: str,
                  error: type[Exception] = ValueError) -> None:
    """Raise `error` with `belongs_problem`'s line and `hint` (the command that remakes the file) on a mismatch."""
    problem = belongs_problem(path, what, expected, found)
    if problem is not None:
        raise error(f"{problem}; {hint}")
