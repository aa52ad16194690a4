"""The headline numbers of each versioned job kind in a finished tiny run, and their record per result version
(tests/data/result_numbers.json), which tests/workflow/test_result_numbers.py compares with a fresh run.

A job kind's numbers depend on its own computation and on those of the kinds whose results it reads, so they are
recorded under the versions of all of them (`version_key`). Record them after bumping a version (or adding a kind):

    python tests/helpers/result_numbers.py --record   # runs the tiny config, then writes the numbers
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "tests" / "data" / "result_numbers.json"
# The job kinds whose results each kind reads, transitively (the tiny config's DAG: the Hessian plane of the
# `tiny_hessian` landscape comes from the plane job of the Hessian stage).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "partition": (),
    "init": ("partition",),
    "train": ("partition", "init"),
    "hessian": ("partition", "init", "train"),
    "interpolation": ("partition", "init", "train"),
    "layer_barriers": ("partition", "init", "train"),
    "client_stats": ("partition", "init", "train"),
    "hessian_plane": ("partition", "init", "train"),
    "landscape_plane": ("partition", "init", "train", "hessian_plane"),
    "landscape_chunk": ("partition", "init", "train", "hessian_plane", "landscape_plane"),
}
# Tolerances of the float numbers (counts compare exactly). Measured on an AMD EPYC (torch 2.15.0): the tiny run's
# numbers under AVX2-only kernels (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) and under ATen's scalar ones
# (ATEN_CPU_CAPABILITY=default) departed from the native run's by at most 5.5e-7 relative, and by at most 2.3e-7
# absolute (layer barriers near zero); both bounds are kept 40x or more. A change of meaning moves them further.
RTOL = 1e-3
ATOL = 1e-5
# Accuracies and errors are fractions of counted samples, so one prediction whose top-2 logits lie within the
# kernels' rounding flips them by 1/n: 1/449 on the tiny run's smallest split (digits' test split), 4.4x RTOL at an
# accuracy of 0.5. Such a flip needs logits within ~1e-6 relative, rare but not ruled out on another CPU's kernels:
# these numbers keep one flip and a half of that split; a change of meaning moves more predictions.
COUNTED = ("_acc", "barrier_error")
COUNTED_ATOL = 1.5 / 449
# Numbers left out: the tiny config's pretraining (10 epochs at lr 0.05, whose loss rises and falls again) is chaotic
# in float32, and so is everything made from the pretrained init. Measured between this suite's kernel sets: the
# init's parameter norm moved by 0.9% and the FedProx run trained from it by 17% in its training loss (AVX-512
# against AVX2), while the runs from the random init agreed to 5e-7.
LEFT_OUT = ("init~pre",)


def version_key(kind: str, versions: dict[str, int]) -> str:
    """The versions `kind`'s numbers were made under: its own and its upstream kinds', e.g. `init=1 partition=1`."""
    return " ".join(f"{k}={versions[k]}" for k in sorted((*UPSTREAM[kind], kind)))


def _table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / "results" / "tables" / f"{name}.csv")


def _partition(run: Path) -> dict[str, float]:
    df = _table(run, "partitions")
    return {f"alpha~{r.alpha}/client~{r.client_id}": int(r.num_samples) for r in df.itertuples()}


def _init(run: Path) -> dict[str, float]:
    from fedscape.models.checkpoint import load_trajectory  # lazy: torch, for this kind only

    out = {}
    for path in sorted((run / "results" / "init").rglob("init.pt")):
        params = load_trajectory(path).params[0].double()
        out[f"{path.parent.name}/param_norm"] = float(params.norm())
        out[f"{path.parent.name}/param_abs_sum"] = float(params.abs().sum())
    return out


def _train(run: Path) -> dict[str, float]:
    df = _table(run, "rounds")
    last = df.sort_values("round").groupby("run_id").tail(1)
    return {f"{r.run_id}/{m}": float(getattr(r, m)) for r in last.itertuples()
            for m in ("train_loss", "train_acc", "test_loss", "test_acc")}


def _hessian(run: Path) -> dict[str, float]:
    df = _table(run, "hessian")
    return {f"{r.run_id}/round~{r.round}/{r.data}/{m}": float(getattr(r, m)) for r in df.itertuples()
            for m in ("lambda_1", "trace", "trace_stderr")}


def _hessian_plane(run: Path) -> dict[str, float]:
    out = {}
    root = run / "results" / "hessian"
    for path in sorted(root.rglob("eigen_plane.npz")):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
        job = path.parent.relative_to(root).as_posix()
        # the eigenvalues (an eigenvector's sign is arbitrary; the landscapes drawn on the plane guard its directions)
        out.update({f"{job}/lambda_{i + 1}": float(v) for i, v in enumerate(meta["eigenvalues"])})
    return out


def _interpolation(run: Path) -> dict[str, float]:
    df = _table(run, "barriers")
    return {f"{r.pair_id}/{r.split}/aligned~{r.aligned}/{r.path}/{m}": float(getattr(r, m)) for r in df.itertuples()
            for m in ("barrier_loss", "barrier_error")}


def _layer_barriers(run: Path) -> dict[str, float]:
    df = _table(run, "layer_barriers")
    keys = [c for c in ("pair", "round", "mode", "split", "aligned") if c in df.columns]
    grouped = df.groupby(keys)["barrier_loss"].agg(["mean", "max"]).reset_index()
    return {"/".join(str(r[k]) for k in keys) + f"/barrier_loss_{s}": float(r[s])
            for _, r in grouped.iterrows() for s in ("mean", "max")}


def _client_stats(run: Path) -> dict[str, float]:
    df = _table(run, "client_stats")
    numeric = [c for c in df.columns if c not in ("run_id", "round") and pd.api.types.is_numeric_dtype(df[c])]
    means = df.groupby("run_id")[numeric].mean()
    return {f"{run_id}/{c}_mean": float(means.loc[run_id, c]) for run_id in means.index for c in numeric
            if np.isfinite(means.loc[run_id, c])}


def _landscape_plane(run: Path) -> dict[str, float]:
    out = {}
    for path in sorted((run / "results" / "landscape").rglob("points.csv")):
        df = pd.read_csv(path)
        label = path.parent.name
        # sums of magnitudes: a Hessian eigenvector's sign is arbitrary, and so is the side of the plane
        for c in ("a", "b", "distance"):
            out[f"{label}/{c}_abs_sum"] = float(df[c].abs().sum())
    return out


def _landscape_chunk(run: Path) -> dict[str, float]:
    out = {}
    for path in sorted((run / "results" / "landscape").rglob("surface.npz")):
        with np.load(path) as data:
            loss = np.asarray(data["loss"], dtype=np.float64)
        label = f"{path.parent.parent.name}/{path.parent.name}"
        out[f"{label}/loss_min"] = float(np.nanmin(loss))
        out[f"{label}/loss_mean"] = float(np.nanmean(loss))
    return out


NUMBERS: dict[str, Callable[[Path], dict[str, float]]] = {
    "partition": _partition, "init": _init, "train": _train, "hessian": _hessian, "hessian_plane": _hessian_plane,
    "interpolation": _interpolation,
    "layer_barriers": _layer_barriers, "client_stats": _client_stats, "landscape_plane": _landscape_plane,
    "landscape_chunk": _landscape_chunk,
}


def headline_numbers(run: Path) -> dict[str, dict[str, float]]:
    """kind -> {name: number} of a finished tiny run's working directory (less the LEFT_OUT ones)."""
    return {kind: {name: value for name, value in numbers(run).items() if not any(s in name for s in LEFT_OUT)}
            for kind, numbers in NUMBERS.items()}


def differences(kind: str, expected: dict[str, float], found: dict[str, float]) -> list[str]:
    """What differs beyond the tolerance (names missing on either side included)."""
    problems = [f"{kind}: {name} recorded but not made" for name in sorted(set(expected) - set(found))]
    problems += [f"{kind}: {name} made but not recorded" for name in sorted(set(found) - set(expected))]
    for name in sorted(set(expected) & set(found)):
        a, b = expected[name], found[name]
        exact = isinstance(a, int) and isinstance(b, int)
        atol = COUNTED_ATOL if any(part in name for part in COUNTED) else ATOL
        if not (a == b if exact else math.isclose(a, b, rel_tol=RTOL, abs_tol=atol)):
            problems.append(f"{kind}: {name} = {b!r}, recorded {a!r}")
    return problems


def record(run: Path, versions: dict[str, int], path: Path = RECORD) -> None:
    """Store `run`'s numbers under the current versions, keeping those of other versions."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    for kind, numbers in headline_numbers(run).items():
        stored.setdefault(kind, {})[version_key(kind, versions)] = numbers
    path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="run the tiny config and record its numbers")
    parser.add_argument("--run", type=Path, help="a finished tiny run's working directory (instead of running one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from fedscape.plan.workflow import result_versions
    from helpers.workflow import TINY_CONFIG, copy_workflow, snakemake

    run = args.run
    if run is None:
        run = copy_workflow(Path(tempfile.mkdtemp()) / "tiny")
        shutil.copy2(TINY_CONFIG, run / "tiny.yaml")
        snakemake(run, "--configfile", "tiny.yaml")
    if args.record:
        record(run, result_versions())
        print(f"recorded in {RECORD}")
    else:
        print(json.dumps(headline_numbers(run), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
