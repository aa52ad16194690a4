"""Linear-interpolation and layer-wise barriers: invariants of the library, config checks, tiny-run outputs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA, TINY
from helpers.figures import assert_figure_files
from helpers.synthetic import digits_like
from torch import nn

from fedscape.analysis.barriers.curve import bezier_curve, midpoint_bend
from fedscape.analysis.barriers.definitions import (
    BARRIER_COLUMNS,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    MODES,
    barrier_ratio,
    format_averaged,
    interpolation_grid,
    linear_barrier,
    mode_groups,
)
from fedscape.analysis.barriers.maths import (
    Point,
    evaluate_point,
    interpolate,
    interpolation_curve,
    layer_distances,
    layerwise_barriers,
    midpoint_barrier,
    mix_layers,
    model_layers,
)
from fedscape.core.config import ConfigError
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.models.specs import EVAL_BATCH_SIZE
from fedscape.plan.workflow import check_config

CNN_LAYERS = ["features.0", "features.2", "last_block.0", "fc", "classifier"]




def random_point(model: nn.Module, seed: int) -> Point:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5)
    return Point(flatten_params(model), flatten_buffers(model))


def cnn() -> nn.Module:
    return build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()


class ConvBN(nn.Module):
    """A small net with batch-norm buffers (to check that a layer's buffers move with it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


class RootGain(nn.Module):
    """A linear classifier whose logits are scaled by sqrt(g^2 - 1): finite at g = 2 and g = -2, NaN at their
    average g = 0, so two finite models whose midpoint, of finite parameters, has NaN logits (as logits that
    overflowed have)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.gain = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.head(x.flatten(1)) * torch.sqrt(self.gain**2 - 1)


class OverflowGain(nn.Module):
    """A linear classifier whose logits are scaled by 1 + 3e37 relu(1 - g^2): as they are at |g| >= 1; at g = 0 (the
    average of g = 2 and g = -2) finite, below 1e38, and so are their cross-entropies, but so large that their float32
    sum over a batch overflows to +inf, while their argmax, so the error, stays that of the head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.gain = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.head(x.flatten(1)) * (1 + 3e37 * torch.relu(1 - self.gain**2))


class InfiniteLossGain(OverflowGain):
    """OverflowGain's head plus 3e38 relu(1 - g^2) (+1 for class 0, -1 for the others): as it is at |g| >= 1; at g = 0
    finite logits whose cross-entropy overflows to +inf for every target but class 0 (3e38 - (-3e38) in float32), a
    divergent model's loss, while their argmax, class 0, gives a finite error."""

    def forward(self, x):
        signs = torch.ones(10).index_fill_(0, torch.arange(1, 10), -1.0)
        return self.head(x.flatten(1)) + 3e38 * torch.relu(1 - self.gain**2) * signs


def with_gain(point: Point, gain: float) -> Point:
    """`point` of a RootGain with its gain set to `gain` (the first parameter: a module's own come before its
    children's)."""
    params = point.params.clone()
    params[0] = gain
    return Point(params, point.buffers)


# -- evaluation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "finite"), [(float("nan"), False), (0.5, True)])
def test_a_point_whose_loss_is_nan_has_no_error(value, finite):
    # Prepare: a model with one parameter set to `value`
    model, splits = cnn(), digits_like()
    point = random_point(model, 0)
    point.params[0] = value

    # Execute
    results = evaluate_point(model, point, splits)

    # Assert: NaN logits have no argmax, so no accuracy; a finite model keeps its error
    for res in results.values():
        assert math.isnan(res.loss) != finite
        assert math.isnan(res.error) != finite
        assert math.isnan(res.acc) != finite


def _barriers(path: str, model: nn.Module, a: Point, b: Point, splits: dict) -> dict[str, tuple[float, float]]:
    """(loss, error) barrier per split between a and b along `path`."""
    if path == "layer-wise":
        return midpoint_barrier(model, a, b, splits)
    curve = pd.DataFrame(bezier_curve(model, a, midpoint_bend(a, b), b, splits, points=5) if path == "bezier"
                         else interpolation_curve(model, a, b, splits, points=5))
    return {split: (linear_barrier(sub["t"], sub["loss"]), linear_barrier(sub["t"], sub["error"]))
            for split, sub in curve.groupby("split")}


@pytest.mark.parametrize("path", ["linear", "bezier", "layer-wise"])
@pytest.mark.parametrize(("gain_b", "finite"), [(-2.0, False), (3.0, True)])
def test_a_path_through_a_model_whose_logits_are_nan_at_finite_parameters_has_an_infinite_loss_barrier(path, gain_b,
                                                                                                       finite):
    # Prepare: two finite models whose midpoint (gain 0, finite parameters) has NaN logits, or whose path keeps gains
    # from 2 to 3
    model, splits = RootGain().eval(), digits_like()
    a, b = with_gain(random_point(model, 0), 2.0), with_gain(random_point(model, 1), gain_b)

    # Execute
    barriers = _barriers(path, model, a, b, splits)

    # Assert: a loss barrier of +inf where the path has such a model (its loss, NaN, read as overflowed), else a
    # number; the error barrier a number (the model's error 1: it predicts no class)
    assert sorted(barriers) == ["test", "train"]
    for loss, error in barriers.values():
        assert (loss == math.inf) != finite and not math.isnan(loss)
        assert math.isfinite(error)


@pytest.mark.parametrize(("params", "loss", "acc"), [
    ("nan", math.nan, math.nan),  # a diverged model: not evaluated
    ("finite", math.inf, 0.0),    # its NaN loss is one of logits that overflowed
], ids=["nan_parameters", "finite_parameters"])
def test_a_nan_loss_reads_as_infinite_at_finite_parameters_only(params, loss, acc):
    # Prepare: RootGain at gain 0 (NaN logits), with one weight NaN or not
    model, splits = RootGain().eval(), digits_like()
    point = with_gain(random_point(model, 0), 0.0)
    if params == "nan":
        point.params[1] = math.nan

    # Execute
    results = evaluate_point(model, point, splits)

    # Assert
    for res in results.values():
        assert res.loss == pytest.approx(loss, nan_ok=True) and res.acc == pytest.approx(acc, nan_ok=True)


def test_a_split_without_targets_keeps_its_nan_loss_at_finite_parameters():
    # Prepare: an empty split beside a full one
    model, splits = cnn(), digits_like()
    splits["empty"] = (splits["test"][0][:0], splits["test"][1][:0])

    # Execute
    results = evaluate_point(model, random_point(model, 0), splits)

    # Assert: no value (NaN), not an overflowed loss; the others evaluated
    assert math.isnan(results["empty"].loss) and math.isnan(results["empty"].acc) and results["empty"].n == 0
    assert math.isfinite(results["test"].loss)


def _barrier_columns(path: str, model: nn.Module, a: Point, b: Point, splits: dict,
                     batch_size: int = EVAL_BATCH_SIZE) -> pd.DataFrame:
    """The loss and error barriers and the loss ratio per split between a and b along `path`, as the tables hold
    them: barriers.csv's from the curve (`barriers_from_curves`), layer_barriers.csv's full average."""
    from fedscape.analysis.barriers.tables import barriers_from_curves

    if path == "layer-wise":
        rows = pd.DataFrame(layerwise_barriers(model, a, b, splits, batch_size, modes=("shallow",)))
        rows = rows[rows["averaged"] == format_averaged(range(len(model_layers(model))))]
    else:
        curve = pd.DataFrame(bezier_curve(model, a, midpoint_bend(a, b), b, splits, 5, batch_size) if path == "bezier"
                             else interpolation_curve(model, a, b, splits, 5, batch_size))
        rows = barriers_from_curves(curve.assign(pair_id="p", run_a="a", run_b="b", aligned=False, path=path,
                                                 bn_stats="stored"))
    return rows.set_index("split")[["barrier_loss", "barrier_error", "barrier_loss_ratio"]]


@pytest.mark.parametrize("path", ["linear", "bezier", "layer-wise"])
@pytest.mark.parametrize(("gains", "loss_barrier"), [
    ((2.0, -2.0), "inf"),    # finite ends, the midpoint's loss overflows: the worst barrier, not a missing one
    ((0.0, 2.0), "nan"),     # an end's loss overflows: nothing to measure from
    ((2.0, 3.0), "finite"),
], ids=["midpoint_overflows", "end_overflows", "finite"])
def test_a_path_whose_loss_overflows_between_finite_ends_has_an_infinite_loss_barrier(path, gains, loss_barrier):
    # Prepare
    model, splits = InfiniteLossGain().eval(), digits_like()
    a, b = with_gain(random_point(model, 0), gains[0]), with_gain(random_point(model, 1), gains[1])

    # Execute
    rows = _barrier_columns(path, model, a, b, splits)

    # Assert: the loss barrier and its ratio are +inf, NaN or a number; the error barrier (argmax of finite logits)
    # is a number throughout
    assert sorted(rows.index) == ["test", "train"]
    check = {"inf": lambda v: v == math.inf, "nan": math.isnan, "finite": math.isfinite}[loss_barrier]
    assert all(check(v) for v in rows["barrier_loss"]) and all(check(v) for v in rows["barrier_loss_ratio"])
    assert all(math.isfinite(v) for v in rows["barrier_error"])


@pytest.mark.parametrize("path", ["linear", "bezier", "layer-wise"])
def test_a_path_whose_float32_batch_sum_overflows_has_the_same_finite_barrier_at_every_eval_batch_size(path):
    # Prepare: finite ends whose midpoint has cross-entropies near 1e37, which a float32 sum overflows from a few
    model, splits = OverflowGain().eval(), digits_like()
    a, b = with_gain(random_point(model, 0), 2.0), with_gain(random_point(model, 1), -2.0)

    # Execute: one pass per split (1,024), and one per sample (no float32 sum of two losses)
    rows = {batch_size: _barrier_columns(path, model, a, b, splits, batch_size) for batch_size in (EVAL_BATCH_SIZE, 1)}

    # Assert: a finite loss barrier, the mean loss of the midpoint minus the chord, whatever the batch size (to the
    # float32 rounding of logits computed in other batches)
    for split in ("train", "test"):
        barriers = [rows[batch_size].loc[split, "barrier_loss"] for batch_size in rows]
        assert all(1e36 < v < 1e39 for v in barriers) and barriers[0] == pytest.approx(barriers[1], rel=1e-6)


# -- layers --------------------------------------------------------------------------------------
def test_layers_are_module_prefixes_in_forward_order_covering_every_parameter_once():
    model = cnn()

    layers = model_layers(model)

    assert [layer.name for layer in layers] == CNN_LAYERS
    assert [layer.index for layer in layers] == list(range(len(CNN_LAYERS)))
    covered = sorted((s.start, s.stop) for layer in layers for s in layer.param_slices)
    assert covered[0][0] == 0 and covered[-1][1] == flatten_params(model).numel()
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))  # contiguous, no overlap
    assert all(len(layer.param_slices) == 2 for layer in layers)  # weight and bias together


def test_batch_norm_buffers_belong_to_their_layer():
    layers = model_layers(ConvBN())

    assert [layer.name for layer in layers] == ["conv", "norm", "head"]
    assert [len(layer.buffer_slices) for layer in layers] == [0, 2, 0]  # running mean and var


@pytest.mark.parametrize(("mode", "expected"), [
    ("single", [(0,), (1,), (2,)]),
    ("shallow", [(0,), (0, 1), (0, 1, 2)]),
    ("deep", [(0, 1, 2), (1, 2), (2,)]),
])
def test_mode_groups(mode, expected):
    assert mode_groups(3, mode) == expected


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="shallow"):
        mode_groups(3, "shalow")


# -- linear barrier ------------------------------------------------------------------------------
def test_linear_barrier_by_hand():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]

    assert linear_barrier(ts, [1.0, 2.0, 3.0, 2.5, 2.0]) == pytest.approx(3.0 - 1.5)
    assert linear_barrier(ts, [0.0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.0, abs=1e-15)
    assert linear_barrier(ts[::-1], [2.0, 2.5, 3.0, 2.0, 1.0]) == pytest.approx(1.5)  # unsorted grid


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0, math.inf, 2.0], math.inf),               # an inner loss overflowed between finite ends: the worst barrier
    ([1.0, math.inf, math.inf, 2.0], math.inf),
    ([1.0, math.inf, math.nan, 2.0], math.nan),      # a point not evaluated: no barrier
    ([math.inf, 3.0, 2.0], math.nan),               # an end overflowed: no chord
    ([1.0, 3.0, math.inf], math.nan),
    ([math.nan, 3.0, 2.0], math.nan),
])
def test_linear_barrier_of_non_finite_values(values, expected):
    got = linear_barrier(interpolation_grid(len(values)), values)

    assert got == expected or (math.isnan(got) and math.isnan(expected))


@pytest.mark.parametrize(("barrier", "mean", "expected"), [
    (math.inf, 2.0, math.inf),   # an infinite barrier over finite ends stays infinite
    (math.inf, 0.0, math.nan),   # no scale to be relative to
    (0.5, math.inf, math.nan),
    (math.nan, 2.0, math.nan),
])
def test_barrier_ratio_of_non_finite_values(barrier, mean, expected):
    got = barrier_ratio(barrier, mean)

    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_the_consecutive_table_counts_an_infinite_barrier_as_a_worse_midpoint_and_an_infinite_mean():
    # Prepare: rounds 0 (midpoint 0.9 below both ends 1.0, 2.0) and 1 (the midpoint's loss overflowed: +inf)
    from fedscape.analysis.barriers.tables import consecutive_table

    rows = [{"run_id": "r", "round": t, "pair": "sweep", "mode": "shallow", "layer_index": i, "layer": "x",
             "split": "train", "barrier_loss": barrier, "barrier_error": 0.0, "aligned": False, "averaged": averaged,
             "end_loss_a": 1.0, "end_loss_b": 2.0, "end_error_a": 0.5, "end_error_b": 0.5}
            for t, barrier in enumerate([-0.6, math.inf]) for i, averaged in [(0, "0"), (1, "0 1")]]

    # Execute
    (row,) = consecutive_table(pd.DataFrame(rows), ["sweep"]).to_dict("records")

    # Assert: both rounds count, the overflowed midpoint as not better
    assert row["rounds"] == 2 and row["midpoint_better_loss"] == 0.5 and row["mean_barrier_loss"] == math.inf


def test_linear_barrier_needs_both_endpoints():
    with pytest.raises(ValueError, match="endpoints"):
        linear_barrier([0.0, 0.5, 0.9], [1.0, 2.0, 3.0])


def test_barrier_of_a_model_with_itself_is_zero():
    model, splits = cnn(), digits_like()
    a = random_point(model, 0)

    curve = pd.DataFrame(interpolation_curve(model, a, a, splits, points=5))
    layerwise = pd.DataFrame(layerwise_barriers(model, a, a, splits))

    for split in ("train", "test"):
        sub = curve[curve["split"] == split]
        assert linear_barrier(sub["t"], sub["loss"]) == 0.0
        assert linear_barrier(sub["t"], sub["error"]) == 0.0
    assert (layerwise[["barrier_loss", "barrier_error"]] == 0.0).all().all()
    assert all(v == (0.0, 0.0) for v in midpoint_barrier(model, a, a, splits).values())


def test_a_model_interpolated_with_itself_stays_itself_at_every_t_of_a_fine_grid():
    # Prepare: 21 points, whose t = 0.05, 0.15, ... round (1 - t) a + t a away from a in float32; a linear
    # classifier whose loss shows that rounding (seed 1: a barrier of 3e-7 computed as (1 - t) a + t a)
    model, splits = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), digits_like()
    a = random_point(model, 1)
    same = Point(a.params.clone(), torch.linspace(0.5, 1.5, 7))  # buffers too: lerped like the parameters

    # Execute
    points = [interpolate(same, same, float(t)) for t in interpolation_grid(21)]
    curve = pd.DataFrame(interpolation_curve(model, a, a, splits, points=21))

    # Assert
    assert all(torch.equal(p.params, same.params) and torch.equal(p.buffers, same.buffers) for p in points)
    for split in ("train", "test"):
        sub = curve[curve["split"] == split]
        assert sub["loss"].nunique() == 1 and sub["error"].nunique() == 1
        assert linear_barrier(sub["t"], sub["loss"]) == 0.0
        assert linear_barrier(sub["t"], sub["error"]) == 0.0


def test_interpolation_ends_are_the_two_models_bit_for_bit():
    # Prepare: float32 points that differ everywhere, buffers included
    generator = torch.Generator().manual_seed(0)
    a = Point(torch.randn(1000, generator=generator), torch.rand(10, generator=generator) + 0.5)
    b = Point(torch.randn(1000, generator=generator) * 3, torch.rand(10, generator=generator) + 2.0)

    # Execute
    start, end = interpolate(a, b, 0.0), interpolate(a, b, 1.0)

    # Assert
    assert start.params.dtype == torch.float32 and end.buffers.dtype == torch.float32
    for got, want in ((start, a), (end, b)):
        assert torch.equal(got.params.view(torch.int32), want.params.view(torch.int32))
        assert torch.equal(got.buffers.view(torch.int32), want.buffers.view(torch.int32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_convex_multinomial_logistic_regression_has_no_loss_barrier(seed):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    splits = digits_like(seed=seed)
    a, b = random_point(model, 10 + seed), random_point(model, 20 + seed)
    b = Point(3 * b.params, b.buffers)  # far apart: the loss curve is strongly convex along the segment

    curve = pd.DataFrame(interpolation_curve(model, a, b, splits, points=11))
    mid = midpoint_barrier(model, a, b, splits)
    layerwise = pd.DataFrame(layerwise_barriers(model, a, b, splits))

    for split in ("train", "test"):
        sub = curve[curve["split"] == split]
        assert linear_barrier(sub["t"], sub["loss"]) <= 1e-12
        assert mid[split][0] < 0  # strictly below the chord at the midpoint
    assert (layerwise["barrier_loss"] < 0).all()


def test_averaging_every_layer_equals_full_averaging():
    model = ConvBN().eval()
    a, b = random_point(model, 0), random_point(model, 1)
    layers = model_layers(model)
    splits = digits_like()

    mixed_a, mixed_b = mix_layers(a, b, layers, range(len(layers)))
    full = interpolate(a, b, 0.5)

    for mixed in (mixed_a, mixed_b):
        assert torch.equal(mixed.params, full.params)
        assert torch.equal(mixed.buffers, full.buffers)
    ends = [evaluate_point(model, p, splits) for p in (a, b)]
    expected = evaluate_point(model, full, splits)["train"].loss - 0.5 * (ends[0]["train"].loss + ends[1]["train"].loss)
    assert midpoint_barrier(model, a, b, splits)["train"][0] == pytest.approx(expected, rel=1e-12)


def test_mixing_one_layer_changes_only_that_layer_in_each_model():
    model = ConvBN().eval()
    a, b = random_point(model, 0), random_point(model, 1)
    layers = model_layers(model)

    mixed_a, mixed_b = mix_layers(a, b, layers, [1])  # the batch-norm layer

    norm = layers[1]
    changed = torch.zeros_like(a.params, dtype=torch.bool)
    for s in norm.param_slices:
        changed[s] = True
    assert torch.equal(mixed_a.params[~changed], a.params[~changed])
    assert torch.equal(mixed_b.params[~changed], b.params[~changed])
    assert torch.equal(mixed_a.params[changed], mixed_b.params[changed])
    assert torch.equal(mixed_a.buffers, mixed_b.buffers)  # BN statistics are the layer's only buffers


@pytest.mark.parametrize("seed", [0, 1])
def test_cumulative_ends_equal_full_and_single_layer_barriers(seed):
    model, splits = cnn(), digits_like(seed=seed)
    a, b = random_point(model, 2 * seed), random_point(model, 2 * seed + 1)

    df = pd.DataFrame(layerwise_barriers(model, a, b, splits))
    full = midpoint_barrier(model, a, b, splits)

    last = len(CNN_LAYERS) - 1
    key = ["split", "barrier_loss", "barrier_error"]
    entry = {(m, i): df[(df["mode"] == m) & (df["layer_index"] == i)].set_index("split")[key[1:]]
             for m in MODES for i in range(len(CNN_LAYERS))}
    assert len(df) == len(MODES) * len(CNN_LAYERS) * 2
    for split, (loss, error) in full.items():
        assert entry["shallow", last].loc[split].tolist() == pytest.approx([loss, error], rel=1e-12)
        assert entry["deep", 0].loc[split].tolist() == pytest.approx([loss, error], rel=1e-12)
    pd.testing.assert_frame_equal(entry["shallow", 0], entry["single", 0])
    pd.testing.assert_frame_equal(entry["deep", last], entry["single", last])
    # not vacuous: the single-layer and the full barriers differ
    assert entry["single", 0].loc["train", "barrier_loss"] != pytest.approx(full["train"][0], rel=1e-3)


def test_interpolation_endpoints_reproduce_the_models_own_losses():
    model, splits = cnn(), digits_like()
    a, b = random_point(model, 0), random_point(model, 1)

    curve = pd.DataFrame(interpolation_curve(model, a, b, splits, points=7))

    for t, point in ((0.0, a), (1.0, b)):
        own = evaluate_point(model, point, splits)
        for split in ("train", "test"):
            row = curve[(curve["t"] == t) & (curve["split"] == split)].iloc[0]
            assert row["loss"] == own[split].loss
            assert row["error"] == own[split].error
    assert sorted(curve["t"].unique()) == pytest.approx([k / 6 for k in range(7)])


def test_layer_distances_by_hand():
    model = cnn()
    a = random_point(model, 0)
    b = Point(2 * a.params, a.buffers)  # same direction: cosine 1, distance |a|

    rows = pd.DataFrame(layer_distances(a, b, model_layers(model))).set_index("layer")

    assert list(rows.index) == [*CNN_LAYERS, "full"]
    assert rows["cosine"].tolist() == pytest.approx([1.0] * 6)
    assert rows.loc["full", "distance"] == pytest.approx(float(a.params.double().norm()))
    assert (rows["distance"].iloc[:-1] ** 2).sum() == pytest.approx(rows.loc["full", "distance"] ** 2)


# -- config ----------------------------------------------------------------------------------------
def tiny(**sections) -> dict:
    config = copy.deepcopy(TINY)
    config.update(copy.deepcopy(sections))
    return config


IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}


@pytest.mark.parametrize(("sections", "message"), [
    ({"interpolation": {"pairs": {"p": {"a": {"alpha": 0.7}, "b": IID}}}}, r"interpolation\.pairs\.p\.a: no run"),
    ({"interpolation": {"pairs": {"p": {"a": {"init": "random"}, "b": IID}}}}, r"interpolation\.pairs\.p\.a: 2 runs"),
    ({"interpolation": {"pairs": {"p": {"a": {"alfa": "iid"}, "b": IID}}}}, r"alfa.*Did you mean 'alpha'"),
    ({"interpolation": {"pairs": {"p": {"a": IID, "b": IID}}}}, "same checkpoint"),
    # 'final' is the tiny run's last round 3: the same checkpoint written two ways
    ({"interpolation": {"pairs": {"p": {"a": IID, "b": IID, "round_a": "final", "round_b": 3}}}},
     r"interpolation\.pairs\.p: a and b name the same checkpoint \(.*, round 3"),
    ({"interpolation": {"pairs": {"p": {"a": IID, "b": IID, "round_a": 3, "round_b": "final"}}}},
     r"interpolation\.pairs\.p: a and b name the same checkpoint"),
    ({"interpolation": {"pairs": {"p": {"a": IID, "b": IID, "round_a": 9}}}}, r"round_a: round 9"),
    ({"interpolation": {"points": 2}}, r"interpolation\.points"),
    ({"layer_barriers": {"pairs": {"q": {"run": IID, "clients": [0, 7]}}}}, r"q\.clients: client ids \[7\]"),
    ({"layer_barriers": {"pairs": {"q": {"run": IID, "rounds": [2]}}}}, r"q\.rounds: rounds \[2\] have no client"),
    ({"layer_barriers": {"every": 2, "pairs": {"q": {"run": IID}}}}, "no round is left"),
    ({"layer_barriers": {"pairs": {"q": {"a": IID}}}}, "needs both `a` and `b`"),
    ({"layer_barriers": {"pairs": {"q": {"run": IID, "a": IID, "b": IID}}}}, "either `run`"),
    ({"layer_barriers": {"pairs": {"q": {"a": IID, "b": IID}}}}, "same run"),
    ({"layer_barriers": {"pairs": {"q": {"run": IID, "extra": 1}}}}, r"unknown key 'extra'"),
    ({"client_stats": {"enabled": "yes"}}, r"client_stats\.enabled"),
])
def test_invalid_barrier_configs_name_the_key(sections, message):
    with pytest.raises(ConfigError, match=message):
        check_config(tiny(**sections), SCHEMA)


MOON_P = {"alpha": 0.5, "init": "random", "algorithm": "moonp"}


@pytest.mark.parametrize(("sections", "message"), [
    # a network with MOON's projection head against one without it
    ({"interpolation": {"align": False, "pairs": {"p": {"a": {**MOON_P, "alpha": "iid"}, "b": IID}}}},
     r"interpolation\.pairs\.p: runs a and b train different networks: algorithm moonp adds .*projection_head"),
    # no weight-matching spec of the head
    ({"interpolation": {"align": True, "pairs": {"p": {"a": MOON_P, "b": MOON_P, "round_a": 1}}}},
     r"interpolation\.pairs\.p: interpolation\.align has no weight-matching spec of the projection head"),
    ({"landscapes": {"three": {"kind": "final_models", "runs": [IID, MOON_P, {**IID, "alpha": 0.5}]}}},
     r"landscapes\.three: all runs of one plane must train the same network"),
])
def test_moon_s_projection_head_is_compared_only_with_itself_and_never_aligned(sections, message):
    # Prepare: MOON with the classifier on its projection head beside the tiny config's runs
    config = tiny(**sections)
    config["algorithms"]["moonp"] = {"name": "moon", "head": "projection"}
    config["experiments"] += [{"alpha": "iid", "algorithm": "moonp"}, {"alpha": 0.5, "algorithm": "moonp"}]

    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        check_config(config, SCHEMA)


def test_client_pair_with_absent_client_is_rejected_under_partial_participation():
    config = tiny(layer_barriers={"pairs": {"q": {"run": IID, "clients": [0, 1]}}})
    config["participation"] = [0.5]
    config["training"]["rounds"] = 8
    config["training"]["save_clients_at"] = list(range(1, 9))

    with pytest.raises(ConfigError, match=r"do not both take part in rounds"):
        check_config(config, SCHEMA)


def test_defaults_and_pairs_resolve():
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import layer_pairs

    pairs = {"r": {"a": IID, "b": {**IID, "alpha": 0.5}}}
    config = check_config(tiny(layer_barriers={"every": 2, "pairs": pairs}), SCHEMA)

    (pair,) = layer_pairs(config, build_runs(config))
    assert pair.kind == "runs" and pair.rounds == (2,)
    assert pair.run_id == f"{pair.run_a.run_id} | {pair.run_b.run_id}"
    defaults = check_config({}, SCHEMA)["interpolation"]
    assert {k: v for k, v in defaults.items() if k != "curve"} == {"points": 21, "align": False, "pairs": {},
                                                                     "precision": "fp32", "bn_stats": "recomputed",
                                                                     "eval_samples": None, "eval_seed": 0}
    assert defaults["curve"]["enabled"] is False


# -- figures from fixture tables ------------------------------------------------------------------
def rid(alpha: str, seed: int = 0, init: str = "random") -> str:
    """A run_id of the digits / cnn_small runs of the fixture tables."""
    return f"digits/cnn_small/init~{init}/algo~fedavg/alpha~{alpha}/clients~10/part~1.0/seed~{seed}"


def figure_outputs(tmp_path: Path, name: str) -> dict[str, Path]:
    """A rule's named figure outputs <name>.{png,pdf,csv} under tmp_path/figures."""
    return {ext: tmp_path / "figures" / f"{name}.{ext}" for ext in ("png", "pdf", "csv")}


def distance_table() -> pd.DataFrame:
    """layer_distances.csv of two pairs: two clients of one run (rounds 1-3) and two runs (rounds 0 and 2)."""
    rows = []
    for pair, run_id, rounds in (("clients", rid("iid"), (1, 2, 3)), ("runs", f"{rid('iid')} | {rid('0.1')}", (0, 2))):
        for r in rounds:
            for k, layer in [*enumerate(CNN_LAYERS), (-1, "full")]:
                distance = 0.0 if pair == "runs" and r == 0 else (k + 2) * 0.1 * r  # same init: identical at round 0
                rows.append({"run_id": run_id, "round": r, "pair": pair, "layer_index": k, "layer": layer,
                             "distance": distance, "cosine": 1.0 - 0.01 * r})
    return pd.DataFrame(rows, columns=LAYER_DISTANCE_COLUMNS)


@pytest.mark.parametrize("pair", ["clients", "runs"])
def test_layer_distance_figure_writes_pdf_png_and_the_pairs_rows(tmp_path, pair):
    from fedscape.analysis.barriers.figures import layer_distance_figure_job

    table = distance_table()
    table.to_csv(tmp_path / "layer_distances.csv", index=False)
    outputs = figure_outputs(tmp_path, f"{pair}/distances")

    layer_distance_figure_job(tmp_path / "layer_distances.csv", pair, outputs)

    data = assert_figure_files(outputs)
    expected = table[table["pair"] == pair]
    assert list(data.columns) == LAYER_DISTANCE_COLUMNS
    assert len(data) == len(expected)
    assert sorted(data["round"].unique()) == sorted(expected["round"].unique())
    for _, per_round in data.groupby("round"):  # layers in forward order, the whole model last
        assert per_round["layer"].tolist() == [*CNN_LAYERS, "full"]
    assert data["distance"].sum() == pytest.approx(expected["distance"].sum())



def test_layer_distance_figure_draws_l2_and_cosine_distance(tmp_path, monkeypatch):
    """Adilova et al. Fig. 1b: an L2 panel and a cosine-distance (1 - cos) panel, each layers x rounds."""
    from fedscape.analysis.barriers import figures

    # Prepare: keep the figure instead of closing it
    table = distance_table()
    table.to_csv(tmp_path / "layer_distances.csv", index=False)
    drawn = {}
    monkeypatch.setattr(figures, "save_figure_outputs", lambda fig, outputs, data: drawn.update(fig=fig))

    # Execute
    figures.layer_distance_figure_job(tmp_path / "layer_distances.csv", "clients", figure_outputs(tmp_path, "d"))

    # Assert: the images hold the table's values (rows = layers + full model, columns = rounds 1-3)
    images = [ax.get_images()[0].get_array() for ax in drawn["fig"].axes if ax.get_images()]
    assert len(images) == 2
    l2, cos = (image.filled(float("nan")) for image in images)
    assert l2.shape == cos.shape == (len(CNN_LAYERS) + 1, 3)
    assert l2[0].tolist() == pytest.approx([0.2 * r for r in (1, 2, 3)])
    assert cos[:, 1].tolist() == pytest.approx([0.02] * (len(CNN_LAYERS) + 1))
    labels = [ax.get_ylabel() for ax in drawn["fig"].axes]
    assert any("cosine distance" in label for label in labels)

def test_layer_distance_figure_of_a_pair_absent_from_the_table(tmp_path):
    from fedscape.analysis.barriers.figures import layer_distance_figure_job

    distance_table().to_csv(tmp_path / "layer_distances.csv", index=False)
    outputs = figure_outputs(tmp_path, "distances")

    with pytest.raises(ValueError, match=r"pair 'nope' has no rows .*its pairs: clients, runs"):
        layer_distance_figure_job(tmp_path / "layer_distances.csv", "nope", outputs)
    assert not any(p.exists() for p in outputs.values())
    pd.DataFrame(columns=["run_id", "round"]).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match=r"other\.csv: expected the columns .*\(missing \['pair'"):
        layer_distance_figure_job(tmp_path / "other.csv", "clients", outputs)
    # a configured pair whose rounds were all skipped (the rule passes its rounds): a figure saying so
    layer_distance_figure_job(tmp_path / "layer_distances.csv", "nope", outputs, rounds=[1, 2])
    assert len(assert_figure_files(outputs, min_rows=0, min_png=1000)) == 0


def test_barrier_figures_follow_the_shared_style(tmp_path):
    """Interpolation curves, layer heatmaps (one figure per split) and client statistics: valid files, the tables'
    columns unchanged."""
    from fedscape.analysis.barriers.figures import interpolation_figure_job, layer_barrier_figures_job, pair_label
    from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS
    from fedscape.analysis.client_stats.figures import client_stats_figure_job

    curves = pd.DataFrame([
        {"pair_id": "iid_vs_01", "run_a": rid("iid"), "round_a": 3, "run_b": rid("0.1"), "round_b": 3, "t": t,
         "split": split, "loss": 1 + t * (1 - t), "error": 0.2 + 0.1 * t * (1 - t)}
        for split in ("train", "test") for t in (0.0, 0.5, 1.0)], columns=INTERPOLATION_COLUMNS)
    curves.to_csv(tmp_path / "interpolation.csv", index=False)
    interpolation_figure_job(tmp_path / "interpolation.csv", figure_outputs(tmp_path, "interpolation"))
    assert list(assert_figure_files(figure_outputs(tmp_path, "interpolation")).columns) == INTERPOLATION_COLUMNS

    layers = pd.DataFrame([
        {"run_id": rid("iid"), "round": r, "pair": "clients", "mode": mode, "layer_index": k, "layer": layer,
         "split": split, "barrier_loss": 0.1 * k - 0.05 * r, "barrier_error": 0.01 * k}
        for r in (1, 2) for mode in MODES for k, layer in enumerate(CNN_LAYERS) for split in ("train", "test")],
        columns=LAYER_BARRIER_COLUMNS)
    layers.to_csv(tmp_path / "layer_barriers.csv", index=False)
    # the rule's outputs: each split's figure files, keyed "<split>_<format>"
    outputs = {f"{split}_{key}": path for split in ("train", "test")
               for key, path in figure_outputs(tmp_path, split).items()}
    layer_barrier_figures_job(tmp_path / "layer_barriers.csv", "clients", outputs)
    for split in ("train", "test"):
        data = assert_figure_files(figure_outputs(tmp_path, split))
        assert list(data.columns) == LAYER_BARRIER_COLUMNS and set(data["split"]) == {split}

    stats = pd.DataFrame([
        {"run_id": rid(alpha, seed), "round": r, "drift_from_start": 0.1, "drift_from_aggregate": 0.1,
         "gradient_diversity": 1.0 + r, "update_cosine_mean": 0.5, "l2_to_final": 3.0 - r}
        for alpha in ("iid", "0.1") for seed in (0, 1) for r in range(4)], columns=CLIENT_STATS_COLUMNS)
    stats.to_csv(tmp_path / "client_stats.csv", index=False)
    stats[["run_id", "round"]].assign(status="ok").to_csv(tmp_path / "rounds.csv", index=False)  # no run diverged
    client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv",
                            figure_outputs(tmp_path, "client_stats"))
    data = assert_figure_files(figure_outputs(tmp_path, "client_stats"))
    assert len(data) == 2 * 4  # seeds averaged: one line per alpha
    assert pair_label(rid("iid"), rid("0.1")) == "IID vs α=0.1"
    assert pair_label(rid("iid")) == "FedAvg · random init · IID"


# -- interpolation after alignment (Git Re-Basin) ---------------------------------------------------
def test_barriers_from_curves_keep_aligned_and_unaligned_apart_and_old_curves_read_as_unaligned(tmp_path):
    from fedscape.analysis.barriers.tables import interpolation_tables_job

    # Prepare: a bump of 0.5 unaligned, flat once aligned, evaluated with recomputed batch-norm statistics; and a
    # curve file from before the columns `aligned` and `bn_stats` existed
    def curve(pair, aligned, bump):
        return [{"pair_id": pair, "run_a": rid("iid"), "round_a": 3, "run_b": rid("0.1"), "round_b": 3, "t": t,
                 "split": "train", "loss": 1.0 + bump * 4 * t * (1 - t), "error": 0.1, "aligned": aligned,
                 "bn_stats": "recomputed"} for t in (0.0, 0.5, 1.0)]
    pd.DataFrame(curve("p", False, 0.5) + curve("p", True, 0.0)).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(curve("old", False, 0.25)).drop(columns=["aligned", "bn_stats"]).to_csv(tmp_path / "old.csv",
                                                                                       index=False)

    # Execute
    interpolation_tables_job([tmp_path / "p.csv", tmp_path / "old.csv"], tmp_path / "i.csv", tmp_path / "b.csv")

    # Assert
    barriers = pd.read_csv(tmp_path / "b.csv").set_index(["pair_id", "aligned"])
    assert list(pd.read_csv(tmp_path / "b.csv").columns) == BARRIER_COLUMNS
    assert barriers.loc[("p", False), "barrier_loss"] == pytest.approx(0.5)
    assert barriers.loc[("p", True), "barrier_loss"] == pytest.approx(0.0)
    assert barriers.loc[("old", False), "barrier_loss"] == pytest.approx(0.25)
    assert barriers["bn_stats"].to_dict() == {("p", False): "recomputed", ("p", True): "recomputed",
                                              ("old", False): "stored"}
    assert list(pd.read_csv(tmp_path / "i.csv").columns) == INTERPOLATION_COLUMNS


def test_interpolation_settings_carry_align_only_when_on():
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings

    pairs = {"p": {"a": IID, "b": {**IID, "alpha": 0.5}}}
    for align in (False, True):
        config = check_config(tiny(interpolation={"points": 5, "align": align, "pairs": pairs}), SCHEMA)
        (pair,) = interpolation_pairs(config, build_runs(config))

        assert interpolation_settings(config, pair).get("align", False) is align
        assert ("align" in interpolation_settings(config, pair)) is align  # off: the settings of older jobs


def test_the_interpolation_legend_says_where_alignment_changed_nothing(tmp_path, monkeypatch):
    # Prepare: pair "same" aligned to the identity (its aligned rows repeat the unaligned ones), pair "moved" not
    from fedscape.analysis.barriers import figures

    def rows(pair, aligned, bump):
        return [{"pair_id": pair, "run_a": rid("iid"), "round_a": 3, "run_b": rid("0.1"), "round_b": 3, "t": t,
                 "split": split, "loss": 1 + t * (1 - t) - bump * t * (1 - t), "error": 0.2, "aligned": aligned,
                 "path": "linear", "bn_stats": "stored"}
                for split in ("train", "test") for t in (0.0, 0.5, 1.0)]

    table = pd.DataFrame(rows("same", False, 0) + rows("same", True, 0) + rows("moved", False, 0)
                         + rows("moved", True, 0.5), columns=INTERPOLATION_COLUMNS)
    table.to_csv(tmp_path / "interpolation.csv", index=False)
    legends = []
    monkeypatch.setattr(figures, "save_figure_outputs",
                        lambda fig, outputs, df: legends.extend(t.get_text() for t in fig.legends[0].get_texts()))

    # Execute
    figures.interpolation_figure_job(tmp_path / "interpolation.csv", figure_outputs(tmp_path, "interpolation"))

    # Assert
    aligned = {text.split(":")[0]: text for text in legends if "aligned to a" in text}
    assert aligned["same"].endswith("b aligned to a (alignment changed nothing: on the unaligned line)")
    assert aligned["moved"].endswith("b aligned to a")


def test_the_interpolation_legend_says_a_pair_of_nan_rows_was_not_computed(tmp_path, monkeypatch):
    # Prepare: pair "boom" of a diverged run: NaN rows as trained and aligned (the job's rows when not computed);
    # pair "same" aligned to the identity, whose legend says alignment changed nothing
    from fedscape.analysis.barriers import figures

    def rows(pair, aligned, loss):
        return [{"pair_id": pair, "run_a": rid("iid"), "round_a": 3, "run_b": rid("0.1"), "round_b": 3, "t": t,
                 "split": split, "loss": loss, "error": loss, "aligned": aligned, "path": "linear",
                 "bn_stats": "stored"}
                for split in ("train", "test") for t in (0.0, 0.5, 1.0)]

    table = pd.DataFrame(rows("boom", False, float("nan")) + rows("boom", True, float("nan"))
                         + rows("same", False, 1.0) + rows("same", True, 1.0), columns=INTERPOLATION_COLUMNS)
    table.to_csv(tmp_path / "interpolation.csv", index=False)
    legends = []
    monkeypatch.setattr(figures, "save_figure_outputs",
                        lambda fig, outputs, df: legends.extend(t.get_text() for t in fig.legends[0].get_texts()))

    # Execute
    figures.interpolation_figure_job(tmp_path / "interpolation.csv", figure_outputs(tmp_path, "interpolation"))

    # Assert
    boom = [text for text in legends if text.startswith("boom:")]
    assert len(boom) == 2  # as trained and aligned
    assert all(text.endswith("(not computed: a run diverged)") and "changed nothing" not in text for text in boom)
    (same_aligned,) = [text for text in legends if text.startswith("same:") and "aligned to a" in text]
    assert same_aligned.endswith("(alignment changed nothing: on the unaligned line)")


def test_the_layer_training_figure_of_one_round_has_integer_round_ticks(tmp_path, monkeypatch):
    # Prepare: a client pair computed at round 1 alone (matplotlib's default view 0.945..1.055)
    from fedscape.analysis.barriers import figures

    layers = [(0, "0"), (1, "0 1")]
    barriers = pd.DataFrame([
        {"run_id": rid("iid"), "round": 1, "pair": "q", "mode": "shallow", "layer_index": k, "layer": CNN_LAYERS[k],
         "split": split, "barrier_loss": 0.1 * (k + 1), "barrier_error": 0.05, "aligned": False, "averaged": averaged}
        for k, averaged in layers for split in ("train", "test")], columns=LAYER_BARRIER_COLUMNS)
    distances = pd.DataFrame([
        {"run_id": rid("iid"), "round": 1, "pair": "q", "layer_index": k, "layer": name, "distance": k + 2.0,
         "cosine": 0.9, "aligned": False} for k, name in [(0, CNN_LAYERS[0]), (1, CNN_LAYERS[1]), (-1, "full")]],
        columns=LAYER_DISTANCE_COLUMNS)
    barriers.to_csv(tmp_path / "b.csv", index=False)
    distances.to_csv(tmp_path / "d.csv", index=False)
    ticks = []

    def visible_ticks(fig, outputs, data):
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks.append([x for x in ax.get_xticks() if lo <= x <= hi])
    monkeypatch.setattr(figures, "save_figure_outputs", visible_ticks)

    # Execute
    figures.layer_training_figure_job(tmp_path / "b.csv", tmp_path / "d.csv", "q", figure_outputs(tmp_path, "t"))

    # Assert: every panel's visible round ticks are the one round
    assert len(ticks) == 4  # the loss and the error barrier, L2, cosine
    assert all(visible == [1.0] for visible in ticks)


# -- +inf barriers in the figures: drawn, and said, where matplotlib would leave them out unseen --------------------
def _infinite_markers(ax) -> list[list[float]]:
    """The x values of the lines of `ax` that mark +inf values (figures.INFINITE_MARKER at the top edge)."""
    from fedscape.analysis.barriers.figures import INFINITE_MARKER

    return [list(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == INFINITE_MARKER
            and list(line.get_ydata()) == [1.0] * len(line.get_xdata())]


def test_the_interpolation_figure_marks_an_infinite_loss_at_the_top_edge_and_its_legend_says_so(tmp_path,
                                                                                                 monkeypatch):
    # Prepare: pair "boom" whose train loss overflowed at t = 0.5, pair "ok" finite throughout
    from fedscape.analysis.barriers import figures

    def rows(pair, peak):
        return [{"pair_id": pair, "run_a": rid("iid"), "round_a": 3, "run_b": rid("0.1"), "round_b": 3, "t": t,
                 "split": split, "loss": peak if (t, split) == (0.5, "train") else 1.0 + t, "error": 0.2,
                 "aligned": False, "path": "linear", "bn_stats": "stored"}
                for split in ("train", "test") for t in (0.0, 0.5, 1.0)]

    pd.DataFrame(rows("boom", math.inf) + rows("ok", 3.0), columns=INTERPOLATION_COLUMNS).to_csv(
        tmp_path / "interpolation.csv", index=False)
    figs = []
    monkeypatch.setattr(figures, "save_figure_outputs", lambda fig, outputs, df: figs.append(fig))

    # Execute
    figures.interpolation_figure_job(tmp_path / "interpolation.csv", figure_outputs(tmp_path, "interpolation"))

    # Assert: the train loss panel (first) marks t = 0.5 of "boom" alone; every axis spans finite values; the legend
    # names the curve with a +inf value
    (fig,) = figs
    assert _infinite_markers(fig.axes[0]) == [[0.5]]
    assert all(_infinite_markers(ax) == [] for ax in fig.axes[1:])
    assert all(math.isfinite(v) for ax in fig.axes for v in ax.get_ylim())
    legends = {text.get_text().split(":")[0]: text.get_text() for text in fig.legends[0].get_texts()}
    assert legends["boom"].endswith(f"(+inf at some t: {figures.INFINITE_NOTE})")
    assert "+inf" not in legends["ok"]


def _layer_rows(barrier) -> pd.DataFrame:
    """layer_barriers.csv of pair "q", mode shallow over two layers, rounds 1 and 2: the loss barrier `barrier(k, r)`
    of layer k at round r, error 0.05."""
    return pd.DataFrame([
        {"run_id": rid("iid"), "round": r, "pair": "q", "mode": "shallow", "layer_index": k, "layer": CNN_LAYERS[k],
         "split": split, "barrier_loss": barrier(k, r), "barrier_error": 0.05, "aligned": False, "averaged": averaged}
        for r in (1, 2) for k, averaged in [(0, "0"), (1, "0 1")] for split in ("train", "test")],
        columns=LAYER_BARRIER_COLUMNS)


def test_a_layer_heatmap_colours_an_infinite_barrier_apart_from_a_missing_one(tmp_path, monkeypatch):
    # Prepare: layer 0 at round 1 +inf (the mixed model's loss overflowed), layer 1 at round 2 not computed (NaN)
    from matplotlib.colors import to_rgba

    from fedscape.analysis.barriers import figures
    from fedscape.outputs.style import MISSING_COLOR

    cells = {(0, 1): math.inf, (1, 2): math.nan}
    _layer_rows(lambda k, r: cells.get((k, r), 0.1 * (k + 1))).to_csv(tmp_path / "b.csv", index=False)
    figs = []
    monkeypatch.setattr(figures, "save_figure_outputs", lambda fig, outputs, df: figs.append(fig))

    # Execute
    figures.layer_heatmaps(tmp_path / "b.csv", "q", "train", figure_outputs(tmp_path, "h"), modes=("shallow",))

    # Assert: in the loss heatmap (rows = layers, columns = rounds) the +inf cell is the colour bar's extension, the
    # NaN cell the grey of a missing value, the others the map's own colours
    (fig,) = figs
    image = fig.axes[0].images[0]
    rgba = image.to_rgba(image.get_array())
    assert tuple(rgba[0, 0]) == to_rgba(figures.INFINITE_COLOR)
    assert tuple(rgba[1, 1]) == to_rgba(MISSING_COLOR)
    assert {tuple(rgba[0, 1]), tuple(rgba[1, 0])}.isdisjoint({to_rgba(figures.INFINITE_COLOR), to_rgba(MISSING_COLOR)})
    assert image.colorbar.extend == "max"


def test_the_layer_training_figure_marks_an_infinite_full_model_barrier_and_its_title_says_so(tmp_path, monkeypatch):
    # Prepare: the full-model barrier (layers 0 and 1 averaged) +inf at round 2
    from fedscape.analysis.barriers import figures

    _layer_rows(lambda k, r: math.inf if (k, r) == (1, 2) else 0.1).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame([{"run_id": rid("iid"), "round": r, "pair": "q", "layer_index": k, "layer": name, "distance": 1.0,
                   "cosine": 0.9, "aligned": False} for r in (1, 2) for k, name in [(0, "a"), (1, "b"), (-1, "full")]],
                 columns=LAYER_DISTANCE_COLUMNS).to_csv(tmp_path / "d.csv", index=False)
    figs = []
    monkeypatch.setattr(figures, "save_figure_outputs", lambda fig, outputs, df: figs.append(fig))

    # Execute
    figures.layer_training_figure_job(tmp_path / "b.csv", tmp_path / "d.csv", "q", figure_outputs(tmp_path, "t"))

    # Assert: round 2 marked on both splits' loss lines, the loss axis spans the finite values, the title says so
    (fig,) = figs
    ax_barrier = fig.axes[0]
    assert _infinite_markers(ax_barrier) == [[2.0], [2.0]]
    assert all(math.isfinite(v) for v in ax_barrier.get_ylim())
    assert ax_barrier.get_title().endswith(f"({figures.INFINITE_NOTE})")
