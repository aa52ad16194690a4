"""Loss barriers between models: linear interpolation and layer-wise linear mode connectivity.

* Linear interpolation (Li et al. 2022, FL loss-landscape pilot study, Figs 3c and 5c): the loss and
  error of ``(1 - t) w_a + t w_b`` on a grid of t; the barrier is
  ``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` (Entezari et al. 2022, Eq. 1; Frankle et al. 2020's
  instability subtracts the mean of the ends instead).
* Layer-wise linear mode connectivity (Adilova, Fischer & Jaggi 2023): a "layer" is the group of
  parameters of one module (weight and bias together), in forward order. Averaging only some layers
  and putting them into each of the two models gives two mixed models; the barrier is
  ``mean(L(mixed_a), L(mixed_b)) - mean(L(a), L(b))``. Modes: ``single`` (one layer), ``shallow``
  (layers 0..i, cumulative from the input side) and ``deep`` (layers i..L-1, cumulative from the
  output side; as in the paper's heatmaps, row i of a deep heatmap averages layer i and every layer
  after it, so its first row is the full average and its last row the last layer alone).

Batch-norm statistics (`bn_stats`): every model of a path or of the mixed pairs, the ends included, is
evaluated either with the statistics it carries (the interpolated or averaged ones) or with statistics
recomputed from a fixed sample of the training data (`bn_x`: `fedscape.models.batchnorm`; Garipov et al.
2018, Izmailov et al. 2018, Ainsworth et al. 2023, Jordan et al. 2023). The ends are recomputed too, so
that the chord and the path use one estimate of the statistics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from fedscape.analysis.barriers.definitions import (
    CONTROL_MODES,
    DIRECTION_MOVES,
    FULL_MODEL,
    MODES,
    RATIO_FLOORS,
    SUBSET_KEYS,
    barrier_over_ends,
    barrier_ratio,
    format_averaged,
    grid_t,
    interpolation_grid,
    mode_entries,
    random_direction,
)
from fedscape.analysis.hessian.maths import eval_subset
from fedscape.data.datasets import take_rows
from fedscape.models.batchnorm import recompute_bn_stats
from fedscape.models.evaluate import EvalResult, evaluate
from fedscape.models.params import buffer_specs, load_buffers, load_params, param_specs
from fedscape.models.specs import EVAL_BATCH_SIZE

log = logging.getLogger("fedscape.barriers")
PROGRESS_SECONDS = 30.0  # at most one progress line per this many seconds (layer-wise barriers, a Bezier bend)


# -- models as points ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """A model as flat parameter and floating-buffer vectors (see fedscape.models.params)."""

    params: torch.Tensor
    buffers: torch.Tensor

    def to(self, device: torch.device | str) -> Point:
        return Point(self.params.to(device), self.buffers.to(device))


Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]


def eval_splits(splits: Splits, max_samples: int | None, seed: int | None) -> Splits:
    """The splits a job evaluates every point on: each split's fixed, seeded subset of `max_samples` samples (the
    Hessian's `eval_subset`, keyed by split: SUBSET_KEYS), or the split itself where it has no more samples or
    `max_samples` is None. One subset for every point, so that a barrier compares its points on one set (Adilova et
    al.'s LLMC/get_llm.py draws fresh random batches for each model instead). Logs the count of each split."""
    if max_samples is None:
        return splits
    out = {}
    for name, (x, y) in splits.items():
        if len(y) <= max_samples:
            out[name] = (x, y)
            log.info("%s split: evaluating on all %d samples (eval_samples %d)", name, len(y), max_samples)
            continue
        idx = eval_subset(len(y), max_samples, seed, key=SUBSET_KEYS[name]).to(y.device)
        out[name] = (take_rows(x, idx), y[idx])
        log.info("%s split: evaluating on %d of %d samples (seeded), eval_seed %d", name, max_samples, len(y), seed)
    return out


def midpoint(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x + y) / 2 rounded once (halving is exact), symmetric in x and y and x where x == y: the average of the
    layer-wise modes (`mix_layers`) and the interpolation's t = 0.5, which are one model."""
    return 0.5 * x + 0.5 * y


def interpolate(a: Point, b: Point, t: float) -> Point:
    """The point (1 - t) a + t b (buffers too; Li et al. 2022, Fig. 3c), computed by `torch.lerp`: a + t (b - a)
    for t < 0.5 and b - (b - a)(1 - t) otherwise, so a at t = 0 and b at t = 1 bit for bit, and a at every t when
    a == b. The literal (1 - t) a + t b rounds away from a at t such as 0.05 (a model's barrier with itself 1.5e-8,
    not 0). At t = 0.5 the `midpoint`, rounded once where lerp rounds twice: the full average of the layer-wise
    barriers, bit for bit."""
    if t == 0.5:
        return Point(midpoint(a.params, b.params), midpoint(a.buffers, b.buffers))
    return Point(torch.lerp(a.params, b.params, t), torch.lerp(a.buffers, b.buffers, t))


@torch.no_grad()
def evaluate_point(model: nn.Module, point: Point, splits: Splits, batch_size: int = EVAL_BATCH_SIZE,
                   bn_x: torch.Tensor | None = None, never_correct: tuple[int, ...] = ()) -> dict[str, EvalResult]:
    """Loss and accuracy of `point` loaded into `model`, on every split (eval mode, no augmentation); with `bn_x`
    (training inputs) its batch-norm statistics recomputed from them first (`recompute_bn_stats`), else the
    point's own. `never_correct`: the data's classes whose prediction the accuracy never credits
    (`FederatedData.never_correct`, `evaluate`).

    Every barrier's model goes through here (the segment, the Bezier curve, the layer-wise mixes, their ends). A NaN
    loss of a point whose parameters and buffers are all finite is one whose logits overflowed (a +inf logit makes
    torch's cross-entropy NaN, inf - inf, and so do NaN logits made of infinite activations): it reads as +inf, a loss
    that overflowed (`definitions.linear_barrier`: the worst barrier between usable ends, where a NaN would drop the
    path from every mean), with accuracy 0: such a model predicts no class (torch's argmax names the first NaN's
    class, class 0 where all are, or the first of tied infinite logits). A point with a NaN or infinite parameter (a
    diverged model) keeps its NaN loss, with a NaN accuracy: its error would be a number that describes no model. A
    split with no counted target keeps its NaN loss and accuracy (`evaluate`: no value)."""
    device = next(model.parameters()).device
    load_params(model, point.params.to(device))
    if point.buffers.numel():
        load_buffers(model, point.buffers.to(device))
    if bn_x is not None:
        recompute_bn_stats(model, bn_x)
    results = {name: evaluate(model, x, y, batch_size, never_correct) for name, (x, y) in splits.items()}
    finite = all(bool(torch.isfinite(v).all()) for v in (point.params, point.buffers))
    overflowed = {"loss": math.inf, "acc": 0.0} if finite else {"acc": math.nan}
    return {name: replace(r, **overflowed) if math.isnan(r.loss) and r.n > 0 else r for name, r in results.items()}


def interpolation_curve(model: nn.Module, a: Point, b: Point, splits: Splits, points: int = 21,
                        batch_size: int = EVAL_BATCH_SIZE, bn_x: torch.Tensor | None = None,
                        never_correct: tuple[int, ...] = ()) -> list[dict]:
    """Rows (t, split, loss, error) along the segment from a to b (Li et al. 2022, Figs 3c/5c); `bn_x`: recompute
    every point's batch-norm statistics from these training inputs (`evaluate_point`, as `never_correct`)."""
    return curve_rows(model, lambda t: interpolate(a, b, t), splits, points, batch_size, bn_x, never_correct)


def curve_rows(model: nn.Module, point_at: Callable[[float], Point], splits: Splits, points: int, batch_size: int,
               bn_x: torch.Tensor | None, never_correct: tuple[int, ...]) -> list[dict]:
    """Rows (t, split, loss, error) of the points `point_at(t)` of a curve at the `points` t of the interpolation
    grid (`evaluate_point`): a segment's (`interpolation_curve`) or a Bezier curve's (`curve.bezier_curve`)."""
    rows = []
    for t in interpolation_grid(points):
        for split, res in evaluate_point(model, point_at(float(t)), splits, batch_size, bn_x, never_correct).items():
            rows.append({"t": grid_t(t), "split": split, "loss": res.loss, "error": res.error})
    return rows


# -- layers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """The parameters (and floating buffers) of one module, as slices of the flat vectors."""

    index: int
    name: str  # the module prefix, e.g. "features.0" or "blocks.3.conv1"
    param_slices: tuple[slice, ...]
    buffer_slices: tuple[slice, ...]

    @property
    def numel(self) -> int:
        return sum(s.stop - s.start for s in self.param_slices)


def module_prefix(name: str) -> str:
    """'features.0.weight' -> 'features.0'; a parameter of the root module keeps its own name."""
    return name.rsplit(".", 1)[0] if "." in name else name


def model_layers(model: nn.Module) -> list[Layer]:
    """The layers of a model in forward order: parameters grouped by module prefix (Adilova et al. 2023).

    Models register modules in forward order (fedscape.models), so `named_parameters()` runs from the
    input to the output. Floating buffers (batch-norm statistics) belong to the layer of their module.
    """
    order: list[str] = []
    params: dict[str, list[slice]] = {}
    for spec in param_specs(model):
        prefix = module_prefix(spec.name)
        if prefix not in params:
            order.append(prefix)
            params[prefix] = []
        params[prefix].append(spec.slice)
    buffers: dict[str, list[slice]] = {p: [] for p in order}
    for spec in buffer_specs(model):
        prefix = module_prefix(spec.name)
        if prefix in buffers:
            buffers[prefix].append(spec.slice)
    return [Layer(i, p, tuple(params[p]), tuple(buffers[p])) for i, p in enumerate(order)]


def _mask(layers: Sequence[Layer], selected: Sequence[int], n: int, attr: str, device) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    for i in selected:
        for s in getattr(layers[i], attr):
            mask[s] = True
    return mask


def mix_layers(a: Point, b: Point, layers: Sequence[Layer], selected: Sequence[int]) -> tuple[Point, Point]:
    """a and b with the selected layers replaced by their average (Adilova et al. 2023)."""
    pmask = _mask(layers, selected, a.params.numel(), "param_slices", a.params.device)
    bmask = _mask(layers, selected, a.buffers.numel(), "buffer_slices", a.buffers.device)
    avg_p, avg_b = midpoint(a.params, b.params), midpoint(a.buffers, b.buffers)
    return (Point(torch.where(pmask, avg_p, a.params), torch.where(bmask, avg_b, a.buffers)),
            Point(torch.where(pmask, avg_p, b.params), torch.where(bmask, avg_b, b.buffers)))


class _Evaluator:
    """Evaluations of the mixed models, cached by the set of averaged layers."""

    def __init__(self, model: nn.Module, a: Point, b: Point, layers: Sequence[Layer], splits: Splits,
                 batch_size: int, bn_x: torch.Tensor | None = None, never_correct: tuple[int, ...] = ()):
        self.model, self.a, self.b, self.layers, self.splits, self.batch = model, a, b, layers, splits, batch_size
        self.bn_x, self.never_correct = bn_x, never_correct
        self.cache: dict[frozenset[int], dict[str, tuple[float, float]]] = {}
        ends = [self.evaluate(p) for p in (a, b)]
        self.base = {s: (0.5 * (ends[0][s].loss + ends[1][s].loss), 0.5 * (ends[0][s].error + ends[1][s].error))
                     for s in splits}
        self.ends = {s: {"end_loss_a": ends[0][s].loss, "end_loss_b": ends[1][s].loss,
                         "end_error_a": ends[0][s].error, "end_error_b": ends[1][s].error} for s in splits}

    def evaluate(self, point: Point) -> dict[str, EvalResult]:
        """`evaluate_point` of `point` on the splits, with the evaluator's settings."""
        return evaluate_point(self.model, point, self.splits, self.batch, self.bn_x, self.never_correct)

    def mixed(self, selected: Sequence[int]) -> dict[str, tuple[float, float]]:
        """Mean (loss, error) of the two mixed models on every split."""
        key = frozenset(selected)
        if key not in self.cache:
            mixed_a, mixed_b = mix_layers(self.a, self.b, self.layers, sorted(key))
            if len(key) == len(self.layers):  # both mixed models are the full average: evaluate once
                ra = rb = self.evaluate(mixed_a)
            else:
                ra, rb = self.evaluate(mixed_a), self.evaluate(mixed_b)
            self.cache[key] = {s: (0.5 * (ra[s].loss + rb[s].loss), 0.5 * (ra[s].error + rb[s].error))
                               for s in self.splits}
        return self.cache[key]

    def barrier(self, selected: Sequence[int]) -> dict[str, tuple[float, float]]:
        """(loss, error) barrier per split: mean over the mixed models minus mean over the endpoints
        (`barrier_over_ends`)."""
        mixed = self.mixed(selected)
        return {s: (barrier_over_ends(mixed[s][0], self.base[s][0]), barrier_over_ends(mixed[s][1], self.base[s][1]))
                for s in self.splits}

    def random_barrier(self, index: int, seed: int, samples: int, moves: str = "both"
                       ) -> dict[str, tuple[float, float]]:
        """(loss, error) per split of the random-direction control of layer `index`, averaged over `samples`
        directions d of norm ||a_i - b_i|| (`layer_random_direction`), against the mean of the ends: the mean of a
        and b with that layer moved by d / 2 and -d / 2 (`moves` both), or a alone moved by d / 2 (`first`, as
        the authors' LLMC/layerwise_robustness_eval.py moves model 1)."""
        if moves not in DIRECTION_MOVES:
            raise ValueError(f"direction_moves must be one of {', '.join(DIRECTION_MOVES)}, got {moves!r}")
        totals = {s: [0.0, 0.0] for s in self.splits}
        for sample in range(samples):
            d = layer_random_direction(self.a, self.b, self.layers[index], seed, sample)
            points = [Point(self.a.params + 0.5 * d, self.a.buffers)]
            if moves == "both":
                points.append(Point(self.b.params - 0.5 * d, self.b.buffers))
            moved = [self.evaluate(p) for p in points]
            for s in self.splits:
                totals[s][0] += sum(m[s].loss for m in moved) / len(moved) / samples
                totals[s][1] += sum(m[s].error for m in moved) / len(moved) / samples
        return {s: (barrier_over_ends(totals[s][0], self.base[s][0]), barrier_over_ends(totals[s][1], self.base[s][1]))
                for s in self.splits}

    def row(self, split: str, loss: float, error: float) -> dict:
        """The barrier columns of one row: the differences, their ratios to the ends' mean, the ends' own values."""
        return {"barrier_loss": loss, "barrier_error": error,
                "barrier_loss_ratio": barrier_ratio(loss, self.base[split][0], RATIO_FLOORS["loss"]),
                "barrier_error_ratio": barrier_ratio(error, self.base[split][1], RATIO_FLOORS["error"]),
                **self.ends[split]}


def layer_random_direction(a: Point, b: Point, layer: Layer, seed: int, sample: int = 0) -> torch.Tensor:
    """A full-length parameter vector that is zero outside `layer` and, on it, a seeded N(0, I) direction of norm
    ||a_layer - b_layer|| (`definitions.random_direction`; Adilova et al.'s LLMC/layerwise_robustness_eval.py).
    Batch-norm buffers are not moved (the authors' models have none; `bn_stats: recomputed` re-estimates them)."""
    dist = float(torch.cat([(a.params[s] - b.params[s]).double() for s in layer.param_slices]).norm())
    values = torch.from_numpy(random_direction(layer.numel, dist, seed, layer.index, sample))
    d = torch.zeros_like(a.params)
    start = 0
    for s in layer.param_slices:
        n = s.stop - s.start
        d[s] = values[start:start + n].to(dtype=a.params.dtype, device=a.params.device)
        start += n
    return d


def layerwise_barriers(model: nn.Module, a: Point, b: Point, splits: Splits, batch_size: int = EVAL_BATCH_SIZE,
                       modes: Sequence[str] = MODES, layers: Sequence[Layer] | None = None,
                       seed: int = 0, bn_x: torch.Tensor | None = None, direction_seed: int = 0,
                       direction_samples: int = 1, direction_moves: str = "both",
                       never_correct: tuple[int, ...] = ()) -> list[dict]:
    """Layer-wise barriers L(mixed) - mean(L(a), L(b)) for every mode and layer (Adilova et al. 2023).

    Rows: mode, layer_index, layer (the layer of that entry: the one averaged in `single`, the one added in
    a cumulative mode: the last one in `shallow`, the first one of the averaged group in `deep`), split,
    barrier_loss, barrier_error, averaged (the averaged layers), their ratios to the ends' mean and the ends'
    values. `seed` draws the order of `random`; `bn_x`: recompute the batch-norm statistics of the ends and of every
    mixed model from these training inputs. Mode `random_direction` (the authors' control) moves layer i of both
    models (or of a alone: `direction_moves`) along `direction_samples` random directions of `direction_seed`
    instead of averaging it (`_Evaluator.random_barrier`). `never_correct`: as `evaluate_point`.
    """
    layers = list(model_layers(model) if layers is None else layers)
    ev = _Evaluator(model, a, b, layers, splits, batch_size, bn_x, never_correct)
    rows = []
    logged = time.perf_counter()
    for m, mode in enumerate(modes):
        entries = list(mode_entries(len(layers), mode, seed))
        for e, (i, group) in enumerate(entries):
            if time.perf_counter() - logged >= PROGRESS_SECONDS:  # a deep model's modes take long: say where it is
                log.info("layer-wise barriers: mode %s (%d/%d), entry %d/%d", mode, m + 1, len(modes), e + 1,
                         len(entries))
                logged = time.perf_counter()
            values = (ev.random_barrier(i, direction_seed, direction_samples, direction_moves)
                      if mode in CONTROL_MODES
                      else ev.barrier(group))
            for split, (loss, error) in values.items():
                rows.append({"mode": mode, "layer_index": i, "layer": layers[i].name, "split": split,
                             **ev.row(split, loss, error), "averaged": format_averaged(group)})
    return rows


def midpoint_barrier(model: nn.Module, a: Point, b: Point, splits: Splits, batch_size: int = EVAL_BATCH_SIZE,
                     bn_x: torch.Tensor | None = None, never_correct: tuple[int, ...] = ()
                     ) -> dict[str, tuple[float, float]]:
    """Full-model barrier L((a + b) / 2) - mean(L(a), L(b)) per split, as (loss, error) (Adilova et al. 2023);
    `never_correct` as `evaluate_point`."""
    layers = model_layers(model)
    return _Evaluator(model, a, b, layers, splits, batch_size, bn_x, never_correct).barrier(range(len(layers)))


def layer_distances(a: Point, b: Point, layers: Sequence[Layer]) -> list[dict]:
    """Euclidean distance and cosine similarity of every layer's parameters, then of the whole model.

    The per-layer distance measures of Adilova et al. 2023 (Fig. 1b); the last row has layer_index -1
    and layer 'full'.
    """
    rows = []
    parts = [(layer.index, layer.name, layer.param_slices) for layer in layers]
    parts.append((-1, FULL_MODEL, (slice(0, a.params.numel()),)))
    for index, name, slices in parts:
        va = torch.cat([a.params[s] for s in slices]).double()
        vb = torch.cat([b.params[s] for s in slices]).double()
        denom = float(va.norm() * vb.norm())
        rows.append({"layer_index": index, "layer": name, "distance": float((va - vb).norm()),
                     "cosine": float(va @ vb) / denom if denom > 0 else math.nan})
    return rows
