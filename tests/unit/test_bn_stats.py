"""Batch-norm statistics recomputed for models that were never trained as such (`bn_stats`): the library function,
the barriers it changes, the settings it enters, and cnn_small's `norm` option."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.configs import SCHEMA, TINY
from helpers.papers import CONFIGS
from helpers.synthetic import digits_like
from helpers.workflow import ROOT
from torch import nn

from fedscape.analysis.barriers.definitions import linear_barrier
from fedscape.analysis.barriers.maths import Point, interpolation_curve, layerwise_barriers
from fedscape.core.config import ConfigError
from fedscape.models.batchnorm import batch_norms, bn_sample, has_batch_norm, recompute_bn_stats
from fedscape.models.layers import BatchNorm2d
from fedscape.models.params import flatten_buffers, flatten_params, load_buffers, load_params
from fedscape.models.registry import build_model
from fedscape.models.specs import BN_STATS_SAMPLES, uses_batch_norm
from fedscape.plan.workflow import check_config

IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, norm="batch")


class TwoBN(nn.Module):
    """conv-BN-ReLU twice and a linear head: the statistics of the second batch norm depend on the first's
    train-mode normalisation, which a manual pass has to reproduce."""

    def __init__(self, norm: type[nn.BatchNorm2d]):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 3, 3, padding=1), norm(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), norm(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.bn2(self.conv2(h))).flatten(1))


# -- the library function ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_recomputing_a_model_without_batch_norm_is_a_no_op(name):
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # Execute
    changed = recompute_bn_stats(model, torch.randn(300, 1, 8, 8))

    # Assert: bit-identical, still in eval mode
    assert changed is False and not has_batch_norm(model) and not model.training
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("norm", [BatchNorm2d, nn.BatchNorm2d], ids=["fedscape", "torch"])
@pytest.mark.parametrize(("n", "samples", "batch_size"), [(300, 200, 64), (50, 2048, 16)])
def test_recomputed_statistics_equal_a_manual_train_mode_pass(float64_default, norm, n, samples, batch_size):
    # Prepare: stale statistics and a momentum of 0.3 that must come back
    torch.manual_seed(0)
    model = TwoBN(norm).eval()
    for bn in batch_norms(model):
        bn.running_mean.uniform_(-5, 5)
        bn.running_var.uniform_(5, 10)
        bn.momentum = 0.3
    x = torch.randn(n, 1, 8, 8)
    order = bn_sample(n, samples)
    expected = {k: [] for k in ("m1", "v1", "m2", "v2")}
    with torch.no_grad():  # the batches' means and unbiased variances, each layer normalised by its batch
        for start in range(0, len(order), batch_size):
            h = model.conv1(x[order[start:start + batch_size]])
            expected["m1"].append(h.mean((0, 2, 3)))
            expected["v1"].append(h.var((0, 2, 3), unbiased=True))
            z = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True)
                                                                    + model.bn1.eps)
            h2 = model.conv2(F.relu(model.bn1.weight.view(1, -1, 1, 1) * z + model.bn1.bias.view(1, -1, 1, 1)))
            expected["m2"].append(h2.mean((0, 2, 3)))
            expected["v2"].append(h2.var((0, 2, 3), unbiased=True))
    expected = {k: torch.stack(v).mean(0) for k, v in expected.items()}

    # Execute
    changed = recompute_bn_stats(model, x, samples=samples, batch_size=batch_size)

    # Assert: the cumulative average of every batch; mode and momenta restored; parameters untouched
    assert changed is True and not model.training
    assert [bn.momentum for bn in batch_norms(model)] == [0.3, 0.3]
    for bn, m, v in ((model.bn1, "m1", "v1"), (model.bn2, "m2", "v2")):
        torch.testing.assert_close(bn.running_mean, expected[m], rtol=0, atol=1e-12)
        torch.testing.assert_close(bn.running_var, expected[v], rtol=0, atol=1e-12)


def test_recomputed_statistics_equal_torchs_update_bn(float64_default):
    # Prepare: the same batches through torch.optim.swa_utils.update_bn (momentum None, batch counter)
    torch.manual_seed(1)
    ours, theirs = TwoBN(nn.BatchNorm2d), TwoBN(nn.BatchNorm2d)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(200, 1, 8, 8)
    order = bn_sample(len(x), 150)

    # Execute
    recompute_bn_stats(ours, x, samples=150, batch_size=32)
    torch.optim.swa_utils.update_bn([x[order[s:s + 32]] for s in range(0, 150, 32)], theirs)

    # Assert
    for a, b in zip(batch_norms(ours), batch_norms(theirs), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=1e-12)


def test_the_sample_is_seeded_and_the_whole_split_when_small():
    assert torch.equal(bn_sample(5000), bn_sample(5000))
    assert len(bn_sample(5000)) == BN_STATS_SAMPLES and len(set(bn_sample(5000).tolist())) == BN_STATS_SAMPLES
    assert sorted(bn_sample(100).tolist()) == list(range(100))
    assert not torch.equal(bn_sample(5000, seed=0), bn_sample(5000, seed=1))
    with pytest.raises(ValueError, match="at least one sample"):
        bn_sample(0)


def test_recomputing_does_not_depend_on_the_stored_statistics(float64_default):
    # Prepare: one model, two copies with different stored statistics
    model, x = bn_cnn(), torch.randn(160, 1, 8, 8)
    other = copy.deepcopy(model)
    for buf in other.buffers():
        buf.uniform_(0.5, 3.0)

    # Execute
    recompute_bn_stats(model, x)
    recompute_bn_stats(other, x)

    # Assert
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), other.buffers(), strict=True))


# -- barriers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bn_stats", ["stored", "recomputed"])
def test_two_identical_batch_norm_models_have_zero_barriers(float64_default, bn_stats):
    # Prepare: a batch-norm CNN with statistics of its own
    model, splits = bn_cnn().eval(), digits_like()
    recompute_bn_stats(model, splits["train"][0])
    a = Point(flatten_params(model), flatten_buffers(model))
    bn_x = splits["train"][0] if bn_stats == "recomputed" else None

    # Execute
    curve = pd.DataFrame(interpolation_curve(model, a, a, splits, points=5, bn_x=bn_x))
    layerwise = pd.DataFrame(layerwise_barriers(model, a, a, splits, bn_x=bn_x))

    # Assert: zero to float64 rounding of the interpolated weights (1 - t) a + t a
    for split in ("train", "test"):
        sub = curve[curve["split"] == split]
        assert abs(linear_barrier(sub["t"], sub["loss"])) < 1e-12
        assert linear_barrier(sub["t"], sub["error"]) == 0.0
    assert (layerwise["barrier_loss"].abs() < 1e-12).all() and (layerwise["barrier_error"] == 0.0).all()


def fitted_bn_cnn(splits: dict) -> nn.Module:
    """A batch-norm CNN fitted to the (random) labels of the train split, its statistics its own."""
    model = bn_cnn(3)
    x, y = splits["train"]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    recompute_bn_stats(model, x)
    return model.eval()


def test_stored_statistics_make_up_a_barrier_that_recomputed_ones_remove(float64_default):
    # Prepare: b computes a's function with its first convolution scaled by 10 and its statistics to match (batch
    # norm undoes the scale); the interpolated variance (1 - t) v + 100 t v overestimates the true (1 + 9t)^2 v
    splits = digits_like()
    model = fitted_bn_cnn(splits)
    a = Point(flatten_params(model), flatten_buffers(model))
    with torch.no_grad():
        model.features[0].weight.mul_(10)
        model.features[0].bias.mul_(10)
        model.features[1].running_mean.mul_(10)
        model.features[1].running_var.mul_(100)
    b = Point(flatten_params(model), flatten_buffers(model))

    # Execute
    barriers = {}
    for bn_stats, bn_x in (("stored", None), ("recomputed", splits["train"][0])):
        curve = pd.DataFrame(interpolation_curve(model, a, b, splits, points=11, bn_x=bn_x))
        train = curve[curve["split"] == "train"]
        barriers[bn_stats] = linear_barrier(train["t"], train["loss"])
        layer = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=["single"], bn_x=bn_x))
        barriers[f"layer_{bn_stats}"] = layer[(layer["split"] == "train") & (layer["layer"] == "features.0")][
            "barrier_loss"].item()

    # Assert: a barrier with the stored statistics; with recomputed ones every point is a's function (to the
    # batch norm's eps, 1e-5 against variances of order 1)
    assert barriers["stored"] > 0.05
    assert abs(barriers["recomputed"]) < 1e-3
    assert barriers["layer_stored"] > 0.05 and abs(barriers["layer_recomputed"]) < 1e-3


# -- settings ------------------------------------------------------------------------------------------
def tiny(model_options: dict | None = None, **sections) -> dict:
    config = copy.deepcopy(TINY)
    config.update(copy.deepcopy(sections))
    config["model_options"] = model_options or {}
    return config


PAIRS = {"interpolation": {"points": 5, "pairs": {"p": {"a": IID, "b": {**IID, "alpha": 0.5}}}},
         "layer_barriers": {"pairs": {"q": {"run": IID, "clients": [0, 1]}}}}


def job_settings(config: dict) -> tuple[dict, dict]:
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings

    config = check_config(config, SCHEMA)
    runs = build_runs(config)
    (ipair,), (lpair,) = interpolation_pairs(config, runs), layer_pairs(config, runs)
    return interpolation_settings(config, ipair), layer_settings(config, lpair, lpair.rounds[0])


@pytest.mark.parametrize(("model_options", "sections", "expected"), [
    (None, {}, None),  # no batch norm: the default `recomputed` does not enter the settings
    (None, {"bn_stats": "recomputed"}, None),
    ({"cnn_small": {"norm": "none"}}, {"bn_stats": "recomputed"}, None),
    ({"cnn_small": {"norm": "batch"}}, {}, "recomputed"),  # the default for batch-norm models
    ({"cnn_small": {"norm": "batch"}}, {"bn_stats": "stored"}, None),  # the baseline: older jobs' settings
])
def test_bn_stats_enters_the_settings_of_batch_norm_models_only(model_options, sections, expected):
    config = tiny(model_options, **{k: {**v, **sections} for k, v in PAIRS.items()})

    interpolation, layer = job_settings(config)

    assert interpolation.get("bn_stats") == expected and layer.get("bn_stats") == expected


def test_bad_bn_stats_is_refused_with_the_valid_values():
    config = tiny(**{**PAIRS, "interpolation": {**PAIRS["interpolation"], "bn_stats": "recompute"}})

    with pytest.raises(ConfigError, match=r"interpolation\.bn_stats.*recomputed"):
        check_config(config, SCHEMA)


# -- cnn_small's norm option -----------------------------------------------------------------------------
def test_cnn_small_without_norm_keeps_its_layers_and_with_batch_norm_adds_one_after_each_conv():
    torch.manual_seed(0)
    plain = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    torch.manual_seed(0)
    explicit = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, norm="none")
    bn = bn_cnn()

    layers = ("features.0", "features.2", "last_block.0", "fc", "classifier")
    assert [n for n, _ in plain.named_parameters()] == [f"{m}.{p}" for m in layers for p in ("weight", "bias")]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), explicit.state_dict().values(),
                                                 strict=True))
    assert [name for name, m in bn.named_modules() if isinstance(m, nn.BatchNorm2d)] == [
        "features.1", "features.4", "last_block.1"]
    assert all(b.is_floating_point() for b in bn.buffers())  # no batch counter: buffers average like parameters
    with pytest.raises(ValueError, match="unknown cnn_small norm .group.. Valid cnn_small norms: batch, none"):
        build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, norm="group")


@pytest.mark.parametrize("training", [True, False])
def test_cnn_small_with_batch_norm_at_full_width_is_the_model(training):
    model, x = bn_cnn().train(training), torch.randn(16, 1, 8, 8)

    assert torch.equal(model.forward_width(x, 1.0), model(x))
    assert model.forward_width(x, 0.5).shape == (16, 10)


def test_cnn_small_with_batch_norm_trains_its_clients_one_by_one():
    from fedscape.fl.settings import TrainConfig
    from fedscape.fl.strategies.registry import make_strategy
    from fedscape.fl.vectorized import resolve_client_parallel

    model, strategy = bn_cnn(), make_strategy("fedavg", {})
    auto = TrainConfig(rounds=1, client_parallel="auto")

    assert resolve_client_parallel(model, strategy, auto, device_type="cuda") == "sequential"
    with pytest.raises(ValueError, match=r"vectorized.*batch norm \(features\.1\)"):
        resolve_client_parallel(model, strategy, TrainConfig(rounds=1, client_parallel="vectorized"), "cuda")


def test_recomputing_changes_the_statistics_alone(float64_default):
    # Prepare
    model, x = bn_cnn(), torch.randn(64, 1, 8, 8)
    params, buffers = flatten_params(model).clone(), flatten_buffers(model).clone()

    # Execute
    recompute_bn_stats(model, x)

    # Assert: parameters untouched by the train-mode passes (no gradient, no step), the statistics moved
    assert torch.equal(flatten_params(model), params) and all(p.grad is None for p in model.parameters())
    assert not torch.equal(flatten_buffers(model), buffers)


# -- SWA ------------------------------------------------------------------------------------------------------
def swa_run(model: nn.Module, bn_stats: str):
    from helpers.synthetic import shard_data

    from fedscape.fl.engine import run_federated
    from fedscape.fl.settings import TrainConfig
    from fedscape.fl.strategies.registry import make_strategy
    from fedscape.fl.swa import SWAConfig

    data = shard_data([40, 40, 40])
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=16, lr=0.05, momentum=0.5, seed=3,
                      client_parallel="sequential")
    swa = SWAConfig(start_round=1, cycle=2, lr_ratio=1.0, bn_stats=bn_stats)
    return data, run_federated(model, data, make_strategy("fedavg"), cfg, swa=swa)


def test_swa_model_of_a_batch_norm_model_carries_recomputed_statistics(float64_default):
    from fedscape.models.evaluate import evaluate

    # Prepare / Execute: the same run with the SWA model's statistics averaged and recomputed
    data, stored = swa_run(bn_cnn(), "stored")
    _, recomputed = swa_run(bn_cnn(), "recomputed")

    # Assert: the trajectories and the SWA weights are the same; the statistics are the average of the global models'
    # (stored) or those of a pass over the clients' data with the SWA weights (recomputed), which its metrics use
    assert torch.equal(stored.params, recomputed.params) and torch.equal(stored.swa["params"], recomputed.swa["params"])
    torch.testing.assert_close(stored.swa["buffers"], (stored.buffers[2] + stored.buffers[4]) / 2, rtol=0, atol=1e-12)
    model = bn_cnn()
    load_params(model, recomputed.swa["params"])
    recompute_bn_stats(model, data.union()[0])
    assert torch.equal(recomputed.swa["buffers"], flatten_buffers(model))
    assert recomputed.rows[-1]["swa_test_loss"] == evaluate(model, data.x_test, data.y_test).loss
    assert recomputed.rows[-1]["swa_test_loss"] != stored.rows[-1]["swa_test_loss"]
    assert {r["swa_bn_stats"] for r in recomputed.rows} == {"recomputed"}
    assert {r["swa_bn_stats"] for r in stored.rows} == {"stored"}


def test_swa_with_recomputed_statistics_is_the_stored_run_without_batch_norm():
    from helpers.synthetic import mlp

    _, stored = swa_run(mlp(), "stored")
    _, recomputed = swa_run(mlp(), "recomputed")

    assert torch.equal(stored.swa["params"], recomputed.swa["params"])
    assert torch.equal(stored.swa["buffers"], recomputed.swa["buffers"])
    assert [r["swa_test_loss"] for r in stored.rows[1:]] == [r["swa_test_loss"] for r in recomputed.rows[1:]]
    assert {r["swa_bn_stats"] for r in recomputed.rows} == {"stored"}


def swa_config(model_options: dict | None, swa: dict, where: str) -> dict:
    config = tiny(model_options)
    swa = {"start_round": 2, "cycle": 2, **swa}
    if where == "training":  # the section's swa: the schema fills its defaults
        config["training"]["swa"] = swa
    else:  # an algorithm's override: no schema below `algorithms.<label>.training`, SWAConfig's defaults
        for spec in config["algorithms"].values():
            spec["training"] = {"swa": swa}
    return check_config(config, SCHEMA)


@pytest.mark.parametrize("where", ["training", "algorithm"])
@pytest.mark.parametrize(("model_options", "swa", "expected"), [
    (None, {}, None),
    (None, {"bn_stats": "recomputed"}, None),
    ({"cnn_small": {"norm": "batch"}}, {}, "recomputed"),
    ({"cnn_small": {"norm": "batch"}}, {"bn_stats": "stored"}, None),
])
def test_swa_bn_stats_enters_the_train_settings_of_batch_norm_models_only(model_options, swa, expected, where):
    from fedscape.core.runs import build_runs
    from fedscape.fl.swa import SWASettings
    from fedscape.plan.tables import rounds_columns, rounds_optional
    from fedscape.plan.train import train_settings

    config = swa_config(model_options, swa, where)
    runs = build_runs(config)

    settings = [train_settings(config, run)["training"]["swa"] for run in runs]
    # the train job reads back what it computes with: the given value, the baseline where the settings omit it
    assert {SWASettings.from_settings(s).config().bn_stats for s in settings} == {expected or "stored"}

    assert {s.get("bn_stats") for s in settings} == {expected}
    assert all(set(s) - {"bn_stats"} == {"start_round", "cycle", "lr_ratio", "scheduled_lr"} for s in settings)
    with_column = bool(model_options)
    assert ("swa_bn_stats" in rounds_columns(config, runs)) is with_column
    assert ("swa_bn_stats" in rounds_optional(config, runs)) is with_column


def test_rounds_table_reads_swa_metrics_from_before_the_column_as_stored(tmp_path):
    from fedscape.fl.settings import ROUNDS_COLUMNS
    from fedscape.fl.swa import SWA_BN_COLUMN, SWA_METRICS
    from fedscape.outputs.tables import concat_tables

    # Prepare: a run with SWA from before the column, one with it, one without SWA
    def metrics(run: str, **extra) -> pd.DataFrame:
        row = {"run_id": run, "dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg",
               "alpha": 0.1, "num_clients": 10, "participation": 1.0, "seed": 0, "round": 0, "train_loss": 1.0,
               "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5, "seconds": 0.0, "peak_mem_mb": 0.0,
               "status": "ok", **extra}
        return pd.DataFrame([{c: row.get(c, 0) for c in [*ROUNDS_COLUMNS, *extra]}])
    swa = dict.fromkeys(SWA_METRICS, 1.0)
    paths = []
    for i, extra in enumerate([swa, {**swa, SWA_BN_COLUMN: "recomputed"}, {}]):
        run = f"digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~10/part~1.0/seed~{i}"
        paths.append(tmp_path / run / "metrics.csv")
        paths[-1].parent.mkdir(parents=True)
        metrics(run, **extra).to_csv(paths[-1], index=False)

    # Execute
    concat_tables(paths, tmp_path / "rounds.csv", [*ROUNDS_COLUMNS, *SWA_METRICS, SWA_BN_COLUMN],
                  [*SWA_METRICS, SWA_BN_COLUMN], bn_models=["cnn_small"])

    # Assert
    table = pd.read_csv(tmp_path / "rounds.csv")
    assert table[SWA_BN_COLUMN].tolist()[:2] == ["stored", "recomputed"] and pd.isna(table[SWA_BN_COLUMN].iloc[2])


# -- alignment of cnn_small with batch norm ----------------------------------------------------------------------
def test_weight_matching_permutes_cnn_small_batch_norms_with_their_convolutions(float64_default):
    from fedscape.analysis.barriers.alignment import align_points

    # Prepare: two batch-norm CNNs with statistics of their own
    x = torch.randn(64, 1, 8, 8)
    model_a, model_b = bn_cnn(0), bn_cnn(1)
    for m in (model_a, model_b):
        recompute_bn_stats(m, x)
    a, b = (Point(flatten_params(m), flatten_buffers(m)) for m in (model_a, model_b))
    expected = model_b.eval()(x)

    # Execute
    aligned, _ = align_points(model_a, a, b)

    # Assert: the permuted b computes b's function and is closer to a
    load_params(model_b, aligned.params)
    load_buffers(model_b, aligned.buffers)
    torch.testing.assert_close(model_b(x), expected, rtol=0, atol=1e-12)
    assert float((aligned.params - a.params).norm()) < float((b.params - a.params).norm())


# -- the shipped configs and the torch-free declaration -----------------------------------------------------------
SHIPPED = ["config/config.yaml", "config/smoke32.yaml", "tests/data/tiny_config.yaml",
           *(f"config/papers/{name}.yaml" for name in CONFIGS)]


@pytest.mark.parametrize("path", SHIPPED)
def test_only_jobs_of_batch_norm_models_carry_bn_stats_in_the_shipped_configs(path):
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
    from fedscape.plan.train import train_settings
    from fedscape.plan.workflow import load_config

    config = load_config(ROOT / path, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    runs = build_runs(config)

    def batch_norm(run) -> bool:
        return uses_batch_norm(run.model, config["model_options"].get(run.model))

    jobs = [(batch_norm(p.run_a), interpolation_settings(config, p)) for p in interpolation_pairs(config, runs)]
    jobs += [(batch_norm(p.run_a), layer_settings(config, p, r)) for p in layer_pairs(config, runs) for r in p.rounds]
    jobs += [(batch_norm(run), train_settings(config, run)["training"]["swa"]) for run in runs
             if "swa" in train_settings(config, run)["training"]]
    for bn, settings in jobs:
        assert settings.get("bn_stats") == ("recomputed" if bn else None)


@pytest.mark.parametrize(("name", "options"), [
    ("mlp", {}), ("cnn_small", {}), ("cnn_small", {"norm": "batch"}), ("resnet20", {}), ("resnet20", {"norm": "group"}),
    ("resnet20", {"norm": "none"}), ("resnet18_nonorm", {}), ("resnet18", {}), ("resnet18", {"norm": "batch"}),
])
def test_the_torch_free_declaration_of_batch_norm_matches_the_built_model(name, options):
    model = build_model(name, num_classes=10, in_channels=3, image_size=8, **options)

    assert uses_batch_norm(name, options) == has_batch_norm(model)


def test_training_the_bend_in_train_mode_is_eval_mode_without_batch_norm(float64_default):
    from fedscape.analysis.barriers.curve import train_bend
    from fedscape.analysis.barriers.definitions import CurveSettings

    # Prepare
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    a = Point(flatten_params(model), flatten_buffers(model))
    torch.manual_seed(1)
    b = Point(flatten_params(build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)), a.buffers)
    x, y = digits_like()["train"]
    settings = CurveSettings(steps=5, batch_size=16)

    # Execute
    theta_eval, losses_eval = train_bend(model, a, b, x, y, settings)
    theta_train, losses_train = train_bend(model, a, b, x, y, settings, train_mode=True)

    # Assert: the modes differ in batch norm alone; the model's own mode is restored
    assert torch.equal(theta_eval, theta_train) and losses_eval == losses_train and not model.training


# -- the stages, end to end on digits ---------------------------------------------------------------------------
def test_stages_of_a_batch_norm_model_evaluate_and_record_recomputed_statistics(tmp_path):
    from fedscape.analysis.barriers.stage import interpolation_job, layer_barriers_job
    from fedscape.core.runs import build_runs
    from fedscape.data.federated import load_federated_data
    from fedscape.models.checkpoint import load_trajectory
    from fedscape.models.evaluate import evaluate
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
    from fedscape.plan.init import init_settings
    from fedscape.plan.partition import partition_settings
    from fedscape.plan.train import train_settings
    from fedscape.stages.init import init_job
    from fedscape.stages.partition import partition_job
    from fedscape.stages.train import train_job

    # Prepare: a plain and an SWA run of cnn_small with batch norm (defaults: bn_stats recomputed everywhere)
    plain = {"algorithm": "fedavg"}
    config = check_config({
        "datasets": {"digits": {"test_fraction": 0.25}}, "models": ["cnn_small"],
        "model_options": {"cnn_small": {"norm": "batch"}}, "inits": {"random": {"kind": "random", "seed": 0}},
        "algorithms": {"fedavg": {"name": "fedavg"},
                       "swa": {"name": "fedavg", "training": {"swa": {"start_round": 1, "cycle": 1}}}},
        "alphas": ["iid"], "num_clients": [3], "participation": [1.0], "seeds": [0], "partition": {"min_size": 10},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
                     "save_clients_at": [1], "device": "cpu"},
        "interpolation": {"points": 3, "pairs": {"p": {"a": plain, "round_a": 1, "b": plain}}},
        "layer_barriers": {"modes": ["single"], "pairs": {"q": {"run": plain, "clients": [0, 1]}}},
        "landscapes": {"s": {"kind": "trajectory", "runs": [plain], "resolution": 3, "span": 1.0,
                             "data": ["train", "test"], "bn_stats": "recomputed"}},
        "client_stats": {"enabled": False}}, SCHEMA)
    runs = {r.algorithm: r for r in build_runs(config)}
    partition, init = tmp_path / "partition.npz", tmp_path / "init.pt"
    partition_job(partition_settings(config, "digits", "iid", 3, 0), partition, tmp_path / "counts.csv")
    init_job(init_settings(config, list(runs.values()), "digits", "cnn_small", "random"), init)
    files = {}
    for label, run in runs.items():
        d = tmp_path / label
        files[label] = {name: d / f"{name}.{ext}" for name, ext in (("trajectory", "pt"), ("clients", "pt"),
                        ("metrics", "csv"), ("meta", "json"), ("client_updates", "csv"))}
        train_job(train_settings(config, run), partition, init, files[label], d / "_progress")
    (ipair,), (lpair,) = interpolation_pairs(config, list(runs.values())), layer_pairs(config, list(runs.values()))

    # Execute
    interpolation_job(interpolation_settings(config, ipair), files["fedavg"]["trajectory"],
                        files["fedavg"]["trajectory"], partition, tmp_path / "curve.csv")
    layer_barriers_job(layer_settings(config, lpair, 1), {"trajectory_a": files["fedavg"]["trajectory"],
                                                       "clients": files["fedavg"]["clients"], "partition": partition},
                    tmp_path / "layers.csv", tmp_path / "distances.csv")

    # Assert: the tables say `recomputed`; the curve's end is round 1's model evaluated with recomputed statistics
    curve, layers = pd.read_csv(tmp_path / "curve.csv"), pd.read_csv(tmp_path / "layers.csv")
    assert set(curve["bn_stats"]) == set(layers["bn_stats"]) == {"recomputed"}
    data = load_federated_data(runs["fedavg"].fields(), config["datasets"]["digits"], partition, torch.device("cpu"))
    model = load_trajectory(files["fedavg"]["trajectory"]).model_at(1)
    recompute_bn_stats(model, data.union()[0])
    start = curve[(curve["t"] == 0.0) & (curve["split"] == "test")]
    assert start["loss"].item() == pytest.approx(evaluate(model, data.x_test, data.y_test).loss, rel=1e-6)
    # the SWA run keeps its SWA model's recomputed statistics and says so
    traj = load_trajectory(files["swa"]["trajectory"])
    model = traj.model_at(traj.final_round)
    stored = flatten_buffers(model).clone()
    recompute_bn_stats(model, data.union()[0])
    torch.testing.assert_close(stored, flatten_buffers(model), rtol=1e-6, atol=1e-6)
    metrics = pd.read_csv(files["swa"]["metrics"])
    assert set(metrics["swa_bn_stats"]) == {"recomputed"} and traj.meta["swa"]["bn_stats"] == "recomputed"
    assert "swa_bn_stats" not in pd.read_csv(files["fedavg"]["metrics"]).columns

    # a surface's centre (the final model, the middle of a 3 x 3 grid over [-1, 1]^2) is that model with statistics
    # recomputed from the training data, on the training data and on the test set; surfaces.csv says so
    from fedscape.analysis.landscape.gather import landscape_gather_job, surfaces_table_job
    from fedscape.analysis.landscape.stage import landscape_chunk_job, landscape_plane_job
    from fedscape.plan.landscape import chunk_settings, landscape_plans, plane_settings, surface_settings

    (plan,) = landscape_plans(config, list(runs.values()))
    plane = {k: str(tmp_path / f"plane.{k}") for k in ("plane", "points", "grid")}
    landscape_plane_job(plane_settings(config, plan), [str(files["fedavg"]["trajectory"])], None, None, plane)
    surfaces = []
    for name in plan.data:
        chunk, surface = tmp_path / f"{name}.chunk.npz", tmp_path / f"{name}.surface.npz"
        landscape_chunk_job(chunk_settings(config, plan, name, 0), plane["plane"], plane["grid"], str(partition),
                            str(chunk))
        landscape_gather_job(surface_settings(config, plan, name), [str(chunk)], plane["plane"], plane["grid"],
                             plane["points"], str(surface))
        surfaces.append(str(surface))
    surfaces_table_job(surfaces, tmp_path / "surfaces.csv")
    final = load_trajectory(files["fedavg"]["trajectory"])
    model = final.model_at(final.final_round)
    recompute_bn_stats(model, data.union()[0])
    for name, (x, y) in (("train", data.union()), ("test", (data.x_test, data.y_test))):
        centre = np.load(tmp_path / f"{name}.surface.npz")["loss"][1, 1]
        assert centre == pytest.approx(evaluate(model, x, y).loss, rel=1e-6)
    assert list(pd.read_csv(tmp_path / "surfaces.csv")["bn_stats"]) == ["recomputed"] * 2
    # a surface that wants the centre's statistics refuses those chunks
    stored_surface = {k: v for k, v in surface_settings(config, plan, "test").items() if k != "bn_stats"}
    with pytest.raises(RuntimeError, match=r"evaluated with batch-norm statistics 'recomputed', the surface wants "
                                           r"'stored'"):
        landscape_gather_job(stored_surface, [str(tmp_path / "test.chunk.npz")], plane["plane"], plane["grid"],
                             plane["points"], str(tmp_path / "other.npz"))


# -- loss surfaces --------------------------------------------------------------------------------------------
def surface_losses(model: nn.Module, plane, x, y, coords, bn_x=None, **settings) -> np.ndarray:
    from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings

    evaluator = SurfaceEvaluator(model, plane, x, y, "cpu", SurfaceSettings(**settings), bn_x=bn_x)
    return evaluator.evaluate(np.asarray(coords, dtype=np.float64))[0]


def shifted_plane(model: nn.Module):
    """A plane through `model` whose d1 scales its first convolution by 10 at a = 1 (batch norm undoes the scale
    where the statistics are recomputed) and whose d2 is a random direction."""
    from fedscape.analysis.landscape.planes import Plane

    centre = flatten_params(model)
    d1 = torch.zeros_like(centre)
    first = model.features[0]
    n = first.weight.numel() + first.bias.numel()  # its weight and bias lead the flat order
    d1[:n] = 9 * centre[:n]
    d2 = 0.05 * torch.randn(centre.shape, generator=torch.Generator().manual_seed(0), dtype=centre.dtype)
    return Plane(centre, flatten_buffers(model), d1, d2, kind="random")


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_surface_point_with_recomputed_statistics_is_that_models_barrier_point(float64_default, channels_last):
    # Prepare: a fitted batch-norm CNN and a plane through it
    splits = digits_like()
    model = fitted_bn_cnn(splits)
    x = splits["train"][0]
    xt, yt = splits["test"]  # the surface's data: a loss far from 0, which the evaluator's float32 loss resolves
    plane = shifted_plane(model)
    coords = [(0.0, 0.0), (1.0, 0.0), (0.3, -0.6)]

    # Execute: statistics from the training inputs whatever the surface evaluates
    recomputed = surface_losses(bn_cnn(7), plane, xt, yt, coords, bn_x=x, channels_last=channels_last)
    stored = surface_losses(bn_cnn(7), plane, xt, yt, coords, channels_last=channels_last)

    # Assert: each point as the barriers evaluate it with recomputed statistics (the same sample, the same passes)
    from fedscape.analysis.barriers.maths import evaluate_point

    for (a, b), loss in zip(coords, recomputed, strict=True):
        point = Point(plane.center.double() + a * plane.d1.double() + b * plane.d2.double(), plane.center_buffers)
        expected = evaluate_point(bn_cnn(7), point, {"test": (xt, yt)}, bn_x=x)["test"].loss
        assert loss == pytest.approx(expected, rel=1e-6)
    # the centre carries its own recomputed statistics: both agree there; at a = 1 (the first convolution x 10)
    # only the recomputed statistics see the centre's function, the centre's make up another loss
    assert recomputed[0] == pytest.approx(stored[0], rel=1e-6)
    assert recomputed[1] == pytest.approx(recomputed[0], rel=1e-3)
    assert abs(stored[1] - recomputed[1]) > 0.5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_recomputed_surface_statistics_on_a_device_match_the_cpus_barrier_points(device):
    # Prepare: float32, the surface on `device`, the reference on the CPU
    from fedscape.analysis.barriers.maths import evaluate_point
    from fedscape.analysis.landscape.surface import SurfaceEvaluator
    from fedscape.models.device import use_precision

    splits = digits_like()
    model = fitted_bn_cnn(splits)
    x = splits["train"][0]
    xt, yt = splits["test"]
    plane = shifted_plane(model)
    coords = [(0.0, 0.0), (1.0, 0.0), (0.3, -0.6)]

    # Execute
    with use_precision("fp32", device):
        evaluator = SurfaceEvaluator(bn_cnn(7), plane, xt, yt, device, bn_x=x)
        losses = evaluator.evaluate(np.asarray(coords))[0]
        again = evaluator.evaluate(np.asarray(coords[:1]))[0]  # a second call: statistics recomputed again

    # Assert: the CPU's values to float32 rounding; the model left in eval mode
    for (a, b), loss in zip(coords, losses, strict=True):
        point = Point(plane.center + a * plane.d1 + b * plane.d2, plane.center_buffers)
        expected = evaluate_point(bn_cnn(7), point, {"test": (xt, yt)}, bn_x=x)["test"].loss
        assert loss == pytest.approx(expected, rel=1e-4)
    assert again[0] == losses[0] and not evaluator.model.training


def test_recomputing_at_grid_points_of_a_model_without_batch_norm_changes_nothing():
    # Prepare
    from fedscape.analysis.landscape.planes import random_plane

    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    x, y = digits_like()["train"]
    plane = random_plane(flatten_params(model), flatten_buffers(model), [tuple(p.shape) for p in model.parameters()],
                         seed=1)
    coords = [(0.0, 0.0), (0.5, -0.5)]

    # Execute
    stored = surface_losses(copy.deepcopy(model), plane, x, y, coords, points_per_batch=2)
    recomputed = surface_losses(copy.deepcopy(model), plane, x, y, coords, bn_x=x, points_per_batch=2)

    # Assert: bit for bit, and a batched pass is accepted (there are no statistics to hold)
    assert np.array_equal(stored, recomputed)


def test_recomputed_statistics_refuse_a_batched_pass_of_several_grid_points():
    from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings

    model = bn_cnn()
    x, y = digits_like()["train"]

    with pytest.raises(ValueError, match="need points_per_batch 1, got 3"):
        SurfaceEvaluator(model, shifted_plane(model), x, y, "cpu", SurfaceSettings(points_per_batch=3), bn_x=x)


LANDSCAPE = {"kind": "trajectory", "runs": [IID], "resolution": 3, "data": ["train", "test"]}


def landscape_jobs(config: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """The chunk settings, chunk inputs and gather settings of every surface of the config's one landscape."""
    from fedscape.core.runs import build_runs
    from fedscape.plan.landscape import chunk_inputs, chunk_settings, landscape_plans, surface_settings

    config = check_config(config, SCHEMA)
    (plan,) = landscape_plans(config, build_runs(config))
    return ([chunk_settings(config, plan, d, 0) for d in plan.data], [chunk_inputs(config, plan, d) for d in plan.data],
            [surface_settings(config, plan, d) for d in plan.data])


@pytest.mark.parametrize(("model_options", "spec", "expected"), [
    (None, {}, None),
    (None, {"bn_stats": "recomputed"}, None),  # no batch norm: no rerun of its finished surfaces
    ({"cnn_small": {"norm": "batch"}}, {}, None),  # the default `stored`: the baseline, every older surface's
    ({"cnn_small": {"norm": "batch"}}, {"bn_stats": "stored"}, None),
    ({"cnn_small": {"norm": "batch"}}, {"bn_stats": "recomputed"}, "recomputed"),
])
def test_surface_bn_stats_enters_the_settings_of_batch_norm_models_only(model_options, spec, expected):
    # Execute
    chunks, inputs, gathers = landscape_jobs(tiny(model_options, landscapes={"s": {**LANDSCAPE, **spec}}))

    # Assert: the chunk and gather jobs agree; a test surface reads the partition only to recompute from it
    assert [c.get("bn_stats") for c in chunks] == [g.get("bn_stats") for g in gathers] == [expected] * 2
    assert [("partition" in i) for i in inputs] == [True, expected is not None]


@pytest.mark.parametrize(("model_options", "fails"), [({"cnn_small": {"norm": "batch"}}, True), (None, False)])
def test_recomputed_surface_statistics_with_a_batched_pass_are_refused_before_work_starts(model_options, fails):
    config = tiny(model_options, landscapes={"s": {**LANDSCAPE, "bn_stats": "recomputed", "points_per_batch": 4}})

    if fails:
        with pytest.raises(ConfigError, match=r"landscapes\.s\.points_per_batch: bn_stats recomputed .* set "
                                              r"points_per_batch: 1, or bn_stats: stored"):
            check_config(config, SCHEMA)
    else:
        landscape_jobs(config)


def test_bad_surface_bn_stats_is_refused_with_the_valid_values():
    config = tiny(landscapes={"s": {**LANDSCAPE, "bn_stats": "recompute"}})

    with pytest.raises(ConfigError, match=r"landscapes\.s\.bn_stats.*recomputed"):
        check_config(config, SCHEMA)
