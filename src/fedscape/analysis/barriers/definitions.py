"""Torch-free definitions of the barrier analyses: modes, splits, table columns, the grid of t, the
barrier of a curve (the interpolation table job computes barriers without torch) and the settings of the
Bezier curve between two models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES: tuple[str, ...] = ("single", "shallow", "deep")
SPLITS: tuple[str, ...] = ("train", "test")
# `aligned`: the curve to model b as trained (False) or to b with its hidden units permuted to match a by
# weight matching (True; Ainsworth et al. 2023), when `interpolation.align` asks for it.
# `path`: the straight segment (linear) or the trained quadratic Bezier curve (bezier; Garipov et al. 2018)
# when `interpolation.curve.enabled` asks for it.
INTERPOLATION_COLUMNS = ["pair_id", "run_a", "round_a", "run_b", "round_b", "t", "split", "loss", "error", "aligned",
                         "path"]
BARRIER_COLUMNS = ["pair_id", "run_a", "run_b", "split", "barrier_loss", "barrier_error", "aligned", "path"]
LINEAR, BEZIER = "linear", "bezier"
PATHS: tuple[str, ...] = (LINEAR, BEZIER)
LAYER_BARRIER_COLUMNS = ["run_id", "round", "pair", "mode", "layer_index", "layer", "split", "barrier_loss",
                         "barrier_error"]
LAYER_DISTANCE_COLUMNS = ["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine"]
FULL_MODEL = "full"  # the `layer` of the whole-model row of layer_distances.csv (layer_index -1)
PAIR_SEPARATOR = " | "  # the run_id of a layer-wise pair of two runs: 'run_a | run_b'
MIN_POINTS = 3  # both endpoints and one inner point


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
    # v(0) + t (v(1) - v(0)) is the chord exactly where v(0) = v(1) (a model with itself); its ends are set exactly
    chord = v[0] + t * (v[-1] - v[0])
    chord[0], chord[-1] = v[0], v[-1]
    return float(np.max(v - chord))


def split_pair_run_id(run_id: str) -> tuple[str, str | None]:
    """(run_a, run_b) of a layer table's run_id: 'a | b' for two runs' global models, one run for two clients."""
    a, sep, b = str(run_id).partition(PAIR_SEPARATOR)
    return (a, b) if sep else (a, None)


@dataclass(frozen=True)
class CurveSettings:
    """Training of the bend theta of the quadratic Bezier curve between two models (Garipov et al. 2018).

    SGD on E_{t ~ U(0,1)} L(phi(t)), one t and one mini-batch of the aggregate training data per step.
    """

    steps: int = 2000  # our choice: Garipov et al. train for 600 epochs; a few epochs bend a small net's curve
    batch_size: int = 128  # the batch size of Garipov et al.'s public code (train.py)
    lr: float = 0.015  # initial learning rate of Garipov et al.'s VGG16 curves (their README)
    momentum: float = 0.9  # Garipov et al.'s public code
    weight_decay: float = 0.0  # on theta; Garipov et al. use their training's 5e-4, fedscape's training uses 0
    seed: int = 0  # the order of the batches and the draws of t derive from it

    def __post_init__(self) -> None:
        checks = [(self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
                  (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("curve settings: " + "; ".join(problems))


def curve_lr_factor(step: int, steps: int) -> float:
    """Garipov et al.'s schedule (train.py): the full rate for the first half, then linearly down to 1% at 90%."""
    alpha = step / max(steps, 1)
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01
