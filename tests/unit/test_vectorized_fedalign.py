"""Vectorised FedAlign: every stacked client's full pass, its last stage slimmed, its Lipschitz term with its own
CE / L_lip factor and its own gradient clipping, equal to one client at a time."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import shard_data
from helpers.vectorized import both_rounds, model_of

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.fedalign import clip_stacked_grad_norm_, lipschitz_estimate, stacked_lipschitz
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel, vectorization_blocker
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.resnets import ResNet

TOL = 1e-5
TOL64 = 1e-10  # float64: the paths differ by the order of float64 operations only (~1e-16 seen for resnet20)
SIZES = [21, 9, 5, 14]  # batch 8: padded last batches, unequal step counts
CFG = {"local_epochs": 1, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3,
       "augment": "crop_flip", "nesterov": True}


def small_resnet(widths: tuple[int, int] = (16, 32), norm: str = "batch") -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), widths, norm=norm)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(("make", "hparams", "train"), [
    (small_resnet, {"mu": 0.5, "width": 0.6, "clip_grad_norm": 1.0}, {}),  # clipping active, a large term
    (small_resnet, {"mu": 0.05, "width": 0.8}, {"client_chunk_size": 3, "local_epochs": 2}),
    (lambda: model_of("resnet20", norm="batch"), {"mu": 0.05, "width": 0.8}, {}),  # option-A shortcuts slimmed
    (lambda: model_of("resnet20", norm="none"), {"mu": 0.5, "width": 0.6, "clip_grad_norm": 1.0}, {}),
    # the last stage keeps every channel at this width: L_lip is 0, no term (as sequentially)
    (lambda: small_resnet((8, 16)), {"mu": 0.5, "width": 0.6}, {}),
], ids=["small-clipped", "small-chunks", "resnet20", "resnet20-no-norm", "whole-width"])
def test_float64_vectorized_fedalign_round_equals_sequential(make, hparams, train, float64_default):
    # Prepare
    data = shard_data(SIZES)
    cfg = TrainConfig(**{**CFG, **train})

    # Execute
    start, buffers, seq, vec = both_rounds(make(), data, cfg, "fedalign", hparams)

    # Assert: the same clients, statistics and losses (the loss holds mu * CE where the term applies), moved
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        if s.buffers.numel():
            assert (s.buffers - v.buffers).abs().max().item() <= TOL64
        assert s.train_loss == pytest.approx(v.train_loss, abs=TOL64)
        assert (s.params - start).abs().max().item() > 1e-3  # clipped at 1, lr 0.05: a step moves by 0.05 at most


def test_the_term_changes_training_and_its_loss():
    # Prepare: FedAlign with and without its term (mu 0), no clipping
    data = shard_data(SIZES)
    cfg = TrainConfig(**CFG)

    # Execute
    _, _, _, aligned = both_rounds(small_resnet(), data, cfg, "fedalign", {"mu": 0.5, "width": 0.6,
                                                                           "clip_grad_norm": 0.0})
    _, _, _, plain = both_rounds(small_resnet(), data, cfg, "fedalign", {"mu": 0.0, "clip_grad_norm": 0.0})
    _, _, _, fedavg = both_rounds(small_resnet(), data, cfg, "fedavg")

    # Assert: mu 0 without clipping is FedAvg bit for bit; the term moves the clients and adds mu * CE to the loss
    for a, p, f in zip(aligned, plain, fedavg, strict=True):
        assert torch.equal(p.params, f.params) and torch.equal(p.buffers, f.buffers)
        assert (a.params - p.params).abs().max().item() > 1e-3
        assert a.train_loss > 1.2 * p.train_loss


def test_float64_bottleneck_resnet56_round_equals_sequential(float64_default):
    # Prepare: the FedAlign code's model, at the paper's mu and width, on shards of 8 and 6 in batches of 4: no
    # batch of one sample, whose batch norm amplifies float64 rounding in this deep model (FedAvg's two paths
    # departed by 6.8e-8 of the largest parameter on shards of 9 and 5). Seen: 4.4e-12 to 4.9e-12 relative on
    # AVX-512, AVX2 and ATen's default kernels (FedAvg's 1.7e-12 to 2.1e-12); the parameters move by up to ~10
    data = shard_data([8, 6])
    cfg = TrainConfig(**{**CFG, "batch_size": 4})

    # Execute
    start, buffers, seq, vec = both_rounds(model_of("resnet56_bottleneck", norm="batch"), data, cfg, "fedalign",
                                           {"mu": 0.05, "width": 0.8})

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert relative(v.params, s.params) <= TOL64
        assert relative(v.buffers, s.buffers) <= TOL64
        assert (s.params - start).abs().max().item() > 1e-2


def test_float32_vectorized_fedalign_round_equals_sequential():
    # Prepare: float32 training of resnet20 (its float32 paths differed by 7e-7 on AVX-512)
    data = shard_data(SIZES)
    cfg = TrainConfig(**CFG)

    # Execute
    start, buffers, seq, vec = both_rounds(model_of("resnet20", norm="batch"), data, cfg, "fedalign",
                                           {"mu": 0.05, "width": 0.8})

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float32
        assert (s.params - v.params).abs().max().item() <= TOL
        assert (s.params - start).abs().max().item() > 100 * TOL


def test_stacked_lipschitz_is_each_clients_estimate(float64_default):
    # Prepare: 3 clients' maps in the grouped layout [B, K*C, H, W]
    g = torch.Generator().manual_seed(0)
    h_in, h_out = torch.randn(3, 5, 4, 6, 6, generator=g), torch.randn(3, 5, 7, 3, 3, generator=g)

    def grouped(h):
        return h.transpose(0, 1).flatten(1, 2)

    # Execute
    got = stacked_lipschitz(grouped(h_in), grouped(h_out), 3)

    # Assert
    assert got.shape == (3, 5)
    for k in range(3):
        torch.testing.assert_close(got[k], lipschitz_estimate(h_in[k], h_out[k]), rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_stacked_clipping_is_torchs_per_client(max_norm, float64_default):
    # Prepare: 3 clients' gradients of two tensors and one parameter without gradient
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, 5, generator=g), None, torch.randn(3, 7, generator=g)]
    grads[0][1] *= 100  # one client far over any bound
    expected = []
    for k in range(3):
        params = [torch.zeros(4, 5, requires_grad=True), torch.zeros(2, requires_grad=True),
                  torch.zeros(7, requires_grad=True)]
        params[0].grad, params[2].grad = grads[0][k].clone(), grads[2][k].clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        expected.append((params[0].grad, params[2].grad))

    # Execute
    clip_stacked_grad_norm_(grads, max_norm)

    # Assert: each client as torch clips it alone (the large one scaled to the bound, the others as they were at 100)
    for k in range(3):
        torch.testing.assert_close(grads[0][k], expected[k][0], rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(grads[2][k], expected[k][1], rtol=TOL64, atol=TOL64)
    assert grads[1] is None


def test_what_vectorised_fedalign_needs():
    # Prepare
    resnet = small_resnet()
    fedalign = make_strategy("fedalign")

    # Execute / Assert: the ResNets with batch norm or group norm vectorise on CUDA under auto; a model without a
    # slimmed stacked last block and a width of 1 keep the clients sequential, and explicit vectorized is then an error
    assert vectorization_blocker(resnet, fedalign) is None
    assert resolve_client_parallel(resnet, fedalign, TrainConfig(), device_type="cuda") == "vectorized"
    assert "only the ResNets' own stacked forward" in vectorization_blocker(model_of("cnn_small"), fedalign)
    assert "at width 1" in vectorization_blocker(resnet, make_strategy("fedalign", {"width": 1.0}))
    assert vectorization_blocker(small_resnet(norm="group"), fedalign) is None
    assert resolve_client_parallel(small_resnet(norm="group"), fedalign, TrainConfig(client_parallel="vectorized"),
                                   device_type="cuda") == "vectorized"
    with pytest.raises(ValueError, match="under vmap"):
        VectorizedTrainer(small_resnet(norm="none"), shard_data(SIZES), fedalign, TrainConfig(), stacked_forward=False)


def test_a_round_through_a_trainer_keeps_the_global_model_untouched(float64_default):
    # Prepare
    model = small_resnet()
    flat = FlatParams(model)
    start, buffers = flat.get().clone(), flatten_buffers(model).clone()
    trainer = VectorizedTrainer(model, shard_data(SIZES), make_strategy("fedalign", {"width": 0.6}), TrainConfig(**CFG))

    # Execute
    trainer.train_round(flat.get(), flatten_buffers(model), [0, 1, 2, 3], 1)

    # Assert
    assert torch.equal(flat.get(), start) and torch.equal(flatten_buffers(model), buffers)


def test_a_client_whose_lipschitz_term_is_not_finite_trains_without_it_as_sequentially(float64_default):
    # Prepare: client 2's images scaled by 1e80, so that its estimates overflow and its L_lip is NaN: the sequential
    # step skips the term's backward pass for it, where a zero factor times NaN estimates would give NaN gradients
    data = shard_data([16, 16, 16])
    data.x_train[32:48] *= 1e80
    cfg = TrainConfig(**{**CFG, "augment": "none"})

    # Execute
    start, buffers, seq, vec = both_rounds(model_of("resnet20", norm="none"), data, cfg, "fedalign",
                                           {"mu": 0.5, "width": 0.6, "clip_grad_norm": 1.0})

    # Assert: every client finite and equal to its sequential training, the other clients' terms applied
    for s, v in zip(seq, vec, strict=True):
        assert torch.isfinite(v.params).all()
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert s.train_loss == pytest.approx(v.train_loss, rel=TOL64)
