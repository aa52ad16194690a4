"""Torch-free definitions of the barrier analyses: modes, splits, table columns, the grid of t, the
barrier of a curve (the interpolation table job computes barriers without torch) and the settings of the
Bezier curve between two models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedscape.analysis.contributions import FinalColumns
from fedscape.core.jobs import JobSettings
from fedscape.core.names import unknown_name_error
from fedscape.models.specs import BN_STATS_BASELINE, check_precision

# single: one layer averaged; shallow / deep: layers cumulated from the input / the output side (Adilova et al.
# 2023, Figs 1-3); random: cumulated in a seeded random order; ends: the shallowest and the deepest layers
# together, from both ends towards the middle (their Fig. 4).
MODES: tuple[str, ...] = ("single", "shallow", "deep")  # the default modes
CUMULATION_MODES: tuple[str, ...] = ("random", "ends")  # the modes of Fig. 4
ALL_MODES: tuple[str, ...] = MODES + CUMULATION_MODES
# The control of the authors' public code (link-er/layer-wise-lmc, LLMC/layerwise_robustness_eval.py): layer i of
# each model moved along a seeded random direction whose norm is the layer's distance between the two models,
# halfway as the single-layer average moves it; a barrier of `single` far below this one says the layer's
# average lies in a valley, not merely that the loss is flat around the models.
CONTROL_MODES: tuple[str, ...] = ("random_direction",)
# Which models the control moves: `both` (a by d/2 and b by -d/2, the mirror of the single-layer average, which
# moves both) or `first` (a alone by d/2: the authors' script samples a point at the layer's distance from model 1
# and interpolates model 1 towards it, and their plot compares that half-way point with the average).
DIRECTION_MOVES: tuple[str, ...] = ("both", "first")
LAYER_MODES: tuple[str, ...] = ALL_MODES + CONTROL_MODES  # every value of layer_barriers.modes
SPLITS: tuple[str, ...] = ("train", "test")
# `aligned`: the curve to model b as trained (False) or to b with its hidden units permuted to match a by
# weight matching (True; Ainsworth et al. 2023), when `interpolation.align` asks for it.
# `path`: the straight segment (linear) or the trained quadratic Bezier curve (bezier; Garipov et al. 2018)
# when `interpolation.curve.enabled` asks for it.
# `bn_stats`: the batch-norm statistics every model of the curve was evaluated with (`models.specs.BN_STATS`):
# `stored` (the interpolated statistics of the ends; also every model without batch norm, and the tables written
# before the column existed) or `recomputed` from the training data (Garipov et al. 2018; Izmailov et al. 2018).
BN_STATS_COLUMN = "bn_stats"
# The files of each job kind below its directory (core.paths INTERPOLATION_DIR, LAYERWISE_DIR): the rules' outputs
# and the plan's inputs both read them here.
INTERPOLATION_FILES = {"curve": "curve.csv"}
LAYER_FILES = {"barriers": "barriers.csv", "distances": "distances.csv"}
INTERPOLATION_COLUMNS = ["pair_id", "run_a", "round_a", "run_b", "round_b", "t", "split", "loss", "error", "aligned",
                         "path", BN_STATS_COLUMN]
# barrier_{loss,error}_ratio: the barrier relative to the mean of the ends, barrier / mean(v(0), v(1)), the "relative
# percentage (ratio instead of difference)" of Adilova et al. 2023 (footnote 2; `barrier_ratio`); appended after the
# older columns, NaN in tables written before them, and NaN where the ends' mean is below its RATIO_FLOORS.
RATIO_COLUMNS = ["barrier_loss_ratio", "barrier_error_ratio"]
# The ends' mean below which a ratio is NaN. Error: 0.1%. An error counts misclassified samples, and over ends as good
# as error-free the ratio counts the mixed model's extra misses per miss of an end instead of measuring a change
# relative to the ends: on digits' 1,078 evaluated training samples a mean below 0.1% is at most two misses between
# the two ends (the default run's IID vs Dir(0.1) pair: 0 and 2 misses, a barrier of 46 misses, barrier_error_ratio
# 46.0), on a 10,000-sample test set fewer than 20. A table holds no set's size, so the floor is one number for every
# data set. Loss: none, a cross-entropy is continuous and its ratio at a small mean still measures how many times the
# ends' loss the barrier is.
RATIO_FLOORS = {"loss": 0.0, "error": 1e-3}
BARRIER_COLUMNS = ["pair_id", "run_a", "run_b", "split", "barrier_loss", "barrier_error", "aligned", "path",
                   BN_STATS_COLUMN, *RATIO_COLUMNS]
# The stream key of each split's evaluation subset (`eval_samples`: hessian.maths.eval_subset, drawn from `eval_seed`):
# train and test drawn independently. Train's is the Hessian's aggregate key (0), so at one seed and count a run's
# training subset is the rows its Hessian is evaluated on.
SUBSET_KEYS = {"train": 0, "test": 1}
LINEAR, BEZIER = "linear", "bezier"
PATHS: tuple[str, ...] = (LINEAR, BEZIER)
# final.csv's barrier to IID: the linear barrier joining a run's final model to the final model of the IID run
# that differs from it only in alpha (Li et al. 2022, Fig. 3c), on the global loss L (aggregate training data).
# `aligned` and `path` are absent from barriers.csv made before alignment and Bezier curves: read when present.
BARRIER_SPLIT = "train"
REPORT = FinalColumns(
    columns=("barrier_to_iid_loss", "barrier_to_iid_error"),
    tables={"barriers": ("pair_id", "run_a", "run_b", "split", "barrier_loss", "barrier_error"),
            "interpolation": ("pair_id", "round_a", "round_b")},
    compute="tables:barrier_to_iid_columns",
)
# layer_index / layer: the layer of an entry (averaged alone in `single`, the one added in a cumulative mode);
# averaged: the indices of every averaged layer, ascending, space-separated; aligned: model b permuted to match
# a by weight matching first (Ainsworth et al. 2023), when `layer_barriers.align` asks for it.
# bn_stats: the batch-norm statistics of the ends and the mixed models, as in the interpolation tables.
# The ratios (above) and end_{loss,error}_{a,b}, the two ends' own values (whether the average of consecutive
# rounds beats both of them: Adilova et al. 2023, Sec. 2.1), appended after the older columns (NaN in older tables).
# In mode random_direction, `averaged` names the layer moved along the random direction.
END_COLUMNS = ["end_loss_a", "end_loss_b", "end_error_a", "end_error_b"]
LAYER_BARRIER_COLUMNS = ["run_id", "round", "pair", "mode", "layer_index", "layer", "split", "barrier_loss",
                         "barrier_error", "aligned", "averaged", BN_STATS_COLUMN, *RATIO_COLUMNS, *END_COLUMNS]
# layer_consecutive.csv: per consecutive-round pair (`consecutive: true`), aligned and split, how many rounds t were
# compared and the share of them whose midpoint (w_t + w_{t+1}) / 2 has a lower loss (error) than both w_t and
# w_{t+1} (Adilova et al. 2023, Sec. 2.1: "the average of points visited in any two consecutive epochs has better
# performance than the points themselves"), and the mean full-model barrier over those rounds.
CONSECUTIVE_COLUMNS = ["pair", "run_id", "aligned", "split", "rounds", "midpoint_better_loss",
                       "midpoint_better_error", "mean_barrier_loss", "mean_barrier_error"]
LAYER_DISTANCE_COLUMNS = ["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine", "aligned"]
FULL_MODEL = "full"  # the `layer` of the whole-model row of layer_distances.csv (layer_index -1)
PAIR_SEPARATOR = " | "  # the run_id of a layer-wise pair of two runs: 'run_a | run_b'
MIN_POINTS = 3  # both endpoints and one inner point


def interpolation_grid(points: int) -> np.ndarray:
    """`points` equally spaced values of t from 0 to 1, both included."""
    if points < MIN_POINTS:
        raise ValueError(f"points must be at least {MIN_POINTS} (both endpoints and one inner point), got {points}")
    return np.linspace(0.0, 1.0, points)


def grid_t(t: float) -> float:
    """A value of t of the grid as the tables write it: rounded to 12 decimals, so that the column reads as the grid
    (0.15, where linspace's 0.15000000000000002 is the model evaluated: the two differ in the 17th digit)."""
    return round(float(t), 12)


def linear_barrier(ts: Sequence[float], values: Sequence[float]) -> float:
    """max_t [v(t) - ((1 - t) v(0) + t v(1))] over a grid holding t = 0 and t = 1 (Entezari et al. 2022, Eq. 1;
    Frankle et al. 2020's instability subtracts the mean of the ends instead).

    NaN where a value is NaN (a model not evaluated, or one with NaN parameters) or an end is not finite (no chord to
    measure from); +inf where both ends are finite and an inner value is +inf (a loss that overflowed at a divergent
    point between two usable models: one target's float32 cross-entropy past 3.4e38, or logits that overflowed,
    whose NaN loss `maths.evaluate_point` reads as +inf with error 1 at finite parameters): the worst barrier there
    is, which a NaN would leave out of every mean over seeds."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) < 2:
        raise ValueError(f"need matching 1-D grids of at least 2 points, got shapes {t.shape} and {v.shape}")
    order = np.argsort(t)
    t, v = t[order], v[order]
    if t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError(f"the grid must hold both endpoints t=0 and t=1, got [{t[0]}, {t[-1]}]")
    if np.isnan(v).any() or not np.isfinite(v[[0, -1]]).all():
        return math.nan
    # v(0) + t (v(1) - v(0)) is the chord exactly where v(0) = v(1) (a model with itself); its ends are set exactly
    chord = v[0] + t * (v[-1] - v[0])
    chord[0], chord[-1] = v[0], v[-1]
    return float(np.max(v - chord))


def barrier_ratio(barrier: float, ends_mean: float, floor: float = 0.0) -> float:
    """The barrier relative to the mean of the ends: barrier / mean, i.e. mean(L(mixed)) / mean(L(a), L(b)) - 1 for
    a layer-wise barrier (Adilova et al. 2023, footnote 2: "relative percentage (ratio instead of difference)"; the
    paper and its code give no formula, this is the difference divided by what it is the difference to). 0 for a
    zero barrier (a model with itself, even at zero error), NaN where the ends' mean is 0, or below `floor` (its
    value's RATIO_FLOORS), and the barrier is not (no scale to be relative to), where either is NaN or the ends' mean
    is infinite; an infinite barrier over finite ends (`linear_barrier`, `barrier_over_ends`) stays infinite."""
    if math.isnan(barrier) or not math.isfinite(ends_mean):
        return math.nan
    if barrier == 0.0:
        return 0.0
    return barrier / ends_mean if ends_mean != 0.0 and abs(ends_mean) >= floor else math.nan


def barrier_over_ends(value: float, ends_mean: float) -> float:
    """A layer-wise barrier: `value` (the mean over the mixed or moved models) minus the mean of the ends (Adilova
    et al. 2023), by the rule of `linear_barrier`: NaN where the ends' mean is not finite (an end whose loss
    overflowed leaves nothing to measure from, where the difference would read -inf, "infinitely better", or NaN),
    +inf where the value alone is."""
    return value - ends_mean if math.isfinite(ends_mean) else math.nan


# The tag of random_direction's streams, after the seed: numpy's SeedSequence drops trailing zero keys, so untagged,
# layer 0's first direction (`[seed, 0, 0]`) was drawn from the very stream `cumulation_order` permutes mode random's
# layers with (`seed`; both seeds default to 0). The order keeps its stream (its results stand); a tag of 2**31 or more
# tells the directions' keys from the words of any seed (at most 2**63 - 1, whose high word is below 2**31).
_DIRECTION_STREAM = 0xD12EC7ED


def random_direction(numel: int, norm: float, seed: int, layer_index: int, sample: int = 0) -> np.ndarray:
    """A direction of `numel` float64 entries drawn from N(0, I) and scaled to Euclidean norm `norm` (the layer's
    distance between the two models), as LLMC/layerwise_robustness_eval.py of Adilova et al.'s public code
    (link-er/layer-wise-lmc) does; one stream per (seed, layer, sample) (_DIRECTION_STREAM), so it does not depend on
    the other layers nor on the round. Its own norm is summed exactly (math.fsum): np.linalg.norm is BLAS's, whose
    sum of a long vector is split over as many threads as the machine gives it, and so differs in its last bits from
    one machine to another."""
    if numel < 1:
        raise ValueError(f"a layer has at least one parameter, got numel={numel}")
    d = np.random.default_rng([seed, _DIRECTION_STREAM, layer_index, sample]).standard_normal(numel)
    return d * (norm / math.sqrt(math.fsum(d * d)))


def cumulation_order(num_layers: int, mode: str, seed: int = 0) -> list[int]:
    """The order in which a cumulative mode adds layers (Adilova et al. 2023): shallow 0..L-1, deep L-1..0,
    random a permutation drawn from `seed`, ends 0, L-1, 1, L-2, ... (both ends towards the middle)."""
    if mode == "shallow":
        return list(range(num_layers))
    if mode == "deep":
        return list(range(num_layers - 1, -1, -1))
    if mode == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(num_layers)]
    if mode == "ends":
        return [i // 2 if i % 2 == 0 else num_layers - 1 - i // 2 for i in range(num_layers)]
    raise unknown_name_error("cumulative mode", mode, ("shallow", "deep", *CUMULATION_MODES))


def mode_entries(num_layers: int, mode: str, seed: int = 0) -> list[tuple[int, tuple[int, ...]]]:
    """(layer, averaged layers) of every entry of a mode (Adilova et al. 2023): single ({i}), or a cumulative
    mode's groups in the order they grow, the layer being the one added; `deep` lists them from the full
    average (entry i averages layers i..L-1), as its heatmap rows do."""
    if mode in ("single", *CONTROL_MODES):
        return [(i, (i,)) for i in range(num_layers)]
    if mode not in ALL_MODES:
        raise unknown_name_error("mode", mode, LAYER_MODES)
    order = cumulation_order(num_layers, mode, seed)
    entries = [(layer, tuple(sorted(order[: k + 1]))) for k, layer in enumerate(order)]
    return entries[::-1] if mode == "deep" else entries


def mode_groups(num_layers: int, mode: str, seed: int = 0) -> list[tuple[int, ...]]:
    """Layer indices averaged at each entry of a mode (single: {i}; shallow: 0..i; deep: i..L-1; random and
    ends: the first k+1 layers of their order), as in `mode_entries`."""
    return [group for _, group in mode_entries(num_layers, mode, seed)]


def format_averaged(group) -> str:
    """The `averaged` cell of a layer-barrier row: the layer indices, ascending, space-separated."""
    return " ".join(str(i) for i in sorted(group))


def parse_averaged(cell) -> list[int]:
    """The layer indices of an `averaged` cell (a CSV reader makes one layer an int)."""
    return [int(float(v)) for v in str(cell).split()]


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
    # 0.5 weight_decay ||phi(t)||^2 in the loss, over every parameter of the point (curve.train_bend), as Garipov et
    # al.'s code decays a curve (its optimiser's own weight decay 0); they use their training's 5e-4, fedscape's 0
    weight_decay: float = 0.0
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


# -- the job kinds: interpolation and layer_barriers (their settings, from plan/barriers.py) -----------------------
def check_eval_subset(job: InterpolationJob | LayerBarriersJob) -> None:
    """ValueError unless a job's `eval_samples` is None (every sample) or an integer >= 1 given with its `eval_seed`;
    the seed is dropped (None) where every sample is evaluated: it draws nothing, and changing it reruns no job."""
    samples = job.eval_samples
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"eval_samples must be an integer >= 1 or None (every sample), got {samples!r}")
    if samples is None:
        object.__setattr__(job, "eval_seed", None)
    elif job.eval_seed is None:
        raise ValueError(f"eval_samples {samples} draws each split's subset from eval_seed, which is None")


@dataclass(frozen=True, kw_only=True)
class BarrierData(JobSettings):
    """The data of a barrier job: the run whose partition gives the aggregate training data, and its dataset's
    options (`data.federated.load_federated_data`)."""

    run: dict  # the run's fields (core.runs.Run), keys sorted
    dataset_options: dict


@dataclass(frozen=True, kw_only=True)
class InterpolationJob(JobSettings):
    """One job of rule interpolation: the segment (and the Bezier curve) between two checkpoints (Li et al. 2022;
    Garipov et al. 2018). The defaults are the baselines: how every job computed before the field existed."""

    rule = "interpolation"
    neutral = ("eval_batch_size",)
    pair_id: str
    run_a: str
    run_b: str
    round_a: int | str  # a round or 'final'
    round_b: int | str
    points: int
    data: BarrierData
    device: str
    eval_batch_size: int
    precision: str = "fp32"
    bn_stats: str = BN_STATS_BASELINE  # `stored` for every model without batch norm (recomputing is a no-op there)
    align: bool = False  # also to b permuted by weight matching (Ainsworth et al. 2023)
    curve: CurveSettings | None = None  # the trained Bezier curve, when on
    # each split evaluated on its seeded subset of at most this many samples (SUBSET_KEYS), the same for every point of
    # the path; None: every sample (how every job computed before the field existed)
    eval_samples: int | None = None
    eval_seed: int | None = None  # the subsets' seed; None without eval_samples (check_eval_subset)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_eval_subset(self)

    @property
    def alignments(self) -> list[bool]:
        """The `aligned` values of the pair's curves: unaligned, and aligned when the job asks for it."""
        return [False, True] if self.align else [False]

    @property
    def paths(self) -> list[str]:
        """The `path` values of the pair's curves: the straight line, and the Bezier curve when the job asks."""
        return [LINEAR, BEZIER] if self.curve is not None else [LINEAR]


@dataclass(frozen=True, kw_only=True)
class LayerBarriersJob(JobSettings):
    """One job of rule layer_barriers: a pair's layer-wise barriers and distances at one round (Adilova et al.
    2023). The defaults are the baselines. A seed of a mode the job does not run is no part of its settings (None):
    `order_seed` only with mode random, `direction_seed`, `direction_samples` and `direction_moves` (at its default
    otherwise) only with a control mode, so that changing it reruns exactly the jobs that draw from it."""

    rule = "layer_barriers"
    neutral = ("eval_batch_size",)
    pair: str
    kind: str  # clients, runs or consecutive (plan.barriers.LayerPair)
    run_id: str  # the run, or 'run_a | run_b' for two runs
    round: int
    clients: tuple[int, int]  # the two clients of a `clients` pair; (0, 1) otherwise
    data: BarrierData
    device: str
    eval_batch_size: int
    precision: str = "fp32"
    bn_stats: str = BN_STATS_BASELINE
    modes: tuple[str, ...] = MODES
    align: bool = False
    order_seed: int | None = None
    direction_seed: int | None = None
    direction_samples: int | None = None
    direction_moves: str = "both"  # DIRECTION_MOVES
    eval_samples: int | None = None  # as InterpolationJob's: the same subsets for the ends and every mixed model
    eval_seed: int | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_eval_subset(self)
        if "random" not in self.modes:
            object.__setattr__(self, "order_seed", None)
        if not set(CONTROL_MODES) & set(self.modes):
            object.__setattr__(self, "direction_seed", None)
            object.__setattr__(self, "direction_samples", None)
            object.__setattr__(self, "direction_moves", "both")

    @property
    def alignments(self) -> list[bool]:
        """The `aligned` values of the pair's rows: unaligned, and aligned when the job asks for it."""
        return [False, True] if self.align else [False]
