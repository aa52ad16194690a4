"""Landscape planes: a centre and two directions in flat parameter space, and their file format.

A plane is the 2-D affine subspace ``centre + a * d1 + b * d2`` (Li et al. 2018, "Visualizing the
loss landscape of neural nets"; Li et al. 2022, FL loss-landscape pilot study, Sec. 2). Vectors are
flat, in `fedscape.models.params` order, float32.

The file format is described in `fedscape.analysis.landscape.definitions`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedscape.analysis.landscape.definitions import (
    ARRAY_KEYS,
    META_KEYS,
    PlaneError,
    check_plane_layout,
    read_plane_file,
    three_point_axis_labels,
    write_plane_file,
)
from fedscape.core.io import remake_hint, supplied_hint
from fedscape.core.seeds import derive_seed

log = logging.getLogger("fedscape.landscape")

FILTER_NORM_EPS = 1e-10  # Li et al. 2018 (loss-landscape code, net_plotter.normalize_direction)
# float64 entries per block of centred checkpoints (128 MiB): PCA of hundreds of checkpoints of a large model
# needs memory for the float32 checkpoints alone, not for float64 copies of them
GRAM_BLOCK_ENTRIES = 1 << 24
GRAM_MAX_COLUMNS = 1 << 20  # columns per block at most (a few checkpoints)
# The stream of a random plane's seed its directions are drawn from (`random_plane`). Not the seed itself: torch's
# generator seeded with it gives the numbers a `random` init of that seed (stages.init) draws its weights from, tensor
# by tensor in the same order, so the directions were correlated with the init's weights, which the plane's centre,
# trained from that init, keeps in part (cosine about -0.35 in every weight tensor of mlp and convnet and in some of
# cnn_small's and the LSTMs', +0.94 in word_lstm's weight_hh; independent directions: about 1/sqrt(entries)).
_RANDOM_PLANE_STREAM = 0x52504C4E


@dataclass(frozen=True)
class Plane:
    """Centre, directions and metadata of one landscape plane."""

    center: torch.Tensor  # [P] float32, fedscape.models.params order
    center_buffers: torch.Tensor  # [B] float32 (batch-norm statistics of the centre; may be empty)
    d1: torch.Tensor  # [P]
    d2: torch.Tensor  # [P]
    kind: str
    runs: tuple[str, ...] = ()
    round: int | None = None
    explained_variance: tuple[float, float] | None = None  # PCA ratios of the two components
    axis_labels: tuple[str, str] = ("d1", "d2")
    model_meta: dict = field(default_factory=dict)  # ModelMeta.to_dict() of the model
    seed: int | None = None
    extra: dict = field(default_factory=dict)  # further metadata, kept on save/load

    def __post_init__(self) -> None:
        check_plane_layout(self.kind, {name: getattr(self, name).numel() for name in ("center", "d1", "d2")})

    @property
    def num_params(self) -> int:
        return self.center.numel()

    @property
    def meta(self) -> dict:
        """The JSON metadata written to the plane file."""
        return {
            **self.extra,
            "kind": self.kind,
            "runs": list(self.runs),
            "round": self.round,
            "explained_variance": None if self.explained_variance is None else list(self.explained_variance),
            "axis_labels": list(self.axis_labels),
            "model_meta": self.model_meta,
            "seed": self.seed,
        }

    def point(self, a: float, b: float) -> torch.Tensor:
        """The flat parameters at plane coordinates (a, b)."""
        return self.center + a * self.d1 + b * self.d2


def save_plane(path: str | Path, plane: Plane) -> None:
    """Write a plane file atomically (numpy .npz, no pickled objects)."""
    arrays = {k: _np32(getattr(plane, k)) for k in ARRAY_KEYS}
    write_plane_file(path, arrays, json.dumps(plane.meta, default=_json_default))


def load_plane(path: str | Path, supplied_as: str | None = None) -> Plane:
    """Read and check a plane file (ours, one written by the Hessian stage, or the user's: `supplied_as` is
    then its config key, named in errors)."""
    arrays, meta = read_plane_file(path, supplied_as)
    ev = meta["explained_variance"]
    try:
        return Plane(
            **{k: torch.from_numpy(v) for k, v in arrays.items()},
            kind=meta["kind"],
            runs=tuple(meta["runs"] or ()),
            round=None if meta["round"] is None else int(meta["round"]),
            explained_variance=None if ev is None else (float(ev[0]), float(ev[1])),
            axis_labels=tuple(meta["axis_labels"] or ("d1", "d2")),
            model_meta=dict(meta["model_meta"] or {}),
            seed=None if meta["seed"] is None else int(meta["seed"]),
            extra={k: v for k, v in meta.items() if k not in META_KEYS},
        )
    except ValueError as exc:
        fix = supplied_hint(path, supplied_as) if supplied_as else remake_hint(path)
        raise PlaneError(f"plane file {path}: {exc}; {fix}") from exc


# -- PCA planes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PCAResult:
    """Two principal directions (unit norm) of a set of checkpoints and their explained variance ratios."""

    d1: torch.Tensor
    d2: torch.Tensor
    explained_variance: tuple[float, float]


def pca_directions(points: torch.Tensor, center: torch.Tensor, seed: int = 0) -> PCAResult:
    """Top-2 principal components of ``points - center`` (Li et al. 2018, Sec. 7; mean-centred like sklearn PCA).

    Computed from the N x N Gram matrix in float64, so memory stays O(N * P) for large models. Signs
    are fixed so that each component's largest-magnitude entry is positive (sklearn's svd_flip).
    When the points span fewer than two dimensions, the missing direction is a seeded random unit
    vector orthogonal to the others (explained variance 0) and a warning is logged.
    """
    if points.dim() != 2 or points.shape[1] != center.numel():
        raise ValueError(f"points must be [N, {center.numel()}], got {list(points.shape)}")
    if points.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 checkpoints, got {points.shape[0]}")
    n = points.shape[0]
    columns = max(1, min(GRAM_MAX_COLUMNS, GRAM_BLOCK_ENTRIES // n))
    blocks = [(start, min(start + columns, points.shape[1])) for start in range(0, points.shape[1], columns)]

    def centred(start: int, stop: int) -> torch.Tensor:
        """Columns start:stop of the checkpoints minus the centre, mean-centred, in float64."""
        block = points[:, start:stop].double() - center[start:stop].double()
        return block - block.mean(dim=0, keepdim=True)

    gram = torch.zeros(n, n, dtype=torch.float64)
    for start, stop in blocks:
        block = centred(start, stop)
        gram += block @ block.T
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(evals.sum())
    tol = max(total, 1e-300) * 1e-12
    found = [k for k in range(min(2, n)) if float(evals[k]) > tol]
    # the components, P x len(found): one more pass over the blocks for both
    components = torch.empty(points.shape[1], len(found), dtype=torch.float64)
    for start, stop in blocks:
        components[start:stop] = centred(start, stop).T @ evecs[:, found]
    directions: list[torch.Tensor] = []
    ratios: list[float] = []
    for k in range(2):
        if k in found:
            lam = float(evals[k])
            v = components[:, k] / math.sqrt(lam)
            v = v / v.norm()
            if v[v.abs().argmax()] < 0:
                v = -v
            directions.append(v)
            ratios.append(lam / total)
        else:
            log.warning("the checkpoints span %d dimension(s); completing the plane with a random direction", k)
            directions.append(_random_orthogonal(center.numel(), directions, seed + k))
            ratios.append(0.0)
    return PCAResult(directions[0].float(), directions[1].float(), (ratios[0], ratios[1]))


def _random_orthogonal(n: int, others: Sequence[torch.Tensor], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    for o in others:
        v = v - (v @ o) * o
    return v / v.norm()


def pca_plane(trajectory: torch.Tensor, center: torch.Tensor, center_buffers: torch.Tensor, *, kind: str = "pca",
              runs: Sequence[str] = (), round: int | None = None, model_meta: dict | None = None,
              seed: int = 0, extra: dict | None = None) -> Plane:
    """PCA plane of one trajectory (rows = checkpoints) around `center`, e.g. its final model (Li et al. 2018)."""
    pca = pca_directions(trajectory, center, seed)
    r1, r2 = pca.explained_variance
    return Plane(center.float().clone(), center_buffers.float().clone(), pca.d1, pca.d2, kind=kind, runs=tuple(runs),
                 round=round, explained_variance=(r1, r2),
                 axis_labels=(_pc_label(1, r1), _pc_label(2, r2)), model_meta=model_meta or {}, seed=seed,
                 extra=extra or {})


def _pc_label(k: int, ratio: float) -> str:
    """Axis label of component k: its share of the variance, or that it is a random completion (share 0)."""
    if ratio == 0.0:
        return f"d{k}: random (the checkpoints span {k - 1} dimension{'' if k == 2 else 's'})"
    return f"PC{k} ({100 * ratio:.1f}% of variance)"


def joint_pca_plane(point_sets: Sequence[torch.Tensor], center: torch.Tensor, center_buffers: torch.Tensor, *,
                    runs: Sequence[str] = (), round: int | None = None, model_meta: dict | None = None,
                    seed: int = 0, extra: dict | None = None) -> Plane:
    """One PCA plane fitted on the union of several runs' checkpoints around one shared centre (pilot Figs 3, 5-7)."""
    points = torch.cat([p.reshape(-1, center.numel()) for p in point_sets])
    return pca_plane(points, center, center_buffers, kind="joint_pca", runs=runs, round=round,
                     model_meta=model_meta, seed=seed, extra=extra)


# -- three checkpoints ---------------------------------------------------------------------------------
def three_point_plane(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, center_buffers: torch.Tensor, *,
                      runs: Sequence[str] = (), round: int | None = None, model_meta: dict | None = None,
                      labels: Sequence[str] = ("p0", "p1", "p2"), extra: dict | None = None) -> Plane:
    """The plane through three checkpoints, centred at `p0`, with Gram-Schmidt orthonormalised directions.

    (Garipov et al. 2018 use the same construction to show mode connectivity.) p1 lies at
    (|p1 - p0|, 0) and p2 in the upper half-plane. Garipov et al.'s code recomputes the batch-norm statistics on the
    training data at every grid point (plane.py: update_bn), which `bn_stats: recomputed` does (from a fixed sample of
    it); the default, `stored`, evaluates every point with p0's.
    """
    u = (p1.double() - p0.double())
    if float(u.norm()) == 0.0:
        raise ValueError(f"checkpoints {labels[0]} and {labels[1]} are identical: no plane through them")
    d1 = u / u.norm()
    v = p2.double() - p0.double()
    v = v - (v @ d1) * d1
    if float(v.norm()) <= 1e-5 * float(u.norm()):  # float32 checkpoints: below this the plane is numerical noise
        raise ValueError(f"checkpoints {', '.join(labels)} are collinear: no unique plane through them")
    d2 = v / v.norm()
    return Plane(p0.float().clone(), center_buffers.float().clone(), d1.float(), d2.float(), kind="three_points",
                 runs=tuple(runs), round=round,
                 axis_labels=three_point_axis_labels(labels),
                 model_meta=model_meta or {}, extra={"labels": list(labels), **(extra or {})})


# -- filter-normalised random directions ----------------------------------------------------------------
def filter_normalized_direction(center: torch.Tensor, param_shapes: Sequence[Sequence[int]],
                                generator: torch.Generator) -> torch.Tensor:
    """A random direction with filter normalisation (Li et al. 2018, Sec. 4).

    d ~ N(0, I) per tensor; every output filter d_f (index 0 of a tensor with >= 2 dims) is rescaled to
    ||w_f|| / (||d_f|| + 1e-10) * d_f; 1-D tensors (biases, norm layers) are set to zero.
    """
    total = sum(math.prod(s) for s in param_shapes)
    if total != center.numel():
        raise ValueError(f"parameter shapes hold {total} entries, the centre {center.numel()}")
    parts, offset = [], 0
    w_all = center.detach().float().cpu()
    for shape in param_shapes:
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        d = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) <= 1:
            d = torch.zeros(shape)
        else:
            w = w_all[offset : offset + n].view(shape)
            wf = w.reshape(shape[0], -1).norm(dim=1)
            df = d.reshape(shape[0], -1).norm(dim=1)
            d = d * (wf / (df + FILTER_NORM_EPS)).view(-1, *([1] * (len(shape) - 1)))
        parts.append(d.reshape(-1))
        offset += n
    return torch.cat(parts) if parts else torch.zeros(0)


def random_plane(center: torch.Tensor, center_buffers: torch.Tensor, param_shapes: Sequence[Sequence[int]], seed: int,
                 *, runs: Sequence[str] = (), round: int | None = None, model_meta: dict | None = None,
                 extra: dict | None = None) -> Plane:
    """Two seeded filter-normalised random directions around `center` (Li et al. 2018), drawn from a stream of `seed`
    of their own (_RANDOM_PLANE_STREAM)."""
    g = torch.Generator().manual_seed(derive_seed(seed, _RANDOM_PLANE_STREAM))
    d1 = filter_normalized_direction(center, param_shapes, g)
    d2 = filter_normalized_direction(center, param_shapes, g)
    return Plane(center.float().clone(), center_buffers.float().clone(), d1, d2, kind="random", runs=tuple(runs),
                 round=round, axis_labels=("random direction 1 (filter-normalised)",
                                           "random direction 2 (filter-normalised)"),
                 model_meta=model_meta or {}, seed=int(seed), extra=extra or {})


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).to(torch.float32).numpy()


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
