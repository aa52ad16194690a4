"""Vectorised Stochastic Depth: each stacked client's residual branches scaled by its own draws, a dropped branch's
parameters, momentum and running statistics kept as the sequential step (which never runs the branch) keeps them."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import shard_data
from helpers.vectorized import both_rounds, model_of

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel, vectorization_blocker
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.models.resnets import ResNet, scaled_branch

TOL = 1e-5
TOL64 = 1e-10  # float64: the two paths differ by the order of float64 operations only (~1e-16 seen)
SIZES = [21, 9, 5, 14]  # batch 8: padded last batches, unequal step counts
CFG = {"local_epochs": 2, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3}
# gamma_L 0.5 over 2 blocks: block 1 survives with probability 0.75, block 2 with 0.5: many drops in a round
DEEP = {"survival_last": 0.5}


def small_resnet(norm: str = "batch") -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (4, 8), norm=norm)


def dropped_any(model, data, cfg: TrainConfig, hparams: dict) -> bool:
    """Whether some client's plan of round 1 drops a branch (so that the round tells the paths apart)."""
    trainer = VectorizedTrainer(model, data, make_strategy("stochdepth", hparams), cfg)
    return any(0.0 in step for c in range(data.num_clients) for step in trainer.plan(c, 1).scales)


@pytest.mark.parametrize(("make", "train"), [
    (lambda: small_resnet("batch"), {}),
    (lambda: small_resnet("batch"), {"augment": "crop_flip", "nesterov": True, "client_chunk_size": 3}),
    (lambda: small_resnet("group"), {"augment": "crop_flip"}),
    (lambda: model_of("resnet20", norm="batch"), {"local_epochs": 1}),
    (lambda: model_of("resnet56_bottleneck", norm="batch"), {"local_epochs": 1, "batch_size": 16}),
    # AdamW counts each parameter's steps: a dropped branch's counts, and so its bias corrections, fall behind, and
    # its moments stay put (seed 0: branches run again after a drop)
    (lambda: small_resnet("batch"), {"optimizer": "adamw", "client_parallel": "vectorized", "seed": 0}),
    (lambda: small_resnet("none"), {"optimizer": "adamw", "client_parallel": "vectorized", "client_chunk_size": 3,
                                    "lr_schedule": "cosine", "lr_schedule_over": "local_steps", "seed": 0}),
], ids=["batch-norm", "batch-norm-crop_flip-nesterov-chunks", "group-norm-crop_flip", "resnet20",
        "resnet56_bottleneck", "adamw-batch-norm", "adamw-no-norm-chunks-per-client-lr"])
def test_float64_vectorized_stochdepth_round_equals_sequential(make, train, float64_default):
    # Prepare
    data = shard_data(SIZES)
    model = make()
    cfg = TrainConfig(**{**CFG, **train})
    assert dropped_any(model, data, cfg, DEEP)

    # Execute
    start, buffers, seq, vec = both_rounds(model, data, cfg, "stochdepth", DEEP)

    # Assert: the same client models, running statistics and losses, which training clearly moved
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert (s.buffers - v.buffers).abs().max().item() <= TOL64 if s.buffers.numel() else True
        assert s.train_loss == pytest.approx(v.train_loss, abs=TOL64)
        assert (s.params - start).abs().max().item() > 1e-2


def test_float32_vectorized_stochdepth_round_equals_sequential():
    # Prepare: the float32 training of the workflow; the small ResNet's float32 paths differed by 2.4e-7 (AVX-512)
    data = shard_data(SIZES)
    cfg = TrainConfig(**CFG)

    # Execute
    start, buffers, seq, vec = both_rounds(small_resnet(), data, cfg, "stochdepth", DEEP)

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float32
        assert (s.params - v.params).abs().max().item() <= TOL
        assert (s.buffers - v.buffers).abs().max().item() <= TOL
        assert (s.params - start).abs().max().item() > 100 * TOL


def segments(named: list[tuple[str, torch.Tensor]]) -> dict[str, slice]:
    """Each named tensor's slice of the flat vector they make in this order."""
    out, at = {}, 0
    for name, t in named:
        out[name] = slice(at, at + t.numel())
        at += t.numel()
    return out


def test_a_branch_dropped_at_every_step_keeps_its_start_in_every_client(float64_default):
    # Prepare: the last block survives with probability 1e-9: dropped at every step of every client, so its branch's
    # parameters never get a gradient sequentially, and weight decay and momentum never touch them either
    data = shard_data(SIZES)
    model = small_resnet()
    cfg = TrainConfig(**CFG)
    params = segments(list(model.named_parameters()))
    stats = segments([(n, b) for n, b in model.named_buffers() if b.is_floating_point()])

    # Execute
    start, buffers, seq, vec = both_rounds(model, data, cfg, "stochdepth", {"survival_last": 1e-9})

    # Assert: bit for bit the start in block 1's branch (parameters and running statistics), the classifier trained,
    # and the sequential clients to float64 rounding
    for v in vec:
        for name, where in params.items():
            moved = (v.params[where] - start[where]).abs().max().item()
            if model.residual_branch_of(name) == 1:
                assert moved == 0.0, name
            elif name.startswith("classifier"):
                assert moved > 1e-3, name
        kept = [name for name in stats if model.residual_branch_of(name) == 1]
        assert kept and all(torch.equal(v.buffers[stats[n]], buffers[stats[n]]) for n in kept)
    for s, v in zip(seq, vec, strict=True):
        assert (s.params - v.params).abs().max().item() <= TOL64


def test_at_survival_one_vectorized_stochdepth_is_fedavg_bit_for_bit():
    # Prepare: every branch survives at scale 1 (the draws still happen, but nothing else draws without augmentation)
    data = shard_data(SIZES)
    cfg = TrainConfig(**CFG)
    model = small_resnet()
    flat = FlatParams(model)
    start, buffers = flat.get(), flatten_buffers(model)

    # Execute
    depth = VectorizedTrainer(model, data, make_strategy("stochdepth", {"survival_last": 1.0}), cfg).train_round(
        start, buffers, [0, 1, 2, 3], 1)
    fedavg = VectorizedTrainer(model, data, make_strategy("fedavg"), cfg).train_round(start, buffers, [0, 1, 2, 3], 1)

    # Assert
    for d, f in zip(depth, fedavg, strict=True):
        assert torch.equal(d.params, f.params) and torch.equal(d.buffers, f.buffers)


@pytest.mark.parametrize("name", ["resnet20", "resnet56_bottleneck", "resnet18"])
def test_forward_stacked_scales_each_clients_branches_as_its_own_forward(name, float64_default):
    # Prepare: 3 clients' parameters, their scales (0 drops a branch), group norm (no running statistics to compare)
    torch.manual_seed(0)
    size = 16 if name == "resnet18" else 8
    model = build_model(name, num_classes=10, in_channels=3, image_size=size, norm="group").train()
    clients = [build_model(name, num_classes=10, in_channels=3, image_size=size, norm="group").train()
               for _ in range(3)]
    params = {n: torch.stack([dict(c.named_parameters())[n].detach() for c in clients])
              for n, _ in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    blocks = len(model.blocks)
    scales = torch.where(torch.rand(3, blocks, generator=g) < 0.4, 0.0, 1.0 + torch.rand(3, blocks, generator=g))
    x = torch.randn(3, 4, 3, size, size, generator=g)

    # Execute
    got = model.forward_stacked(params, x, scales=scales)

    # Assert
    assert (scales == 0).any()
    for i, client in enumerate(clients):
        ref = client.forward_residual_scaled(x[i], scales[i].tolist())
        torch.testing.assert_close(got[i], ref, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize(("name", "expected"), [
    ("stem.weight", None), ("classifier.bias", None), ("blocks.0.conv1.weight", 0), ("blocks.2.norm2.running_var", 2),
    ("blocks.3.shortcut.0.weight", None), ("blocks.3.shortcut.1.running_mean", None), ("blocks.11.conv3.weight", 11),
])
def test_residual_branch_of_names_the_block_whose_branch_holds_a_tensor(name, expected):
    assert model_of("resnet56_bottleneck", norm="batch").residual_branch_of(name) == expected


def test_what_vectorised_stochdepth_needs(caplog):
    # Prepare
    resnet, mlp = small_resnet(), model_of("mlp")
    depth = make_strategy("stochdepth")

    # Execute / Assert: a ResNet vectorises on CUDA under auto; AdamW, as for every algorithm, only where asked (it
    # magnifies the paths' float rounding); a model without the ResNets' stacked forward is refused
    assert vectorization_blocker(resnet, depth) is None
    assert vectorization_blocker(resnet, depth, "adamw") is None
    assert resolve_client_parallel(resnet, depth, TrainConfig(), device_type="cuda") == "vectorized"
    assert resolve_client_parallel(resnet, depth, TrainConfig(optimizer="adamw"), device_type="cuda") == "sequential"
    assert resolve_client_parallel(resnet, depth, TrainConfig(optimizer="adamw", client_parallel="vectorized"),
                                   device_type="cuda") == "vectorized"
    assert "only the ResNets' own stacked forward" in vectorization_blocker(mlp, depth)
    data = shard_data(SIZES)
    with pytest.raises(ValueError, match="under vmap"):
        VectorizedTrainer(small_resnet("group"), data, depth, TrainConfig(), stacked_forward=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_stacked_branch_is_scaled_as_a_python_float_scales_one_models(dtype):
    # Prepare: 3 clients' branches of 4 channels in the grouped layout, scales 1 / gamma that bfloat16 cannot hold
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 12, 3, 3, generator=g).to(dtype)
    scales = [1 / 0.95, 0.0, 1 / 0.9]

    # Execute
    got = scaled_branch(r, torch.tensor(scales), 3)

    # Assert: bit for bit each client's `scale * branch` (ResidualBlock.forward_scaled), in the branch's dtype
    assert got.dtype == dtype
    for k, scale in enumerate(scales):
        assert torch.equal(got[:, 4 * k : 4 * (k + 1)], scale * r[:, 4 * k : 4 * (k + 1)])
