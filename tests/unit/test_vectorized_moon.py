"""Vectorised MOON (head projection, train-mode references): every stacked client's representations against the
global model's and its own previous model's, from stacked passes, equal to one client at a time."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import shard_data
from helpers.vectorized import model_of, run_mode

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.moon import moon_contrastive_loss, stacked_moon_contrastive_loss
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel, vectorization_blocker
from fedscape.models.layers import has_forward_stacked
from fedscape.models.resnets import ResNet

TOL64 = 1e-10  # float64: the paths differ by the order of float64 operations only
SIZES = [21, 9, 5, 14, 11]  # batch 8: padded last batches, unequal step counts
PROJECTION = {"mu": 1.0, "temperature": 0.5, "head": "projection"}  # fedalign.yaml's MOON


def projected(make, hparams=PROJECTION):
    """A function building the seeded model as MOON trains it (its classifier on the projection head)."""
    return lambda: make_strategy("moon", hparams).prepare_model(make(), seed=0)


def small_resnet(norm: str = "batch") -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (8, 16), norm=norm)


def both(make, monkeypatch, hparams=PROJECTION, device: str = "cpu", modes=("sequential", "vectorized"), **train):
    """The sequential and vectorised runs of MOON (each with its own strategy: it keeps the clients' previous
    models) over three rounds of 4 of the 5 clients, so that a client meets its own earlier model and one that
    had not yet trained meets the initial one; or the runs of `modes`."""
    data = shard_data(SIZES)
    data = type(data)(data.x_train.to(device), data.y_train.to(device), [ix.to(device) for ix in data.client_indices],
                      data.x_test.to(device), data.y_test.to(device))
    train = {"rounds": 3, "augment": "crop_flip", "save_clients_at": (), **train}
    model = projected(make, hparams)
    return [run_mode(mode, make_strategy("moon", hparams), data, monkeypatch, model=lambda: model().to(device),
                     **train) for mode in modes]


@pytest.mark.parametrize(("make", "train"), [
    (lambda: model_of("resnet20", norm="batch"), {}),
    (lambda: small_resnet("batch"), {"client_chunk_size": 3, "nesterov": True}),  # two chunks of clients a round
    (lambda: small_resnet("group"), {}),
    (lambda: small_resnet("none"), {"local_epochs": 1}),
], ids=["resnet20-bn", "small-bn-chunks", "small-gn", "small-no-norm"])
def test_float64_vectorized_moon_rounds_equal_sequential(make, train, monkeypatch, float64_default):
    # Execute
    seq, vec = both(make, monkeypatch, **train)

    # Assert: every round's global model, statistics and training loss; and the term acts (the global model of
    # the last round differs from FedAvg's, below)
    assert seq.execution != vec.execution
    assert vec.params.dtype == torch.float64 and seq.params.shape == vec.params.shape
    assert (seq.params - vec.params).abs().max().item() <= TOL64 * seq.params.abs().max().item()
    if seq.buffers.numel():
        assert (seq.buffers - vec.buffers).abs().max().item() <= TOL64 * seq.buffers.abs().max().item()
    for s, v in zip(seq.rows, vec.rows, strict=True):
        assert s["train_loss"] == pytest.approx(v["train_loss"], rel=TOL64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_vectorized_moon_rounds_equal_sequential(monkeypatch, float64_default):
    # Execute: float64 on the card (cuDNN's kernels, the stacked steps captured once their shapes recur)
    seq, vec = both(lambda: model_of("resnet20", norm="batch"), monkeypatch, device="cuda")

    # Assert
    assert vec.params.dtype == torch.float64 and vec.execution.startswith("vectorized")
    assert (seq.params - vec.params).abs().max().item() <= TOL64 * seq.params.abs().max().item()
    assert (seq.buffers - vec.buffers).abs().max().item() <= TOL64 * seq.buffers.abs().max().item()


def test_the_contrastive_term_moves_training_and_mu_0_is_fedavg_bit_for_bit(monkeypatch):
    # Prepare / Execute: vectorised MOON at mu 1 and mu 0, and FedAvg on the same projected model
    data = shard_data(SIZES)
    make = lambda: model_of("resnet20", norm="batch")  # noqa: E731
    train = {"rounds": 2, "save_clients_at": ()}
    runs = {}
    for name, algorithm, hparams in (("moon", "moon", PROJECTION), ("mu0", "moon", {**PROJECTION, "mu": 0.0}),
                                     ("fedavg", "fedavg", {})):
        runs[name] = run_mode("vectorized", make_strategy(algorithm, hparams), data, monkeypatch,
                              model=projected(make), **train)

    # Assert: mu 0 adds exactly nothing (its references leave the statistics alone); mu 1 moves the model
    assert torch.equal(runs["mu0"].params, runs["fedavg"].params)
    assert torch.equal(runs["mu0"].buffers, runs["fedavg"].buffers)
    assert (runs["moon"].params[-1] - runs["fedavg"].params[-1]).abs().max().item() > 1e-4


def _nudged_resnet20():
    """resnet20 with batch norm, each weight one float32 rounding off (times 1 + 2^-23)."""
    model = model_of("resnet20", norm="batch")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 2**-23)
    return model


def test_float32_vectorized_moon_rounds_equal_sequential_within_float32_s_own_spread(monkeypatch):
    # Execute: float32 resnet20 with batch norm, two rounds (the second with each client's previous model) at a
    # small lr (at lr 0.1 and 2 epochs float32's chaos parts the paths by 2e-3 after two rounds, FedAvg's by 2e-2);
    # and the sequential run again from a start one float32 rounding away: how far rounding alone moves it here
    train = {"rounds": 2, "lr": 0.02, "local_epochs": 1}
    seq, vec = both(lambda: model_of("resnet20", norm="batch"), monkeypatch, **train)
    (nudged,) = both(_nudged_resnet20, monkeypatch, modes=("sequential",), **train)

    # Assert: as close as float32 allows on this CPU. On an AMD EPYC Zen 4 the paths differed by 2.4e-7 natively
    # (AVX-512) and 1.2e-7 as an AVX2 CPU, where the nudge moved the sequential run by 2.4e-7; with ATen's default
    # (scalar) kernels by 2.0e-5, where the nudge moved it by 2.0e-5 too (a ReLU kink; float64 agrees to 1e-10)
    spread = (seq.params - nudged.params).abs().max().item()
    assert vec.params.dtype == torch.float32
    assert (seq.params - vec.params).abs().max().item() <= 1e-5 + 4 * spread
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 1e-3


def test_the_stacked_contrastive_loss_is_each_clients_over_its_real_rows(float64_default):
    # Prepare: 3 clients' representations, the last rows of two of them padding (garbage there)
    g = torch.Generator().manual_seed(0)
    z, zg, zp = (torch.randn(3, 6, 5, generator=g) for _ in range(3))
    real = [6, 4, 1]
    mask = torch.zeros(3, 6)
    for k, n in enumerate(real):
        mask[k, :n] = 1

    # Execute
    stacked = stacked_moon_contrastive_loss(z, zg, zp, 0.5, mask)

    # Assert
    for k, n in enumerate(real):
        expected = moon_contrastive_loss(z[k, :n], zg[k, :n], zp[k, :n], 0.5)
        assert stacked[k].item() == pytest.approx(expected.item(), rel=1e-14)


@pytest.mark.parametrize(("make", "hparams", "stacks"), [
    (lambda: model_of("resnet20", norm="batch"), PROJECTION, True),
    (lambda: model_of("resnet20", norm="batch"), {**PROJECTION, "reference_mode": "eval"}, False),
    (lambda: model_of("resnet20", norm="batch"), {"head": "side"}, False),
    (lambda: model_of("cnn_small"), PROJECTION, False),  # no stacked features
])
def test_moon_stacks_only_with_a_projection_head_train_references_and_stacked_features(make, hparams, stacks):
    # Prepare
    strategy = make_strategy("moon", hparams)
    net = strategy.prepare_model(make(), seed=0)

    # Execute
    reason = vectorization_blocker(net, strategy)
    auto = resolve_client_parallel(net, strategy, TrainConfig(), device_type="cuda")

    # Assert: where it stacks, auto vectorises on a card (and keeps the ResNets sequential on a CPU, as before)
    assert (reason is None) == stacks
    assert auto == ("vectorized" if stacks else "sequential")
    assert resolve_client_parallel(net, strategy, TrainConfig(), device_type="cpu") == "sequential"
    if stacks:
        assert has_forward_stacked(net)
    else:
        with pytest.raises(ValueError, match="algorithm 'moon'"):
            resolve_client_parallel(net, strategy, TrainConfig(client_parallel="vectorized"), device_type="cuda")
