"""Client-side local training: optimisers (SGD unchanged, AdamW), lr schedules, local steps, unequal local work."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import SCHEMA, TINY
from helpers.resume import killed_after_round
from helpers.synthetic import mlp, shard_data
from torch import nn

from fedscape.core.config import ConfigError
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.data.datasets import augment_batch
from fedscape.data.federated import FederatedData
from fedscape.fl.engine import run_federated
from fedscape.fl.local import batch_order, client_generator, layer_seed, step_batches
from fedscape.fl.schedule import UniformWork, effective_steps, lr_factor, step_lrs, update_weight, work_amounts
from fedscape.fl.sequential import SequentialTrainer, local_train
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import CheckpointError
from fedscape.models.params import FlatParams, flatten_params
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.report import local_work
from fedscape.plan.train import run_training, train_settings
from fedscape.plan.workflow import check_config
from fedscape.report.cost import cost_table
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

# -- learning-rate schedules -----------------------------------------------------------------------------------------

def test_cosine_over_local_steps_matches_hand_computation():
    # 6 steps, warm-up 2: lr 0.1 * [1/2, 2/2], then 0.5 (1 + cos(pi j / 4)) for j = 0..3
    expected = [0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05,
                0.1 * 0.5 * (1 + math.cos(3 * math.pi / 4))]

    got = step_lrs(0.1, "cosine", "local_steps", 2, rounds=10, round_=7, num_steps=6)

    assert got == pytest.approx(expected, abs=1e-15)
    assert got[-1] > 0  # the last step still moves


def test_cosine_over_rounds_is_smooth_within_rounds():
    # 4 rounds, warm-up 1 round, 2 steps per round: positions 0, 0.5 | 1, 1.5 | 2, 2.5 | 3, 3.5
    per_round = [step_lrs(1.0, "cosine", "rounds", 1.0, rounds=4, round_=t, num_steps=2) for t in range(1, 5)]

    assert per_round[0] == pytest.approx([0.5, 1.0])  # (0 + 1/2) / 1 and (0.5 + 0.5) / 1
    assert per_round[1] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi * 0.5 / 3))])
    assert per_round[3] == pytest.approx([0.5 * (1 + math.cos(math.pi * 2 / 3)),
                                          0.5 * (1 + math.cos(math.pi * 2.5 / 3))])


@pytest.mark.parametrize(("warmup", "expected"), [(0, [0.2] * 4), (3, [0.2 / 3, 0.4 / 3, 0.2, 0.2])])
def test_constant_schedule_with_and_without_warm_up(warmup, expected):
    assert step_lrs(0.2, "constant", "local_steps", warmup, rounds=1, round_=1, num_steps=4) == pytest.approx(expected)


def test_constant_schedule_is_exactly_the_base_lr():
    assert step_lrs(0.01, "constant", "rounds", 0, rounds=3, round_=2, num_steps=5) == [0.01] * 5
    assert lr_factor(0, 1, 10, 0, "constant") == 1.0


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, 1, 10, 0, "linear")


# -- local steps and unequal local work ------------------------------------------------------------------------------

def test_local_steps_cycle_through_seeded_shuffles():
    # 5 samples, batch 2: passes of 2 + 2 + 1; 7 steps = one pass, one pass, and the first batch of a third
    steps = step_batches(5, 2, 7, torch.Generator().manual_seed(4))

    passes = batch_order(5, 2, 3, torch.Generator().manual_seed(4))
    assert [len(b) for b in steps] == [2, 2, 1, 2, 2, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(steps, passes[:7], strict=True))
    assert sorted(torch.cat(steps[:3]).tolist()) == [0, 1, 2, 3, 4]  # each pass covers the data once


@pytest.mark.parametrize(("n", "batch_size", "sizes"), [(5, 2, [2, 2]), (6, 2, [2, 2, 2]), (1, 4, [1]), (3, 4, [3])])
def test_drop_last_leaves_out_each_passes_smaller_last_batch_with_the_same_draws(n, batch_size, sizes):
    # Execute: two passes each way, from the same generator state
    kept = batch_order(n, batch_size, 2, torch.Generator().manual_seed(9))
    dropped = batch_order(n, batch_size, 2, torch.Generator().manual_seed(9), drop_last=True)

    # Assert: full batches only (a client smaller than one batch keeps it), each the batch without drop_last
    assert [len(b) for b in dropped] == sizes * 2
    per_pass = len(kept) // 2
    expected = kept[:len(sizes)] + kept[per_pass:per_pass + len(sizes)]
    assert all(torch.equal(a, b) for a, b in zip(dropped, expected, strict=True))


def test_drop_last_steps_cycle_through_full_batches():
    steps = step_batches(5, 2, 5, torch.Generator().manual_seed(4), drop_last=True)

    assert [len(b) for b in steps] == [2, 2, 2, 2, 2]
    assert len(set(torch.cat(steps[:2]).tolist())) == 4  # within a pass no sample twice


@pytest.mark.parametrize(("n", "batch_size", "drop_last", "per_pass"), [(5, 2, False, 3), (5, 2, True, 2),
                                                                        (1, 4, False, 1), (8, 4, False, 2)])
def test_replacement_draws_full_batches_uniformly_as_many_per_pass_as_shuffle(n, batch_size, drop_last, per_pass):
    # Execute
    drawn = batch_order(n, batch_size, 3, torch.Generator().manual_seed(2), drop_last, "replacement")
    shuffled = batch_order(n, batch_size, 3, torch.Generator().manual_seed(2), drop_last)

    # Assert: as many steps as shuffled passes, each batch_size samples drawn with replacement by the generator
    assert len(drawn) == len(shuffled) == 3 * per_pass
    assert all(len(b) == batch_size for b in drawn)
    generator = torch.Generator().manual_seed(2)
    assert all(torch.equal(b, torch.randint(n, (batch_size,), generator=generator)) for b in drawn)


def test_replacement_repeats_samples_within_a_pass_and_covers_them_in_the_long_run():
    # 1000 steps of 4 from 10 samples: repeats within a pass (impossible when shuffled), every sample ~400 times
    drawn = step_batches(10, 4, 1000, torch.Generator().manual_seed(0), sampling="replacement")
    counts = torch.bincount(torch.cat(drawn), minlength=10)

    assert len(drawn) == 1000 and any(len(set(b.tolist())) < 4 for b in drawn[:50])
    assert int(counts.min()) > 300 and int(counts.max()) < 500  # binomial(4000, 0.1): 400 +- 19 sd


def test_an_unknown_batch_sampling_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="batch_sampling must be one of shuffle, replacement"):
        TrainConfig(rounds=1, batch_sampling="random")


def test_drop_last_trains_on_full_batches_only():
    # Prepare: a client of 10 samples, batch 4, 2 epochs: 3 batches per pass, or 2 with drop_last
    data = shard_data([10])
    model = mlp()
    flat = FlatParams(model)

    # Execute
    out = {drop: local_train(model, flat, flat.get().clone(), torch.zeros(0), data, 0, 1, Strategy(),
                             TrainConfig(rounds=1, local_epochs=2, batch_size=4, lr=0.1, seed=1,
                                         drop_last=drop))[0]
           for drop in (False, True)}

    # Assert
    assert out[False].num_steps == 6 and out[True].num_steps == 4


def test_a_client_takes_exactly_local_steps_steps():
    data = shard_data([5, 40])
    cfg = TrainConfig(rounds=1, local_steps=7, batch_size=4, lr=0.1, seed=1)

    model = mlp()
    flat = FlatParams(model)
    out = [local_train(model, flat, flat.get().clone(), torch.zeros(0), data, c, 1, Strategy(), cfg)[0] for c in (0, 1)]

    assert [r.num_steps for r in out] == [7, 7]  # the small client cycles, the large one does not finish a pass


def test_fixed_per_client_work():
    data = shard_data([8, 8, 8])
    cfg = TrainConfig(rounds=2, local_steps=(1, 3, 6), batch_size=4, lr=0.1, seed=0)
    model = mlp()
    trainer = SequentialTrainer(model, FlatParams(model), data, Strategy(), cfg)

    for round_ in (1, 2):
        results = trainer.train_round(flatten_params(model), torch.zeros(0), [0, 1, 2], round_)
        assert [r.num_steps for r in results] == [1, 3, 6]


def test_drawn_work_is_seeded_per_round_or_once():
    per_round = UniformWork(1, 9, "round")
    once = UniformWork(1, 9, "once")

    rounds = [work_amounts(per_round, 5, t, 20) for t in range(1, 4)]

    assert all(1 <= v <= 9 for r in rounds for v in r)
    assert rounds[0] != rounds[1]  # a new draw every round
    assert rounds[0] == work_amounts(per_round, 5, 1, 20)  # reproducible (and so resumable)
    assert rounds[0] != work_amounts(per_round, 6, 1, 20)  # derived from the run seed
    assert work_amounts(once, 5, 1, 20) == work_amounts(once, 5, 3, 20)  # drawn once for the run
    assert len(set(work_amounts(once, 5, 1, 20))) > 1  # but unequal between clients


def test_uniform_draws_cover_the_range_evenly():
    values = [v for t in range(1, 201) for v in work_amounts(UniformWork(2, 4), 0, t, 30)]  # 6000 draws

    shares = [values.count(v) / len(values) for v in (2, 3, 4)]

    assert set(values) == {2, 3, 4}
    assert shares == pytest.approx([1 / 3] * 3, abs=0.03)  # 5 standard errors of a share


@pytest.mark.parametrize("optimizer", [{"momentum": 0.5},
                                       {"optimizer": "adamw", "lr": 0.01, "keep_optimizer_state": True}],
                         ids=["sgd", "adamw-kept-state"])
def test_a_resumed_run_draws_the_same_work_and_lrs(tmp_path, monkeypatch, optimizer):
    data = shard_data([9, 14, 6])
    cfg = TrainConfig(**{"rounds": 4, "local_steps": {"low": 1, "high": 5}, "batch_size": 4, "lr": 0.1,
                         "lr_schedule": "cosine", "lr_warmup": 1.5, "seed": 2, "client_parallel": "sequential",
                         "participation": 0.67, **optimizer})
    reference = run_federated(mlp(), data, make_strategy("fednova"), cfg)
    killed_after_round(monkeypatch, 2, lambda: run_federated(mlp(), data, make_strategy("fednova"), cfg,
                                                             progress_dir=tmp_path, progress_key="k"))

    resumed = run_federated(mlp(seed=9), data, make_strategy("fednova"), cfg, progress_dir=tmp_path, progress_key="k")

    assert torch.equal(resumed.params, reference.params)


def test_unequal_work_logs_its_spread(caplog):
    data = shard_data([8, 8, 8])
    cfg = TrainConfig(rounds=1, local_steps=(1, 3, 6), batch_size=4, lr=0.1, seed=0)
    model = mlp()

    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        SequentialTrainer(model, FlatParams(model), data, Strategy(), cfg).train_round(
            flatten_params(model), torch.zeros(0), [0, 1, 2], 1)

    assert "round 1 local work (steps per client [1, 3, 6]): min 1, median 3, max 6 steps over 3 clients" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"local_epochs": 2, "local_steps": 3}, "local_epochs .* and local_steps .* are both given"),
        ({"local_steps": 0}, "local_steps must be at least 1"),
        ({"local_epochs": [2, 0]}, "local_epochs as a list needs one integer >= 1"),
        ({"local_steps": {"low": 5, "high": 2}}, "local_steps needs integers 1 <= low <= high"),
        ({"local_steps": {"low": 1, "high": 2, "draw": "epoch"}}, "local_steps.draw must be one of round, once"),
        ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
        ({"adamw_beta2": 1.0}, "adamw_beta1 and adamw_beta2 must be in"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine"),
        ({"lr_schedule_over": "epochs"}, "lr_schedule_over must be one of"),
        ({"lr_warmup": -1}, "lr_warmup must be >= 0"),
        ({"lr_schedule": "cosine", "lr_warmup": 5, "rounds": 5}, "leaves no round"),
    ],
)
def test_train_config_rejects_bad_local_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    # a warm-up longer than what it warms up over never reaches the lr: over rounds, and over a round's local steps
    ({"lr_warmup": 6, "rounds": 5, "lr_schedule_over": "rounds"}, "no step takes the full lr"),
    ({"lr_warmup": 10, "local_steps": 5, "lr_schedule_over": "local_steps"}, "no step takes the full lr"),
    ({"lr_warmup": 10, "local_steps": [5, 9], "lr_schedule_over": "local_steps"}, r"the 9 local steps"),
    ({"lr_warmup": 5, "local_steps": {"low": 1, "high": 5}, "lr_schedule_over": "local_steps",
      "lr_schedule": "cosine"}, "leaves no step for the cosine decay"),
])
def test_a_runs_warm_up_longer_than_its_schedule_is_a_problem(kwargs, message):
    assert re.search(message, TrainConfig(**kwargs).warmup_problem())


@pytest.mark.parametrize("kwargs", [
    {"lr_warmup": 5, "rounds": 5, "lr_schedule_over": "rounds"},  # the last step takes the full lr
    {"lr_warmup": 5, "local_steps": 5, "lr_schedule_over": "local_steps"},
    {"lr_warmup": 4, "local_steps": 5, "lr_schedule_over": "local_steps", "lr_schedule": "cosine"},
    {"lr_warmup": 100, "local_epochs": 1, "lr_schedule_over": "local_steps"},  # steps unknown until the data is
])
def test_a_warm_up_that_reaches_the_lr_is_taken(kwargs):
    assert TrainConfig(**kwargs).warmup_problem() is None


def test_train_config_defaults_to_five_local_epochs():
    cfg = TrainConfig()

    assert (cfg.local_epochs, cfg.local_steps, cfg.work_unit, cfg.equal_work) == (5, None, "epochs", True)
    assert TrainConfig(local_steps=[1, 2]).local_steps == (1, 2)


# -- optimisers ------------------------------------------------------------------------------------------------------

def old_local_sgd(model: nn.Module, data: FederatedData, client: int, round_: int, cfg: TrainConfig) -> torch.Tensor:
    """The client training of fedscape before optimisers and schedules were options (torch SGD, a fixed lr)."""
    generator = client_generator(cfg.seed, round_, client)
    torch.manual_seed(layer_seed(cfg.seed, round_, client))
    idx = data.client_indices[client]
    x, y = data.x_train[idx], data.y_train[idx]
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for b in batch_order(len(idx), cfg.batch_size, cfg.local_epochs, generator):
        xb = augment_batch(x[b], cfg.augment, generator)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), y[b]).backward()
        opt.step()
    return flatten_params(model)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_runs_are_bit_identical_to_the_former_client_training(momentum):
    data = shard_data([13, 7, 21])
    cfg = TrainConfig(rounds=2, local_epochs=2, batch_size=4, lr=0.1, momentum=momentum, weight_decay=1e-3, seed=3,
                      client_parallel="sequential")

    result = run_federated(mlp(), data, make_strategy("fedavg"), cfg)

    global_params = flatten_params(mlp())
    for round_ in (1, 2):
        clients = []
        for c in range(3):
            model = mlp()
            FlatParams(model).set(global_params)
            clients.append(old_local_sgd(model, data, c, round_, cfg))
        weights = torch.tensor([13, 7, 21], dtype=torch.float64) / 41
        delta = (weights @ (torch.stack(clients) - global_params).double()).float()
        global_params = global_params - 1.0 * (-delta)
        assert torch.equal(result.params[round_], global_params)


def test_nesterov_client_training_is_torch_sgd_with_nesterov():
    # Prepare: the FedAlign code's client optimiser, SGD(momentum 0.9, nesterov=True), against torch's own
    data = shard_data([13, 7, 21])
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=4, lr=0.1, momentum=0.9, weight_decay=1e-3, seed=3,
                      nesterov=True, client_parallel="sequential")
    global_params = flatten_params(mlp())

    # Execute
    result = run_federated(mlp(), data, make_strategy("fedavg"), cfg)
    heavy_ball = run_federated(mlp(), data, make_strategy("fedavg"), dataclasses.replace(cfg, nesterov=False))

    # Assert: bit for bit the mean of the clients trained by torch.optim.SGD(nesterov=True)
    clients = []
    for c in range(3):
        model = mlp()
        FlatParams(model).set(global_params)
        generator = client_generator(cfg.seed, 1, c)
        torch.manual_seed(layer_seed(cfg.seed, 1, c))
        idx = data.client_indices[c]
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
        for b in batch_order(len(idx), cfg.batch_size, cfg.local_epochs, generator):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.x_train[idx][b]), data.y_train[idx][b]).backward()
            opt.step()
        clients.append(flatten_params(model))
    weights = torch.tensor([13, 7, 21], dtype=torch.float64) / 41
    expected = global_params + (weights @ (torch.stack(clients) - global_params).double()).float()
    assert torch.equal(result.params[1], expected)
    assert not torch.allclose(heavy_ball.params[1], expected, atol=1e-4)  # Nesterov's step is another one


@pytest.mark.parametrize("optimizer", [{"momentum": 0.0}, {"optimizer": "adamw", "momentum": 0.0}])
def test_nesterov_without_sgd_momentum_is_refused_naming_the_fix(optimizer):
    with pytest.raises(ValueError, match=r"nesterov needs optimizer sgd with a momentum > 0 .*set momentum"):
        TrainConfig(nesterov=True, **optimizer)


def test_adamw_step_equals_torch_adamw(float64_default):
    # float64: the reference sees the batch in another order, and Adam's m / sqrt(v) magnifies that rounding in
    # float32 to ~1e-6 depending on the CPU's kernels (1.2e-6 with oneDNN capped at AVX2)
    data = shard_data([6])
    cfg = TrainConfig(rounds=1, local_steps=3, batch_size=6, lr=0.01, optimizer="adamw", adamw_beta1=0.8,
                      adamw_beta2=0.99, adamw_eps=1e-6, weight_decay=0.1, seed=0)
    model = mlp()
    flat = FlatParams(model)

    result, _ = local_train(model, flat, flat.get().clone(), torch.zeros(0), data, 0, 1, Strategy(), cfg)

    reference = mlp()
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for _ in range(3):  # one batch holds all 6 samples: every step sees the same batch (in another order)
        opt.zero_grad()
        F.cross_entropy(reference(data.x_train), data.y_train).backward()
        opt.step()
    expected = flatten_params(reference)
    assert result.params.dtype == expected.dtype == torch.float64
    assert (result.params - expected).abs().max().item() < 1e-12
    sgd = TrainConfig(rounds=1, local_steps=3, batch_size=6, lr=0.01, weight_decay=0.1, seed=0)
    plain, _ = local_train(model, flat, flatten_params(mlp()), torch.zeros(0), data, 0, 1, Strategy(), sgd)
    assert (plain.params - result.params).abs().max().item() > 1e-4  # AdamW is not SGD here


def test_one_client_keeping_its_adamw_state_is_centralised_adamw_with_a_cosine_schedule(float64_default):
    # 20 samples, batch 8: 3 steps per round; the schedule runs over the 3 rounds with half a round of warm-up.
    # float64: each round passes the client through the server's average, and Adam's m / sqrt(v) magnifies rounding:
    # in float32 each side departed from its float64 run by up to 3e-7 (ATen's default kernels), so their gap was
    # bounded only by 0.6 of a 1e-6 tolerance
    data = shard_data([20])
    cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.01,
                      lr_schedule="cosine", lr_warmup=0.5, keep_optimizer_state=True, seed=4)

    result = run_federated(mlp(), data, make_strategy("fedavg"), cfg)

    reference = mlp()
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.01)
    for round_ in (1, 2, 3):
        batches = batch_order(20, 8, 1, client_generator(4, round_, 0))
        for b, lr in zip(batches, step_lrs(0.01, "cosine", "rounds", 0.5, 3, round_, 3), strict=True):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            F.cross_entropy(reference(data.x_train[b]), data.y_train[b]).backward()
            opt.step()
        assert result.params.dtype == torch.float64
        assert (result.params[round_] - flatten_params(reference)).abs().max().item() < 1e-12
    fresh = run_federated(mlp(), data, make_strategy("fedavg"), dataclasses.replace(cfg, keep_optimizer_state=False))
    assert (fresh.params[3] - result.params[3]).abs().max().item() > 1e-4  # the kept state matters


@pytest.mark.parametrize("survival", [1.0, 0.5])
def test_one_client_keeping_its_adamw_state_under_stochastic_depth_is_centralised_adamw(float64_default, survival):
    # A dropped residual branch takes no gradient, so torch's AdamW does not step it: each parameter counts its own
    # steps, and its bias correction 1 - beta^t with them. Kept between rounds, the counts must stay each parameter's
    # (one count for all moved the skipped ones by up to 3 lr at their next step).
    from fedscape.fl.local import local_plan
    from fedscape.fl.strategies.base import ClientContext
    from fedscape.models.resnets import ResNet

    def model() -> ResNet:
        torch.manual_seed(0)
        return ResNet(10, 1, (2, 2), (8, 16), norm="none")

    data = shard_data([40])
    hp = {"survival_last": survival}
    cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.0, seed=3,
                      keep_optimizer_state=True)

    result = run_federated(model(), data, make_strategy("stochdepth", hp), cfg)

    reference, strategy = model(), make_strategy("stochdepth", hp)
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.0)
    for round_ in (1, 2, 3):
        generator = client_generator(3, round_, 0)
        plan = local_plan(cfg, 40, 1, round_, generator)
        ctx = ClientContext(round_, 0, flatten_params(reference), data.x_train, data.y_train, generator)
        for b in plan.batches:
            opt.zero_grad(set_to_none=True)
            strategy.local_backward(reference, data.x_train[b], data.y_train[b], ctx)
            opt.step()
        assert (result.params[round_] - flatten_params(reference)).abs().max().item() < 1e-12
    counts = {float(state["step"]) for state in opt.state.values()}
    assert (len(counts) > 1) == (survival < 1)  # the case tells the two bookkeepings apart


def test_a_kept_adamw_state_of_one_step_count_resumes_with_that_count_for_every_parameter():
    # Prepare: a client's state as runs kept it before each parameter had its own count: [m, v, the largest count]
    model = mlp()
    cfg = TrainConfig(rounds=1, optimizer="adamw", keep_optimizer_state=True)
    trainer = SequentialTrainer(model, FlatParams(model), shard_data([8, 8]), Strategy(), cfg)
    n, tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    old = torch.cat([torch.rand(2 * n), torch.tensor([7.0])])
    new = torch.cat([torch.rand(2 * n), torch.arange(1.0, tensors + 1)])

    # Execute
    trainer.load_state_dict({"momentum": {"ids": torch.tensor([0]), "values": old[None]}})
    trainer.momentum.set(1, new)

    # Assert: the moments as kept, the count given to every tensor; saved again beside a state of now
    assert torch.equal(trainer.momentum.values[0], torch.cat([old[:2 * n], torch.full((tensors,), 7.0)]))
    assert trainer.state_dict()["momentum"]["values"].shape == (2, 2 * n + tensors)


def test_cosine_schedule_changes_the_sgd_steps_as_computed():
    # one sample, batch 1, plain SGD on a linear model: each step is w <- w - lr_k g_k; check against the lrs
    data = shard_data([1])
    cfg = TrainConfig(rounds=1, local_steps=4, batch_size=1, lr=0.5, lr_schedule="cosine",
                      lr_schedule_over="local_steps", lr_warmup=1, seed=0)
    model = mlp()
    flat = FlatParams(model)

    result, _ = local_train(model, flat, flat.get().clone(), torch.zeros(0), data, 0, 1, Strategy(), cfg)

    reference = mlp()
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for lr in step_lrs(0.5, "cosine", "local_steps", 1, 1, 1, 4):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(reference(data.x_train), data.y_train).backward()
        opt.step()
    assert torch.equal(result.params, flatten_params(reference))
    assert result.update_weight == pytest.approx(sum(step_lrs(0.5, "cosine", "local_steps", 1, 1, 1, 4)))


# -- the normaliser of FedNova and SCAFFOLD ---------------------------------------------------------------------------

def test_update_weight_is_lr_times_effective_steps_under_a_constant_lr():
    assert update_weight([0.1] * 5, 0.9) == effective_steps(5, 0.9) * 0.1
    assert update_weight([0.1, 0.2, 0.3], 0.0) == pytest.approx(0.6)
    # heavy ball: g_0 is applied with 0.1 + 0.5*0.2 + 0.25*0.3, g_1 with 0.2 + 0.5*0.3, g_2 with 0.3
    assert update_weight([0.1, 0.2, 0.3], 0.5) == pytest.approx(0.275 + 0.35 + 0.3)
    assert update_weight([], 0.9) == 0.0
    # Nesterov: g_0 is applied with 0.1 * 1.5 + 0.2 * 0.25 + 0.3 * 0.125, g_1 with 0.2 * 1.5 + 0.3 * 0.25, g_2 0.3 * 1.5
    assert update_weight([0.1, 0.2, 0.3], 0.5, nesterov=True) == pytest.approx(0.2375 + 0.375 + 0.45)


@pytest.mark.parametrize("nesterov", [False, True])
def test_update_weight_is_how_far_torch_sgd_moves_under_a_constant_gradient(nesterov, float64_default):
    # Prepare: a linear loss g . w has the constant gradient g, so K steps move w by exactly -update_weight * g
    g = torch.tensor([1.0, -2.0, 0.5])
    w = torch.zeros(3, requires_grad=True)
    lrs = [0.1, 0.3, 0.2, 0.05]
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.7, nesterov=nesterov)

    # Execute
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        (g @ w).backward()
        opt.step()

    # Assert
    torch.testing.assert_close(w.detach(), -update_weight(lrs, 0.7, nesterov) * g, rtol=1e-12, atol=1e-12)


# -- config -----------------------------------------------------------------------------------------------------------

GRID_KEYS = ("datasets", "models", "alphas", "num_clients", "participation", "seeds", "partition", "training")


def tiny(training: dict | None = None, algorithms: dict | None = None) -> dict:
    """The tiny config's run grid (no analyses, one random init) with training keys and algorithms changed."""
    config = {k: copy.deepcopy(v) for k, v in TINY.items() if k in GRID_KEYS}
    config["inits"] = {"random": {"kind": "random", "seed": 0}}
    config["algorithms"] = algorithms or {"fedavg": {"name": "fedavg"}}
    config["training"] = {**config["training"], **(training or {})}
    return config


@pytest.mark.parametrize(
    ("training", "algorithms", "message"),
    [
        ({"local_steps": 5}, None, "training: local_epochs .* and local_steps .* are both given"),
        ({"local_epochs": None, "local_steps": [1, 2]}, None, "training.local_steps: 2 values .* have 4 clients"),
        ({"local_steps": 0}, None, "training.local_steps: 0 is not valid"),
        ({"local_steps": {"low": 1}}, None, "training.local_steps"),
        ({"optimizer": "adam"}, None, "training.optimizer: 'adam' is not valid"),
        ({"lr_schedule": "cos"}, None, "training.lr_schedule: 'cos' is not valid"),
        ({"lr_warmup": -0.5}, None, "training.lr_warmup"),
        ({"optimizer": "adamw"}, None, "training: momentum 0.9 is ignored by optimizer adamw"),  # the tiny config's
        ({"adamw_eps": 1e-6}, None, "training: adamw_eps 1e-06 is ignored by optimizer sgd"),
        ({"nesterov": True, "momentum": 0.0}, None, "training: nesterov needs optimizer sgd with a momentum > 0"),
        ({}, {"a": {"name": "fedavg", "training": {"local_steps": 3, "local_epochs": 1}}},
         "algorithms.a.training: local_epochs .* both given"),
    ],
)
def test_bad_local_training_fails_before_any_job_naming_the_key(training, algorithms, message):
    config = tiny(training, algorithms)

    with pytest.raises(ConfigError, match=message):
        check_config(config, SCHEMA)


def test_an_algorithms_work_key_replaces_the_other_one():
    config = check_config(tiny({}, {"e": {"name": "fedavg"},
                                    "s": {"name": "fednova", "training": {"local_steps": {"low": 1, "high": 4}}}}),
                          SCHEMA)
    runs = {r.algorithm: r for r in build_runs(config)}

    epochs, steps = run_training(config, runs["e"]), run_training(config, runs["s"])

    assert (epochs["local_epochs"], epochs.get("local_steps")) == (TINY["training"]["local_epochs"], None)
    assert steps["local_epochs"] is None and steps["local_steps"] == {"low": 1, "high": 4}
    assert "local_steps" not in train_settings(config, runs["e"])["training"]  # old runs keep their settings
    assert local_work(config, list(runs.values())) == {
        "e": {"name": "fedavg", "local_epochs": TINY["training"]["local_epochs"]},
        "s": {"name": "fednova", "local_epochs": None, "local_steps": None}}


def test_new_training_keys_at_their_defaults_leave_job_settings_unchanged():
    plain = check_config(tiny(), SCHEMA)
    explicit = check_config(tiny({"optimizer": "sgd", "lr_schedule": "constant", "lr_schedule_over": "rounds",
                                  "lr_warmup": 0, "adamw_beta1": 0.9, "adamw_beta2": 0.999, "adamw_eps": 1e-8}),
                            SCHEMA)
    run = build_runs(plain)[0]

    settings = train_settings(plain, run)["training"]

    assert settings == train_settings(explicit, run)["training"]
    new_keys = {"optimizer", "lr_schedule", "lr_schedule_over", "lr_warmup", "local_steps", "adamw_beta1"}
    assert not new_keys & set(settings)


# -- cost.csv ---------------------------------------------------------------------------------------------------------

def test_cost_table_compares_runs_of_equal_local_work_only(tmp_path):
    def run(name: str, algorithm: str, seconds: float, training: dict):
        metrics, meta = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
        metrics.write_text("run_id,algorithm,round,seconds,peak_mem_mb,dataset,model,alpha,num_clients,participation\n"
                           + "".join(f"{name},{name},{r},{seconds},100,digits,mlp,inf,3,1.0\n" for r in (0, 1, 2)))
        meta.write_text(json.dumps({"device": "cpu", "settings": {"algorithm": algorithm,
                                                                 "training": {"batch_size": 16, **training}}}))
        return metrics, meta

    runs = [run("avg_e", "fedavg", 1.0, {"local_epochs": 2}), run("nova_e", "fednova", 1.5, {"local_epochs": 2}),
            run("avg_s", "fedavg", 4.0, {"local_epochs": None, "local_steps": 10}),
            run("nova_s", "fednova", 6.0, {"local_epochs": None, "local_steps": 10}),
            run("nova_u", "fednova", 3.0,
                {"local_epochs": None, "local_steps": {"low": 1, "high": 9, "draw": "round"}})]

    table = cost_table(runs).set_index("algorithm")

    assert table.loc["nova_e", "seconds_vs_fedavg"] == pytest.approx(1.5)  # against 2 epochs of FedAvg
    assert table.loc["nova_s", "seconds_vs_fedavg"] == pytest.approx(1.5)  # against 10 steps of FedAvg
    assert math.isnan(table.loc["nova_u", "seconds_vs_fedavg"])  # no FedAvg with that unequal work
    assert table.loc["nova_u", "local_work"] == "steps uniform in 1..9, drawn every round"
    assert table.loc["avg_s", "local_steps"] == 10 and table.loc["avg_e", "local_epochs"] == 2


# -- the train stage ----------------------------------------------------------------------------------------------

def test_train_stage_runs_fednova_with_drawn_local_steps_and_adamw(tmp_path, caplog):
    config = tiny({"rounds": 2, "local_epochs": None, "local_steps": {"low": 1, "high": 6, "draw": "round"},
                   "optimizer": "adamw", "momentum": 0.0, "lr": 0.003, "lr_schedule": "cosine", "lr_warmup": 0.5,
                   "save_clients_at": [], "device": "cpu"}, {"nova": {"name": "fednova"}})
    config.update(alphas=["iid"])
    check_config(config, SCHEMA)
    (run,) = build_runs(config)
    partition = tmp_path / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                    tmp_path / "counts.csv")
    init = tmp_path / "init.pt"
    init_job(init_settings(config, [run], run.dataset, run.model, run.init), init)
    outputs = {name: str(tmp_path / file) for name, file in TRAIN_FILE_NAMES.items()}

    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        train_job(train_settings(config, run), partition, init, outputs, tmp_path / "_progress")

    meta = json.loads((tmp_path / TRAIN_FILE_NAMES["meta"]).read_text())
    assert meta["status"] == "ok" and meta["settings"]["training"]["optimizer"] == "adamw"
    assert "2 rounds x steps uniform in 1..6, drawn every round of local adamw" in caplog.text
    assert caplog.text.count("local work (steps uniform in 1..6, drawn every round): min") == 2
    table = cost_table([(outputs["metrics"], outputs["meta"])])
    assert table["local_work"].tolist() == ["steps uniform in 1..6, drawn every round"]


def test_a_train_job_refuses_the_init_of_another_label(tmp_path):
    # Prepare: a run from the random init, given the pretrained init's file (the same model and data shape)
    config = check_config(copy.deepcopy(TINY), SCHEMA)
    runs = build_runs(config)
    run = next(r for r in runs if r.init == "random")
    partition = tmp_path / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  tmp_path / "counts.csv")
    init = tmp_path / "init.pt"
    init_job(init_settings(config, runs, run.dataset, run.model, "pre"), init)
    outputs = {name: str(tmp_path / file) for name, file in TRAIN_FILE_NAMES.items()}

    # Execute / Assert: refused before training, naming the file, both labels and the command that remakes it
    with pytest.raises(CheckpointError, match=r"init 'pre' \(expected 'random'\)") as err:
        train_job(train_settings(config, run), partition, init, outputs, tmp_path / "_progress")
    assert str(init) in str(err.value) and "--forcerun" in str(err.value)
    assert not (tmp_path / TRAIN_FILE_NAMES["trajectory"]).exists()


def test_per_client_work_must_fit_an_iid_warm_up_too():
    config = tiny({"local_epochs": None, "local_steps": [1, 2, 3, 4]})  # 4 clients: fits the runs
    config["inits"] = {"warm": {"kind": "iid_warmup", "rounds": 1, "num_clients": 10}}

    with pytest.raises(ConfigError, match=r"inits.warm.training.local_steps: 4 values \(one per client\) but its "
                                          "warm-up rounds have 10 clients"):
        check_config(config, SCHEMA)
    config["inits"]["warm"]["num_clients"] = 4
    check_config(config, SCHEMA)
