"""Vectorised client training: one round equals one sequential round, fallbacks and declarations."""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref
from pathlib import Path

import pytest
import torch
from helpers import vectorized
from helpers.synthetic import shard_data
from helpers.tiny import tiny_data, tiny_model
from helpers.vectorized import model_of
from torch import nn

from fedscape.core.config import ConfigError, load_schema
from fedscape.data.datasets import augment_batch
from fedscape.data.federated import FederatedData
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.registry import ALGORITHM_SPECS, algorithm_config
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.registry import make_strategy, strategy_class
from fedscape.fl.vectorized import (
    VectorizedTrainer,
    crop_flip_draws,
    crop_flip_stacked,
    resolve_client_parallel,
    vectorization_blocker,
)
from fedscape.models.loss import at_least_float32
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.models.resnets import ResNet
from fedscape.models.specs import model_info
from fedscape.plan.workflow import check_config

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5  # float32: the exactness bound (same seeds) of a round whose float32 rounding is not amplified (below)
# float64: the two paths differ only by the order of float64 operations (~1e-15 seen); a float32 step anywhere (the
# loss was once taken on float32 logits) shows up as ~1e-7
TOL64 = 1e-10



def run_mode(mode: str, algorithm: str, hparams: dict, data: FederatedData, monkeypatch, model: str = "cnn_small",
             model_options: dict | None = None, **train):
    """run_federated in one client_parallel mode (helpers.vectorized.run_mode) with the named algorithm."""
    return vectorized.run_mode(mode, make_strategy(algorithm, hparams), data, monkeypatch, model, model_options,
                               **train)


def assert_same_round(seq, vec, tol: float) -> None:
    last = int(seq.rounds.max())
    assert torch.equal(seq.clients[1].client_ids, vec.clients[1].client_ids)
    assert torch.equal(seq.clients[1].num_samples, vec.clients[1].num_samples)
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= tol
    assert (seq.params[last] - vec.params[last]).abs().max().item() <= tol
    for a, b in zip(seq.rows, vec.rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=tol)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-9)


# One round of each algorithm and local-training option on unequal shards (3 and 2 steps per epoch with partial last
# batches, and a 5-sample client), with momentum and weight decay (helpers.vectorized.run_mode).
ROUND_CASES = {
    "fedavg": ("fedavg", {}, {}),
    "fedavg-crop_flip-chunks": ("fedavg", {}, {"augment": "crop_flip", "client_chunk_size": 2}),
    "fedavg-plain-sgd-chunk1": ("fedavg", {}, {"momentum": 0.0, "weight_decay": 0.0, "participation": 1.0,
                                               "client_chunk_size": 1}),
    "fedprox": ("fedprox", {"mu": 0.5}, {"client_chunk_size": 2}),
    "fedavgm-2rounds": ("fedavgm", {}, {"rounds": 2}),  # server momentum carries state into round 2
    "fedadam": ("fedadam", {"server_lr": 0.05}, {}),
    "fedyogi": ("fedyogi", {}, {"client_chunk_size": 2}),
    # every shard is smaller than the batch: each step is padded only to its longest real batch
    "fedavg-batch-over-shards": ("fedavg", {}, {"batch_size": 64, "augment": "crop_flip", "local_epochs": 3}),
    # local training options: AdamW, lr schedules (one lr per client where step counts differ), local steps,
    # unequal work fixed per client or drawn per round, FedNova's normalised averaging
    # AdamW with a large eps: a small one magnifies the gradients' float rounding (test_adamw_... below)
    "adamw": ("fedavg", {}, {"optimizer": "adamw", "adamw_eps": 1e-3, "lr": 0.01, "weight_decay": 0.05,
                             "client_chunk_size": 2}),
    "cosine-local-steps": ("fedavg", {}, {"lr_schedule": "cosine", "lr_schedule_over": "local_steps",
                                          "lr_warmup": 2}),
    "fedprox-cosine-rounds": ("fedprox", {"mu": 0.5}, {"lr_schedule": "cosine", "lr_schedule_over": "rounds",
                                                       "lr_warmup": 0.5, "rounds": 2}),
    "adamw-cosine-drawn-steps": ("fedavg", {}, {"optimizer": "adamw", "adamw_eps": 1e-3, "lr": 0.01,
                                                "lr_schedule": "cosine", "lr_schedule_over": "local_steps",
                                                "local_epochs": None, "local_steps": {"low": 2, "high": 9},
                                                "rounds": 2}),
    "fednova-steps-per-client": ("fednova", {}, {"local_epochs": None, "local_steps": (2, 5, 3, 7),
                                                 "augment": "crop_flip"}),
    "fednova-drawn-epochs": ("fednova", {}, {"local_epochs": {"low": 1, "high": 3, "draw": "once"}, "rounds": 2,
                                             "client_chunk_size": 2}),
    # Nesterov momentum (the FedAlign code's client SGD), and FedNova's normaliser of it
    "fedavg-nesterov": ("fedavg", {}, {"nesterov": True, "client_chunk_size": 2}),
    "fednova-nesterov-steps-per-client": ("fednova", {}, {"nesterov": True, "local_epochs": None,
                                                          "local_steps": (2, 5, 3, 7)}),
    # the FedAlign code's client loaders drop each pass's smaller last batch (the 5-sample client keeps its one)
    "fedavg-drop-last": ("fedavg", {}, {"drop_last": True, "augment": "crop_flip"}),
    # batches drawn with replacement per step (the layer-wise LMC authors' GPT training)
    "fedavg-replacement": ("fedavg", {}, {"batch_sampling": "replacement", "local_epochs": None, "local_steps": 3}),
    # Mixup: each client's lam and permutation drawn after its step's augmentation; a gamma far from the paper's 0.05
    # so that most batches are mixed well inside (0, 1)
    "mixup": ("mixup", {"gamma": 0.4}, {}),
    "mixup-crop_flip-chunks": ("mixup", {"gamma": 0.4}, {"augment": "crop_flip", "client_chunk_size": 2}),
    "mixup-batch-over-shards-nesterov": ("mixup", {"gamma": 0.05}, {"batch_size": 64, "augment": "crop_flip",
                                                                    "nesterov": True, "local_epochs": 3}),
}
# The cases compared in float32 too, where float32 rounding is not amplified. Each was run from one start and data in
# float32 and in float64 on AVX-512, AVX2 and ATen's default kernels (1 to 3 threads): each path's float32 client
# models departed from its float64 ones by at most 2.8e-7 and its training losses by 3.5e-7, so the float32 paths
# differ by at most 7e-7, TOL / 14. The other cases compare in float64 only. Most are chaotic in float32: with
# crop_flip a rounding difference moves some ReLU input across 0 (float32 and float64 training end 0.1-0.5 apart),
# and AdamW's m / sqrt(v) turns one into 3.4e-3 (the float32 paths differed by that on an AMD EPYC's AVX2 kernels);
# FedAvgM's second round departed by 4.8e-7 on ATen's default kernels, which bounds its float32 paths by TOL / 10 only.
# Mixup's float32 paths differed from each other by at most 2.7e-7 on AVX-512, AVX2 and ATen's default kernels (FedAvg's
# by 2.8e-7 in the same runs).
FLOAT32_CASES = ["fedavg", "fedavg-plain-sgd-chunk1", "fedprox", "fedadam", "fedyogi", "cosine-local-steps",
                 "fedprox-cosine-rounds", "fednova-drawn-epochs", "mixup"]


@pytest.mark.parametrize(("algorithm", "hparams", "train"), list(ROUND_CASES.values()), ids=list(ROUND_CASES))
def test_vectorized_round_equals_sequential_round(algorithm, hparams, train, monkeypatch, float64_default):
    # Prepare: data and model in float64 (TOL64 above)
    data = shard_data([21, 9, 5, 30])

    # Execute
    seq = run_mode("sequential", algorithm, hparams, data, monkeypatch, **train)
    vec = run_mode("vectorized", algorithm, hparams, data, monkeypatch, **train)

    # Assert: float64 throughout, the same round to float64 rounding, and the round did move the model
    assert vec.params.dtype == vec.clients[1].params.dtype == seq.clients[1].params.dtype == torch.float64
    assert_same_round(seq, vec, TOL64)
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 100 * TOL


@pytest.mark.parametrize(("algorithm", "hparams", "train"), [ROUND_CASES[case] for case in FLOAT32_CASES],
                         ids=FLOAT32_CASES)
def test_float32_vectorized_round_equals_sequential_round(algorithm, hparams, train, monkeypatch):
    # Prepare: the float32 training of the workflow, in the cases where its rounding is not amplified
    data = shard_data([21, 9, 5, 30])

    # Execute
    seq = run_mode("sequential", algorithm, hparams, data, monkeypatch, **train)
    vec = run_mode("vectorized", algorithm, hparams, data, monkeypatch, **train)

    # Assert: the same round to float32 rounding (TOL: FLOAT32_CASES above), and the round did move the model
    assert vec.params.dtype == torch.float32
    assert_same_round(seq, vec, TOL)
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("stacked_forward", [True, False], ids=["forward_stacked", "vmap"])
def test_vectorized_mixup_mixes_each_clients_batch_as_sequential_training_does(stacked_forward, float64_default):
    # Prepare: unequal shards (padded steps), crop_flip drawn before each step's mixing, in float64
    data = shard_data([21, 9, 5, 14])
    model = model_of("cnn_small")
    flat = FlatParams(model)
    start = flat.get()
    cfg = TrainConfig(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3,
                      augment="crop_flip")
    mixup = make_strategy("mixup", {"gamma": 0.4})

    # Execute: Mixup vectorised in the model's stacked form or under vmap, sequentially, and FedAvg vectorised
    vec = VectorizedTrainer(model, data, mixup, cfg, stacked_forward=stacked_forward).train_round(
        start, torch.zeros(0), [0, 1, 2, 3], round_=1)
    seq = [sequential_mod.local_train(model, flat, start, torch.zeros(0), data, c, 1, mixup, cfg)[0]
           for c in range(4)]
    plain = VectorizedTrainer(model, data, make_strategy("fedavg"), cfg, stacked_forward=stacked_forward
                              ).train_round(start, torch.zeros(0), [0, 1, 2, 3], round_=1)

    # Assert: the sequential clients to float64 rounding, and far from FedAvg's (the mixing happened)
    for s, v, p in zip(seq, vec, plain, strict=True):
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert s.train_loss == pytest.approx(v.train_loss, abs=TOL64)
        assert (p.params - v.params).abs().max().item() > 1e-2


@pytest.mark.parametrize("algorithm", ["mixup", "stochdepth", "fedalign"])
def test_a_client_without_local_steps_keeps_the_global_model_with_every_drawing_algorithm(algorithm,
                                                                                         float64_default):
    # Prepare: a ResNet (which every one of them vectorises) and a client whose shard is empty
    data = shard_data([21, 0, 5, 14])
    cfg = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3)
    model = ResNet(10, 1, (1, 1), (16, 32), norm="batch")
    flat = FlatParams(model)
    start = flat.get()
    strategy = make_strategy(algorithm)

    # Execute
    vec = VectorizedTrainer(model, data, strategy, cfg).train_round(start, flatten_buffers(model), [0, 1, 2, 3], 1)
    seq = [sequential_mod.local_train(model, flat, start, flatten_buffers(model), data, c, 1, strategy, cfg)[0]
           for c in range(4)]

    # Assert: the empty client's model is the global one; the others train as sequentially
    assert vec[1].num_steps == 0 and torch.equal(vec[1].params, start)
    for s, v in zip(seq, vec, strict=True):
        assert (s.params - v.params).abs().max().item() <= TOL64


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_vectorized_mixup_at_gamma_zero_is_fedavg_where_nothing_else_draws(augment, monkeypatch):
    # Prepare: lam = 1 mixes nothing in, but each step still draws its permutation, which moves the next steps'
    # crop_flip draws
    data = shard_data([21, 9, 5, 30])

    # Execute
    mixup = run_mode("vectorized", "mixup", {"gamma": 0.0}, data, monkeypatch, augment=augment)
    fedavg = run_mode("vectorized", "fedavg", {}, data, monkeypatch, augment=augment)

    # Assert: bit for bit FedAvg without augmentation (1 x + 0 x[perm] = x, 1 CE + 0 CE' = CE), not with it
    same = torch.equal(mixup.params[-1], fedavg.params[-1])
    assert same is (augment == "none")


def test_fedprox_term_changes_vectorized_training(monkeypatch):
    data = shard_data([21, 9, 5, 30])

    prox = run_mode("vectorized", "fedprox", {"mu": 0.5}, data, monkeypatch)
    plain = run_mode("vectorized", "fedavg", {}, data, monkeypatch)

    assert (prox.params[-1] - plain.params[-1]).abs().max().item() > 100 * TOL


def test_group_norm_resnet_vectorizes_exactly(monkeypatch, float64_default):
    # Prepare: in float64, as a deep ReLU network's float32 round is chaotic (the module docstring of
    # fedscape.fl.vectorized): its training losses differed by 2.3e-6, a quarter of TOL, on AVX-512 kernels
    data = shard_data([9, 4])
    train = {"local_epochs": 1, "batch_size": 4, "participation": 1.0}

    # Execute
    seq = run_mode("sequential", "fedavg", {}, data, monkeypatch, "resnet20", {"norm": "group"}, **train)
    vec = run_mode("vectorized", "fedavg", {}, data, monkeypatch, "resnet20", {"norm": "group"}, **train)

    # Assert
    assert vec.clients[1].params.dtype == torch.float64
    assert_same_round(seq, vec, TOL64)


@pytest.mark.parametrize(("name", "options", "augment", "stacked_forward"), [
    ("resnet20", {"norm": "group"}, "crop_flip", False),
    ("resnet20", {"norm": "group"}, "crop_flip", True),
    ("cnn_small", {}, "none", True),
], ids=["resnet20-group-vmap", "resnet20-group-forward_stacked", "cnn_small-forward_stacked"])
def test_float64_vectorized_clients_equal_sequential_to_float64_rounding(name, options, augment, stacked_forward,
                                                                        float64_default):
    # Prepare: unequal shards (partial, padded batches), momentum and weight decay, all in float64. In float64 the
    # two paths differ only by the order of float64 operations (~1e-15); a float32 step anywhere (the loss was once
    # taken on float32 logits) shows up as ~1e-7.
    data = shard_data([21, 9, 5, 14])
    model = model_of(name, **options)
    flat = FlatParams(model)
    start = flat.get()
    cfg = TrainConfig(local_epochs=1, batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3, augment=augment)
    strategy = make_strategy("fedavg")

    # Execute
    trainer = VectorizedTrainer(model, data, strategy, cfg, stacked_forward=stacked_forward)
    vec = trainer.train_round(start, torch.zeros(0), [0, 1, 2, 3], round_=1)
    seq = [sequential_mod.local_train(model, flat, start, torch.zeros(0), data, c, 1, strategy, cfg)[0]
           for c in range(4)]

    # Assert: float64 client models, equal to float64 rounding, and clearly moved by training
    assert trainer.stacked_forward == stacked_forward
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= 1e-10
        assert (s.params - start).abs().max().item() > 0.1


@pytest.mark.parametrize(("dtype", "expected"), [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                               (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_loss_logits_are_raised_to_float32_never_lowered(dtype, expected):
    logits = torch.tensor([[0.1, -2.5, 3.0]], dtype=dtype)

    got = at_least_float32(logits)

    assert got.dtype == expected
    assert torch.equal(got, logits.to(expected))


@pytest.mark.parametrize(("name", "options", "device_type", "expected"), [
    ("cnn_small", {}, "cpu", "vectorized"),  # own forward_stacked: faster on a CPU
    ("convnet", {}, "cpu", "vectorized"),  # (built for 3x32x32 images)
    ("lenet5", {}, "cpu", "vectorized"),
    ("resnet20", {"norm": "group"}, "cpu", "sequential"),  # its forward_stacked measured slower on a CPU
    ("resnet20", {"norm": "batch"}, "cpu", "sequential"),  # likewise (exact: tests/unit/test_vectorized_bn.py)
    ("mlp", {}, "cpu", "vectorized"),  # vmap only, but measured faster on a CPU: vmap_faster_on_cpu
    ("char_lstm", {}, "cpu", "sequential"),  # vmap only: measured slower on a CPU
    ("char_lstm", {}, "cuda", "vectorized"),
    ("cnn_small", {}, "cuda", "vectorized"),
    ("resnet20", {"norm": "group"}, "cuda", "vectorized"),  # on CUDA whenever exact
    ("mlp", {}, "cuda", "vectorized"),
    ("resnet20", {"norm": "batch"}, "cuda", "vectorized"),  # each client's batch norm over its real samples
])
def test_auto_vectorises_vmap_models_on_a_cpu_only_where_measured_faster(name, options, device_type, expected, caplog):
    torch.manual_seed(0)
    shape = {"num_classes": 80, "in_channels": 80, "image_size": 80} if name == "char_lstm" else \
        {"num_classes": 10, "in_channels": 3, "image_size": 32}
    model = build_model(name, **shape, **options)

    with caplog.at_level("INFO", logger="fedscape.train"):
        got = resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(), device_type=device_type)

    assert got == expected
    slow = "is not known to train faster" in caplog.text
    assert slow == (expected == "sequential")


@pytest.mark.parametrize("norm", ["group", "batch"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_explicit_vectorized_is_honoured_where_auto_is_slower_on_a_cpu(device_type, norm, caplog):
    model = model_of("resnet20", norm=norm)
    cfg = TrainConfig(client_parallel="vectorized")

    with caplog.at_level("INFO", logger="fedscape.train"):
        got = resolve_client_parallel(model, make_strategy("fedavg"), cfg, device_type=device_type)

    assert got == "vectorized"
    assert ("vectorized as asked, though ResNet's forward_stacked" in caplog.text) == (device_type == "cpu")


def test_auto_takes_the_device_type_from_the_model():
    # a CPU model and no device type given: the CPU rule (resnet20 trains sequentially there)
    model = model_of("resnet20", norm="group")

    assert resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig()) == "sequential"
    assert resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(), device_type="cuda") == "vectorized"


@pytest.mark.parametrize("algorithm", ["gradaug", "moon", "fedalign"])  # MOON's side head, FedAlign on cnn_small
def test_algorithms_without_vectorised_training_fall_back(algorithm):
    model = model_of()

    assert resolve_client_parallel(model, make_strategy(algorithm), TrainConfig()) == "sequential"
    with pytest.raises(ValueError, match=f"algorithm '{algorithm}'"):
        resolve_client_parallel(model, make_strategy(algorithm), TrainConfig(client_parallel="vectorized"))


def test_sequential_mode_is_honoured_for_vectorisable_pairs():
    assert resolve_client_parallel(model_of(), make_strategy("fedavg"), TrainConfig(client_parallel="sequential")) \
        == "sequential"
    assert resolve_client_parallel(model_of(), make_strategy("fedavg"), TrainConfig()) == "vectorized"


def test_strategy_declarations():
    vectorised = {name for name in ALGORITHM_SPECS if strategy_class(name).vectorized}
    # planning (torch-free) reads the spec's declaration: it must say what the strategy class does
    assert vectorised == {name for name, spec in ALGORITHM_SPECS.items() if spec.sequential_only is None}

    assert {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "fedsam", "fedasam", "mixup",
            "stochdepth", "fedalign", "moon", "scaffold", "feddyn", "gradaug"} <= vectorised
    assert vectorised == set(ALGORITHM_SPECS)

    class ServerOnly(Strategy):  # only the server step differs: inherits FedAvg's vectorised training
        name = "server_only"

    class OwnLoss(Strategy):  # a new local objective: not vectorised unless declared
        name = "own_loss"

        def local_loss(self, model, x, y, ctx):
            return super().local_loss(model, x, y, ctx) * 2

    class Declared(OwnLoss):
        name = "declared"
        vectorized = True

    assert ServerOnly.vectorized and not OwnLoss.vectorized and Declared.vectorized
    assert vectorization_blocker(model_of(), OwnLoss()) is not None


def test_stacked_crop_flip_equals_augment_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 2, 8, 8, generator=g)  # [clients, batch, C, H, W]
    seeds = [11, 12, 13]
    expected = torch.stack([augment_batch(x[k], "crop_flip", torch.Generator().manual_seed(s))
                            for k, s in enumerate(seeds)])

    draws = [crop_flip_draws(5, torch.Generator().manual_seed(s)) for s in seeds]
    dy, dx, flip = (torch.stack(d) for d in zip(*draws, strict=True))
    got = crop_flip_stacked(x, dy, dx, flip)

    assert torch.equal(got, expected)
    assert not torch.equal(got, x)


def test_client_parallel_is_validated():
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    config = {"training": {"client_parallel": "vectorised"}}

    with pytest.raises(ConfigError, match="client_parallel"):
        check_config(copy.deepcopy(config), schema)
    with pytest.raises(ValueError, match="client_parallel"):
        TrainConfig(client_parallel="parallel")
    assert check_config({}, schema)["training"]["client_parallel"] == "auto"


def stacked_params(model: nn.Module, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """K clearly different copies of the model's parameters, stacked on a leading client axis."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.stack([p.detach() + 0.05 * torch.randn(p.shape, generator=g) * (1 + j) for j in range(k)])
            for name, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "in_channels", "size"), [("cnn_small", 1, 8), ("cnn_small", 3, 12),
                                                            ("convnet", 3, 32), ("lenet5", 3, 32)])
def test_forward_stacked_equals_vmapped_functional_call(name, in_channels, size, grouped_format, float64_default):
    # Prepare: 3 clients with different parameters and different batches, in float64: the two forwards sum in other
    # orders, and in float32 convnet's 6 conv layers put their logits 1.2e-3 apart on AVX2 kernels (rtol 1e-4), and
    # a rounding-level near-tie can move a max pool's argmax
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=in_channels, image_size=size)
    params = stacked_params(model, 3)
    x = torch.randn(3, 5, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    ref_params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    own_params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    weights = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(2))  # a loss that mixes every logit

    # Execute
    expected = torch.func.vmap(lambda p, xb: torch.func.functional_call(model, p, (xb,)))(ref_params, x)
    got = model.forward_stacked(own_params, x)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()

    # Assert: the same logits and parameter gradients to float64 rounding, and the clients really differ
    assert got.shape == (3, 5, 10) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=TOL64, atol=TOL64)
    for n in params:
        torch.testing.assert_close(own_params[n].grad, ref_params[n].grad, rtol=TOL64, atol=TOL64)
    assert (got[0] - got[1]).abs().max() > 1e-2


def test_stacked_layers_moves_relu_after_max_pool_without_changing_gradients():
    # Prepare: integer activations with ties, windows whose maximum is negative, zero or positive
    from fedscape.models.layers import grouped_layout, stacked_layers

    layers = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randint(-3, 4, (2, 3, 4, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    weights = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(1))  # [B, K*C, 4, 4]
    x_ref = x.clone().requires_grad_(True)
    x_own = x.clone().requires_grad_(True)

    # Execute: the reference per client, and the grouped form
    expected = torch.stack([layers(x_ref[k]) for k in range(2)])  # [K, B, C, 4, 4]
    got = stacked_layers(layers, {}, "", grouped_layout(x_own), k=2)  # [B, K*C, 4, 4]
    (expected.transpose(0, 1).reshape(3, 8, 4, 4) * weights).sum().backward()
    (got * weights).sum().backward()

    # Assert: exactly the same values and gradients
    assert torch.equal(got, expected.transpose(0, 1).reshape(3, 8, 4, 4))
    assert torch.equal(x_own.grad, x_ref.grad)


def test_stacked_layers_rejects_layers_without_a_grouped_form():
    from fedscape.models.layers import grouped_layout, stacked_layers

    with pytest.raises(TypeError, match="BatchNorm2d"):
        stacked_layers(nn.Sequential(nn.BatchNorm2d(4)), {}, "", grouped_layout(torch.zeros(2, 1, 4, 3, 3)), k=2)


def test_stacked_forward_round_equals_vmap_round(float64_default):
    # Prepare: unequal shards with partial batches, momentum and weight decay, in float64: the two forwards sum in
    # other orders, and in float32 their clients ended 3.3e-7 apart on AVX-512 kernels (a third of the former 1e-6)
    data = shard_data([21, 9, 5, 30])
    model = model_of()
    cfg = TrainConfig(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3)
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    stacked = VectorizedTrainer(model, data, make_strategy("fedavg"), cfg)
    vmapped = VectorizedTrainer(model, data, make_strategy("fedavg"), cfg, stacked_forward=False)

    # Execute
    a = stacked.train_round(start, torch.zeros(0), [0, 1, 2, 3], round_=1)
    b = vmapped.train_round(start, torch.zeros(0), [0, 1, 2, 3], round_=1)

    # Assert: the stacked path was taken, and both give the same client models
    assert stacked.stacked_forward and not vmapped.stacked_forward
    for ra, rb in zip(a, b, strict=True):
        assert ra.params.dtype == torch.float64
        assert (ra.params - rb.params).abs().max().item() <= TOL64
        assert (ra.params - start).abs().max().item() > 100 * TOL


def test_models_without_forward_stacked_use_vmap():
    data = shard_data([9, 4])
    cfg = TrainConfig(local_epochs=1, batch_size=8)

    trainer = VectorizedTrainer(model_of("mlp"), data, make_strategy("fedavg"), cfg)

    assert not trainer.stacked_forward


@pytest.mark.parametrize("decay", [0.1, 0.0])  # 0: a tensor the model leaves undecayed (char_gpt's LayerNorm gains)
def test_stacked_adamw_steps_equal_torch_adamw_on_the_same_gradients(decay):
    # two clients with their own lrs (a schedule over unequal step counts), three steps of given gradients
    cfg = TrainConfig(optimizer="adamw", adamw_beta1=0.8, adamw_beta2=0.95, adamw_eps=1e-8, weight_decay=0.1)
    trainer = VectorizedTrainer(model_of(), shard_data([4, 4]), make_strategy("fedavg"), cfg)
    g = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 4, generator=g)
    grads = [torch.randn(2, 3, 4, generator=g) * 10.0 ** -k for k in range(3)]  # shrinking, as near a minimum
    lrs = [torch.tensor([0.1, 0.05]), 0.02, torch.tensor([0.01, 0.2])]

    stacked = start.clone()
    m, v = torch.zeros_like(stacked), torch.zeros_like(stacked)
    for step, (grad, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        trainer._adamw_step([stacked], [grad], [m], [v], lr, [torch.full((2,), float(step), dtype=torch.float64)],
                            [decay])

    for client in range(2):
        w = start[client].clone().requires_grad_(True)
        opt = torch.optim.AdamW([w], lr=0.1, betas=(0.8, 0.95), eps=1e-8, weight_decay=decay)
        for grad, lr in zip(grads, lrs, strict=True):
            opt.param_groups[0]["lr"] = float(lr if isinstance(lr, float) else lr[client])
            w.grad = grad[client].clone()
            opt.step()
        assert (stacked[client] - w.detach()).abs().max().item() < 1e-6


@pytest.mark.parametrize(("mode", "expected"), [("auto", "sequential"), ("vectorized", "vectorized")])
def test_adamw_is_vectorised_only_when_asked(mode, expected, caplog):
    cfg = TrainConfig(optimizer="adamw", client_parallel=mode)

    with caplog.at_level("INFO", logger="fedscape.train"):
        got = resolve_client_parallel(model_of(), make_strategy("fedavg"), cfg)

    assert got == expected
    assert "AdamW magnifies the float rounding" in caplog.text


@pytest.mark.parametrize("dropout", [nn.Dropout(0.5), nn.Dropout2d(0.5), nn.AlphaDropout(0.5)])
def test_a_model_with_dropout_is_not_vectorised_where_its_masks_would_differ(dropout):
    # Prepare: an MLP with dropout: a chunk of clients draws its masks from one stream seeded by its first client,
    # where each client trained alone draws from its own
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), dropout, nn.Linear(32, 10))

    # Execute
    why = vectorization_blocker(model, make_strategy("fedavg"))

    # Assert: refused, naming the module; without it the same MLP vectorises
    assert why is not None and "dropout (3)" in why
    with pytest.raises(ValueError, match="dropout"):  # an explicit client_parallel: vectorized is refused too
        VectorizedTrainer(model, shard_data([8, 8]), make_strategy("fedavg"), TrainConfig(batch_size=8))
    plain = nn.Sequential(*[m for m in model if m is not dropout])
    assert vectorization_blocker(plain, make_strategy("fedavg")) is None


def test_a_float64_model_under_a_float32_default_gets_float64_learning_rates(monkeypatch):
    # Prepare: a float64 model and data while torch's default dtype stays float32 (the fixture float64_default would
    # make every tensor float64 and hide a float32 one), unequal shards and a cosine lr over local steps, so that the
    # clients of one step have different lrs (one tensor of them)
    data = shard_data([21, 9, 5, 14, 3])
    data = FederatedData(data.x_train.double(), data.y_train, data.client_indices, data.x_test.double(), data.y_test)
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3,
                      lr_schedule="cosine", lr_schedule_over="local_steps")
    assert torch.get_default_dtype() == torch.float32

    # Execute
    runs = {}
    for mode in ("sequential", "vectorized"):
        with monkeypatch.context() as m:
            if mode == "vectorized":
                m.setattr(sequential_mod, "local_train", lambda *a, **k: pytest.fail("fell back to sequential"))
            runs[mode] = run_federated(model_of("mlp").double(), data, make_strategy("fedavg"),
                                       dataclasses.replace(cfg, client_parallel=mode))

    # Assert: equal to float64 rounding (with a float32 tensor of the lrs they differed by 2.4e-9)
    seq, vec = runs["sequential"], runs["vectorized"]
    assert seq.params.dtype == vec.params.dtype == torch.float64
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= 1e-12
    assert seq.rows[-1]["train_loss"] == pytest.approx(vec.rows[-1]["train_loss"], abs=1e-12)


@pytest.mark.parametrize(("algorithm", "hparams"), [("fedalign", {}), ("fedalign", {"width": 1.0}),
                                                    ("stochdepth", {}), ("mixup", {}), ("fedprox", {}),
                                                    ("moon", {"head": "projection"}), ("moon", {}),
                                                    ("moon", {"head": "projection", "reference_mode": "eval"}),
                                                    ("gradaug", {}), ("gradaug", {"min_width": 1.0}),
                                                    ("gradaug", {"min_width": 1 - 1e-10}),
                                                    ("gradaug", {"min_width": 1 - 1e-8})])
@pytest.mark.parametrize(("model", "options"), [("cnn_small", {}), ("resnet20", {"norm": "batch"}),
                                                ("resnet20", {"norm": "group"}), ("resnet20", {"norm": "none"}),
                                                ("resnet18", {}), ("resnet56_bottleneck", {})])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_planning_refuses_an_explicit_vectorized_exactly_where_the_trainer_would(algorithm, hparams, model, options,
                                                                                optimizer):
    # Prepare: what planning knows without torch: the spec's model needs and the hyperparameters' stacked_problem
    spec = ALGORITHM_SPECS[algorithm]
    planned = algorithm_config(algorithm, hparams).stacked_problem(model, options, {"optimizer": optimizer})
    unfit = spec.requires is not None and not getattr(model_info(model), spec.requires)
    net = build_model(model, num_classes=10, in_channels=3, image_size=8, **options,
                      **algorithm_config(algorithm, hparams).model_options())  # MOON's projection head
    cfg = TrainConfig(client_parallel="vectorized", optimizer=optimizer)

    # Execute: the train job's decision on a card
    try:
        resolve_client_parallel(net, make_strategy(algorithm, hparams), cfg, device_type="cuda")
        refused = False
    except ValueError:
        refused = True

    # Assert
    assert refused == (planned is not None or unfit)


@pytest.mark.parametrize("stacked_forward", [True, False], ids=["stacked", "vmapped"])
def test_a_dropped_trainer_is_freed_at_once_not_at_the_next_full_collection(stacked_forward):
    """A trainer holds its captured steps' graphs (on a card, memory pools of a stacked step each): one dropped without
    `close` must be freed by its reference count, not kept alive by a cycle until Python's next full collection (a
    benchmark building trainers of 16, 32 and 64 clients in turn ran its card out of memory)."""
    # Prepare: a trainer that has trained a round
    model, data = tiny_model(), tiny_data()
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=8, lr=0.1, seed=0)
    trainer = VectorizedTrainer(model, data, Strategy(), cfg, stacked_forward=stacked_forward)
    trainer.train_round(FlatParams(model).get(), flatten_buffers(model), [0, 1], 1)
    alive = weakref.ref(trainer)

    # Execute: dropped with the cyclic collector off
    gc.disable()
    try:
        del trainer
        # Assert
        assert alive() is None
    finally:
        gc.enable()
