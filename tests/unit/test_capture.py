"""Captured local steps (fedscape.fl.capture): which steps may be captured, the check at capture, and that a captured
client trains exactly as an eager one.

On a CPU the machinery around the graphs runs with a stand-in graph maker of `torch.cuda.make_graphed_callables`'
signature: its warm-up and capture passes move batch-norm statistics as torch's do, and its replay is the eager
forward (exact), the eager forward scaled (inexact) or an error (a model capture refuses), returning its output and
gradients in static memory that the next replay overwrites, as a CUDA graph does. The tests marked CUDA use torch's
own maker.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers.configs import SCHEMA, TINY
from helpers.synthetic import shard_data
from torch import nn

from fedscape.core import manifest
from fedscape.core.config import ConfigError
from fedscape.fl.capture import SPREAD_SLACK, CapturedForward, capture_blocker, make_capture, resolve_capture
from fedscape.fl.engine import run_federated
from fedscape.fl.sequential import SequentialTrainer, local_train
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.loss import mean_loss
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.plan.workflow import check_config

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def bn_model(seed: int = 0) -> nn.Module:
    """cnn_small with batch norm on digits-shaped inputs: running statistics and a step counter in its buffers."""
    torch.manual_seed(seed)
    return build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, norm="batch")


def with_dropout() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


class _RoundingNoise(nn.Module):
    """Adds noise of a float32 rounding's size to its input, drawn from a numpy generator that the check cannot
    rewind: a pass that differs from the last as a nondeterministic cuDNN kernel's does."""

    def __init__(self, seed: int, size: float = 1e-6):
        super().__init__()
        self.rng, self.size = np.random.default_rng(seed), size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_numpy(self.rng.standard_normal(x.shape).astype(np.float32)) * self.size


def with_rounding_noise(seed: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), _RoundingNoise(seed), nn.ReLU(), nn.Linear(32, 10))


class _StaticReplay:
    """A 'graph' of one module as `torch.cuda.make_graphed_callables` leaves it, less the graph: static memory. The
    replayed forward writes its output into one static tensor and returns a detached alias of it; the backward writes
    the parameters' gradients into static tensors and returns aliases of them, which autograd hands to `p.grad`. So a
    second replay overwrites what the first returned, and code that keeps a replay's output or a parameter's
    gradient past the next pass reads the wrong numbers, as it would on a GPU."""

    def __init__(self, module: nn.Module, forward: Callable, scale: float):
        self.params, self.forward, self.scale = tuple(module.parameters()), forward, scale
        self.static_out: torch.Tensor | None = None
        self.static_grads: list[torch.Tensor | None] = [None] * len(self.params)
        self.last: torch.Tensor | None = None  # the eager output behind the static one (its graph, for backward)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Replayed.apply(self, x, *self.params)


class _Replayed(torch.autograd.Function):
    """One replay of a `_StaticReplay`, behind one autograd node as torch's graphed callable is."""

    @staticmethod
    def forward(ctx, replay: _StaticReplay, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.replay = replay
        with torch.enable_grad():
            out = replay.forward(x)
            replay.last = out * replay.scale if replay.scale != 1.0 else out
        if replay.static_out is None:
            replay.static_out = torch.empty_like(replay.last)
        replay.static_out.copy_(replay.last.detach())
        return replay.static_out.detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        replay = ctx.replay
        grads = torch.autograd.grad(replay.last, replay.params, grad_out, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                if replay.static_grads[i] is None:
                    replay.static_grads[i] = torch.empty_like(g)
                replay.static_grads[i].copy_(g)
        return None, None, *(None if g is None else replay.static_grads[i].detach() for i, g in enumerate(grads))


def stand_in_maker(scale: float = 1.0, error: str | None = None, calls: list | None = None):
    """A graph maker with make_graphed_callables' signature: 3 warm-up passes and a capture pass of forward and
    backward on the sample (each moves batch-norm statistics, as torch's do), then the module's forward replaced by
    the 'replay' (`_StaticReplay`: the eager forward and backward behind static output and gradient memory), times
    `scale` (not an offset, which cross-entropy does not see); `error`: raised instead, as a capture that fails."""

    def make(module: nn.Module, sample_args: tuple, num_warmup_iters: int = 3, allow_unused_input: bool = False):
        if calls is not None:
            calls.append(tuple(sample_args[0].shape))
        if error is not None:
            raise RuntimeError(error)
        params = tuple(module.parameters())
        for _ in range(num_warmup_iters + 1):
            out = module(*sample_args)
            torch.autograd.grad(out, params, grad_outputs=torch.randn_like(out), allow_unused=allow_unused_input)
        module.forward = _StaticReplay(module, module.forward, scale)
        return module

    return make


def train_clients(model: nn.Module, data, strategy_name: str, cfg: TrainConfig, capture: str | None,
                  maker=None, rounds: int = 2) -> tuple[list, CapturedForward | None]:
    """Every client's local training for `rounds` rounds through a SequentialTrainer (its capture from `cfg`, with the
    stand-in maker on a CPU): the clients' results per round and the trainer's capture."""
    cfg = dataclasses.replace(cfg, capture=capture) if capture else cfg
    strategy = make_strategy(strategy_name)
    flat = FlatParams(model)
    strategy.setup(data.num_clients, flat.vector.numel(), flat.vector.device, model=model, seed=0)
    trainer = SequentialTrainer(model, flat, data, strategy, cfg)
    if trainer.capture is None and maker is not None:  # on a CPU: the trainer's capture with the stand-in maker
        trainer.capture = CapturedForward(model, cfg.batch_size, strict=cfg.capture == "cuda_graph",
                                          make_graphed=maker)
    params, buffers = flat.get(), flatten_buffers(model)
    out = []
    for t in range(1, rounds + 1):
        results = trainer.train_round(params, buffers, list(range(data.num_clients)), t)
        params = strategy.server_update(params, results)
        buffers = strategy.aggregate_buffers(results)
        out.append(results)
    return out, trainer.capture


def assert_same_results(got: list, expected: list) -> None:
    for round_got, round_expected in zip(got, expected, strict=True):
        for a, b in zip(round_got, round_expected, strict=True):
            assert torch.equal(a.params, b.params)
            assert torch.equal(a.buffers, b.buffers)
            assert a.train_loss == b.train_loss and a.num_steps == b.num_steps


# -- which steps may be captured ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "capturable"), [
    ("fedavg", True), ("fedadam", True), ("fedprox", True), ("scaffold", True), ("feddyn", True), ("fednova", True),
    ("fedsam", True), ("fedasam", True),
    ("moon", False), ("mixup", False), ("stochdepth", False), ("gradaug", False), ("fedalign", False),
])
def test_an_algorithm_is_capturable_where_every_pass_is_a_plain_forward(name, capturable):
    # (fedscape.fl.settings.UNCAPTURED_STEPS declares the others, for planning too: tests/unit/test_capture_planning.py)
    assert (capture_blocker(bn_model(), make_strategy(name), "cuda") is None) is capturable


@pytest.mark.parametrize(("model", "strategy", "device_type", "reason"), [
    ("cnn_small", "fedavg", "cpu", "CUDA graphs need a CUDA device, not cpu"),
    ("cnn_small", "moon", "cuda", "moon's local objective calls the model in its own way"),
    ("dropout", "fedavg", "cuda", None),  # a replay draws as the eager pass does: the check decides
    ("cnn_small", "fedavg", "cuda", None),
    ("resnet20", "scaffold", "cuda", None),
])
def test_capture_blocker_names_why(model, strategy, device_type, reason):
    if model == "dropout":  # no registry model draws random numbers: a user's might
        net = with_dropout()
    else:
        size = 32 if model != "cnn_small" else 8
        net = build_model(model, num_classes=10, in_channels=3 if size == 32 else 1, image_size=size)

    got = capture_blocker(net, make_strategy(strategy), device_type)

    assert got is None if reason is None else reason in got


def test_auto_takes_eager_steps_on_a_cpu_and_cuda_graph_refuses_what_it_cannot_capture(caplog):
    model = bn_model()
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        assert resolve_capture(model, make_strategy("fedavg"), TrainConfig(), "cpu") is False
        assert resolve_capture(model, make_strategy("fedavg"), TrainConfig(capture="eager"), "cuda") is False
        assert resolve_capture(model, make_strategy("fedavg"), TrainConfig(), "cuda") is True
        assert resolve_capture(model, make_strategy("moon"), TrainConfig(), "cuda") is False
    assert "local steps: eager (moon's local objective" in caplog.text
    assert "need a CUDA device" not in caplog.text  # nothing said of eager steps on a CPU, where they are all there is

    with pytest.raises(ValueError, match="capture is 'cuda_graph' but CUDA graphs need a CUDA device, not cpu"):
        make_capture(model, make_strategy("fedavg"), TrainConfig(capture="cuda_graph"), "cpu")
    with pytest.raises(ValueError, match="capture is 'cuda_graph' but gradaug's local objective"):
        make_capture(model, make_strategy("gradaug"), TrainConfig(capture="cuda_graph"), "cuda")
    with pytest.raises(ValueError, match="capture must be one of auto, eager, cuda_graph, got 'graph'"):
        TrainConfig(capture="graph")


def test_the_stand_in_replays_into_static_memory_as_torchs_graphs_do():
    """What makes the CPU tests below mean something for a GPU: a replay overwrites the output and the gradients the
    previous replay returned (FedSAM's two passes a step must use each before the next)."""
    # Prepare
    model = bn_model().train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    stand_in_maker()(model, (x1.clone(),))
    params = list(model.parameters())

    # Execute: two forward passes, then two backward passes, each keeping what the first returned
    out1 = model(x1)
    first_out = out1.clone()
    out2 = model(x2)
    mean_loss(model(x1), y).backward()
    grads1 = [p.grad for p in params]
    first_grads = [t.clone() for t in grads1]
    for p in params:
        p.grad = None
    mean_loss(model(x2), y).backward()

    # Assert: the first pass's output and every gradient now hold the second's numbers
    assert not torch.equal(first_out, out2) and torch.equal(out1, out2)
    assert all(not torch.equal(a, b) and torch.equal(a, p.grad) for a, b, p in zip(grads1, first_grads, params,
                                                                                  strict=True))


# -- the check at capture, and a captured client equal to an eager one ------------------------------------------------

@pytest.mark.parametrize(("strategy", "train"), [
    ("fedavg", {"momentum": 0.9, "weight_decay": 5e-4}),
    ("fedprox", {}),
    ("scaffold", {}),
    ("fedsam", {"nesterov": True, "momentum": 0.9}),
])
def test_a_captured_client_trains_exactly_as_an_eager_one(strategy, train):
    # Prepare: uneven clients (9 and 14 samples at batch 4: full batches replayed, the last of each pass eager)
    data = shard_data([9, 14, 6])
    cfg = TrainConfig(rounds=2, local_epochs=2, batch_size=4, lr=0.05, seed=3, **train)
    calls: list = []

    # Execute
    eager, _ = train_clients(bn_model(), data, strategy, cfg, capture="eager")
    captured, capture = train_clients(bn_model(), data, strategy, cfg, capture=None, maker=stand_in_maker(calls=calls))

    # Assert: the same clients bit for bit (the warm-up's statistics, the check's passes and the random state undone);
    # one capture, of the full batch's shape, and the full batches replayed
    assert_same_results(captured, eager)
    assert capture.on and calls == [(4, 1, 8, 8)]
    full_batches = 2 * 2 * (9 // 4 + 14 // 4 + 6 // 4)  # rounds x epochs x full batches per pass
    passes = 2 if strategy == "fedsam" else 1
    assert capture.replays == passes * full_batches  # the first full batch's too: captured before its step


def test_the_check_leaves_the_model_and_the_random_state_as_they_were(monkeypatch):
    model = bn_model().train()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    before = [t.clone() for t in (*model.parameters(), *model.buffers())]
    rng = torch.get_rng_state()
    capture = CapturedForward(model, 4, make_graphed=stand_in_maker())
    monkeypatch.setattr(manifest, "_NOTES", {})

    capture.prepare(x, y)

    assert capture.on
    assert manifest._NOTES["local_steps"] == {"captured": True, "batch_size": 4, "difference_from_eager": 0.0,
                                              "eager_spread": 0.0}  # the job's record says how its steps ran
    assert all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *model.buffers()), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_an_inexact_replay_is_refused_with_what_the_check_measured(caplog):
    data = shard_data([9, 14])
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=4, lr=0.05, seed=0)
    eager, _ = train_clients(bn_model(), data, "fedavg", cfg, capture="eager", rounds=1)

    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        got, capture = train_clients(bn_model(), data, "fedavg", cfg, None, maker=stand_in_maker(scale=1.001),
                                     rounds=1)

    assert capture.state == "off" and capture.replays == 0
    assert capture.difference[0] > 0 and capture.difference[1] == 0
    assert "local steps: eager (the replayed pass differs from the eager one by up to" in caplog.text
    assert_same_results(got, eager)  # the client trained eagerly: nothing of the refused replay remains


def test_a_replay_within_the_eager_passes_own_spread_is_kept_and_a_wrong_one_refused():
    """Where the eager passes differ among themselves (a nondeterministic kernel), an exact replay is one more draw
    of that noise: compared with one repeat alone it would be refused about every other time."""
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    kept, ratios = [], []
    for seed in range(20):
        # Prepare: a pass with its own rounding noise, replayed exactly by the stand-in
        capture = CapturedForward(with_rounding_noise(seed).train(), 4, make_graphed=stand_in_maker())

        # Execute
        capture.prepare(x, y)

        kept.append(capture.on)
        ratios.append(capture.difference[0] / capture.difference[1])
    wrong = CapturedForward(with_rounding_noise(0).train(), 4, make_graphed=stand_in_maker(scale=1.001))
    wrong.prepare(x, y)

    # Assert: every exact replay kept, though some differ by more than the spread the repeats measured
    assert all(kept) and max(ratios) > 1 and max(ratios) <= SPREAD_SLACK
    assert all(0 < d for d in wrong.difference)
    assert wrong.state == "off" and wrong.difference[0] > 10 * SPREAD_SLACK * wrong.difference[1]


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_pass_with_nan_in_it_is_never_replayed(scale):
    # Prepare: a model whose loss is NaN (one NaN weight), so that the eager passes cannot measure their spread; a
    # replay that is exact (scale 1) or wrong (scale 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).train()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    capture = CapturedForward(model, 4, make_graphed=stand_in_maker(scale=scale))

    # Execute
    capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))

    # Assert: eager steps, whatever the replay (an infinite spread accepted the wrong replay before)
    assert capture.state == "off" and not math.isfinite(capture.difference[1])


def test_a_dropout_replay_draws_the_eager_passs_mask():
    # Prepare: a model that draws random numbers in every training pass
    model = with_dropout().train()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    capture = CapturedForward(model, 4, make_graphed=stand_in_maker())

    # Execute
    capture.prepare(x, y)

    # Assert: the check restored the random state before each pass, so the replay's mask was the eager pass's
    assert capture.on and capture.difference == (0.0, 0.0)


@pytest.mark.parametrize(("maker", "message"), [
    (stand_in_maker(scale=1.001), "capture is 'cuda_graph' but the replayed pass differs from the eager one"),
    (stand_in_maker(error="operation not permitted when stream is capturing"),
     "capturing the model failed: operation not permitted when stream is capturing"),
])
def test_cuda_graph_insists(maker, message):
    model = bn_model().train()
    capture = CapturedForward(model, 4, strict=True, make_graphed=maker)

    with pytest.raises(RuntimeError, match=message):
        capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))

    assert capture.state == "off" and "forward" not in model.__dict__


def test_a_failed_capture_under_auto_trains_eagerly(caplog):
    data = shard_data([9, 14])
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=4, lr=0.05, seed=0)
    eager, _ = train_clients(bn_model(), data, "fedavg", cfg, capture="eager", rounds=1)

    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        got, capture = train_clients(bn_model(), data, "fedavg", cfg, None, maker=stand_in_maker(error="sync"),
                                     rounds=1)

    assert capture.state == "off" and "capturing the model failed: sync" in caplog.text
    assert_same_results(got, eager)


def test_a_replay_that_fails_in_the_check_counts_no_replay():
    """The check's replayed pass is counted by the dispatch before the graphs run; where they raise, the capture is
    off and meta.json's `replays` must say that none served a step."""
    # Prepare: a maker whose installed forward raises, as a replay that fails on the card
    def maker(module, sample_args, num_warmup_iters=3, allow_unused_input=False):
        def broken(x):
            raise RuntimeError("replay failed")
        module.forward = broken
        return module

    model = bn_model().train()
    capture = CapturedForward(model, 4, make_graphed=maker)

    # Execute
    capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))

    # Assert
    assert capture.state == "off" and capture.summary() == {"graphs": 0, "replays": 0, "refusals": 1}


@pytest.mark.parametrize(("maker", "strict", "recovered"), [
    ("torch", False, ["pool"]),  # torch's maker, its capture failing: recovered with the pool it captured into
    ("torch", True, ["pool"]),  # (before the error where cuda_graph insists)
    (stand_in_maker(error="sync"), False, [None]),  # a stand-in failing: no pool of ours
    (stand_in_maker(), False, []),  # a capture kept: nothing to recover from
    (stand_in_maker(scale=1.001), False, []),  # one the check refused: torch's capture ended well
], ids=["torch-failing", "torch-failing-insisted", "stand-in-failing", "kept", "refused-by-the-check"])
def test_a_failed_capture_is_recovered_from_once_with_its_pool(monkeypatch, maker, strict, recovered):
    # Prepare: torch's maker replaced by a stand-in failing as a capture of a forward that syncs with the host does,
    # taking the pool it is given; the recovery recorded
    pools, calls = [], []

    def make_graphed_callables(module, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
        pools.append(pool)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", make_graphed_callables)
    monkeypatch.setattr("fedscape.fl.capture.recover_from_failed_capture", lambda *a: calls.append(a))
    model = bn_model().train()
    capture = CapturedForward(model, 4, strict=strict, make_graphed=None if maker == "torch" else maker)

    # Execute
    if strict:
        with pytest.raises(RuntimeError, match="capturing the model failed"):
            capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    else:
        capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))

    # Assert: torch's maker captured into the capture's own pool, and each failure was recovered from once, on the
    # batch's device, with that pool
    if maker == "torch":
        assert pools == [capture.pool] and capture.pool is not None
    assert calls == [(torch.device("cpu"), capture.pool if p == "pool" else p) for p in recovered]


def test_only_training_passes_of_the_captured_shape_replay():
    model = bn_model().train()
    capture = CapturedForward(model, 4, make_graphed=stand_in_maker())
    capture.prepare(torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,)))  # not a full batch: nothing captured
    assert capture.state == "pending"
    capture.prepare(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    assert capture.on

    model(torch.randn(4, 1, 8, 8))
    model(torch.randn(3, 1, 8, 8))  # another shape
    with torch.no_grad():  # batch-norm recomputation
        model(torch.randn(4, 1, 8, 8))
    model.eval()
    model(torch.randn(4, 1, 8, 8))  # evaluation
    model.train()
    model(torch.randn(4, 1, 8, 8))
    assert capture.replays == 2

    capture.close()
    assert "forward" not in model.__dict__ and not capture.on


def test_the_engine_gives_the_model_its_forward_back(monkeypatch):
    data = shard_data([9, 14])
    model = bn_model()
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=4, lr=0.05, seed=0, client_parallel="sequential")
    seen = {}
    original = CapturedForward.__init__

    def with_stand_in(self, model, batch_size, strict=False, make_graphed=None):
        original(self, model, batch_size, strict, stand_in_maker())
        seen["capture"] = self

    monkeypatch.setattr(CapturedForward, "__init__", with_stand_in)
    monkeypatch.setattr("fedscape.fl.capture.capture_blocker", lambda *a: None)  # as on a GPU

    run_federated(model, data, make_strategy("fedavg"), cfg)

    assert seen["capture"].replays > 0 and "forward" not in model.__dict__


# -- the setting -------------------------------------------------------------------------------------------------------

def test_capture_cuda_graph_on_a_cpu_device_is_refused_at_planning():
    config = copy.deepcopy(TINY)
    config["training"] = {**config.get("training", {}), "capture": "cuda_graph", "device": "cpu"}

    with pytest.raises(ConfigError, match="capture: cuda_graph replays CUDA graphs, but device is cpu"):
        check_config(config, SCHEMA)


def test_a_wrong_capture_mode_is_refused_by_the_schema():
    config = copy.deepcopy(TINY)
    config["training"] = {**config.get("training", {}), "capture": "graphs"}

    with pytest.raises(ConfigError, match="capture"):
        check_config(config, SCHEMA)



@pytest.mark.parametrize(("ended", "released"), [
    (None, [(0, (0, 7))]),  # torch 2.11: the recovery ends the recording, and drops the failed capture's reference
    ("endAllocatePool: not currently recording to mempool_id", []),  # a torch that did both itself
    ("some other failure", []),  # the pool's state unknown: left alone
], ids=["recording-ended-here", "ended-by-torch", "ending-failed"])
def test_the_recovery_releases_a_failed_capture_s_pool_only_where_it_ended_its_recording(monkeypatch, ended, released):
    # Prepare: torch's private calls recorded; ending the recording raises as `ended` says, or returns
    from fedscape.fl import capture as capture_mod

    ends, releases = [], []

    def end(index, pool):
        ends.append((index, pool))
        if ended:
            raise RuntimeError(ended)

    monkeypatch.setattr(capture_mod, "END_POOL_RECORDING", end)
    monkeypatch.setattr(capture_mod, "RELEASE_POOL", lambda index, pool: releases.append((index, pool)))

    # Execute: on card 0 (without one here, the throwaway capture that follows fails and is logged)
    capture_mod.recover_from_failed_capture(torch.device("cuda", 0), (0, 7))

    # Assert
    assert ends == [(0, (0, 7))] and releases == released

# -- on a GPU: torch's own graphs --------------------------------------------------------------------------------------

@CUDA
@pytest.mark.parametrize(("model_name", "options", "strategy"), [
    ("resnet20", {"norm": "batch"}, "fedavg"),
    ("resnet20", {"norm": "batch"}, "scaffold"),
    ("resnet20", {"norm": "group"}, "fedsam"),
    ("cnn_small", {}, "fedprox"),
])
def test_on_a_gpu_captured_clients_equal_eager_ones_bit_for_bit(model_name, options, strategy, monkeypatch):
    from fedscape.models.device import use_precision

    # cuDNN's deterministic algorithms only: two eager runs of a nondeterministic one differ too (which the check at
    # capture allows for, but two whole runs compared bit for bit do not)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.manual_seed(0)
    size, channels = (32, 3) if model_name == "resnet20" else (8, 1)
    g = torch.Generator().manual_seed(0)
    n = [40, 23]
    x = torch.randn(sum(n), channels, size, size, generator=g).cuda()
    y = torch.randint(0, 10, (sum(n),), generator=g).cuda()
    idx = [torch.arange(0, n[0]).cuda(), torch.arange(n[0], sum(n)).cuda()]
    from fedscape.data.federated import FederatedData

    data = FederatedData(x, y, idx, x[:8], y[:8])
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=16, lr=0.05, momentum=0.9, seed=0)
    model = build_model(model_name, num_classes=10, in_channels=channels, image_size=size, **options).cuda()
    with use_precision("fp32", "cuda"):
        eager, _ = train_clients(copy.deepcopy(model), data, strategy, cfg, capture="eager")
        captured, capture = train_clients(copy.deepcopy(model), data, strategy, cfg, capture="cuda_graph")

    assert capture.on and capture.replays > 0
    assert_same_results(captured, eager)


@CUDA
def test_on_a_gpu_a_dropout_replay_draws_what_the_eager_pass_draws(monkeypatch):
    # Prepare: CUDA graphs take the generator's offset at each replay (torch's graph-safe RNG)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.manual_seed(0)
    model = with_dropout().cuda().train()
    x, y = torch.randn(16, 1, 8, 8, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    capture = CapturedForward(model, 16)

    # Execute
    capture.prepare(x, y)

    # Assert: the replay's loss, gradients and buffers are the eager pass's bit for bit
    assert capture.on and capture.difference[0] == 0.0


class _HostRead(nn.Module):
    """Reads a value on the host while a CUDA graph is captured (not permitted: the capture fails), where `read`."""

    def __init__(self, read: bool):
        super().__init__()
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.read and torch.cuda.is_current_stream_capturing():
            x.sum().item()
        return x


@CUDA
@pytest.mark.parametrize("read", [True, False], ids=["failing", "captured"])
def test_on_a_gpu_a_failed_capture_leaves_random_draws_and_later_captures_working(read, monkeypatch):
    # Prepare: a dropout model whose capture fails (a host read in its forward), or not
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), _HostRead(read), nn.Dropout(0.5), nn.Linear(32, 10))
    model = model.cuda().train()
    x, y = torch.randn(16, 1, 8, 8, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    capture = CapturedForward(model, 16)

    # Execute: the capture, then eager draws from the CUDA generator (torch 2.11 refused them after a failed capture
    # until a capture succeeded), then another model's capture
    capture.prepare(x, y)
    drawn = torch.rand(1, device="cuda")
    mean_loss(model(x), y).backward()
    again = CapturedForward(with_dropout().cuda().train(), 16)
    again.prepare(x, y)
    # and a plain capture (torch 2.11 leaves the failed capture's own pool recording in its host allocator, where
    # nothing ends it: a capture into that pool raises "already recording to mempool_id", and CapturedForward
    # captures nothing after a failure)
    scratch, graph = torch.zeros(1, device="cuda"), torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        scratch.add_(1)
    graph.replay()

    # Assert
    assert capture.on is not read and capture.refusals == int(read)
    assert 0.0 <= drawn.item() < 1.0
    assert again.on and again.difference[0] == 0.0
    assert scratch.item() == 1.0  # (a capture records the kernels without running them: the replay's one add)


def test_local_train_takes_a_capture_argument():
    # The sequential reference takes no capture by default: its eager steps are unchanged.
    data = shard_data([9])
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=4, lr=0.05, seed=0)
    model = bn_model()
    flat = FlatParams(model)
    start = flat.get()

    plain, _ = local_train(model, flat, start, flatten_buffers(model), data, 0, 1, make_strategy("fedavg"), cfg)
    model2 = bn_model()
    flat2 = FlatParams(model2)
    capture = CapturedForward(model2, 4, make_graphed=stand_in_maker())
    captured, _ = local_train(model2, flat2, start, flatten_buffers(model2), data, 0, 1, make_strategy("fedavg"), cfg,
                              capture=capture)

    assert torch.equal(plain.params, captured.params) and capture.replays == 2  # 2 full batches, 1 partial
