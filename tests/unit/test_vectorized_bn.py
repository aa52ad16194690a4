"""Vectorised training of batch-norm models: each client normalises over its own real samples and keeps its own
running statistics, as sequential training does (fedscape.models.layers.stacked_batch_norm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import vectorized
from helpers.synthetic import shard_data
from helpers.vectorized import GROUPED_LAYOUTS, both_rounds, model_of
from torch import nn

from fedscape.fl import vectorized as vectorized_mod
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel, vectorization_blocker
from fedscape.models.layers import (
    BatchNorm2d,
    MaskedBatchNorm,
    StackedNorm,
    grouped_layout,
    grouped_memory_format,
    masked_counts,
    pointwise_form,
    stacked_batch_norm,
    stacked_pointwise,
)
from fedscape.models.registry import build_model
from fedscape.models.resnets import ResNet

# float32: measured on AVX-512, AVX2-only and ATen's default kernels (`small_resnet`, the round below): each path's
# float32 client models depart from its float64 ones by at most 2.6e-7 (parameters) and 2.0e-7 relative (running
# statistics), so 1e-5 is above 10x their sum (4.9e-7); vectorised and sequential float32 were 1.8-3.6e-7 apart.
TOL = 1e-5
TOL64 = 1e-10  # float64: the two paths differ by the order of float64 operations only (~1e-15 seen)
SIZES = [21, 9, 5, 14]  # batch 4: last batches of 1, 1, 1 and 2 samples, so padded steps, and 6, 3, 2, 4 steps



def small_resnet(seed: int = 0) -> ResNet:
    """A two-block ResNet with batch norm (and a zero-padded shortcut) on 8x8 one-channel images."""
    torch.manual_seed(seed)
    return ResNet(10, 1, (1, 1), (4, 8), norm="batch")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference relative to 1 + |b| (running variances reach 1e2 on these random images)."""
    return ((a - b).abs() / (1 + b.abs())).max().item()


CFG = {"local_epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3}


@pytest.mark.parametrize(("device", "expected"), [("cpu", torch.channels_last), ("cuda", torch.contiguous_format)])
def test_the_grouped_layout_is_channels_last_on_a_cpu_and_channels_first_on_a_gpu(device, expected):
    assert grouped_memory_format(torch.device(device)) == expected


def test_the_grouped_layout_puts_client_k_in_group_k_in_either_memory_order(grouped_format):
    # Prepare: 2 clients' batches of 3 images of 4 channels
    x = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))

    # Execute
    h = grouped_layout(x)

    # Assert: the requested memory order (a CPU tensor either way), client k's channels at k*C .. k*C + C - 1
    assert h.is_contiguous(memory_format=grouped_format) and not h.is_contiguous(
        memory_format=({torch.channels_last, torch.contiguous_format} - {grouped_format}).pop())
    assert torch.equal(h[:, 4:8], x[1]) and torch.equal(h[:, :4], x[0])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_stacked_1x1_convolutions_are_grouped_until_the_product_is_measured_faster(device):
    assert pointwise_form(torch.device(device)) == "grouped"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("c_out", [5, 1])
def test_a_stacked_1x1_convolution_as_a_batched_product_is_each_clients_convolution(stride, with_bias, c_out,
                                                                                    grouped_format, float64_default):
    # Prepare: 3 clients' batches of 2 images of 4 channels at 7x7 (an odd size: stride 2 keeps the first of 4 rows),
    # each client with its own weights and bias (one output channel too, where a reshape could keep a view)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 7, 7, generator=gen)
    weight = torch.randn(3, c_out, 4, 1, 1, generator=gen)
    bias = torch.randn(3, c_out, generator=gen) if with_bias else None

    # Execute
    y = stacked_pointwise(grouped_layout(x), weight, bias, (stride, stride), 3)

    # Assert: client k's output channels at k*C' .. k*C' + C' - 1, in the input's memory order, as the grouped
    # convolution leaves them
    expected = [F.conv2d(x[i], weight[i], None if bias is None else bias[i], stride) for i in range(3)]
    grouped = F.conv2d(grouped_layout(x), weight.flatten(0, 1), None if bias is None else bias.flatten(), stride,
                       groups=3)
    assert y.shape == (2, 3 * c_out, *expected[0].shape[-2:]) and y.stride() == grouped.stride()
    for i in range(3):
        torch.testing.assert_close(y[:, c_out * i : c_out * (i + 1)], expected[i], rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize(("algorithm", "hparams", "train"), [
    ("fedavg", {}, {}),
    ("fedprox", {"mu": 0.5}, {"client_chunk_size": 3}),  # two chunks: 3 clients, then 1
    ("fedsam", {"rho": 0.05}, {}),  # the ascent pass leaves the running statistics alone
], ids=["fedavg", "fedprox-chunks", "fedsam"])
def test_float32_batch_norm_round_equals_sequential(algorithm, hparams, train):
    # Prepare: unequal shards (padded steps, clients inactive in the last steps), momentum and weight decay
    data = shard_data(SIZES)
    model = small_resnet()
    cfg = TrainConfig(**{**CFG, **train})

    # Execute
    start, buffers, seq, vec = both_rounds(model, data, cfg, algorithm, hparams)

    # Assert: the same client models and running statistics, which training clearly moved
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float32 and v.buffers.shape == buffers.shape
        assert (s.params - v.params).abs().max().item() <= TOL
        assert relative(v.buffers, s.buffers) <= TOL
        assert (s.params - start).abs().max().item() > 100 * TOL
        assert relative(s.buffers, buffers) > 100 * TOL


@pytest.mark.parametrize(("name", "augment", "algorithm"), [
    ("small", "crop_flip", "fedavg"),
    ("resnet20", "none", "fedavg"),
    ("resnet20", "crop_flip", "fedsam"),
    ("small", "crop_flip", "mixup"),  # the mixed batches' statistics, each client's own
], ids=["small-crop_flip", "resnet20", "resnet20-fedsam-crop_flip", "small-mixup-crop_flip"])
def test_float64_batch_norm_round_equals_sequential_to_float64_rounding(name, augment, algorithm, grouped_format,
                                                                       float64_default):
    # Prepare: in float64, since resnet20's float32 round is chaotic: at lr 0.05 with momentum each path's float32
    # client models depart from its float64 ones by 4-7e-6, so a float32 bound would be 1e-4 (module docstring of
    # fedscape.fl.vectorized)
    data = shard_data(SIZES)
    model = small_resnet() if name == "small" else model_of("resnet20", norm="batch")
    cfg = TrainConfig(**{**CFG, "augment": augment})

    # Execute
    hparams = {"fedsam": {"rho": 0.05}, "mixup": {"gamma": 0.4}}.get(algorithm, {})
    start, buffers, seq, vec = both_rounds(model, data, cfg, algorithm, hparams)

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64 and v.buffers.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert relative(v.buffers, s.buffers) <= TOL64
        assert relative(s.buffers, buffers) > 1e-2


def test_each_client_keeps_its_own_running_statistics(float64_default):
    # Prepare: four clients of different data and step counts
    data = shard_data(SIZES)

    # Execute
    _, buffers, seq, vec = both_rounds(small_resnet(), data, TrainConfig(**CFG))

    # Assert: every pair of clients ends with other statistics, each equal to its sequential ones
    for i in range(len(vec)):
        assert relative(vec[i].buffers, seq[i].buffers) <= TOL64
        for j in range(i):
            assert relative(vec[i].buffers, vec[j].buffers) > 1e-2


def test_batch_norm_round_through_the_engine_equals_sequential(monkeypatch, float64_default):
    # Prepare: run_federated as a run trains (3 of 4 clients sampled, their statistics averaged by the server)
    data = shard_data(SIZES)
    train = {"batch_size": 4, "local_epochs": 1}
    strategy = make_strategy("fedavg")

    # Execute: the vectorised run must not fall back to the sequential local_train
    seq = vectorized.run_mode("sequential", strategy, data, monkeypatch, "resnet20", {"norm": "batch"}, **train)
    vec = vectorized.run_mode("vectorized", strategy, data, monkeypatch, "resnet20", {"norm": "batch"}, **train)

    # Assert: client models and buffers, and the global model and its aggregated buffers
    assert torch.equal(seq.clients[1].client_ids, vec.clients[1].client_ids)
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= TOL64
    assert relative(vec.clients[1].buffers, seq.clients[1].buffers) <= TOL64
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= TOL64
    assert relative(vec.buffers[-1], seq.buffers[-1]) <= TOL64
    assert relative(vec.buffers[-1], vec.buffers[0]) > 1e-2
    for a, b in zip(seq.rows, vec.rows, strict=True):  # the evaluation uses the aggregated running statistics
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-9)


def test_a_round_whose_padding_entered_the_statistics_differs(monkeypatch, float64_default):
    # Prepare: the trainer made to treat every padded row as a real sample of its client
    data = shard_data(SIZES)
    model = small_resnet()
    monkeypatch.setattr(vectorized_mod, "StackedNorm", lambda mask, running: StackedNorm(None, running))

    # Execute
    _, _, seq, vec = both_rounds(model, data, TrainConfig(**CFG))

    # Assert: every client has a padded step (a partial batch while a wider one is active), padded with copies of its
    # own first sample. Client 3's padded batch holds 2 samples, so its parameters end far from sequential training; a
    # one-sample batch padded with copies of itself keeps its own mean and biased variance, and only the running
    # variance (n / (n - 1)) tells those clients apart: every client's statistics end far from sequential training's
    params = [(s.params - v.params).abs().max().item() for s, v in zip(seq, vec, strict=True)]
    stats = [relative(v.buffers, s.buffers) for s, v in zip(seq, vec, strict=True)]
    assert params[3] > 100 * TOL and min(stats) > 100 * TOL


@pytest.mark.parametrize("lengths", [(5, 3, 1), (2, 5, 4), (5, 0, 3)], ids=["decreasing", "mixed", "empty-client"])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
@pytest.mark.parametrize("layout", sorted(GROUPED_LAYOUTS))
def test_stacked_batch_norm_equals_each_clients_batch_norm_on_its_real_rows(lengths, momentum, layout,
                                                                            float64_default):
    # Prepare: 3 clients of 4 channels with their own affine parameters and running statistics; padded rows far
    # off (mean 5, scale 3) so that statistics taking them in could not pass
    k, b, c = 3, 5, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, b, c, 3, 3, generator=g)
    mask = torch.zeros(k, b)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    x = torch.where(mask.bool().view(k, b, 1, 1, 1), x, 5 + 3 * x)
    weight, bias = torch.rand(k, c, generator=g) + 0.5, torch.randn(k, c, generator=g)
    mean0, var0 = torch.randn(k, c, generator=g), torch.rand(k, c, generator=g) + 0.5
    running_mean, running_var = mean0.clone(), var0.clone()
    own = x.clone().requires_grad_(True)
    stacked_w, stacked_b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    weights = torch.randn(k, b, c, 3, 3, generator=g) * mask.view(k, b, 1, 1, 1)  # a loss on the real rows only

    # Execute
    grouped = own.transpose(0, 1).reshape(b, k * c, 3, 3).contiguous(memory_format=GROUPED_LAYOUTS[layout])
    got = stacked_batch_norm(grouped, k, stacked_w, stacked_b, 1e-5, momentum, mask, running_mean, running_var)
    got = got.view(b, k, c, 3, 3).transpose(0, 1)
    (got * weights).sum().backward()

    # Assert: per client, torch's batch norm on its real rows alone (values, input gradients, running statistics);
    # a client without real rows keeps its running statistics
    for i, n in enumerate(lengths):
        if n == 0:
            assert torch.equal(running_mean[i], mean0[i]) and torch.equal(running_var[i], var0[i])
            continue
        ref_x = x[i, :n].clone().requires_grad_(True)
        ref_w, ref_b = weight[i].clone().requires_grad_(True), bias[i].clone().requires_grad_(True)
        rm, rv = mean0[i].clone(), var0[i].clone()
        ref = F.batch_norm(ref_x, rm, rv, ref_w, ref_b, True, momentum, 1e-5)
        (ref * weights[i, :n]).sum().backward()
        torch.testing.assert_close(got[i, :n], ref, rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(own.grad[i, :n], ref_x.grad, rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(stacked_w.grad[i], ref_w.grad, rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(stacked_b.grad[i], ref_b.grad, rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(running_mean[i], rm, rtol=TOL64, atol=TOL64)
        torch.testing.assert_close(running_var[i], rv, rtol=TOL64, atol=TOL64)
        if n < b:  # padded rows get no gradient, and the statistics with them in would be far from these
            assert torch.equal(own.grad[i, n:], torch.zeros_like(own.grad[i, n:]))
            padded = F.batch_norm(x[i], mean0[i].clone(), var0[i].clone(), weight[i], bias[i], True, momentum, 1e-5)
            assert (padded[:n] - ref).abs().max().item() > 1e-2


@pytest.mark.parametrize("layout", sorted(GROUPED_LAYOUTS))
def test_a_float64_batch_norm_under_a_float32_default_moves_its_statistics_by_the_float64_momentum(layout):
    # Prepare: float64 inputs and statistics while torch's default dtype stays float32 (the fixture float64_default
    # would make every tensor float64 and hide a float32 one); 3 clients, one with padded rows, one without real rows.
    # A momentum rounded to float32 (0.10000000149) moves these statistics ~1e-9 off torch's float64 step
    k, b, c = 3, 5, 4
    assert torch.get_default_dtype() == torch.float32
    g = torch.Generator().manual_seed(4)
    x = torch.randn(k, b, c, 3, 3, generator=g, dtype=torch.float64) + 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    mean0 = torch.randn(k, c, generator=g, dtype=torch.float64)
    var0 = torch.rand(k, c, generator=g, dtype=torch.float64) + 0.5
    running_mean, running_var = mean0.clone(), var0.clone()

    # Execute
    grouped = x.transpose(0, 1).reshape(b, k * c, 3, 3).contiguous(memory_format=GROUPED_LAYOUTS[layout])
    stacked_batch_norm(grouped, k, None, None, 1e-5, 0.1, mask, running_mean, running_var)

    # Assert: each client's statistics are torch's float64 batch norm's on its real rows, to float64 rounding
    assert running_mean.dtype == running_var.dtype == torch.float64
    for i, n in enumerate(mask.sum(1).int().tolist()):
        rm, rv = mean0[i].clone(), var0[i].clone()
        if n:
            F.batch_norm(x[i, :n], rm, rv, None, None, True, 0.1, 1e-5)
        torch.testing.assert_close(running_mean[i], rm, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(running_var[i], rv, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("channel_dim", [2, 1], ids=["channels_last", "channels_first"])
def test_masked_batch_norm_gradients_match_finite_differences(affine, channel_dim, float64_default):
    # Prepare: 2 clients of 3 channels, the second with 2 padded rows, and a loss on every row (padded ones too), so
    # that the backward's padded-row gradient is checked as well as the real rows'; h [B, S, K*C] or [B, K*C, S]
    k, b, c = 2, 4, 3
    g = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    shape = (b, 4, k * c) if channel_dim == 2 else (b, k * c, 4)
    h = torch.randn(*shape, generator=g).requires_grad_(True)
    rows, count, _, _ = masked_counts(mask, c, 4, 0.1, torch.float64)
    weight = (torch.rand(k * c, generator=g) + 0.5).requires_grad_(True) if affine else None
    bias = torch.randn(k * c, generator=g).requires_grad_(True) if affine else None

    # Execute and Assert: the hand-written backward against central differences of the forward
    assert torch.autograd.gradcheck(lambda *a: MaskedBatchNorm.apply(*a, channel_dim)[0],
                                    (h, rows, count, weight, bias, 1e-5))


def test_a_forwards_counts_are_computed_once_per_layer_shape(monkeypatch, float64_default):
    # Prepare: resnet20's 19 batch norms come in three shapes (16, 32 and 64 channels at 8, 4 and 2 pixels here)
    model = model_of("resnet20", norm="batch")
    params = {name: p.unsqueeze(0).expand(2, *p.shape) for name, p in model.named_parameters()}
    x = torch.randn(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    calls = []
    real = masked_counts
    monkeypatch.setattr("fedscape.models.layers.masked_counts",
                        lambda *a: calls.append(a[1:3]) or real(*a))

    # Execute
    norm = StackedNorm(mask, None)
    logits = model.forward_stacked(params, x, norm=norm)

    # Assert: every layer asked (19), three computed, and the client with a padded row got its own logits for it
    assert len(calls) == 19 and len(norm.counts) == 3
    assert logits.shape == (2, 3, 10)
    alone = model.forward_stacked({n: p[1:] for n, p in params.items()}, x[1:, :2], norm=StackedNorm(None, None))
    torch.testing.assert_close(logits[1, :2], alone[0], rtol=TOL64, atol=TOL64)


def test_without_a_mask_the_stacked_batch_norm_is_torchs_over_the_grouped_channels(float64_default):
    # Prepare: full batches for 2 clients
    k, b, c = 2, 4, 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(k, b, c, 2, 2, generator=g)
    weight, bias = torch.rand(k, c, generator=g), torch.randn(k, c, generator=g)
    stats = (torch.zeros(k, c), torch.ones(k, c))
    masked_stats = (torch.zeros(k, c), torch.ones(k, c))
    grouped = x.transpose(0, 1).reshape(b, k * c, 2, 2)

    # Execute: torch's batch norm (no mask) and the masked form with every row real
    plain = stacked_batch_norm(grouped, k, weight, bias, 1e-5, 0.1, None, *stats)
    masked = stacked_batch_norm(grouped, k, weight, bias, 1e-5, 0.1, torch.ones(k, b), *masked_stats)

    # Assert
    torch.testing.assert_close(plain, masked, rtol=TOL64, atol=TOL64)
    for s, m in zip(stats, masked_stats, strict=True):
        torch.testing.assert_close(s, m, rtol=TOL64, atol=TOL64)
        assert (s - torch.tensor(float(s is stats[1]))).abs().max() > 1e-3  # the statistics moved


@pytest.mark.parametrize(("name", "norm"), [("resnet20", "batch"), ("resnet20", "group"), ("resnet20", "none"),
                                          ("resnet56_bottleneck", "batch"), ("resnet56_bottleneck", "group"),
                                          ("resnet18", "group"), ("resnet18", "batch")])
def test_resnet_forward_stacked_equals_each_clients_forward(name, norm, grouped_format, pointwise, float64_default):
    # Prepare: 3 clients with their own parameters and running statistics, in training mode. ResNet18's last stage
    # sees 16x16 images at 2x2 (at 8x8 it is 1x1, and a batch norm over 2 rows x 1 value is so ill-conditioned that
    # the stem's gradients move by 1e-7 of their size in float64 with the order of the sums)
    torch.manual_seed(0)
    size = 16 if name == "resnet18" else 8
    model = build_model(name, num_classes=10, in_channels=3, image_size=size, norm=norm).train()
    clients = []
    for _ in range(3):
        client = build_model(name, num_classes=10, in_channels=3, image_size=size, norm=norm).train()
        with torch.no_grad():
            for b in client.buffers():
                b.uniform_(0.5, 1.5)
        clients.append(client)
    params = {n: torch.stack([dict(cl.named_parameters())[n].detach() for cl in clients]).requires_grad_(True)
              for n, _ in model.named_parameters()}
    running = {n: torch.stack([dict(cl.named_buffers())[n] for cl in clients]).clone()
               for n, _ in model.named_buffers()}
    x = torch.randn(3, 4, 3, size, size, generator=torch.Generator().manual_seed(1))
    lengths = [4, 2, 3]
    mask = (torch.arange(4) < torch.tensor(lengths).unsqueeze(1)).double()
    weights = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(2)) * mask.unsqueeze(-1)

    # Execute
    got = model.forward_stacked(params, x, norm=StackedNorm(mask, running))
    (got * weights).sum().backward()

    # Assert: each client's logits, parameter gradients and running statistics after its own forward
    for i, (client, n) in enumerate(zip(clients, lengths, strict=True)):
        ref = client(x[i, :n])
        (ref * weights[i, :n]).sum().backward()
        torch.testing.assert_close(got[i, :n], ref, rtol=TOL64, atol=TOL64)
        for name, p in client.named_parameters():
            torch.testing.assert_close(params[name].grad[i], p.grad, rtol=TOL64, atol=TOL64)
        for name, b in client.named_buffers():
            torch.testing.assert_close(running[name][i], b, rtol=TOL64, atol=TOL64)
    assert (got[0] - got[1]).abs().max() > 1e-2


@pytest.mark.parametrize(("device_type", "expected"), [("cuda", "vectorized"), ("cpu", "sequential")])
@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet56_bottleneck"])
def test_auto_vectorises_resnets_with_batch_norm_where_faster(name, device_type, expected, caplog):
    model = build_model(name, num_classes=10, in_channels=3, image_size=32, norm="batch")

    with caplog.at_level("INFO", logger="fedscape.train"):
        got = resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(), device_type=device_type)

    # Assert: exact for every vectorised algorithm; on a CPU kept sequential for speed alone (measured slower there)
    assert got == expected
    assert vectorization_blocker(model, make_strategy("fedavg")) is None
    assert vectorization_blocker(model, make_strategy("fedsam")) is None
    assert ("forward_stacked is not known to train faster" in caplog.text) == (device_type == "cpu")


class PlainBatchNormNet(nn.Module):
    """A batch-norm model without a stacked forward (vectorised training would run it under vmap)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = norm
        self.classifier = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.conv(x)).mean((2, 3)))


class ScaledNet(PlainBatchNormNet):
    """A model with a floating buffer that is no batch norm's running statistic."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.register_buffer("scale", torch.ones(1))


def cumulative_resnet() -> ResNet:
    model = small_resnet()
    model.stem_norm.momentum = None  # a cumulative average needs a per-client batch count
    return model


@pytest.mark.parametrize(("make", "match"), [
    (lambda: PlainBatchNormNet(BatchNorm2d(4)), "batch norm \\(norm\\) but no stacked forward"),
    (lambda: PlainBatchNormNet(nn.BatchNorm2d(4, track_running_stats=False)), "batch norm \\(norm\\)"),
    (ScaledNet, "floating buffers \\(scale\\)"),
    (cumulative_resnet, "stem_norm averages its statistics cumulatively"),
], ids=["bn-without-forward_stacked", "bn-without-running-stats", "other-buffer", "cumulative-bn"])
def test_what_still_cannot_vectorise_falls_back_with_its_reason(make, match, caplog):
    model = make()

    with caplog.at_level("INFO", logger="fedscape.train"):
        auto = resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(), device_type="cuda")
    with pytest.raises(ValueError, match=match):
        resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(client_parallel="vectorized"))

    assert auto == "sequential"
    assert "client training: sequential" in caplog.text


def test_batch_norm_under_vmap_is_refused():
    # the vmapped forward would take padded rows into each client's statistics
    data = shard_data([4, 2])

    with pytest.raises(ValueError, match="batch norm"):
        VectorizedTrainer(small_resnet(), data, make_strategy("fedavg"), TrainConfig(), stacked_forward=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float64_batch_norm_round_equals_sequential(float64_default):
    # Prepare: the padded steps of SIZES on the card, in float64 (exact by construction, on cuDNN's kernels too)
    data = shard_data(SIZES)
    data = type(data)(data.x_train.cuda(), data.y_train.cuda(), [ix.cuda() for ix in data.client_indices],
                      data.x_test.cuda(), data.y_test.cuda())
    model = small_resnet().cuda()

    # Execute
    _, _, seq, vec = both_rounds(model, data, TrainConfig(**CFG))

    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert v.params.device.type == "cuda"
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert relative(v.buffers, s.buffers) <= TOL64
