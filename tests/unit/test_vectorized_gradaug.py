"""Vectorised GradAug: every stacked client's full pass, then its sub-networks, each at the client's own width and
input size, equal to one client at a time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.graphs import emulated_graph
from helpers.synthetic import shard_data
from helpers.vectorized import both_rounds, model_of, run_mode

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import StackedBatch
from fedscape.fl.strategies.gradaug import gradaug_draws
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel, vectorization_blocker
from fedscape.models.layers import StackedNorm
from fedscape.models.resnets import ResNet

# float32 with SiLU for ReLU (`smooth_relu`): the two paths' departures from float64 summed to at most 4.1e-6 (AMD EPYC
# Zen 3, natively and with ATen's default kernels, from two starts one rounding apart); 10x that, rounded up
TOL32 = 5e-5
TOL64 = 1e-10  # float64: the paths differ by the order of float64 operations only (~1e-14 seen for resnet20)
SIZES = [21, 9, 5, 14]  # batch 8: padded last batches, unequal step counts
CFG = {"local_epochs": 1, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3,
       "augment": "crop_flip", "nesterov": True}


def small_resnet(norm: str = "batch", projection: bool = False) -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (16, 32), norm=norm, projection=projection)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def stacked_params(model: torch.nn.Module, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """K clients' parameters: the model's, each moved its own way."""
    return {n: p.detach().expand(k, *p.shape) + 0.05 * torch.randn(k, *p.shape, generator=generator)
            for n, p in model.named_parameters()}


@pytest.mark.parametrize(("make", "hparams", "train"), [
    (lambda: model_of("resnet20", norm="batch"), {}, {}),  # option-A shortcuts at each client's width
    (lambda: model_of("resnet20", norm="none"), {"num_subnets": 3, "min_width": 0.5}, {}),
    (lambda: small_resnet(projection=True), {"num_subnets": 1, "mu": 3.0}, {"client_chunk_size": 3,
                                                                            "local_epochs": 2}),
    # every sub-network at full size: one stacked pass each
    (small_resnet, {"scales": [1.0], "min_width": 0.3}, {}),
    # widths below 0.25 keep 9 of 16 channels where wider ones keep 8
    (lambda: model_of("resnet20", norm="batch"), {"min_width": 0.1}, {}),
], ids=["resnet20", "resnet20-no-norm-n3", "projection-chunks", "one-scale", "resnet20-min-width-0.1"])
def test_float64_vectorized_gradaug_round_equals_sequential(make, hparams, train, float64_default):
    # Prepare
    data = shard_data(SIZES)
    cfg = TrainConfig(**{**CFG, **train})

    # Execute
    start, buffers, seq, vec = both_rounds(make(), data, cfg, "gradaug", hparams)

    # Assert: the same clients, statistics and losses (CE plus the sub-networks' KL terms), moved
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        if s.buffers.numel():
            assert (s.buffers - v.buffers).abs().max().item() <= TOL64
        assert s.train_loss == pytest.approx(v.train_loss, abs=TOL64)
        assert (s.params - start).abs().max().item() > 1e-2


def both_runs(make, monkeypatch, device: str = "cpu", **train):
    """The sequential and vectorised runs of GradAug over two rounds of 3 of the 4 clients (aggregated by the
    engine), on `device`."""
    data = shard_data(SIZES)
    data = type(data)(data.x_train.to(device), data.y_train.to(device), [ix.to(device) for ix in data.client_indices],
                      data.x_test.to(device), data.y_test.to(device))
    train = {"rounds": 2, "augment": "crop_flip", "save_clients_at": (), "lr": 0.05, **train}
    return [run_mode(mode, make_strategy("gradaug"), data, monkeypatch, model=lambda: make().to(device), **train)
            for mode in ("sequential", "vectorized")]


def test_float64_vectorized_gradaug_rounds_equal_sequential(monkeypatch, float64_default):
    # Execute
    seq, vec = both_runs(lambda: model_of("resnet20", norm="batch"), monkeypatch)

    # Assert: every round's global model, statistics and training loss
    assert seq.execution == "sequential" and vec.execution == "vectorized"
    assert (seq.params - vec.params).abs().max().item() <= TOL64 * seq.params.abs().max().item()
    assert (seq.buffers - vec.buffers).abs().max().item() <= TOL64 * seq.buffers.abs().max().item()
    for s, v in zip(seq.rows, vec.rows, strict=True):
        assert s["train_loss"] == pytest.approx(v["train_loss"], rel=TOL64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_vectorized_gradaug_rounds_equal_sequential(monkeypatch, float64_default):
    # Execute: float64 on the card (cuDNN's kernels; GradAug's stacked steps are never captured)
    seq, vec = both_runs(lambda: model_of("resnet20", norm="batch"), monkeypatch, device="cuda")

    # Assert
    assert vec.params.dtype == torch.float64 and vec.execution == "vectorized"
    assert (seq.params - vec.params).abs().max().item() <= TOL64 * seq.params.abs().max().item()
    assert (seq.buffers - vec.buffers).abs().max().item() <= TOL64 * seq.buffers.abs().max().item()


def test_float64_bottleneck_resnet56_round_equals_sequential(float64_default):
    # Prepare: the FedAlign code's model at the paper's mu and n, on shards of 8 and 6 in batches of 4 (no batch of
    # one sample, whose batch norm amplifies float64 rounding in this deep model: see test_vectorized_fedalign.py).
    # Seen: 5.7e-12 relative on AVX-512; the parameters move by up to ~38
    data = shard_data([8, 6])
    cfg = TrainConfig(**{**CFG, "batch_size": 4})

    # Execute
    start, buffers, seq, vec = both_rounds(model_of("resnet56_bottleneck", norm="batch"), data, cfg, "gradaug",
                                           {"mu": 1.75, "num_subnets": 2})

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert relative(v.params, s.params) <= TOL64
        assert relative(v.buffers, s.buffers) <= TOL64
        assert (s.params - start).abs().max().item() > 1e-2


def test_float32_vectorized_gradaug_round_equals_sequential(smooth_relu):
    # Prepare: float32 training of resnet20 at a small lr, where float32 training is not chaotic, through SiLU. With
    # ReLU, rounding put a value of one path exactly on its kink at 2 of the 12 starts and kernel sets probed (AVX2
    # and ATen's default kernels; `pytest -p helpers.nudge`): a client 1.1e-3 and 3.5e-3 off, where float64 agrees to
    # 1e-15; the float64 tests above compare the ReLU network
    data = shard_data(SIZES)
    cfg = TrainConfig(**{**CFG, "lr": 0.01})

    # Execute
    start, buffers, seq, vec = both_rounds(model_of("resnet20", norm="batch"), data, cfg, "gradaug")

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float32
        assert (s.params - v.params).abs().max().item() <= TOL32
        assert (s.params - start).abs().max().item() > 100 * TOL32


def test_the_sub_networks_change_training_and_mu_0_is_fedavg():
    # Prepare: no augmentation, so that FedAvg's clients see the same batches as GradAug's (whose draws follow each
    # step's augmentation draws)
    data = shard_data(SIZES)
    cfg = TrainConfig(**{**CFG, "augment": "none"})

    # Execute
    _, _, _, gradaug = both_rounds(small_resnet(), data, cfg, "gradaug", {"mu": 1.75})
    _, _, _, plain = both_rounds(small_resnet(), data, cfg, "gradaug", {"mu": 0.0})
    _, _, _, fedavg = both_rounds(small_resnet(), data, cfg, "fedavg")

    # Assert: mu 0 is FedAvg bit for bit (its sub-networks add zero gradients); the term moves the clients and adds
    # its KL to the loss
    for g, p, f in zip(gradaug, plain, fedavg, strict=True):
        assert torch.equal(p.params, f.params) and torch.equal(p.buffers, f.buffers)
        assert p.train_loss == f.train_loss
        assert (g.params - p.params).abs().max().item() > 1e-3
        assert g.train_loss > p.train_loss


WIDTHS = [0.8, 0.93, 0.55, 0.3]
# A narrow width keeps more channels than a wider one (16 channels: 9 at 0.1, 8 at 0.5; slim_channels' rounding)
SMALL = [0.1, 0.5, 0.2, 0.15]


@pytest.mark.parametrize(("name", "options", "widths"), [
    ("resnet20", {"norm": "batch"}, WIDTHS), ("resnet56_bottleneck", {"norm": "batch"}, WIDTHS),
    ("resnet20", {"norm": "none"}, WIDTHS), ("resnet18", {"norm": "batch", "stem": "imagenet"}, WIDTHS),
    ("resnet20", {"norm": "batch"}, SMALL), ("resnet20", {"norm": "none"}, SMALL),
    ("resnet56_bottleneck", {"norm": "batch"}, SMALL),
])
def test_stacked_widths_are_each_clients_sliced_sub_network(name, options, widths, float64_default):
    # Prepare: 4 clients of 5 rows at widths whose channel counts differ, the last rows of clients 1 and 3 padding;
    # below width 0.5 an option-A shortcut's padded input reaches past the sub-network's channels
    g = torch.Generator().manual_seed(0)
    model = model_of(name, **options)
    k, real = 4, [5, 3, 5, 4]
    x = torch.randn(k, 5, 1, 8, 8, generator=g)
    x[1, 3:] = 1e3  # padded rows must not enter the real rows' statistics
    mask = torch.tensor([[1.0 if r < n else 0.0 for r in range(5)] for n in real])
    params = stacked_params(model, k, g)

    # Execute
    norm = StackedNorm(mask, None) if options["norm"] == "batch" else None
    out = model.forward_widths_stacked(params, x, widths, norm=norm)

    # Assert: each client's real rows as its own sliced forward computes them
    for i in range(k):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n][i])
        torch.testing.assert_close(out[i, : real[i]], model.forward_width(x[i, : real[i]], widths[i]),
                                   rtol=TOL64, atol=TOL64)


def test_stacked_widths_pass_back_each_clients_gradients(float64_default):
    # Prepare
    g = torch.Generator().manual_seed(1)
    model = model_of("resnet20", norm="batch")
    k, widths = 2, [0.6, 0.9]
    x = torch.randn(k, 4, 1, 8, 8, generator=g)
    params = {n: p.requires_grad_(True) for n, p in stacked_params(model, k, g).items()}
    names = list(params)

    # Execute
    out = model.forward_widths_stacked(params, x, widths, norm=StackedNorm())
    grads = torch.autograd.grad(out.square().sum(), [params[n] for n in names])

    # Assert: client i's gradient is its sliced sub-network's, zero where its width cuts the tensor
    for i in range(k):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n][i])
        model.zero_grad()
        model.forward_width(x[i], widths[i]).square().sum().backward()
        for n, grad in zip(names, grads, strict=True):
            expected = dict(model.named_parameters())[n].grad
            expected = torch.zeros_like(grad[i]) if expected is None else expected
            torch.testing.assert_close(grad[i], expected, rtol=TOL64, atol=TOL64)
    assert any((grad[0] == 0).any() and not (grad[1] == 0).all() for grad in grads)


@pytest.mark.parametrize(("widths", "norm", "match"), [
    ([0.8, 1.0], None, "every width must be in"),
    ([0.8], None, "1 widths for 2 stacked models"),
    ([0.8, 0.9], StackedNorm(None, {}), "update no running statistics"),
])
def test_stacked_widths_refuse_what_they_do_not_compute(widths, norm, match):
    model = small_resnet()
    params = stacked_params(model, 2, torch.Generator().manual_seed(0))

    with pytest.raises(ValueError, match=match):
        model.forward_widths_stacked(params, torch.zeros(2, 3, 1, 8, 8), widths, norm=norm)


@pytest.mark.parametrize(("scales", "single", "expected"), [
    ([0, 0, 0], False, [False]),  # one pass of every client: the trainer's `single` as it is
    ([0, 0, 0], True, [True]),
    ([0, 1, 0], False, [False, False]),  # no client of all has one sample: none of a pass's has
    ([0, 1, 0], True, [None, None]),  # the client of one sample may be in the other pass: read from the pass's mask
], ids=["one-pass", "one-pass-single", "two-passes", "two-passes-single"])
def test_each_sub_network_pass_keeps_the_trainers_single(monkeypatch, scales, single, expected):
    # Prepare: 3 clients of 4, 3 and 2 real rows in a step, each client's sub-network at the scale `scales` draws
    # for it (one stacked pass per input size), the batch norms' state as the trainer gives it (`StackedNorm.single`)
    g = torch.Generator().manual_seed(0)
    model, k = small_resnet(), 3
    mask = torch.tensor([[1.0 if r < n else 0.0 for r in range(4)] for n in (4, 3, 2)])
    params = {n: p.requires_grad_(True) for n, p in stacked_params(model, k, g).items()}
    batch = StackedBatch(model, list(params), torch.randn(k, 4, 1, 8, 8, generator=g), torch.randint(10, (k, 4)), mask,
                         lambda update: StackedNorm(mask, None, single=single), draws=[[(0.5, s)] for s in scales])
    passes = []
    forward = model.forward_widths_stacked

    def seen(named, x, widths, norm=None):
        passes.append(norm)
        return forward(named, x, widths, norm=norm)

    monkeypatch.setattr(model, "forward_widths_stacked", seen)
    gradaug = make_strategy("gradaug", {"num_subnets": 1, "scales": [1.0, 0.5], "min_width": 0.5})

    # Execute
    gradaug.local_gradients_vectorized(list(params.values()), SimpleNamespace(batch=batch))

    # Assert: each pass's batch norms over its own clients' rows, `single` known without reading the mask where it is
    members = [[i for i, s in enumerate(scales) if s == scale] for scale in sorted(set(scales))]
    assert [norm.single for norm in passes] == expected
    assert all(torch.equal(norm.mask, mask[rows]) for norm, rows in zip(passes, members, strict=True))


def test_draws_are_the_sequential_order():
    # Prepare: two generators at the same state
    config = make_strategy("gradaug", {"num_subnets": 3, "min_width": 0.5}).config
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)

    # Execute
    draws = gradaug_draws(config, a)
    uniforms = torch.rand(2, generator=b).tolist()
    scales = [int(torch.randint(len(config.scales), (), generator=b)) for _ in range(3)]

    # Assert: the widths (min_width and two uniform in [min_width, 1]) largest first, then a scale each
    assert [w for w, _ in draws] == sorted([0.5] + [0.5 + u * 0.5 for u in uniforms], reverse=True)
    assert [s for _, s in draws] == scales
    assert torch.equal(a.get_state(), b.get_state())


def test_what_vectorised_gradaug_needs():
    # Prepare
    resnet = small_resnet()
    gradaug = make_strategy("gradaug")

    # Execute / Assert: the ResNets with batch norm, group norm or none vectorise on CUDA under auto; a model without
    # the ResNets' stacked widths and a min_width of 1 keep the clients sequential, and an explicit vectorized is then
    # an error
    assert vectorization_blocker(resnet, gradaug) is None
    assert vectorization_blocker(small_resnet(norm="none"), gradaug) is None
    assert resolve_client_parallel(resnet, gradaug, TrainConfig(), device_type="cuda") == "vectorized"
    assert resolve_client_parallel(resnet, gradaug, TrainConfig(), device_type="cpu") == "sequential"
    assert "only the ResNets' own stacked forward" in vectorization_blocker(model_of("cnn_small"), gradaug)
    assert "min_width 1" in vectorization_blocker(resnet, make_strategy("gradaug", {"min_width": 1.0}))
    assert vectorization_blocker(small_resnet(norm="group"), gradaug) is None
    assert resolve_client_parallel(small_resnet(norm="group"), gradaug, TrainConfig(client_parallel="vectorized"),
                                   device_type="cuda") == "vectorized"
    with pytest.raises(ValueError, match="under vmap"):
        VectorizedTrainer(small_resnet(norm="none"), shard_data(SIZES), gradaug, TrainConfig(), stacked_forward=False)


@pytest.mark.parametrize(("min_width", "full"), [(0.5, False), (1 - 1e-8, False), (1 - 1e-10, True), (1.0, True)])
def test_a_min_width_that_can_draw_the_full_network_keeps_the_clients_sequential(min_width, full):
    # Prepare: the largest value torch.rand draws
    from fedscape.fl.hparams.gradaug import LARGEST_UNIFORM

    largest = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    gradaug = make_strategy("gradaug", {"min_width": min_width, "num_subnets": 2})

    # Execute: the width that value gives, and a step's draws
    widths = [w for w, _ in gradaug_draws(gradaug.config, torch.Generator().manual_seed(0))]
    widest = gradaug.config.width_at(largest)

    # Assert: width exactly 1.0 (the full network, whose batch norms move their statistics) only where the blocker
    # keeps the clients sequential; every other draw stays below 1
    assert LARGEST_UNIFORM == largest
    assert (widest == 1.0) == full == gradaug.config.draws_full_width()
    assert (vectorization_blocker(small_resnet(), gradaug) is not None) == full
    assert all(min_width <= w <= widest for w in widths)


def test_the_draws_are_float32_under_a_float64_default(float64_default):
    # Prepare: the draws under float32, then under the fixture's float64 default
    gradaug = make_strategy("gradaug", {"num_subnets": 4})
    torch.set_default_dtype(torch.float32)
    single = gradaug_draws(gradaug.config, torch.Generator().manual_seed(3))
    torch.set_default_dtype(torch.float64)

    # Execute
    double = gradaug_draws(gradaug.config, torch.Generator().manual_seed(3))

    # Assert: the same widths and scales (a float64 draw could reach 1 - 2**-53, past draws_full_width's bound)
    assert double == single


def test_its_steps_are_never_replayed_from_graphs():
    # Prepare: a graph maker that fails the test if asked for a graph
    def refuse(step):
        raise AssertionError("a GradAug step was captured")

    data = shard_data(SIZES)

    # Execute / Assert: no graphs under auto (its passes follow host draws every step), an error where capture insists
    trainer = VectorizedTrainer(small_resnet(), data, make_strategy("gradaug"), TrainConfig(**CFG), make_graph=refuse)
    assert trainer.graphs is None
    with pytest.raises(ValueError, match="capture is 'cuda_graph' but gradaug's stacked step is not captured"):
        VectorizedTrainer(small_resnet(), data, make_strategy("gradaug"),
                          TrainConfig(**CFG, capture="cuda_graph"), make_graph=emulated_graph)


@pytest.mark.parametrize(("name", "device", "path"), [
    ("resnet56_bottleneck", "cuda", "sequential"),  # measured 0.8-0.9x stacked on an H200
    ("resnet56_bottleneck", "cpu", "sequential"),  # the ResNets' stacked forward is slower on a CPU
    ("resnet20", "cuda", "vectorized"),  # basic blocks: not measured slower on a card
])
def test_auto_trains_gradaug_on_bottleneck_blocks_one_client_after_another_on_a_gpu(name, device, path):
    # Prepare
    model = model_of(name, norm="batch")
    gradaug, fedavg = make_strategy("gradaug"), make_strategy("fedavg")

    # Execute
    auto = resolve_client_parallel(model, gradaug, TrainConfig(), device_type=device)
    asked = resolve_client_parallel(model, gradaug, TrainConfig(client_parallel="vectorized"), device_type=device)

    # Assert: exact either way, so an explicit `vectorized` still stacks; FedAvg on the same blocks still stacks
    assert (auto, asked) == (path, "vectorized")
    assert resolve_client_parallel(model, fedavg, TrainConfig(), device_type="cuda") == "vectorized"
    if path == "sequential" and device == "cuda":
        assert "bottleneck" in gradaug.stacked_speed_blocker(model, device)
