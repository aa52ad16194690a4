"""Down-sampled ImageNet 32x32 (Chrabaszcz et al. 2017, A Downsampled Variant of ImageNet) streamed from disk.

The published ``*.npz`` batch files (``train_data_batch_1.npz`` ...) hold ``data`` (uint8 ``[N, 3072]``,
channel-major) and ``labels`` (1..1000). All 1.28M images are 3.9 GB as uint8 and four times that as
float32, so nothing holds them in memory: the labels are read (10 MB), and each batch's rows are read
from the uint8 bytes on disk and converted on the fly, so the resident memory stays one batch whatever
the size of the data. An ``.npz`` member stored uncompressed (``np.savez``) is read where it lies; a
compressed one (``np.savez_compressed``) is unpacked once, chunk by chunk, to a uint8 ``.npy`` next to
the data (``.fedscape_cache/``) and read from there. Where the data's folder cannot be written (a shared,
read-only copy on a cluster), it is unpacked to the user's cache instead: ``$FEDSCAPE_CACHE_DIR``, else
``$XDG_CACHE_HOME/fedscape`` or ``~/.cache/fedscape`` (3.9 GB for the whole training set: point the variable at
scratch where home has a quota).

An unpacked copy is named by its member's CRC-32 and size, which the zip file stores: a file replaced under
the same name (other images, the same count) is unpacked again rather than read from the old copy, and the
old copy is removed. A copy is written to a temporary file, synced to disk and renamed into place, so that a node's
crash leaves the whole copy or none; one whose size is not its header's (cut short all the same: copied in part, or
written before copies were synced) is unpacked again. A temporary file that a killed unpack left (a kill skips every
clean-up) is removed by the next job that opens the data, once no running unpack holds its lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from fedscape.core.io import sync_fd
from fedscape.data.datasets import unit_pixels
from fedscape.data.specs import IMAGENET32_FILES

ROW_BYTES = 3 * 32 * 32
NUM_CLASSES = 1000  # ImageNet-1k's classes, which the published files number 1..1000
CACHE_DIR = ".fedscape_cache"  # inside the data folder
CACHE_ENV = "FEDSCAPE_CACHE_DIR"  # the user's cache, where the data folder cannot be written

log = logging.getLogger(__name__)
_CHUNK_ROWS = 16384  # rows per read when unpacking a compressed file (48 MB)
# Where the file system has no locks, a temporary copy this many seconds older than its last write is taken for one a
# killed unpack left: a running unpack writes every few seconds (48 MB a chunk), and one stopped this long has failed
_ABANDONED_SECONDS = 24 * 3600


@dataclass(frozen=True)
class _Segment:
    """The ``data`` rows of one file: raw uint8 ``[rows, 3072]`` at byte ``offset`` of ``path``."""

    path: Path
    offset: int
    rows: int


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy array that starts at ``f``'s position; ``f`` left at its data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


# What zipfile, zlib and numpy raise on a truncated or damaged .npz (BadZipFile: File is not a zip file, EOFError,
# zlib's and numpy's format ValueErrors), none naming the file
_DAMAGED_ZIP = (zipfile.BadZipFile, EOFError, zlib.error)  # the archive's own (a header's ValueError is not)
_DAMAGED = (*_DAMAGED_ZIP, ValueError)


def _damaged(path: Path, exc: Exception, what: str = "") -> ValueError:
    """The error of a damaged `.npz` (`exc`, one of _DAMAGED, raised while reading `what` of it), naming the file."""
    kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
    return ValueError(f"{path}: cannot read {what or 'this .npz'}: the file is damaged, e.g. truncated by an "
                      f"interrupted copy ({kind}: {(str(exc).splitlines() or [''])[0]}); copy it again from "
                      "down-sampled ImageNet's published archive")


def _read_header(path: Path, f: BinaryIO, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """`_npy_header` of member `member` of `path`; a ValueError naming both if it cannot be read."""
    try:
        return _npy_header(f)
    except _DAMAGED as exc:
        raise _damaged(path, exc, f"the header of `{member}`") from None


def _check_header(where: str, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> int:
    """The row count of a ``data`` array that is uint8 [N, 3072] (or [N, 3, 32, 32]) in C order."""
    rows = shape[0] if shape else 0
    if dtype != np.uint8 or fortran or int(np.prod(shape[1:])) != ROW_BYTES or len(shape) < 2:
        raise ValueError(f"{where}: expected `data` as uint8 [N, 3072] in C order, got {dtype} {list(shape)}"
                         f"{' (Fortran order)' if fortran else ''}")
    return rows


def user_cache(directory: Path) -> Path:
    """Where the compressed files of data folder `directory` are unpacked when the folder cannot be written: a
    folder per data folder below the user's cache (`CACHE_ENV`, else XDG's cache home)."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fedscape")
    return Path(base) / "imagenet32" / hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:16]


def _segment(path: Path, cache_dirs: tuple[Path, ...]) -> tuple[_Segment, np.ndarray]:
    """Where the images of one ``.npz`` lie on disk (unpacked to the first writable cache if compressed), and its
    labels."""
    try:
        zf = zipfile.ZipFile(path)
    except _DAMAGED as exc:  # BadZipFile: File is not a zip file, for one cut short (its directory is at its end)
        raise _damaged(path, exc) from None
    with zf:
        names = {Path(n).stem: n for n in zf.namelist()}
        if "data" not in names or "labels" not in names:
            raise ValueError(f"{path}: expected arrays `data` and `labels`, found {sorted(names)}")
        try:
            with zf.open(names["labels"]) as f:
                labels = np.lib.format.read_array(f, allow_pickle=False).astype(np.int64).reshape(-1)
        except _DAMAGED as exc:
            raise _damaged(path, exc, "`labels`") from None
        info = zf.getinfo(names["data"])
        if info.compress_type == zipfile.ZIP_STORED:
            with path.open("rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
                start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                    int.from_bytes(local[28:30], "little")
                raw.seek(start)
                rows = _check_header(str(path), *_read_header(path, raw, "data"))
                segment = _Segment(path, raw.tell(), rows)
        else:
            segment = _unpacked(path, zf, info, cache_dirs)
    if len(labels) != segment.rows:
        raise ValueError(f"{path}: {segment.rows} images but {len(labels)} labels")
    return segment, labels


def _cached(target: Path, rows: int) -> _Segment | None:
    """The segment of an unpacked copy at `target` if it holds `rows` images, all of them, else None. A copy whose
    file is not as long as its header says (cut short: by a node's crash before copies were synced, say) is not
    read, or every job would fail in the middle of an epoch at its first missing image: it is unpacked again."""
    try:
        with target.open("rb") as c:
            shape, fortran, dtype = _npy_header(c)
            if shape == (rows, ROW_BYTES) and dtype == np.uint8 and not fortran:
                size, whole = os.fstat(c.fileno()).st_size, c.tell() + rows * ROW_BYTES
                if size == whole:
                    return _Segment(target, c.tell(), rows)
                log.warning("%s: %d bytes, not the %d of its %d images (cut short?): unpacking it again", target, size,
                            whole, rows)
    except (FileNotFoundError, NotADirectoryError):  # none there (or no such folder)
        pass
    except (OSError, ValueError) as exc:  # a damaged header (an empty file: ValueError), or one not readable
        log.warning("%s cannot be read (%s): unpacking it again", target, exc)
    return None


def _unpacked(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cache_dirs: tuple[Path, ...]) -> _Segment:
    """The unpacked uint8 copy of a compressed ``data`` member: one already in a cache folder, else one written to
    the first of `cache_dirs` that can be written. The copy's name holds the member's CRC-32 and size."""
    name = f"{path.stem}.{info.CRC:08x}-{info.file_size}.data.npy"
    try:
        with zf.open(info) as f:
            rows = _check_header(str(path), *_read_header(path, f, "data"))
    except _DAMAGED_ZIP as exc:  # opening the member
        raise _damaged(path, exc, "`data`") from None
    for cache_dir in cache_dirs:
        if (found := _cached(cache_dir / name, rows)) is not None:
            _remove_abandoned(path, cache_dir)  # a killed unpack's, which no later one would remove
            return found
    failures = []
    for cache_dir in cache_dirs:
        try:
            with zf.open(info) as f:
                _npy_header(f)
                segment = _unpack(path, f, rows, cache_dir / name)
        except OSError as exc:
            failures.append(f"{cache_dir} ({exc})")
            continue
        except _DAMAGED_ZIP as exc:  # its compressed bytes (Bad CRC-32, cut short)
            raise _damaged(path, exc, "`data`") from None
        if failures:
            log.info("%s: unpacked to %s (%s)", path, cache_dir, "; ".join(failures))
        return segment
    raise OSError(f"{path} stores `data` compressed, so it is unpacked once, and no cache folder could be written: "
                  f"{'; '.join(failures)}. Set {CACHE_ENV} to a writable folder ({rows * ROW_BYTES / 2**30:.2f} GiB "
                  "for this file, 3.9 GiB for all of down-sampled ImageNet's training set), or store the files "
                  "uncompressed (np.savez), which are read in place")


def _copies(stem: str) -> str:
    """The pattern of the names of the unpacked copies of file `stem`, of any version (or named before copies carried
    their CRC)."""
    return rf"{re.escape(stem)}(\.[0-9a-f]{{8}}-\d+)?\.data\.npy"


def _temporary(stem: str) -> re.Pattern:
    """The names of the temporary files of the copies of file `stem`, as `_locked_temporary` makes them."""
    return re.compile(rf"\.{_copies(stem)}\.[A-Za-z0-9_]+\.tmp")


def _remove_abandoned(path: Path, folder: Path) -> None:
    """Remove the temporary copies of `path` in `folder` that killed unpacks left (SIGKILL, or a SIGTERM outside a
    job's `core.logs.job_log`, skip `_unpack`'s clean-up: gigabytes each): those whose lock no running unpack holds.
    Unpacks of the same file run at once by design (`_unpack`), so a temporary file is no killed one's by its name
    alone.
    Where the file system has no locks, one unwritten for `_ABANDONED_SECONDS`. Any failure leaves the file."""
    pattern = _temporary(path.stem)
    try:
        names = [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return
    for tmp in names:
        try:
            fd = os.open(tmp, os.O_RDWR)  # writable: where flock is emulated by POSIX locks (NFS), LOCK_EX needs it
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running unpack's
            except OSError:  # no locks on this file system
                if time.time() - os.fstat(fd).st_mtime < _ABANDONED_SECONDS:
                    continue
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:  # not renamed into place meanwhile
                os.unlink(tmp)
                log.info("removed %s, left by an unpack that was killed", tmp)
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the lock


def _locked_temporary(target: Path) -> tuple[int, Path]:
    """A new temporary file beside `target`, open (its descriptor) and locked for as long as it is open, so that
    `_remove_abandoned` leaves it. Another job's clean-up may have removed it between its creation and the lock:
    then another is made."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: the clean-up goes by age there
            return fd, Path(tmp)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, Path(tmp)
        except FileNotFoundError:
            pass
        os.close(fd)


def _unpack(path: Path, member: BinaryIO, rows: int, target: Path) -> _Segment:
    """Write the `rows` images that `member` holds (after its header) to `target` as a uint8 ``.npy``, chunk by
    chunk, then remove the copies of earlier versions of `path` in the same folder; the copy's segment."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path, target.parent)
    # A private temporary renamed into place: init jobs sharing the data may unpack the same file at once, and
    # each then renames a complete, identical copy. It stays locked until renamed (closing it releases the lock).
    fd, tmp = _locked_temporary(target)
    try:
        # plain writes: a writable map would keep every page resident; the descriptor stays open, and locked
        with open(fd, "wb", closefd=False) as out:
            header = {"descr": "|u1", "fortran_order": False, "shape": (rows, ROW_BYTES)}
            np.lib.format.write_array_header_1_0(out, header)
            offset = out.tell()
            for start in range(0, rows, _CHUNK_ROWS):
                chunk = member.read(min(_CHUNK_ROWS, rows - start) * ROW_BYTES)
                if len(chunk) != min(_CHUNK_ROWS, rows - start) * ROW_BYTES:
                    raise ValueError(f"{path}: `data` ends after {start} of {rows} rows")
                out.write(chunk)
        os.chmod(fd, 0o644)
        # The contents reach the disk before the name does: after a node's crash the copy is whole or not there
        # (a file system may write the rename first), as core.io.atomic_path's outputs
        sync_fd(fd)
        os.replace(tmp, target)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)
    version = re.compile(_copies(path.stem))
    for old in target.parent.iterdir():
        if old != target and version.fullmatch(old.name):  # an earlier version's copy (or one named before
            old.unlink(missing_ok=True)  # copies carried their CRC)
    return _Segment(target, offset, rows)


def _training_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """A file's labels 1..1000 as the classes 0..999; ValueError naming the file for labels outside 1..1000 (a
    file re-saved with classes from 0, say, which a shift decided from the data would misnumber unseen)."""
    if labels.size and not (labels.min() >= 1 and labels.max() <= NUM_CLASSES):
        raise ValueError(f"{path}: labels {int(labels.min())}..{int(labels.max())}, but down-sampled ImageNet's "
                         f"files number its classes 1..{NUM_CLASSES} (Chrabaszcz et al. 2017); use the published "
                         f"files, or re-save these with labels 1..{NUM_CLASSES}")
    return labels - 1


class ImageNet32:
    """The images of the training batches in a folder (IMAGENET32_FILES: ``train_data_batch_*.npz``), read by rows
    from disk; labels 0..999 in memory.

    ``max_samples`` keeps a seeded random subset (its rows in file order, as the whole set's). ``num_classes`` is
    ImageNet-1k's 1000, whichever classes the files hold: the size of the classifier pretrained on them.
    """

    def __init__(self, directory: str | Path, max_samples: int | None = None, seed: int = 0) -> None:
        self._fds: list[int | None] = []  # before anything can fail: __del__ closes them
        directory = Path(directory)
        files = sorted(directory.glob(IMAGENET32_FILES))
        if not files:
            others = sorted(p.name for p in directory.glob("*.npz"))
            beside = f"; the .npz files there ({', '.join(others)}) are no training batches" if others else ""
            raise FileNotFoundError(f"no {IMAGENET32_FILES} in {directory}{beside}: expected down-sampled ImageNet "
                                    "32x32's training batches as published (train_data_batch_1.npz ... "
                                    "train_data_batch_10.npz, with `data` [N, 3072] uint8 and `labels` 1..1000)")
        parts = [_segment(f, (directory / CACHE_DIR, user_cache(directory))) for f in files]
        self.segments = [s for s, _ in parts]
        labels = np.concatenate([_training_labels(f, y) for f, (_, y) in zip(files, parts, strict=True)])
        self._starts = np.cumsum([0] + [s.rows for s in self.segments])
        rows = np.arange(len(labels))
        if max_samples is not None and max_samples < len(labels):
            rows = np.sort(np.random.default_rng(seed).permutation(len(labels))[:max_samples])
        self.rows = rows  # the file rows this set reads, in order
        self.labels = labels[rows]
        self.num_classes = NUM_CLASSES
        self._fds = [None] * len(self.segments)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: np.ndarray) -> np.ndarray:
        """uint8 images ``[len(index), 3, 32, 32]`` of samples ``index`` (positions in this set), in that order.

        Positioned reads of each row (``os.preadv``) into the batch: the page cache keeps what it can,
        the process keeps only the batch. A memory map held open instead would keep every page it has
        read resident, up to the whole file over an epoch (benchmarks/bench_imagenet_stream.py).
        """
        rows = self.rows[np.asarray(index, dtype=np.int64).reshape(-1)]
        out = np.empty((len(rows), ROW_BYTES), dtype=np.uint8)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        offsets = rows - self._starts[which]
        view = memoryview(out).cast("B")
        for j in np.argsort(which * (1 << 40) + offsets, kind="stable").tolist():  # ascending within each file
            k = int(which[j])
            start = j * ROW_BYTES
            if os.preadv(self._fd(k), [view[start : start + ROW_BYTES]],
                         self.segments[k].offset + int(offsets[j]) * ROW_BYTES) != ROW_BYTES:
                raise ValueError(f"{self.segments[k].path}: ends before image {int(offsets[j])} of "
                                 f"{self.segments[k].rows} (truncated?)")
        return out.reshape(-1, 3, 32, 32)

    def _fd(self, k: int) -> int:
        """The open file descriptor of segment ``k`` (opened on first use)."""
        if self._fds[k] is None:
            self._fds[k] = os.open(self.segments[k].path, os.O_RDONLY)
        return self._fds[k]

    def close(self) -> None:
        """Close the files (reading opens them again)."""
        for k, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[k] = None

    def __del__(self) -> None:
        self.close()

    def batch(self, index: torch.Tensor | np.ndarray, mean: torch.Tensor, std: torch.Tensor,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """Float32 images of samples ``index``, scaled to [0, 1] and normalised per channel, on ``device``.

        ``mean`` and ``std`` are ``[1, 3, 1, 1]``; the uint8 batch moves to the device before the conversion.
        """
        index = index.cpu().numpy() if isinstance(index, torch.Tensor) else index
        x = unit_pixels(torch.from_numpy(self.read(index)).to(device))
        return (x - mean.to(device)) / std.to(device)
