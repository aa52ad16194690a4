"""What a folder of data files holds, in one digest: the SHA-256 of each file, and of their names and digests.

A data set's location is not part of any job's settings (`fedscape.data.specs.LOCATION_BASELINES`), so different
data under the same path would rerun nothing and leave every result made from the old data looking current. Each job
that reads a data set therefore records the fingerprint of the files it read (`fedscape.data.locations`), and
`make status` compares it with the fingerprint of the files there now.

The digest is over the files' paths relative to their root and their contents: a copy of the data elsewhere has the
fingerprint of the original, a changed byte or a renamed file another. Hashing ImageNet's images takes minutes, so
each file's digest is kept in a cache keyed by its path, size, modification time and inode (DVC's state database does
the same): a job re-reads only files that changed since they were hashed. A lost cache entry (two jobs writing the
cache at once) costs one more hash, never a wrong digest.

Torch-free: `make status` runs without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedscape.core.io import atomic_write_text

_CHUNK = 1 << 20
CACHE_VERSION = 1


@dataclass(frozen=True)
class Fingerprint:
    """The digest of a data set's files, their number and their total size in bytes."""

    sha256: str
    files: int
    bytes: int

    def as_record(self) -> dict:
        return {"sha256": self.sha256, "files": self.files, "bytes": self.bytes}

    @property
    def short(self) -> str:
        return f"{self.sha256[:12]} ({self.files} files, {self.bytes} bytes)"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def tree_fingerprint(root: str | os.PathLike, names: Sequence[str], cache_dir: str | os.PathLike | None = None
                     ) -> Fingerprint:
    """The fingerprint of the files `names` (paths relative to `root`, '/'-separated): SHA-256 over each name and
    its file's digest, in sorted order. `cache_dir`: where the files' digests are kept between calls (one JSON file
    per root; None: no cache). FileNotFoundError naming a missing file."""
    root = Path(root).resolve()
    cache_file = None if cache_dir is None else Path(cache_dir) / f"{hashlib.sha256(bytes(root)).hexdigest()[:20]}.json"
    cached = _read_cache(cache_file)
    fresh: dict[str, list] = {}
    total = hashlib.sha256()
    size = 0
    for name in sorted(set(names)):
        path = root / name
        stat = path.stat()
        key = _stat_key(stat)
        entry = cached.get(name)
        sha = entry[1] if entry and entry[0] == key else file_sha256(path)
        fresh[name] = [key, sha]
        total.update(f"{name}\t{sha}\n".encode())
        size += stat.st_size
    if cache_file is not None and fresh != {k: cached.get(k) for k in fresh}:
        try:  # a read-only results folder: the digests are right, the next call hashes again
            atomic_write_text(cache_file, json.dumps({"version": CACHE_VERSION, "root": str(root),
                                                      "files": {**cached, **fresh}}) + "\n")
        except OSError:
            pass
    return Fingerprint(total.hexdigest(), len(fresh), size)


def _read_cache(path: Path | None) -> dict[str, list]:
    """The cached digests of a root ({} without a readable cache of this version)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}
