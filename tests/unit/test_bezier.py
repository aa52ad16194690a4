"""The trained quadratic Bezier curve between two models (Garipov et al. 2018): its endpoints, its training,
its barrier next to the straight line's, its config and its rows in the interpolation tables."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict

import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA, TINY
from helpers.resume import killed_at_call
from helpers.synthetic import digits_like
from torch import nn

from fedscape.analysis.barriers.curve import bezier_curve, bezier_params, bezier_point, midpoint_bend, train_bend
from fedscape.analysis.barriers.definitions import (
    BARRIER_COLUMNS,
    INTERPOLATION_COLUMNS,
    CurveSettings,
    curve_lr_factor,
    linear_barrier,
)
from fedscape.analysis.barriers.maths import Point, evaluate_point, interpolation_curve
from fedscape.core.config import FIRST_RESULT_VERSION, RESULT_VERSION, ConfigError
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}




def cnn_point(seed: int) -> tuple[nn.Module, Point]:
    torch.manual_seed(seed)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    return model, Point(flatten_params(model), flatten_buffers(model))


class Ring(nn.Module):
    """Two weights whose loss is low on the unit circle |w| = 1 and high near the origin: two points of the circle
    are joined by a bent valley, and the straight line between them cuts through the high-loss disc."""

    def __init__(self, sharpness: float = 4.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.sharpness = sharpness

    def forward(self, x):
        logit = 1.0 - self.sharpness * ((self.w**2).sum() - 1.0) ** 2  # the label 1 wins while |w|^2 is near 1
        return torch.stack([torch.zeros(len(x)), logit.expand(len(x))], dim=1)


def ring_problem():
    model = Ring().eval()
    x, y = torch.zeros(64, 1), torch.ones(64, dtype=torch.long)
    a = Point(torch.tensor([1.0, 0.0]), torch.zeros(0))
    b = Point(torch.tensor([-0.6, 0.8]), torch.zeros(0))  # not antipodal: the midpoint's gradient is not zero
    return model, {"train": (x, y), "test": (x, y)}, a, b


FAST = CurveSettings(steps=40, batch_size=16, lr=0.01, momentum=0.9, seed=0)


# -- the curve -------------------------------------------------------------------------------------
def test_bezier_params_by_hand():
    a, theta, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 0.0])

    # Assert: phi(1/2) = a/4 + theta/2 + b/4, phi(1/4) = 9/16 a + 6/16 theta + 1/16 b
    assert torch.allclose(bezier_params(a, theta, b, 0.5), torch.tensor([0.0, 1.0]))
    assert torch.allclose(bezier_params(a, theta, b, 0.25), torch.tensor([0.5, 0.75]))
    # a bend at the midpoint is the straight line
    assert torch.allclose(bezier_params(a, 0.5 * (a + b), b, 0.3), 0.7 * a + 0.3 * b)


def test_curve_endpoints_are_the_two_models_exactly():
    # Prepare: a trained bend, so that the curve is not the straight line
    model, a = cnn_point(0)
    _, b = cnn_point(1)
    splits = digits_like()
    theta, _ = train_bend(model, a, b, *splits["train"], FAST)

    # Execute
    rows = pd.DataFrame(bezier_curve(model, a, theta, b, splits, points=5))

    # Assert
    assert not torch.allclose(theta, midpoint_bend(a, b))
    for t, point in ((0.0, a), (1.0, b)):
        assert torch.equal(bezier_point(a, theta, b, t).params, point.params)
        assert torch.equal(bezier_point(a, theta, b, t).buffers, point.buffers)
        own = evaluate_point(model, point, splits)
        for split in ("train", "test"):
            row = rows[(rows["t"] == t) & (rows["split"] == split)].iloc[0]
            assert (row["loss"], row["error"]) == (own[split].loss, own[split].error)
    assert sorted(rows["t"].unique()) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_curve_of_a_model_with_itself_has_zero_barrier():
    # Prepare: an untrained model, so that training the bend moves it downhill
    model, a = cnn_point(0)
    splits = digits_like()

    # Execute
    theta, losses = train_bend(model, a, a, *splits["train"], FAST)
    rows = pd.DataFrame(bezier_curve(model, a, theta, a, splits, points=7))

    # Assert
    assert not torch.equal(theta, a.params)  # the bend did move
    train = rows[rows["split"] == "train"]
    assert linear_barrier(train["t"], train["loss"]) == 0.0
    assert (train["loss"].iloc[1:-1] < train["loss"].iloc[0]).all()  # the curve dips below the model
    untrained, _ = train_bend(model, a, a, *splits["train"], CurveSettings(steps=0))
    flat = pd.DataFrame(bezier_curve(model, a, untrained, a, splits, points=7))
    for split in ("train", "test"):
        sub = flat[flat["split"] == split]
        assert linear_barrier(sub["t"], sub["loss"]) == 0.0
        assert linear_barrier(sub["t"], sub["error"]) == 0.0


def test_trained_curve_goes_around_a_ridge_that_the_straight_line_crosses():
    model, splits, a, b = ring_problem()
    settings = CurveSettings(steps=300, batch_size=16, lr=0.05, momentum=0.9, seed=0)

    theta, losses = train_bend(model, a, b, *splits["train"], settings)
    linear = pd.DataFrame(interpolation_curve(model, a, b, splits, points=21))
    curved = pd.DataFrame(bezier_curve(model, a, theta, b, splits, points=21))

    def barrier(df, value):
        sub = df[df["split"] == "train"]
        return linear_barrier(sub["t"], sub[value])

    assert barrier(linear, "loss") > 1.0  # the segment cuts through the disc
    assert barrier(curved, "loss") < 0.1 * barrier(linear, "loss")
    assert barrier(linear, "error") == 1.0 and barrier(curved, "error") == 0.0
    assert float(bezier_params(a.params, theta, b.params, 0.5).norm()) == pytest.approx(1.0, abs=0.1)  # on the ring
    assert losses[-1] < losses[0]


def test_training_is_deterministic_given_the_seed():
    model, a = cnn_point(0)
    _, b = cnn_point(1)
    x, y = digits_like()["train"]

    first, losses = train_bend(model, a, b, x, y, FAST)
    again, losses_again = train_bend(model, a, b, x, y, FAST)
    other, _ = train_bend(model, a, b, x, y, CurveSettings(**{**asdict(FAST), "seed": 1}))

    assert torch.equal(first, again) and losses == losses_again
    assert not torch.allclose(first, other)
    assert len(losses) == FAST.steps


def test_learning_rate_schedule_of_garipov_et_al():
    assert [curve_lr_factor(s, 100) for s in (0, 50, 70, 90, 99)] == pytest.approx([1.0, 1.0, 0.505, 0.01, 0.01])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", -1, "steps"), ("batch_size", 0, "batch_size"), ("lr", 0.0, "lr"), ("momentum", 1.0, "momentum"),
    ("weight_decay", -1e-4, "weight_decay"),
])
def test_invalid_curve_settings_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        CurveSettings(**{field: value})


# -- config and tables -----------------------------------------------------------------------------
def config_with_curve(**curve) -> dict:
    config = copy.deepcopy(TINY)
    config["interpolation"] = {"points": 5, "pairs": {"p": {"a": IID, "b": {**IID, "alpha": 0.5}}}, "curve": curve}
    return config


def test_schema_defaults_are_the_curve_settings_defaults():
    section = check_config(config_with_curve(), SCHEMA)["interpolation"]["curve"]

    assert section == {"enabled": False, **asdict(CurveSettings())}


@pytest.mark.parametrize(("curve", "message"), [
    ({"lr": 0}, r"interpolation\.curve\.lr"),
    ({"steps": -3}, r"interpolation\.curve\.steps"),
    ({"step": 3}, r"unknown key 'step'"),
    ({"enabled": "yes"}, r"interpolation\.curve\.enabled"),
])
def test_invalid_curve_configs_name_the_key(curve, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config_with_curve(**curve), SCHEMA)


def test_interpolation_settings_carry_the_curve_only_when_enabled():
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings

    for enabled in (False, True):
        config = check_config(config_with_curve(enabled=enabled, steps=7), SCHEMA)
        (pair,) = interpolation_pairs(config, build_runs(config))

        settings = interpolation_settings(config, pair)

        assert ("curve" in settings) is enabled  # off: the settings of jobs from before the option
        if enabled:
            assert settings["curve"] == {**asdict(CurveSettings()), "steps": 7}


def test_barriers_of_curves_keep_paths_apart_and_old_curves_read_as_linear(tmp_path):
    from fedscape.analysis.barriers.tables import interpolation_tables_job

    # Prepare: a bump of 0.5 on the straight line, 0.1 on the curve; a curve file from before `path` existed
    def curve(pair, path, bump):
        return [{"pair_id": pair, "run_a": "a", "round_a": 3, "run_b": "b", "round_b": 3, "t": t, "split": "train",
                 "loss": 1.0 + bump * 4 * t * (1 - t), "error": 0.1, "aligned": False, "path": path}
                for t in (0.0, 0.5, 1.0)]
    pd.DataFrame(curve("p", "linear", 0.5) + curve("p", "bezier", 0.1)).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(curve("old", "linear", 0.25)).drop(columns="path").to_csv(tmp_path / "old.csv", index=False)

    # Execute
    interpolation_tables_job([tmp_path / "p.csv", tmp_path / "old.csv"], tmp_path / "i.csv", tmp_path / "b.csv")

    # Assert
    table = pd.read_csv(tmp_path / "b.csv")
    barriers = table.set_index(["pair_id", "path"])
    assert list(table.columns) == BARRIER_COLUMNS
    assert barriers.loc[("p", "linear"), "barrier_loss"] == pytest.approx(0.5)
    assert barriers.loc[("p", "bezier"), "barrier_loss"] == pytest.approx(0.1)
    assert barriers.loc[("old", "linear"), "barrier_loss"] == pytest.approx(0.25)
    curves = pd.read_csv(tmp_path / "i.csv")
    assert list(curves.columns) == INTERPOLATION_COLUMNS
    assert curves.groupby("path").size().to_dict() == {"bezier": 3, "linear": 6}


# -- the stage -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy and a diverged run (tests/helpers/diverged.py), trained once for this module."""
    from helpers.diverged import build_diverged_runs

    return build_diverged_runs(tmp_path_factory.mktemp("bezier_runs"))


def test_stage_writes_bezier_rows_next_to_linear_ones_and_nan_rows_for_a_diverged_end(runs, tmp_path):
    from fedscape.analysis.barriers.stage import interpolation_job
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings

    # Prepare: the fixture's two pairs (healthy round 1 vs final; healthy vs diverged), curve and alignment on
    config = copy.deepcopy(runs.config)
    config["interpolation"].update(align=True, curve={**config["interpolation"]["curve"], "enabled": True,
                                                      "steps": 10, "batch_size": 32})
    frames = {}
    for pair in interpolation_pairs(config, [runs.healthy, runs.diverged]):
        # Execute
        interpolation_job(interpolation_settings(config, pair), runs.trajectory(pair.run_a),
                            runs.trajectory(pair.run_b), runs.partition, tmp_path / f"{pair.label}.csv")
        frames[pair.label] = pd.read_csv(tmp_path / f"{pair.label}.csv")

    # Assert
    points = config["interpolation"]["points"]
    for df in frames.values():
        assert list(df.columns) == INTERPOLATION_COLUMNS
        assert df.groupby(["path", "aligned"]).size().to_dict() == {
            (path, aligned): points * 2 for path in ("bezier", "linear") for aligned in (False, True)}
    ok, boom = frames["ok_r1_vs_final"], frames["ok_vs_boom"]
    assert ok[["loss", "error"]].notna().all().all() and boom[["loss", "error"]].isna().all().all()
    ends = ok[ok["t"].isin([0.0, 1.0])].pivot_table(index=["t", "split", "aligned"], columns="path", values="loss")
    assert (ends["bezier"] == ends["linear"]).all()  # the curve's ends are the models
    inner = ok[ok["t"] == 0.5].pivot_table(index=["split", "aligned"], columns="path", values="loss")
    assert (inner["bezier"] != inner["linear"]).all()  # the trained bend moved the curve off the line


def test_a_killed_interpolation_keeps_its_trained_bends_and_resumes_with_the_same_curve(runs, tmp_path, monkeypatch,
                                                                                       caplog):
    from fedscape.analysis.barriers import stage as stage_mod
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings

    # Prepare: the healthy pair with curve and alignment, killed while training its second (aligned) bend
    config = copy.deepcopy(runs.config)
    config["interpolation"].update(align=True, curve={**config["interpolation"]["curve"], "enabled": True,
                                                      "steps": 10, "batch_size": 32})
    pair = next(p for p in interpolation_pairs(config, [runs.healthy, runs.diverged]) if p.label == "ok_r1_vs_final")
    args = (interpolation_settings(config, pair), runs.trajectory(pair.run_a), runs.trajectory(pair.run_b),
            runs.partition)
    calls = killed_at_call(monkeypatch, stage_mod, "train_bend", 2, lambda: stage_mod.interpolation_job(
        *args, tmp_path / "curve.csv", tmp_path / "_progress"))
    assert [p.name for p in (tmp_path / "_progress").iterdir()] == ["bend.pt"]
    seconds = torch.load(tmp_path / "_progress" / "bend.pt", weights_only=True)["part"]["seconds"]

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape"):
        stage_mod.interpolation_job(*args, tmp_path / "curve.csv", tmp_path / "_progress")

    # Assert: only the aligned bend trained again; the curve of an uninterrupted job; the parts removed
    assert len(calls) == 1 and not (tmp_path / "_progress").exists()
    # the resumed bend's log line gives the seconds it trained in, not the moment it took to read it back
    assert seconds > 0 and f"Bezier bend trained in 10 steps in {seconds:.1f} s" in caplog.text
    stage_mod.interpolation_job(*args, tmp_path / "whole.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "curve.csv"), pd.read_csv(tmp_path / "whole.csv"))


def _garipov_bend(model: nn.Module, a: Point, b: Point, x: torch.Tensor, y: torch.Tensor,
                  settings: CurveSettings, train_mode: bool) -> torch.Tensor:
    """The bend after `settings.steps` steps as Garipov et al.'s code trains it (dnn-mode-connectivity: train.py with
    curves.l2_regularizer), written out: SGD with momentum and no weight decay on the loss at
    phi(t) = (1-t)^2 a + 2t(1-t) theta + t^2 b plus 0.5 wd ||phi(t)||^2 over every parameter, the buffers on the
    straight line; the batches and the values of t drawn as train_bend draws them from the seed."""
    names = [(n, p.shape) for n, p in model.named_parameters()]
    buffer_names = [(n, v.shape) for n, v in model.named_buffers() if v.is_floating_point()]
    gen = torch.Generator().manual_seed(settings.seed)
    order, cursor = torch.randperm(len(y), generator=gen), 0
    theta, velocity = 0.5 * (a.params + b.params), None
    model.train(train_mode)
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(y) and cursor > 0:
            order, cursor = torch.randperm(len(y), generator=gen), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        t = float(torch.rand((), generator=gen, dtype=torch.float64))
        phi = ((1 - t) ** 2 * a.params + 2 * t * (1 - t) * theta + t**2 * b.params).requires_grad_(True)
        buffers = (1 - t) * a.buffers + t * b.buffers
        state = dict(zip([n for n, _ in names], [v.view(s) for v, (_, s) in
                                                 zip(phi.split([s.numel() for _, s in names]), names, strict=True)],
                         strict=True))
        state.update({n: v.view(s) for v, (n, s) in
                      zip(buffers.split([s.numel() for _, s in buffer_names]), buffer_names, strict=True)})
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, state, (x[idx],)), y[idx])
        loss = loss + 0.5 * settings.weight_decay * phi.square().sum()
        gradient = 2 * t * (1 - t) * torch.autograd.grad(loss, phi)[0]  # d phi / d theta = 2t(1-t)
        velocity = gradient if velocity is None else settings.momentum * velocity + gradient
        theta = theta - settings.lr * curve_lr_factor(step, settings.steps) * velocity
    return theta


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval mode", "train mode"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_bend_decays_as_garipov_et_al_s_curves_do(weight_decay, train_mode):
    # Prepare: a float64 model with batch norm (statistics on the straight line) and two ends of its own
    def model_of(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
        model.train()(torch.randn(32, 4, dtype=torch.float64) * 3 + 1)  # running statistics of their own
        return model.eval()

    a, b = (Point(flatten_params(m), flatten_buffers(m)) for m in (model_of(0), model_of(1)))
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(3))
    settings = CurveSettings(steps=3, batch_size=16, lr=0.1, momentum=0.9, weight_decay=weight_decay, seed=3)
    model = model_of(4)

    # Execute
    theta, _ = train_bend(model, a, b, x, y, settings, train_mode=train_mode)

    # Assert: Garipov et al.'s bend (to the float32 of train_bend's loss; SGD's wd theta moves it by 2e-3)
    expected = _garipov_bend(model, a, b, x, y, settings, train_mode)
    assert float((theta - expected).abs().max()) < 1e-7


@pytest.mark.parametrize(("curve", "bumped"), [
    ({"enabled": False, "weight_decay": 0.01}, False),  # no curve trained: its weight decay computes nothing
    ({"enabled": True}, False),  # weight decay 0: the same bend as before
    ({"enabled": True, "weight_decay": 0.01}, True),
])
def test_only_interpolation_jobs_of_a_decayed_curve_carry_the_bump(curve, bumped):
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import CURVE_DECAY_BUMPS, RESULT_VERSIONS, interpolation_pairs, interpolation_settings

    # Prepare
    config = check_config(config_with_curve(**curve), SCHEMA)
    (pair,) = interpolation_pairs(config, build_runs(config))

    # Execute
    settings = interpolation_settings(config, pair)

    # Assert
    expected = RESULT_VERSIONS["interpolation"] + (CURVE_DECAY_BUMPS if bumped else 0)
    assert settings.get(RESULT_VERSION, FIRST_RESULT_VERSION) == expected
    assert CURVE_DECAY_BUMPS >= 1
