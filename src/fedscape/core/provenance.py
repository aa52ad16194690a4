"""Does a file belong to the job that reads it? One check for every reader (partitions, checkpoints, tables).

A valid file of another run (another alpha or seed, copied or restored into the wrong place) reads without error, and
every analysis computed on it would be silently wrong. Each file records what it belongs to (a partition its dataset,
setting, seed and client count; a checkpoint its run id and model; a per-run table its `run_id` column), and each
reader compares that record with what the job expects, through `belongs_problem`, so that the message is the same
everywhere: the file, what was expected, what was found, and the command that remakes it.
"""

from __future__ import annotations

import collections
import csv
import io
import pickle
import zipfile
import zlib
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


def csv_cut_problem(path: str | Path, text: str) -> str | None:
    """One line naming the first line of the CSV `text` that is cut short (no end of line: the file was not written
    to the end) or has another field count than the header; None for a whole table (or an empty text)."""
    if not text:
        return None
    lines = list(csv.reader(io.StringIO(text)))
    width = len(lines[0])
    if not text.endswith("\n"):
        return f"{path}, line {len(lines)}: cut short (no end of line; the file was not written to the end)"
    for number, fields in enumerate(lines[1:], start=2):
        if fields and len(fields) != width:
            return f"{path}, line {number}: {len(fields)} fields where the header has {width}"
    return None


def table_problem(path: str | Path, expect: Mapping[str, str]) -> str | None:
    """Why the CSV table at `path` cannot be read as a job's (empty, cut short, a row of another width, or a row
    whose `expect` column holds another value: another run's table), without pandas; None when it can."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: not a CSV table ({type(exc).__name__}: {exc})"
    if not text.strip():
        return f"{path} is empty"
    problem = csv_cut_problem(path, text)
    if problem is not None or not expect:
        return problem
    rows = csv.reader(io.StringIO(text))
    header = next(rows)
    checked = [(column, header.index(column), str(value)) for column, value in expect.items()
               if column in header]  # a missing column: its reader reports it
    for number, fields in enumerate(rows, start=2):
        for column, index, value in checked:
            if fields and fields[index] != value:
                return belongs_problem(f"{path}, line {number}", f"a table of {column} {value}", {column: value},
                                       {column: fields[index]})
    return None


def checkpoint_record(path: str | Path) -> dict:
    """The plain values (not the tensors) of a dict saved with `torch.save`, read without torch: a checkpoint's
    format, kind and meta (which records its run), so that planning can check it. Raises ValueError naming the
    file when it is not such a file (truncated, garbage, another format)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise ValueError("no data.pkl in the archive")
            obj = _PlainUnpickler(io.BytesIO(archive.read(name))).load()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a readable checkpoint (it holds a {type(obj).__name__}, not a dict)")
    return {k: v for k, v in obj.items() if isinstance(v, str | int | float | bool)}


def _tensor_stub(*args, **kwargs) -> None:
    return None


class _PlainUnpickler(pickle.Unpickler):
    """torch.save's pickle with every torch object (tensors, storages) read as None: nothing else is built."""

    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _tensor_stub
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint")

    def persistent_load(self, pid) -> None:
        return None
