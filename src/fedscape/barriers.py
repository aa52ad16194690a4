"""Loss barriers between models: linear interpolation and layer-wise linear mode connectivity.

* Linear interpolation (Li et al. 2022, FL loss-landscape pilot study, Figs 3c and 5c): the loss and
  error of ``(1 - t) w_a + t w_b`` on a grid of t; the barrier is
  ``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` (Frankle et al. 2020).
* Layer-wise linear mode connectivity (Adilova, Fischer & Jaggi 2023): a "layer" is the group of
  parameters of one module (weight and bias together), in forward order. Averaging only some layers
  and putting them into each of the two models gives two mixed models; the barrier is
  ``mean(L(mixed_a), L(mixed_b)) - mean(L(a), L(b))``. Modes: ``single`` (one layer), ``shallow``
  (layers 0..i, cumulative from the input side) and ``deep`` (layers i..L-1, cumulative from the
  output side; as in the paper's heatmaps, row i of a deep heatmap averages layer i and every layer
  after it, so its first row is the full average and its last row the last layer alone).

The second half of the module plans these analyses from the config: pairs of checkpoints named by
run selectors (`fedscape.plan.resolve_run`) and rounds, and the cross-key checks of
`fedscape.plan.check_config`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedscape.config import ConfigError
from fedscape.evaluate import EvalResult, evaluate
from fedscape.params import buffer_specs, load_buffers, load_params, param_specs

if TYPE_CHECKING:
    from fedscape.plan import Run

MODES: tuple[str, ...] = ("single", "shallow", "deep")
SPLITS: tuple[str, ...] = ("train", "test")
INTERPOLATION_COLUMNS = ["pair_id", "run_a", "round_a", "run_b", "round_b", "t", "split", "loss", "error"]
BARRIER_COLUMNS = ["pair_id", "run_a", "run_b", "split", "barrier_loss", "barrier_error"]
LAYER_BARRIER_COLUMNS = ["run_id", "round", "pair", "mode", "layer_index", "layer", "split", "barrier_loss",
                         "barrier_error"]
LAYER_DISTANCE_COLUMNS = ["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine"]
FULL_MODEL = "full"  # the `layer` of the whole-model row of layer_distances.csv (layer_index -1)


@dataclass(frozen=True)
class InterpolationConfig:
    """Settings of the interpolation curves."""

    points: int = 21  # grid of t on [0, 1] with both endpoints; the pilot study (Fig. 3c) plots a fine grid
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.points < 3:
            raise ValueError(f"points must be at least 3 (both endpoints and one inner point), got {self.points}")


# -- models as points ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """A model as flat parameter and floating-buffer vectors (see fedscape.params)."""

    params: torch.Tensor
    buffers: torch.Tensor

    def to(self, device: torch.device | str) -> Point:
        return Point(self.params.to(device), self.buffers.to(device))


Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]


def interpolate(a: Point, b: Point, t: float) -> Point:
    """The point (1 - t) a + t b (buffers too), exact at t = 0 and t = 1 (Li et al. 2022, Fig. 3c)."""
    return Point((1.0 - t) * a.params + t * b.params, (1.0 - t) * a.buffers + t * b.buffers)


@torch.no_grad()
def evaluate_point(model: nn.Module, point: Point, splits: Splits, batch_size: int = 1024) -> dict[str, EvalResult]:
    """Loss and accuracy of `point` loaded into `model`, on every split (eval mode, no augmentation)."""
    device = next(model.parameters()).device
    load_params(model, point.params.to(device))
    if point.buffers.numel():
        load_buffers(model, point.buffers.to(device))
    return {name: evaluate(model, x, y, batch_size) for name, (x, y) in splits.items()}


def interpolation_grid(points: int) -> np.ndarray:
    """`points` equally spaced values of t from 0 to 1, both included."""
    return np.linspace(0.0, 1.0, InterpolationConfig(points=points).points)


def interpolation_curve(model: nn.Module, a: Point, b: Point, splits: Splits, points: int = 21,
                        batch_size: int = 1024) -> list[dict]:
    """Rows (t, split, loss, error) along the segment from a to b (Li et al. 2022, Figs 3c/5c)."""
    rows = []
    for t in interpolation_grid(points):
        for split, res in evaluate_point(model, interpolate(a, b, float(t)), splits, batch_size).items():
            rows.append({"t": float(t), "split": split, "loss": res.loss, "error": res.error})
    return rows


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


def mode_groups(num_layers: int, mode: str) -> list[tuple[int, ...]]:
    """Layer indices averaged at each entry of a mode (single: {i}; shallow: 0..i; deep: i..L-1)."""
    if mode == "single":
        return [(i,) for i in range(num_layers)]
    if mode == "shallow":
        return [tuple(range(i + 1)) for i in range(num_layers)]
    if mode == "deep":
        return [tuple(range(i, num_layers)) for i in range(num_layers)]
    from fedscape.utils import unknown_name_error

    raise unknown_name_error("mode", mode, MODES)


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
    avg_p = 0.5 * a.params + 0.5 * b.params
    avg_b = 0.5 * a.buffers + 0.5 * b.buffers
    return (Point(torch.where(pmask, avg_p, a.params), torch.where(bmask, avg_b, a.buffers)),
            Point(torch.where(pmask, avg_p, b.params), torch.where(bmask, avg_b, b.buffers)))


class _Evaluator:
    """Evaluations of the mixed models, cached by the set of averaged layers."""

    def __init__(self, model: nn.Module, a: Point, b: Point, layers: Sequence[Layer], splits: Splits,
                 batch_size: int):
        self.model, self.a, self.b, self.layers, self.splits, self.batch = model, a, b, layers, splits, batch_size
        self.cache: dict[frozenset[int], dict[str, tuple[float, float]]] = {}
        ends = [evaluate_point(model, p, splits, batch_size) for p in (a, b)]
        self.base = {s: (0.5 * (ends[0][s].loss + ends[1][s].loss), 0.5 * (ends[0][s].error + ends[1][s].error))
                     for s in splits}

    def mixed(self, selected: Sequence[int]) -> dict[str, tuple[float, float]]:
        """Mean (loss, error) of the two mixed models on every split."""
        key = frozenset(selected)
        if key not in self.cache:
            mixed_a, mixed_b = mix_layers(self.a, self.b, self.layers, sorted(key))
            if len(key) == len(self.layers):  # both mixed models are the full average: evaluate once
                ra = rb = evaluate_point(self.model, mixed_a, self.splits, self.batch)
            else:
                ra = evaluate_point(self.model, mixed_a, self.splits, self.batch)
                rb = evaluate_point(self.model, mixed_b, self.splits, self.batch)
            self.cache[key] = {s: (0.5 * (ra[s].loss + rb[s].loss), 0.5 * (ra[s].error + rb[s].error))
                               for s in self.splits}
        return self.cache[key]

    def barrier(self, selected: Sequence[int]) -> dict[str, tuple[float, float]]:
        """(loss, error) barrier per split: mean over the mixed models minus mean over the endpoints."""
        mixed = self.mixed(selected)
        return {s: (mixed[s][0] - self.base[s][0], mixed[s][1] - self.base[s][1]) for s in self.splits}


def layerwise_barriers(model: nn.Module, a: Point, b: Point, splits: Splits, batch_size: int = 1024,
                       modes: Sequence[str] = MODES, layers: Sequence[Layer] | None = None) -> list[dict]:
    """Layer-wise barriers L(mixed) - mean(L(a), L(b)) for every mode and layer (Adilova et al. 2023).

    Rows: mode, layer_index, layer (the name of the layer of that entry: the one averaged in
    `single`, the last one added in `shallow`, the first one of the averaged group in `deep`),
    split, barrier_loss, barrier_error.
    """
    layers = list(model_layers(model) if layers is None else layers)
    ev = _Evaluator(model, a, b, layers, splits, batch_size)
    rows = []
    for mode in modes:
        for i, group in enumerate(mode_groups(len(layers), mode)):
            for split, (loss, error) in ev.barrier(group).items():
                rows.append({"mode": mode, "layer_index": i, "layer": layers[i].name, "split": split,
                             "barrier_loss": loss, "barrier_error": error})
    return rows


def midpoint_barrier(model: nn.Module, a: Point, b: Point, splits: Splits,
                     batch_size: int = 1024) -> dict[str, tuple[float, float]]:
    """Full-model barrier L((a + b) / 2) - mean(L(a), L(b)) per split, as (loss, error) (Adilova et al. 2023)."""
    layers = model_layers(model)
    return _Evaluator(model, a, b, layers, splits, batch_size).barrier(range(len(layers)))


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


# -- plan: pairs named in the config ---------------------------------------------------------------
@dataclass(frozen=True)
class InterpolationPair:
    """Two checkpoints (run, round) to interpolate between; a round is an int or 'final'."""

    label: str
    run_a: Run
    run_b: Run
    round_a: int | str
    round_b: int | str


@dataclass(frozen=True)
class LayerPair:
    """Two models compared layer-wise over rounds: two clients of one run, or two runs' global models."""

    label: str
    kind: str  # "clients" or "runs"
    run_a: Run
    run_b: Run | None  # None for a client pair
    clients: tuple[int, int]
    rounds: tuple[int, ...]

    @property
    def run_id(self) -> str:
        """The run_id column of layer_barriers.csv: the run, or 'run_a | run_b' for two runs."""
        return self.run_a.run_id if self.run_b is None else f"{self.run_a.run_id} | {self.run_b.run_id}"


def _training(config: dict, run) -> dict:
    from fedscape.plan import train_settings

    return train_settings(config, run)["training"]


def _resolve(runs: list, selector, where: str):
    from fedscape.plan import resolve_run

    if not isinstance(selector, dict) or not selector:
        raise ConfigError(f"{where}: a run selector is a non-empty mapping of run fields, e.g. "
                          f"{{alpha: iid, init: random}}; got {selector!r}")
    return resolve_run(runs, selector, where)


def _same_architecture(run_a, run_b, where: str) -> None:
    if (run_a.dataset, run_a.model) != (run_b.dataset, run_b.model):
        raise ConfigError(f"{where}: runs a and b must share dataset and model to be compared, got "
                          f"{run_a.dataset}/{run_a.model} and {run_b.dataset}/{run_b.model}")


def _check_round(config: dict, run, value, where: str) -> None:
    if value == "final":
        return
    rounds = _training(config, run)["rounds"]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= rounds:
        raise ConfigError(f"{where}: round {value!r} must be 'final' or an integer in 0..{rounds} "
                          f"(run {run.run_id} trains {rounds} rounds)")


def interpolation_pair(config: dict, runs: list, label: str) -> InterpolationPair:
    """The interpolation pair `label` of the config, resolved to runs (ConfigError naming the key)."""
    spec = config["interpolation"]["pairs"][label]
    where = f"interpolation.pairs.{label}"
    run_a = _resolve(runs, spec.get("a"), f"{where}.a")
    run_b = _resolve(runs, spec.get("b"), f"{where}.b")
    _same_architecture(run_a, run_b, where)
    round_a, round_b = spec.get("round_a", "final"), spec.get("round_b", "final")
    _check_round(config, run_a, round_a, f"{where}.round_a")
    _check_round(config, run_b, round_b, f"{where}.round_b")
    if run_a == run_b and round_a == round_b:
        raise ConfigError(f"{where}: a and b name the same checkpoint ({run_a.run_id}, round {round_a})")
    return InterpolationPair(label, run_a, run_b, round_a, round_b)


def layer_pair(config: dict, runs: list, label: str) -> LayerPair:
    """The layer-wise pair `label` of the config with its rounds (ConfigError naming the key)."""
    from fedscape.fl.engine import sample_clients

    section = config["layer_barriers"]
    spec, every = section["pairs"][label], section["every"]
    where = f"layer_barriers.pairs.{label}"
    has_run = spec.get("run") is not None
    has_ab = spec.get("a") is not None or spec.get("b") is not None
    if has_run == has_ab:
        raise ConfigError(f"{where}: give either `run` (two clients of one run, with `clients`) or both `a` and "
                          "`b` (the global models of two runs)")
    explicit = spec.get("rounds", "all")
    if has_run:
        run = _resolve(runs, spec["run"], f"{where}.run")
        training = _training(config, run)
        clients = tuple(spec.get("clients", (0, 1)))
        if len(clients) != 2 or clients[0] == clients[1]:
            raise ConfigError(f"{where}.clients: name two different client ids, got {list(clients)}")
        bad = [c for c in clients if not 0 <= c < run.num_clients]
        if bad:
            raise ConfigError(f"{where}.clients: client ids {bad} are outside 0..{run.num_clients - 1} "
                              f"(run {run.run_id} has {run.num_clients} clients)")
        saved = sorted(set(training.get("save_clients_at", [])))
        if not saved:
            raise ConfigError(f"{where}: run {run.run_id} saves no client models; list rounds in "
                              "training.save_clients_at")
        if explicit == "all":
            rounds = [r for r in saved if r % every == 0]
        else:
            missing = [r for r in explicit if r not in saved]
            if missing:
                raise ConfigError(f"{where}.rounds: rounds {missing} have no client checkpoints; "
                                  f"training.save_clients_at is {saved}")
            rounds = sorted(set(explicit))
        absent = [r for r in rounds for c in clients
                  if c not in sample_clients(run.seed, r, run.num_clients, float(run.participation))]
        if absent:
            raise ConfigError(f"{where}: clients {list(clients)} do not both take part in rounds "
                              f"{sorted(set(absent))} of run {run.run_id} (participation {run.participation}); "
                              "pick other clients or set `rounds`")
        pair = LayerPair(label, "clients", run, None, clients, ())
    else:
        if spec.get("a") is None or spec.get("b") is None:
            raise ConfigError(f"{where}: a pair of runs needs both `a` and `b`")
        run_a = _resolve(runs, spec["a"], f"{where}.a")
        run_b = _resolve(runs, spec["b"], f"{where}.b")
        if run_a == run_b:
            raise ConfigError(f"{where}: a and b select the same run {run_a.run_id}; use `run` and `clients` to "
                              "compare two clients of one run")
        _same_architecture(run_a, run_b, where)
        last = min(_training(config, run_a)["rounds"], _training(config, run_b)["rounds"])
        if explicit == "all":
            rounds = [r for r in range(1, last + 1) if r % every == 0]
        else:
            bad = [r for r in explicit if not 0 <= r <= last]
            if bad:
                raise ConfigError(f"{where}.rounds: rounds {bad} are outside 0..{last}")
            rounds = sorted(set(explicit))
        pair = LayerPair(label, "runs", run_a, run_b, (0, 1), ())
    if not rounds:
        raise ConfigError(f"{where}: no round is left (every: {every}); lower layer_barriers.every or set `rounds`")
    return LayerPair(pair.label, pair.kind, pair.run_a, pair.run_b, pair.clients, tuple(rounds))


def interpolation_pairs(config: dict, runs: list) -> list[InterpolationPair]:
    return [interpolation_pair(config, runs, label) for label in config["interpolation"]["pairs"]]


def layer_pairs(config: dict, runs: list) -> list[LayerPair]:
    return [layer_pair(config, runs, label) for label in config["layer_barriers"]["pairs"]]


def check_barrier_config(config: dict, runs: list) -> list[str]:
    """Problems of the interpolation and layer_barriers sections that the schema cannot express."""
    problems = []
    for label in config.get("interpolation", {}).get("pairs", {}):
        try:
            interpolation_pair(config, runs, label)
        except ConfigError as exc:
            problems.append(str(exc))
    for label in config.get("layer_barriers", {}).get("pairs", {}):
        try:
            layer_pair(config, runs, label)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _common(config: dict, run) -> dict:
    from fedscape.plan import train_settings

    settings = train_settings(config, run)
    return {"data": {"run": settings["run"], "dataset_options": settings["dataset_options"]},
            "device": config["training"].get("device", "auto"),
            "eval_batch_size": config["training"].get("eval_batch_size", 1024)}


def interpolation_settings(config: dict, pair: InterpolationPair) -> dict:
    """Everything one interpolation job needs (Snakemake reruns it when this changes)."""
    return {"pair_id": pair.label, "run_a": pair.run_a.run_id, "run_b": pair.run_b.run_id,
            "round_a": pair.round_a, "round_b": pair.round_b, "points": config["interpolation"]["points"],
            **_common(config, pair.run_a)}


def layer_settings(config: dict, pair: LayerPair, round_: int) -> dict:
    """Everything one layer-wise job (one pair, one round) needs."""
    return {"pair": pair.label, "kind": pair.kind, "run_id": pair.run_id, "round": int(round_),
            "clients": list(pair.clients), **_common(config, pair.run_a)}
