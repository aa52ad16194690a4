"""What recording a data set's fingerprint costs a job: hashing its files the first time, and the cached check later,
against reading the data set as its partition job does, in the same run.

Every job that reads data records the fingerprint of its files (`fedscape.data.locations`): the first job after a
file changed hashes it (SHA-256), later ones only compare each file's size, date and inode with the cache below the
results. Two data sets: a synthetic CIFAR-10 in the published layout (`--cifar-train` + `--cifar-test` images, the
real 50,000 + 10,000 by default: 7 files, 184 MB), read with `fedscape.data.sources.load_source`; and a folder of
`--files` small files of `--file-kb` KiB (ImageNet-200's 110,000 JPEGs are about 110 KiB each), where the cached
check's cost is one stat per file. Then `--jobs` processes that start at once on each with an empty cache, as a
data set's partition jobs do on a cluster: sharing the cache (its lock lets one hash and the others read its
digests), against each with a cache of its own (each hashes every file, as without the lock). The files are in the
page cache here; on a cold disk or a network file system each job's hashing reads them from there.

    python benchmarks/bench_fingerprint.py
    python benchmarks/bench_fingerprint.py --cifar-train 500 --cifar-test 100 --files 50 --file-kb 1   # a quick check
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

from fedscape.core.fingerprints import tree_fingerprint
from fedscape.data.locations import data_files
from fedscape.data.sources import load_source
from fedscape.data.synthetic import write_synthetic_cifar10


def _best(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _first_and_cached(root: Path, names: tuple[str, ...], cache: Path, repeats: int) -> tuple[float, float]:
    """Seconds of a fingerprint with an empty cache (every file hashed, its list of files kept), and with the cache
    it filled."""
    def first():
        shutil.rmtree(cache, ignore_errors=True)
        tree_fingerprint(root, names, cache)
    hashed = _best(first, repeats)
    return hashed, _best(lambda: tree_fingerprint(root, names, cache), repeats)


def _at_once(root: Path, names: tuple[str, ...], caches: list[Path]) -> float:
    """Seconds until `len(caches)` processes, started together, each fingerprinted `root` with its cache."""
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(caches) + 1)

    def job(cache: Path) -> None:
        start.wait()
        tree_fingerprint(root, names, cache)

    procs = [context.Process(target=job, args=(cache,)) for cache in caches]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError("a fingerprinting process failed")
    return time.perf_counter() - t0


def _shared_and_own(root: Path, names: tuple[str, ...], tmp: Path, args) -> tuple[float, float]:
    """Seconds for `args.jobs` processes at once: sharing one cache, and each with its own (best of the repeats)."""
    shared = min(_at_once(root, names, [tmp / "shared"] * args.jobs) for _ in range(args.repeats))
    own = min(_at_once(root, names, [tmp / f"own{k}" for k in range(args.jobs)]) for _ in range(args.repeats))
    return shared, own


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-train", type=int, default=50_000, help="synthetic CIFAR-10 training images")
    parser.add_argument("--cifar-test", type=int, default=10_000, help="synthetic CIFAR-10 test images")
    parser.add_argument("--files", type=int, default=20_000, help="files of the many-files folder")
    parser.add_argument("--file-kb", type=int, default=16, help="size of each of them, KiB")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=4, help="processes fingerprinting at once (default %(default)s)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}; numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_cifar10(tmp / "cifar", args.cifar_train, args.cifar_test, seed=0)
        root, names = data_files("cifar10", str(tmp / "cifar"))
        size = sum((root / n).stat().st_size for n in names) / 2**20
        load = _best(lambda: load_source("cifar10", data_dir=str(tmp / "cifar")), args.repeats)
        hashed, cached = _first_and_cached(root, names, tmp / "cache", args.repeats)
        at_once = {"cifar": _shared_and_own(root, names, tmp, args)}

        many = tmp / "many"
        many.mkdir()
        rng = np.random.default_rng(0)
        block = rng.integers(0, 256, args.file_kb * 1024, dtype=np.uint8).tobytes()
        for i in range(args.files):
            (many / f"{i:07d}.bin").write_bytes(block[i % 7:] + block[: i % 7])
        many_names = tuple(sorted(p.name for p in many.iterdir()))
        many_hashed, many_cached = _first_and_cached(many, many_names, tmp / "cache_many", args.repeats)
        at_once["many"] = _shared_and_own(many, many_names, tmp, args)

    print("\n| data set | files | MiB | read by its partition job, s | first fingerprint, s | cached, s | "
          "first / read | cached / read |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| synthetic CIFAR-10 ({args.cifar_train} + {args.cifar_test}) | {len(names)} | {size:.0f} | {load:.3f} | "
          f"{hashed:.3f} | {cached:.4f} | {hashed / load:.2f} | {cached / load:.4f} |")
    print("\n| folder of small files | files | MiB | first fingerprint, s | cached, s | cached per file, us |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {args.file_kb} KiB each | {args.files} | {args.files * args.file_kb / 1024:.0f} | {many_hashed:.3f} | "
          f"{many_cached:.3f} | {1e6 * many_cached / max(args.files, 1):.1f} |")
    print(f"\n| {args.jobs} jobs at once, empty cache | one shared cache (the lock), s | a cache each (every job "
          "hashes), s | shared / a cache each |")
    print("|---|---:|---:|---:|")
    for what, (shared, own) in (("synthetic CIFAR-10", at_once["cifar"]),
                                (f"{args.files} files of {args.file_kb} KiB", at_once["many"])):
        print(f"| {what} | {shared:.3f} | {own:.3f} | {shared / own:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
