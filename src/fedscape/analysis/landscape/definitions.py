"""Torch-free definitions of the loss landscapes: surface and plane kinds, table columns, and the plane
file format (read here without torch, so that gathering surfaces and drawing them need none).

A plane file is an ``.npz`` written with numpy and read with ``allow_pickle=False`` holding ``center``
[P], ``center_buffers`` [B] (floating buffers of the centre model, may be empty), ``d1`` [P], ``d2`` [P]
(all float32) and ``meta``, a 0-d unicode array of JSON with at least ``kind`` (one of `PLANE_KINDS`),
``runs``, ``round``, ``explained_variance``, ``axis_labels``, ``model_meta`` and ``seed``; other meta
keys are kept (``Plane.extra``). The Hessian stage writes ``hessian`` planes in the same format.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedscape.core.io import atomic_path, remake_hint, supplied_hint
from fedscape.core.jobs import JobSettings, without_paths
from fedscape.core.names import unknown_name_error
from fedscape.models.specs import BN_STATS_BASELINE, check_precision
from fedscape.outputs.labels import label_run

SURFACE_KINDS = ("trajectory", "local", "final_models", "trajectories", "random", "hessian", "three_points")
DATA_SETS = ("train", "client", "test")
# The plane kind (plane file `meta.kind`) each surface kind builds.
PLANE_KIND_OF = {"trajectory": "pca", "local": "pca", "final_models": "joint_pca", "trajectories": "joint_pca",
                 "random": "random", "hessian": "hessian", "three_points": "three_points"}
SINGLE_RUN_KINDS = ("trajectory", "local", "random", "hessian")
# The surface kinds that read a plane file the user supplies (`landscapes.<label>.plane_file`); the others build
# their plane from the runs' checkpoints.
PLANE_FILE_KINDS = ("hessian",)
PLANE_KINDS = ("pca", "joint_pca", "three_points", "random", "hessian")
ARRAY_KEYS = ("center", "center_buffers", "d1", "d2")
META_KEYS = ("kind", "runs", "round", "explained_variance", "axis_labels", "model_meta", "seed")
POINT_COLUMNS = ["label", "group", "role", "run_id", "round", "client", "a", "b", "distance", "rel_distance"]
# bn_stats: the batch-norm statistics its grid points were evaluated with (LandscapeChunkJob.bn_stats)
# device_name, precision: the card and the precision its grid points were evaluated on ("; " between several;
# `unrecorded` for surfaces gathered before they were recorded, empty where nothing was evaluated: a diverged plane)
SURFACES_COLUMNS = ["surface_id", "kind", "runs", "round", "data", "resolution", "path", "bn_stats", "device_name",
                    "precision"]
# The files of each job kind, below its directory (core.paths LANDSCAPE_DIR for a plane, SURFACE_DIR for a surface's
# chunks, gather and figure): the rules' outputs and the plan's inputs both read them here.
PLANE_FILES = {"plane": "plane.npz", "points": "points.csv", "grid": "grid.json"}
CHUNK_FILE = "chunks/chunk~{chunk}.npz"
SURFACE_FILE = "surface.npz"
FIGURE_FILES = {"pdf": "surface.pdf", "png": "surface.png", "grid_csv": "surface_grid.csv",
                "points_csv": "surface_points.csv"}
LABEL_FIELDS = ("alpha", "algorithm", "init", "participation", "num_clients", "seed", "model", "dataset")


def run_labels(run_fields: list[dict]) -> list[str]:
    """Legend labels of runs in fedscape's common style: the fields that differ between them, else algorithm /
    init / alpha (e.g. 'FedAvg · random init · α=0.1'). The plane job writes them into its points; the figure job
    makes them again from the runs' ids (`figures.with_run_labels`)."""
    varying = [f for f in LABEL_FIELDS if len({str(r[f]) for r in run_fields}) > 1]
    labels = [label_run(r, keys=varying or ["algorithm", "init", "alpha"]) for r in run_fields]
    # runs whose fields differ below the labels' precision (algorithm labels `fedavg` and `FedAvg`: 'FedAvg' both) are
    # numbered by their place on the plane: the figure draws each label's points as one run
    return [f"{label} [{i + 1}]" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def three_point_axis_labels(names: Sequence[str]) -> tuple[str, str]:
    """The axes of a three_points plane through checkpoints `names` (planes.three_point_plane: d1 from the first
    towards the second, d2 orthogonal to it, towards the third)."""
    return f"direction {names[0]} -> {names[1]}", f"orthogonal, towards {names[2]}"


@dataclass(frozen=True, kw_only=True)
class PlaneCheckpoint(JobSettings):
    """One checkpoint of a three_points plane: a run's global model after `round` (a round or 'final')."""

    run_id: str
    round: int | str


@dataclass(frozen=True, kw_only=True)
class LandscapePlaneJob(JobSettings):
    """One job of rule landscape_plane: the plane of one `landscapes` entry, its projected checkpoints and its grid.
    The defaults are the baselines: how every plane job computed before the field existed."""

    rule = "landscape_plane"
    label: str
    kind: str  # one of SURFACE_KINDS
    runs: tuple[str, ...]  # the plane's run ids; the first one's partition defines the data
    run_fields: tuple[dict, ...]  # each run's fields (core.runs.Run), for the legend's labels
    round: int | str  # a round or 'final'
    checkpoints: tuple[PlaneCheckpoint, ...]  # kind three_points only
    center: str  # final or mean
    seed: int
    resolution: int
    span: float | tuple[float, ...] | None  # None: the points' extent plus `margin`
    margin: float
    client: int
    plane_file: str | None = None  # kind hessian: a plane file the user supplies, None for the Hessian stage's

    @classmethod
    def meaning(cls, settings):
        """Its settings less the fields its kind's plane does not read (`UNREAD_PLANE_FIELDS`): a change of one there
        makes the same plane, points and grid, so it reruns neither the plane nor the surfaces drawn on it."""
        return without_paths(super().meaning(settings), UNREAD_PLANE_FIELDS.get(settings.get("kind"), ()))


# The fields of a plane job that its kind's plane does not read (stage._build_plane): `center` picks the centre of the
# PCA kinds' planes (trajectory, trajectories, final_models, local); `seed` draws the random kind's directions and
# completes a degenerate PCA plane; `client` is the client whose data (L_m) the local scope's figure names; `round` is
# the round of every kind's models but three_points', whose checkpoints name their own (its plane records none).
UNREAD_PLANE_FIELDS = {
    "trajectory": ("client",), "trajectories": ("client",), "final_models": ("client",), "local": (),
    "random": ("center", "client"), "hessian": ("center", "seed", "client"),
    "three_points": ("round", "center", "seed", "client"),
}


@dataclass(frozen=True, kw_only=True)
class LandscapeChunkJob(JobSettings):
    """One job of rule landscape_chunk: chunk `chunk` of `chunks` of one surface's grid evaluated on its data (the
    plane and the grid come as input files). The defaults are the baselines."""

    rule = "landscape_chunk"
    # samples per forward pass (not points_per_batch: it aligns the chunks' bounds, chunk_bounds)
    neutral = ("batch_size",)
    surface_id: str  # '<label>/<data>'
    dataset: str
    dataset_options: dict
    data: str  # train, test or client~<id>
    chunk: int
    chunks: int
    points_per_batch: int
    batch_size: int  # the training's evaluation batch size
    device: str
    precision: str = "fp32"
    # the batch-norm statistics of every grid point (models.specs.BN_STATS): the centre's (`stored`, Li et al.
    # 2018's surfaces), or recomputed at each point from the plane's training data; `stored` for a model without
    # batch norm
    bn_stats: str = BN_STATS_BASELINE

    def __post_init__(self) -> None:
        check_precision(self.precision)


class PlaneError(ValueError):
    """A plane file that is missing keys, has inconsistent shapes or an unknown kind."""


def check_plane_layout(kind: str, sizes: dict[str, int]) -> None:
    """ValueError for a plane kind that is not one of `PLANE_KINDS` (with a suggestion); PlaneError for a direction
    whose length (`sizes`: entries of center, d1 and d2) is not the centre's."""
    if kind not in PLANE_KINDS:
        raise unknown_name_error("plane kind", kind, PLANE_KINDS)
    for name in ("d1", "d2"):
        if sizes[name] != sizes["center"]:
            raise PlaneError(f"plane direction {name} has {sizes[name]} entries, the centre {sizes['center']}")


def read_plane_file(path: str | Path, supplied_as: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays (float32, flat) and the parsed, checked metadata of a plane file.

    `supplied_as`: the config key of a plane file the user supplied (`landscapes.<label>.plane_file`); its
    errors then say to fix or replace that file, never to delete it (no job would make it again).
    """
    path = Path(path)
    fix = supplied_hint(path, supplied_as) if supplied_as else remake_hint(path)
    if not path.exists():
        raise PlaneError(f"plane file {path} does not exist" + (f"; {fix}" if supplied_as else ""))
    # np.load takes any other file for a pickle and says so, which misleads about a text file or a directory
    if path.is_dir() or not zipfile.is_zipfile(path):
        what = "a directory" if path.is_dir() else "not an .npz archive"
        raise PlaneError(f"cannot read plane file {path}: {what} (a plane file is numpy's savez of "
                         f"{[*ARRAY_KEYS, 'meta']}); {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as exc:  # truncated or not an npz
        raise PlaneError(f"cannot read plane file {path} ({type(exc).__name__}: {exc}); {fix}") from exc
    missing = [k for k in (*ARRAY_KEYS, "meta") if k not in data]
    if missing:
        raise PlaneError(f"plane file {path} lacks {missing}; a plane holds {[*ARRAY_KEYS, 'meta']}; {fix}")
    try:
        meta = json.loads(str(data["meta"]))
    except json.JSONDecodeError as exc:
        raise PlaneError(f"plane file {path}: `meta` is not JSON ({exc}); {fix}") from exc
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise PlaneError(f"plane file {path}: meta lacks {missing}; required: {list(META_KEYS)}; {fix}")
    try:
        arrays = {k: np.ascontiguousarray(data[k], dtype=np.float32).reshape(-1) for k in ARRAY_KEYS}
        check_plane_layout(meta["kind"], {k: v.size for k, v in arrays.items()})
    except (TypeError, ValueError) as exc:  # e.g. text arrays, an unknown kind or directions of another length
        raise PlaneError(f"plane file {path}: {exc}; {fix}") from exc
    return arrays, meta


def plane_digest(arrays: dict[str, np.ndarray]) -> str:
    """The digest of a plane's arrays (as `read_plane_file` returns them): what a surface chunk was evaluated on.
    Of the arrays, not the file: the same plane written again (another zip timestamp) has the same digest."""
    total = hashlib.sha256()
    for key in ARRAY_KEYS:
        total.update(key.encode())
        total.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return total.hexdigest()[:16]


def write_plane_file(path: str | Path, arrays: dict[str, np.ndarray], meta_json: str) -> None:
    """Write a plane file atomically: the float32 `ARRAY_KEYS` arrays and the meta as JSON text (no pickles)."""
    out = {k: np.ascontiguousarray(arrays[k], dtype=np.float32).reshape(-1) for k in ARRAY_KEYS}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **out, meta=np.array(meta_json))
