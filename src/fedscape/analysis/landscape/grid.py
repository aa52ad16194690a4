"""The grid of a loss surface (torch-free): coordinates, extent, chunks and their reassembly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A square grid of plane coordinates; flat index k = i * len(a) + j is the point (a[j], b[i])."""

    a: np.ndarray  # [R] first coordinate (x axis)
    b: np.ndarray  # [R] second coordinate (y axis)

    @classmethod
    def from_extent(cls, extent: Sequence[float], resolution: int) -> Grid:
        """`resolution` evenly spaced values per axis over extent = (amin, amax, bmin, bmax)."""
        if resolution < 2:
            raise ValueError(f"grid resolution must be >= 2, got {resolution}")
        amin, amax, bmin, bmax = (float(v) for v in extent)
        if not (amax > amin and bmax > bmin):
            raise ValueError(f"empty grid extent {list(extent)}: need amin < amax and bmin < bmax")
        return cls(np.linspace(amin, amax, resolution), np.linspace(bmin, bmax, resolution))

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.b), len(self.a))

    @property
    def size(self) -> int:
        return len(self.a) * len(self.b)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return (float(self.a[0]), float(self.a[-1]), float(self.b[0]), float(self.b[-1]))

    def coords(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Coordinates [k, 2] of the flat indices (all points when None)."""
        idx = np.arange(self.size) if indices is None else np.asarray(indices, dtype=np.int64)
        i, j = np.divmod(idx, len(self.a))
        return np.stack([self.a[j], self.b[i]], axis=1)

    def to_dict(self) -> dict:
        return {"a": [float(v) for v in self.a], "b": [float(v) for v in self.b]}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(np.asarray(d["a"], dtype=np.float64), np.asarray(d["b"], dtype=np.float64))


# The surface kinds whose plane is two directions around the one model they draw (random: filter-normalised, hessian:
# eigenvectors): the directions set the plane's scale, so their automatic extent holds the square of
# `grid_extent`'s default_half_width, [-1, 1]^2 (Li et al. 2018 draw theirs on it), whatever the model's projection:
# (0, 0), or a rounding away from it where a supplied plane file's centre was saved at a lower precision (bf16, fp16)
# than the run's model.
SQUARE_KINDS = ("random", "hessian")


def grid_extent(coords: np.ndarray, margin: float = 0.25, span: float | Sequence[float] | None = None,
                default_half_width: float = 1.0, *, kind: str | None = None) -> tuple[float, float, float, float]:
    """The grid's extent: explicit `span`, or the box around the points and the origin plus a margin.

    `span` is None (automatic), a half-width s (the square [-s, s]^2) or (amin, amax, bmin, bmax).
    Automatic: every projected point and the centre (0, 0) lie inside, with `margin` times each
    axis' range added on both sides; a degenerate axis borrows the other axis' range (or
    the square [-default_half_width, default_half_width]^2 when all points sit at the centre). The
    extent of a surface `kind` of SQUARE_KINDS also holds that square: a point a rounding away from the centre
    would otherwise make it the point's tiny box; a point beyond the square still widens it.
    """
    if span is not None:
        if isinstance(span, int | float):
            s = float(span)
            return (-s, s, -s, s)
        values = tuple(float(v) for v in span)
        if len(values) != 4:
            raise ValueError(f"span must be a half-width or [amin, amax, bmin, bmax], got {span}")
        return values  # type: ignore[return-value]
    h = float(default_half_width)
    pts = np.concatenate([np.zeros((1, 2)), np.asarray(coords, dtype=np.float64).reshape(-1, 2)])
    pts = pts[np.isfinite(pts).all(axis=1)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    width = hi - lo
    biggest = float(width.max())
    if biggest <= 0:  # only the centre: the square [-h, h]^2
        return (-h, h, -h, h)
    for k in range(2):
        if width[k] < 1e-3 * biggest:  # all points on a line: give the other axis the same range
            mid = (lo[k] + hi[k]) / 2
            lo[k], hi[k], width[k] = mid - biggest / 2, mid + biggest / 2, biggest
    lo, hi = lo - margin * width, hi + margin * width
    if kind in SQUARE_KINDS:  # the union of the square and the points' box with its margin
        lo, hi = np.minimum(lo, -h), np.maximum(hi, h)
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def chunk_bounds(n: int, chunks: int, align: int = 1) -> list[tuple[int, int]]:
    """Split the flat indices 0..n-1 into `chunks` contiguous ranges whose starts are multiples of `align`.

    Aligning to `points_per_batch` keeps the same groups of points in one batched evaluation whatever
    the chunking, so a gathered surface equals the single-job surface bit for bit. Trailing ranges may
    be empty when there are more chunks than groups.
    """
    if chunks < 1 or align < 1:
        raise ValueError(f"chunks and align must be >= 1, got {chunks}, {align}")
    groups = math.ceil(n / align)
    edges = np.linspace(0, groups, chunks + 1).round().astype(int) * align
    edges = np.minimum(edges, n)
    return [(int(edges[c]), int(edges[c + 1])) for c in range(chunks)]


def gather_chunks(chunks: Sequence[dict[str, np.ndarray]], grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Assemble chunk results into [R, R] loss and accuracy grids; every point must appear exactly once."""
    loss = np.full(grid.size, np.nan)
    acc = np.full(grid.size, np.nan)
    seen = np.zeros(grid.size, dtype=np.int64)
    for c in chunks:
        idx = np.asarray(c["index"], dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= grid.size):
            raise ValueError(f"chunk indices outside the grid of {grid.size} points")
        np.add.at(seen, idx, 1)
        loss[idx] = c["loss"]
        acc[idx] = c["acc"]
    if (seen != 1).any():
        missing, doubled = int((seen == 0).sum()), int((seen > 1).sum())
        raise ValueError(f"chunks do not tile the grid: {missing} points missing, {doubled} evaluated twice")
    return loss.reshape(grid.shape), acc.reshape(grid.shape)
