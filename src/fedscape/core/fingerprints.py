"""What a folder of data files holds, in one digest: the SHA-256 of each file, and of their names and digests.

A data set's location is not part of any job's settings (`fedscape.data.specs.LOCATION_BASELINES`), so different
data under the same path would rerun nothing and leave every result made from the old data looking current. Each job
that reads a data set therefore records the fingerprint of the files it read (`fedscape.data.locations`), and
`make status` compares it with the fingerprint of the files there now.

The digest is over the files' paths relative to their root and their contents: a copy of the data elsewhere has the
fingerprint of the original, a changed byte or a renamed file another. Hashing ImageNet's images takes minutes, so
each file's digest is kept in a cache keyed by its path, size, modification time and inode (DVC's state database
does the same): a job re-reads only files that changed since they were hashed. Jobs hash under a file lock per
cache, so that jobs starting together on one data set wait for the one that hashes instead of each reading every
file; a lost cache entry (a file system without locks) costs one more hash, never a wrong digest. A change that
keeps a file's size, modification time and inode is not seen through the cache: `rehash` reads every file again.

Beside it, the list of each fingerprint's files and their digests is kept once (`trees/<fingerprint>.json.gz`, about
45 bytes a file compressed: 5 MB for ImageNet-200's 110,000 images), so that a later fingerprint can say which files
differ (`tree_difference`) rather than only that some do.

Torch-free: `make status` runs without torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedscape.core.io import atomic_path, atomic_write_text

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


def tree_fingerprint(root: str | os.PathLike, names: Sequence[str], cache_dir: str | os.PathLike | None = None,
                     rehash: bool = False) -> Fingerprint:
    """The fingerprint of the files `names` (paths relative to `root`, '/'-separated): SHA-256 over each name and
    its file's digest, in sorted order. `cache_dir`: where the files' digests are kept between calls (one JSON file
    per root), and the list of each fingerprint's files (`tree_files`); None: no cache. `rehash`: read every file
    again, whatever the cache holds (the cache then holds the new digests). FileNotFoundError naming a missing
    file."""
    root = Path(root).resolve()
    cache_file = None if cache_dir is None else Path(cache_dir) / f"{hashlib.sha256(bytes(root)).hexdigest()[:20]}.json"
    if cache_file is None:
        return _fingerprint(root, names, None, rehash)
    waits = 0
    while True:
        seen = None
        if not rehash:
            with _locked(cache_file, fcntl.LOCK_SH):  # checks run side by side, and wait only while a job hashes
                seen = _state(cache_file)
                if known := _fingerprint(root, names, cache_file, False, hash_files=False):
                    return known
        with _locked(cache_file, fcntl.LOCK_EX):
            if rehash or waits == 2 or _state(cache_file) == seen:
                return _fingerprint(root, names, cache_file, rehash)
        waits += 1  # another job hashed these files while this one waited: check against its digests


def _state(path: Path) -> tuple[int, int] | None:
    """(inode, modification time) of a cache file, which each write replaces; None where there is none."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


@contextlib.contextmanager
def _locked(cache_file: Path, kind: int) -> Iterator[None]:
    """Hold the lock of a root's cache: shared to check the files against it, exclusive to hash them. The jobs that
    start together on a data set (its partitions, on a cluster) would each hash every file the first time; with the
    lock, one does and the others read its digests. Where the file system has no locks (some parallel file
    systems), or the cache's folder cannot be written, each job hashes on its own, as without the lock."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache_file.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the with block below)
    except OSError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, kind)
        except OSError:
            pass
        yield  # closing the file releases the lock, as the end of a killed job does


def _fingerprint(root: Path, names: Sequence[str], cache_file: Path | None, rehash: bool, hash_files: bool = True
                 ) -> Fingerprint | None:
    """The fingerprint (`tree_fingerprint`); without `hash_files`, None as soon as a file is not as cached."""
    cached = _read_cache(cache_file)
    fresh: dict[str, list] = {}
    total = hashlib.sha256()
    size = 0
    for name in sorted(set(names)):
        path = root / name
        stat = path.stat()
        key = _stat_key(stat)
        entry = None if rehash else cached.get(name)
        known = bool(entry) and entry[0] == key
        if not known and not hash_files:
            return None
        sha = entry[1] if known else file_sha256(path)
        fresh[name] = [key, sha]
        total.update(f"{name}\t{sha}\n".encode())
        size += stat.st_size
    if cache_file is not None and fresh != {k: cached.get(k) for k in fresh}:
        try:  # a read-only results folder: the digests are right, the next call hashes again
            atomic_write_text(cache_file, json.dumps({"version": CACHE_VERSION, "root": str(root),
                                                      "files": {**cached, **fresh}}) + "\n")
        except OSError:
            pass
    found = Fingerprint(total.hexdigest(), len(fresh), size)
    if cache_file is not None:
        _keep_tree(cache_file.parent, found.sha256, {name: sha for name, (_, sha) in fresh.items()})
    return found


TREES = "trees"  # below the cache folder: one list of files per fingerprint


def _tree_path(cache_dir: str | os.PathLike, sha256: str) -> Path:
    return Path(cache_dir) / TREES / f"{sha256}.json.gz"


def _keep_tree(cache_dir: Path, sha256: str, files: dict[str, str]) -> None:
    """Keep the list of a fingerprint's files, once: its name is its content's digest, so an existing one is
    right (a read-only results folder keeps none, and no file difference can be named later)."""
    path = _tree_path(cache_dir, sha256)
    if path.exists():
        return
    try:
        with atomic_path(path, suffix=".gz") as tmp:
            tmp.write_bytes(gzip.compress(json.dumps({"version": CACHE_VERSION, "files": files}).encode(), mtime=0))
    except OSError:
        pass


def tree_files(cache_dir: str | os.PathLike, sha256: str) -> dict[str, str] | None:
    """The files (name -> SHA-256) whose fingerprint is `sha256`, as kept when it was taken; None where no list
    was kept (a fingerprint recorded before lists were kept, another results folder, a damaged list)."""
    try:
        data = json.loads(gzip.decompress(_tree_path(cache_dir, sha256).read_bytes()))
    except (OSError, ValueError, EOFError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
    return files if isinstance(files, dict) else None


@dataclass(frozen=True)
class TreeDifference:
    """The files that differ between two lists of files: changed in content, only in the later one, only in the
    earlier one (each sorted)."""

    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def describe(self, limit: int = 3) -> str:
        """'2 changed (a.json, b.json), 1 added (c.json)': at most `limit` names of each kind."""
        parts = []
        for what, names in (("changed", self.changed), ("added", self.added), ("removed", self.removed)):
            if names:
                shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
                parts.append(f"{len(names)} {what} ({shown})")
        return ", ".join(parts) or "the same files"


def tree_difference(before: Mapping[str, str], after: Mapping[str, str]) -> TreeDifference:
    """Which files of `after` (name -> digest) differ from `before`."""
    return TreeDifference(tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])),
                          tuple(sorted(after.keys() - before.keys())), tuple(sorted(before.keys() - after.keys())))


def describe_change(cache_dir: str | os.PathLike, before: str, after: str) -> str:
    """Which files differ between fingerprints `before` and `after`, in words ('1 changed (a.json)'), or that it
    is not known, where the list of either was not kept."""
    old, new = tree_files(cache_dir, before), tree_files(cache_dir, after)
    if old is None or new is None:
        return "which files differ is not known (no list of the earlier files was kept)"
    return tree_difference(old, new).describe()


def _read_cache(path: Path | None) -> dict[str, list]:
    """The cached digests of a root ({} without a readable cache of this version)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("files", {}) if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}
