"""Group norm in the stacked sub-network passes (GradAug's per-client widths, FedAlign's slimmed last stage): each
client's groups over its own kept channels, as its sliced sequential forward normalises them, so that group-norm
ResNets train both algorithms stacked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.synthetic import shard_data
from helpers.vectorized import both_rounds, model_of
from torch import nn

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.layers import sliced_norm, sliced_stacked_norm, slim_channels, width_keep
from fedscape.models.resnets import ResNet
from fedscape.plan.train import planned_client_path, stacked_reasons

TOL64 = 1e-10  # float64: the two paths differ by the order of float64 operations only
TOL_NORM = 1e-12  # one norm in float64, to float64 rounding (1.3e-15 seen)
SIZES = [21, 9, 5, 14]  # batch 8: padded last batches, unequal step counts
CFG = {"local_epochs": 1, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3,
       "augment": "crop_flip", "nesterov": True}
GARBAGE = 1e6  # what a client's channels past its own width hold before `width_keep` zeroes them


def two_groups_resnet() -> ResNet:
    """A ResNet of 16 and 32 channels in 2 groups each (8 and 16 channels): the widths the slimming keeps (multiples
    of 8) cut the second stage's groups."""
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (16, 32), norm="group", max_groups=2)


@pytest.mark.parametrize(("groups", "channels", "affine", "widths", "torch_calls"), [
    (4, 32, True, [0.5, 0.5, 0.5], 1),  # 16 of 32 in groups of 8: whole groups, one torch group norm
    (4, 64, True, [0.6, 0.6, 0.6], 2),  # 40 of 64 in groups of 16: two whole, one half (FedAlign's one width)
    (1, 16, True, [0.1, 0.1], 1),  # 9 of 16 in one group of 16: the partial group alone
    (4, 32, True, [0.5, 0.8, 0.3], 1),  # 16, 24, 16 in groups of 8: whole groups each, a cut one normalised alone
    (4, 64, True, [0.6, 0.8, 0.3], 0),  # 40, 48, 16 in groups of 16: each client's own partial or cut groups
    (4, 64, False, [0.6, 0.8, 0.3], 0),
    (8, 16, True, [0.1, 0.5, 0.2, 0.15], 0),  # resnet20's first stage below width 0.25: 9, 8, 9, 9 in pairs
], ids=["one-width-whole", "one-width-partial", "one-width-within-a-group", "own-widths-whole", "own-widths-partial",
        "own-widths-no-affine", "resnet20-narrow"])
def test_the_stacked_group_norm_is_each_clients_sliced_one(groups, channels, affine, widths, torch_calls,
                                                          grouped_format, monkeypatch, float64_default):
    # Prepare: K clients' inputs at the most channels any keeps, the channels a client's width cuts holding large
    # values (a garbage channel in a kept one's statistics would move it by about GARBAGE); each client's weights
    g = torch.Generator().manual_seed(0)
    norm = nn.GroupNorm(groups, channels, affine=affine)
    k, kept = len(widths), [slim_channels(channels, w) for w in widths]
    c = max(kept)
    x = torch.randn(2, k, c, 3, 3, generator=g)
    for i in range(k):
        x[:, i, kept[i]:] = GARBAGE
    h = x.flatten(1, 2).contiguous(memory_format=grouped_format).requires_grad_(True)
    params = {f"n.{p}": torch.randn(k, channels, generator=g).requires_grad_(True)
              for p in (("weight", "bias") if affine else ())}
    upstream = torch.randn(2, k * c, 3, 3, generator=g)
    calls = []
    group_norm = F.group_norm

    def counted(*args, **kwargs):
        calls.append(args[1])
        return group_norm(*args, **kwargs)

    monkeypatch.setattr(F, "group_norm", counted)

    # Execute: the norm, then each client's channels past its own zeroed, as the stacked width forwards do
    out = width_keep(widths, k)(sliced_stacked_norm(norm, params, "n", h, k, None, widths), channels)
    grads = torch.autograd.grad((out * upstream).sum(), [h, *params.values()])

    # Assert: client i's kept channels and their gradients as its own sliced forward computes them; nothing of its cut
    # channels, in value or gradient; the form taken
    assert len(calls) == torch_calls
    outs, upstreams = out.unflatten(1, (k, c)), upstream.unflatten(1, (k, c))
    h_grads = grads[0].unflatten(1, (k, c))
    for i in range(k):
        with torch.no_grad():
            for name, p in norm.named_parameters():
                p.copy_(params[f"n.{name}"][i])
        own = x[:, i, : kept[i]].clone().requires_grad_(True)
        expected = sliced_norm(norm, own, False)
        own_grads = torch.autograd.grad((expected * upstreams[:, i, : kept[i]]).sum(), [own, *norm.parameters()])
        torch.testing.assert_close(outs[:, i, : kept[i]], expected, rtol=TOL_NORM, atol=TOL_NORM)
        torch.testing.assert_close(h_grads[:, i, : kept[i]], own_grads[0], rtol=TOL_NORM, atol=TOL_NORM)
        for grad, own_grad in zip(grads[1:], own_grads[1:], strict=True):
            torch.testing.assert_close(grad[i, : kept[i]], own_grad[: kept[i]], rtol=TOL_NORM, atol=TOL_NORM)
            assert not grad[i, kept[i]:].any()
        assert not outs[:, i, kept[i]:].any() and not h_grads[:, i, kept[i]:].any()


def test_the_stacked_group_norm_refuses_a_tensor_its_widths_did_not_slice():
    # Prepare: 24 channels per client where the widths keep at most 16 of 32
    params = {"n.weight": torch.ones(2, 32), "n.bias": torch.zeros(2, 32)}

    # Execute / Assert
    with pytest.raises(ValueError, match="h holds 24 channels per client, not the 16"):
        sliced_stacked_norm(nn.GroupNorm(4, 32), params, "n", torch.zeros(1, 48, 2, 2), 2, None, [0.5, 0.3])


@pytest.mark.parametrize(("make", "algorithm", "hparams"), [
    (lambda: model_of("resnet20", norm="group"), "gradaug", {}),  # whole groups of 2, 4 and 8 channels
    (lambda: model_of("resnet20", norm="group"), "gradaug", {"min_width": 0.1}),  # 9 or 8 of 16 in pairs
    (two_groups_resnet, "gradaug", {"min_width": 0.5, "num_subnets": 3}),  # 16, 24 or 32 in groups of 16
    (lambda: model_of("resnet20", norm="group"), "fedalign", {"mu": 0.5, "width": 0.8}),  # 48 of 64 in groups of 8
    (two_groups_resnet, "fedalign", {"mu": 0.5, "width": 0.6, "clip_grad_norm": 1.0}),  # 24 of 32 in groups of 16
], ids=["gradaug-resnet20", "gradaug-resnet20-narrow", "gradaug-cut-groups", "fedalign-resnet20",
        "fedalign-cut-groups"])
def test_float64_stacked_group_norm_round_equals_sequential(make, algorithm, hparams, float64_default):
    # Prepare
    data = shard_data(SIZES)
    cfg = TrainConfig(**CFG)

    # Execute
    start, _, seq, vec = both_rounds(make(), data, cfg, algorithm, hparams)

    # Assert: the same clients and losses, moved
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        assert s.train_loss == pytest.approx(v.train_loss, abs=TOL64)
        assert (s.params - start).abs().max().item() > 1e-3


@pytest.mark.parametrize("algorithm", ["gradaug", "fedalign"])
@pytest.mark.parametrize(("model", "options"), [("resnet20", {"norm": "group"}), ("resnet18", {})],
                         ids=["resnet20-group", "resnet18"])
def test_auto_stacks_group_norm_resnets_on_a_gpu_and_planning_says_so(algorithm, model, options):
    # Prepare: the built model for the train job; what planning reads without torch
    net = model_of(model, **options)
    config = {"datasets": {"cifar10": {}}, "model_options": {model: options}}
    training = {"client_parallel": "auto", "optimizer": "sgd"}

    # Execute
    trained = resolve_client_parallel(net, make_strategy(algorithm), TrainConfig(), device_type="cuda")
    reasons = stacked_reasons(config, "cifar10", model, algorithm, {}, training, f"algorithm {algorithm}")
    planned = planned_client_path(config, "cifar10", model, algorithm, {}, training, f"algorithm {algorithm}")

    # Assert: the train job stacks its clients, and planning has no reason to think otherwise
    assert trained == "vectorized"
    assert reasons == []
    assert planned == ("vectorized", "stacked (client_parallel auto, on a GPU)")
