"""Torch-free definitions of the barrier analyses: modes, splits, table columns, the grid of t and the
barrier of a curve (the interpolation table job computes barriers without torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MODES: tuple[str, ...] = ("single", "shallow", "deep")
SPLITS: tuple[str, ...] = ("train", "test")
# `aligned`: the curve to model b as trained (False) or to b with its hidden units permuted to match a by
# weight matching (True; Ainsworth et al. 2023), when `interpolation.align` asks for it.
INTERPOLATION_COLUMNS = ["pair_id", "run_a", "round_a", "run_b", "round_b", "t", "split", "loss", "error", "aligned"]
BARRIER_COLUMNS = ["pair_id", "run_a", "run_b", "split", "barrier_loss", "barrier_error", "aligned"]
LAYER_BARRIER_COLUMNS = ["run_id", "round", "pair", "mode", "layer_index", "layer", "split", "barrier_loss",
                         "barrier_error"]
LAYER_DISTANCE_COLUMNS = ["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine"]
FULL_MODEL = "full"  # the `layer` of the whole-model row of layer_distances.csv (layer_index -1)
PAIR_SEPARATOR = " | "  # the run_id of a layer-wise pair of two runs: 'run_a | run_b'
MIN_POINTS = 3  # both endpoints and one inner point
# Registry models that weight matching (interpolation.align) cannot align, and why (planning names it).
NO_PERMUTATION_SPEC: dict[str, str] = {
    "char_lstm": ("an LSTM's recurrent weights weight_hh are permuted on both axes by the same hidden-unit "
                  "permutation, so the matching objective is quadratic in it and a coordinate step is no longer "
                  "a linear assignment (Ainsworth et al. 2023 match feed-forward and residual networks only)"),
}


def interpolation_grid(points: int) -> np.ndarray:
    """`points` equally spaced values of t from 0 to 1, both included."""
    if points < MIN_POINTS:
        raise ValueError(f"points must be at least {MIN_POINTS} (both endpoints and one inner point), got {points}")
    return np.linspace(0.0, 1.0, points)


def linear_barrier(ts: Sequence[float], values: Sequence[float]) -> float:
    """max_t [v(t) - ((1 - t) v(0) + t v(1))] over a grid holding t = 0 and t = 1 (Frankle et al. 2020)."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) < 2:
        raise ValueError(f"need matching 1-D grids of at least 2 points, got shapes {t.shape} and {v.shape}")
    order = np.argsort(t)
    t, v = t[order], v[order]
    if t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError(f"the grid must hold both endpoints t=0 and t=1, got [{t[0]}, {t[-1]}]")
    if not np.isfinite(v).all():
        return math.nan
    return float(np.max(v - ((1.0 - t) * v[0] + t * v[-1])))


def split_pair_run_id(run_id: str) -> tuple[str, str | None]:
    """(run_a, run_b) of a layer table's run_id: 'a | b' for two runs' global models, one run for two clients."""
    a, sep, b = str(run_id).partition(PAIR_SEPARATOR)
    return (a, b) if sep else (a, None)
