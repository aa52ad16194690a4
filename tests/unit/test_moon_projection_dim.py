"""MOON's projection head of output width `projection_dim` under the classifier (`head: projection`), as MOON's code
(Li et al. 2021, `ModelFedCon`: l1 D -> D, l2 D -> out_dim, l3 out_dim -> classes) and the FedAlign code's ImageNet
ResNet18 (Mendieta et al. 2022, models/resnet.py: p1 512 -> 512, p2 512 -> 256, fc 256 -> classes) build it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import SCHEMA, TINY
from helpers.stages import train_run

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import make_partition
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.registry import algorithm_config
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.layers import ProjectedClassifier
from fedscape.models.params import flatten_params, load_params
from fedscape.models.permutation import UnsupportedModelError, permutation_spec
from fedscape.models.registry import build_model
from fedscape.plan.hessian import _round_zero_key
from fedscape.plan.train import algorithm_model_options
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def digits_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)


def linear_params(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


# -- the network -------------------------------------------------------------------------------------
def test_the_imagenet_resnet18_head_ends_in_256_as_the_fedalign_code_s():
    # Prepare: the ImageNet-200 ResNet18 of fedalign.yaml, and the parameters of its backbone without fc
    plain = build_model("resnet18", num_classes=200, in_channels=3, image_size=224, norm="batch", stem="imagenet")
    backbone = sum(p.numel() for n, p in plain.named_parameters() if not n.startswith("classifier."))

    # Execute
    model = build_model("resnet18", num_classes=200, in_channels=3, image_size=224, norm="batch", stem="imagenet",
                        projection_head=True, projection_dim=256)

    # Assert: Linear(512, 512), ReLU, Linear(512, 256), then fc Linear(256, 200), counted by hand
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("backbone.")}
    assert shapes == {"head.0.weight": (512, 512), "head.0.bias": (512,), "head.2.weight": (256, 512),
                      "head.2.bias": (256,), "classifier.weight": (200, 256), "classifier.bias": (200,)}
    assert sum(p.numel() for p in model.parameters()) == (
        backbone + linear_params(512, 512) + linear_params(512, 256) + linear_params(256, 200)) == 11_621_896
    assert backbone + linear_params(512, 200) == 11_279_112  # torchvision's resnet18 at 200 classes (the header)


@pytest.mark.parametrize("projection_dim", [0, 16, 40])
def test_the_head_and_classifier_equal_an_independent_construction(projection_dim):
    # Prepare: cnn_small's D features; the head drawn from one seed, and the same layers built by hand from it
    plain = digits_model()
    dim, classes = plain.classifier.in_features, plain.classifier.out_features
    out = projection_dim or dim
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    # Execute
    torch.manual_seed(7)
    model = ProjectedClassifier(copy.deepcopy(plain), projection_dim)
    torch.manual_seed(7)
    l1, l2 = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, out)
    l3 = torch.nn.Linear(out, classes) if out != dim else plain.classifier

    # Assert: logits = l3(l2(relu(l1(h)))) on the backbone's features h; the initial classifier kept when O = D
    with torch.no_grad():
        h = plain.forward_features(x)
        expected = l3(l2(torch.relu(l1(h))))
        assert model.forward_features(x).shape == (5, out)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    kept = model.classifier.weight.shape == plain.classifier.weight.shape and torch.equal(
        model.classifier.weight, plain.classifier.weight)
    assert kept == (projection_dim == 0)


def test_a_bad_projection_dim_is_refused():
    with pytest.raises(ValueError, match="out_dim must be >= 0"):
        ProjectedClassifier(digits_model(), -1)
    with pytest.raises(ValueError, match="projection_dim 16 sizes a projection head; set projection_head too"):
        build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, projection_dim=16)


@pytest.mark.parametrize("projection_dim", [0, 16])
def test_weight_matching_refuses_the_projected_network_whatever_its_width(projection_dim):
    # the head has no declared symmetries: alignment is refused with a clear error, as it was for width D
    with pytest.raises(UnsupportedModelError, match="no permutation spec for architecture ProjectedClassifier"):
        permutation_spec(ProjectedClassifier(digits_model(), projection_dim))


# -- MOON ----------------------------------------------------------------------------------------------
def test_moon_s_projection_head_equals_its_side_head_of_the_same_width():
    # Prepare
    side = make_strategy("moon", {"projection_dim": 16})
    projection = make_strategy("moon", {"head": "projection", "projection_dim": 16})
    plain = digits_model()

    # Execute
    model = projection.prepare_model(digits_model(), seed=3)
    side.setup(4, sum(p.numel() for p in plain.parameters()), torch.device("cpu"), model=plain, seed=3)

    # Assert: both placements start from the same head; the classifier reads its 16 outputs
    assert torch.equal(flatten_params(model.head), flatten_params(side.head))
    assert model.classifier.in_features == 16 and model.classifier.out_features == 10


def test_moon_trains_the_narrow_head_with_the_model():
    # Prepare: digits over 4 clients, 40 samples each
    ds = load_dataset("digits", proxy_fraction=0.2)
    part = make_partition(ds.y_train.numpy(), 4, 0.5, 0, 10, 1000)
    data = FederatedData(ds.x_train, ds.y_train, [torch.as_tensor(i)[:40] for i in part.client_indices],
                         ds.x_test[:100], ds.y_test[:100])
    moon = make_strategy("moon", {"head": "projection", "projection_dim": 16})
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=16, lr=0.05, momentum=0.9, seed=1,
                      client_parallel="sequential")
    model = moon.prepare_model(digits_model(), seed=cfg.seed)
    start = flatten_params(model)
    x, y = data.union()

    def loss_at(params: torch.Tensor) -> float:
        probe = copy.deepcopy(model)
        load_params(probe, params)
        with torch.no_grad():
            return float(F.cross_entropy(probe.eval()(x), y))

    # Execute
    result = run_federated(model, data, moon, cfg)

    # Assert: MOON's loss trains every parameter, head and new classifier included: finite, the clients' loss lower
    assert result.params.shape[1] == start.numel() and torch.isfinite(result.params).all()
    tail = linear_params(16, 10)
    assert not torch.allclose(result.params[2, -tail:], start[-tail:], atol=1e-4)
    assert loss_at(result.params[2]) < loss_at(start)


def test_the_config_takes_a_projection_dim_with_the_projection_head_and_refuses_a_negative_one():
    # Execute
    options = algorithm_config("moon", {"head": "projection", "projection_dim": 256}).model_options()
    base = copy.deepcopy(TINY)
    base["algorithms"] = {**base["algorithms"], "moon": {"name": "moon", "head": "projection", "projection_dim": -1}}

    # Assert
    assert options == {"projection_head": True, "projection_dim": 256}
    assert algorithm_config("moon", {"head": "projection"}).model_options() == {"projection_head": True}
    with pytest.raises(ConfigError, match=r"algorithms\.moon: projection_dim must be non-negative \(0: the feature "
                                          r"width\), got -1"):
        check_config(base, SCHEMA)


def test_runs_of_different_head_widths_do_not_share_a_round_zero_hessian():
    # Prepare: two MOON labels that differ only in the head's width
    config = copy.deepcopy(TINY)
    config.update(algorithms={"a": {"name": "moon", "head": "projection"},
                              "b": {"name": "moon", "head": "projection", "projection_dim": 8}},
                  experiments=[{"alpha": "iid", "algorithm": "a"}, {"alpha": "iid", "algorithm": "b"}],
                  experiment_defaults={"init": "random", "algorithm": "a"})
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config = check_config(config, SCHEMA)
    a, b = build_runs(config)

    # Execute / Assert
    assert algorithm_model_options(config, b) == {"projection_head": True, "projection_dim": 8}
    assert _round_zero_key(config, a) != _round_zero_key(config, b)


def test_the_train_stage_saves_the_narrow_head_and_the_trajectory_rebuilds_it(tmp_path):
    # Prepare: one MOON run of the tiny grid with an 8-wide projection head
    config = copy.deepcopy({k: v for k, v in TINY.items() if k in ("datasets", "models", "alphas", "num_clients",
                                                                     "participation", "seeds", "partition",
                                                                     "training")})
    config.update(inits={"random": {"kind": "random", "seed": 0}}, alphas=["iid"],
                  algorithms={"moon": {"name": "moon", "head": "projection", "projection_dim": 8}})
    config["training"] = {**config["training"], "rounds": 1, "save_clients_at": [], "device": "cpu"}
    config = check_config(config, SCHEMA)
    (run,) = build_runs(config)

    # Execute
    _, _, outputs = train_run(config, [run], run, tmp_path)

    # Assert: the trajectory records the width and rebuilds the trained network from it
    trajectory = load_trajectory(outputs["trajectory"])
    assert trajectory.model_meta.model_options == {"projection_head": True, "projection_dim": 8}
    final = trajectory.model_at(trajectory.final_round)
    assert isinstance(final, ProjectedClassifier) and final.classifier.in_features == 8
    assert torch.equal(flatten_params(final), trajectory.params[trajectory.final_round])
