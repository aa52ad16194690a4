"""Peak memory of pretraining's down-sampled ImageNet proxy: streamed from disk against held in memory.

Writes a synthetic copy of the published layout (``train_data_batch_<i>.npz`` with ``data`` uint8
[N, 3072] and ``labels`` 1..1000, stored uncompressed as ``np.savez`` does) with ``--rows`` images
(default 1,281,167: the real training set, 3.9 GB), then, each in a fresh process, reads every image
once in random batches as pretraining does (`fedscape.data.imagenet32.ImageNet32`) and prints the
peak resident memory against the file size (``--mmap``: also through memory maps held open, whose
resident pages grow with what was read). ``--baseline-rows`` also measures, at that (smaller)
size, the loader it replaces (every file loaded, concatenated and made float32 at once) and the
stream at the same size: the ratio of their peaks, in the same run.

    python benchmarks/bench_imagenet_stream.py --rows 1281167 --baseline-rows 100000
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from machine import cpu_model

ROW = 3 * 32 * 32
CHUNK = 8192  # rows generated and written at a time (25 MB)


def write_npz(path: Path, rows: int, rng: np.random.Generator) -> None:
    """One batch file as ``np.savez`` lays it out (members stored, zip64), written chunk by chunk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        labels = io.BytesIO()
        np.save(labels, rng.integers(1, 1001, rows).astype(np.int64))
        zf.writestr("labels.npy", labels.getvalue())
        with zf.open("data.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (rows, ROW)})
            for start in range(0, rows, CHUNK):
                f.write(rng.integers(0, 256, (min(CHUNK, rows - start), ROW), dtype=np.uint8).tobytes())


def write_dataset(directory: Path, rows: int, files: int, seed: int = 0) -> int:
    """``files`` batch files holding ``rows`` images in all; their total size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(np.array_split(np.arange(rows), files)):
        write_npz(directory / f"train_data_batch_{i + 1}.npz", len(n), rng)
    return sum(p.stat().st_size for p in directory.glob("*.npz"))


def _status_mb(key: str) -> float:
    """A memory line of /proc/self/status in MiB (VmRSS: resident now; VmHWM: its peak in this program)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _peak_mb() -> float:
    """Peak resident memory of this program, MiB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started
    by a process that held the data it just wrote would report that process's peak.
    """
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    try:
        return _status_mb("VmRSS")
    except (OSError, KeyError):
        return _peak_mb()


def measure(mode: str, directory: str, batch_size: int) -> dict:
    """In this process: read every image once in random batches (normalised float32); peak RSS in MB."""
    import torch  # lazy: measured after the import, in the child process only

    from fedscape.data.imagenet32 import ImageNet32

    torch.set_num_threads(1)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    after_import = _current_rss_mb()
    t0 = time.perf_counter()
    if mode == "stream":
        data = ImageNet32(directory)
        n = len(data)

        def batch(b: torch.Tensor) -> torch.Tensor:
            return data.batch(b, mean, std)
    elif mode == "mmap":  # the alternative: the same rows through memory maps held open for the pass
        data = ImageNet32(directory)
        maps = [np.memmap(s.path, dtype=np.uint8, mode="r", offset=s.offset, shape=(s.rows, ROW))
                for s in data.segments]
        starts = np.cumsum([0] + [s.rows for s in data.segments])
        n = len(data)

        def batch(b: torch.Tensor) -> torch.Tensor:
            rows = b.numpy()
            which = np.searchsorted(starts, rows, side="right") - 1
            out = np.empty((len(rows), ROW), dtype=np.uint8)
            for k in np.unique(which):
                at = np.flatnonzero(which == k)
                out[at] = maps[k][rows[at] - starts[k]]
            x = torch.from_numpy(out).view(-1, 3, 32, 32).float().div_(255.0)
            return (x - mean) / std
    else:  # the loader before streaming: every file in memory, then one float32 copy of all
        arrays = []
        for f in sorted(Path(directory).glob("*.npz")):
            with np.load(f) as z:
                arrays.append(np.asarray(z["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        x = torch.from_numpy(np.concatenate(arrays)).float().div_(255.0)
        del arrays
        x = (x - mean) / std
        n = len(x)

        def batch(b: torch.Tensor) -> torch.Tensor:
            return x[b]
    opened = time.perf_counter() - t0
    total = 0.0
    for b in torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(batch_size):
        total += float(batch(b).sum())
    return {"mode": mode, "rows": n, "after_import_mb": after_import, "peak_mb": _peak_mb(),
            "open_s": opened, "pass_s": time.perf_counter() - t0 - opened, "checksum": total}


def run_child(mode: str, directory: Path, batch_size: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_imagenet_stream as b; "
            f"print(json.dumps(b.measure({mode!r}, {str(directory)!r}, {batch_size})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])



def report(result: dict, size: int) -> None:
    print(f"{result['mode']:>9}  {result['rows']:>9,d} images  file {size / 2**30:6.2f} GiB  "
          f"peak RSS {result['peak_mb']:8.0f} MiB (after imports {result['after_import_mb']:.0f} MiB, "
          f"growth {result['peak_mb'] - result['after_import_mb']:.0f} MiB)  open {result['open_s']:.1f} s, "
          f"one pass {result['pass_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_281_167, help="images of the streamed file (real: 1,281,167)")
    parser.add_argument("--files", type=int, default=10, help="batch files to spread them over (published: 10)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--baseline-rows", type=int, default=0,
                        help="also compare with the in-memory loader at this many images (0: skip)")
    parser.add_argument("--mmap", action="store_true",
                        help="also read the full file through memory maps held open (resident pages grow)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()

    import torch  # lazy: only its version is printed here

    print(f"CPU: {cpu_model()}; torch {torch.__version__}; numpy {np.__version__}; batch {args.batch_size}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.baseline_rows:
            small = Path(tmp) / "baseline"
            size = write_dataset(small, args.baseline_rows, args.files)
            held, streamed = run_child("in_memory", small, args.batch_size), run_child("stream", small, args.batch_size)
            report(held, size)
            report(streamed, size)
            assert abs(held["checksum"] - streamed["checksum"]) <= 1e-4 * abs(held["checksum"]), "different images"
            print(f"peak RSS stream / in memory: {streamed['peak_mb'] / held['peak_mb']:.3f}")
            for p in small.glob("*.npz"):
                p.unlink()
        t0 = time.perf_counter()
        size = write_dataset(Path(tmp) / "full", args.rows, args.files)
        print(f"wrote {args.rows:,d} images ({size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
        report(run_child("stream", Path(tmp) / "full", args.batch_size), size)
        if args.mmap:
            report(run_child("mmap", Path(tmp) / "full", args.batch_size), size)


if __name__ == "__main__":
    main()
