"""The client steps that benchmarks/bench_gpu.py prices into device-hours (`fedscape.plan.cost.run_steps`): each
client's steps as its trainer plans them, and a vectorised round's as its trainer stacks them (chunks of clients,
each as long as its longest client), on the shards of the runs' own partitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.synthetic import mlp, shard_data

from fedscape.data.partition import make_partition
from fedscape.data.sources import source_from_options, stratified_split
from fedscape.fl.local import client_generator, local_plan
from fedscape.fl.schedule import BATCH_SAMPLINGS, client_steps, stacked_chunks, stacked_client_steps
from fedscape.fl.settings import TrainConfig, sample_clients
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.plan.cost import RunSteps, run_steps


def _work(unit: str, amount) -> dict:
    return {"local_steps": amount} if unit == "steps" else {"local_epochs": amount}


@pytest.mark.parametrize("n", [1, 7, 16, 17, 48, 50])  # below, at, just over and at multiples of the batch
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("sampling", BATCH_SAMPLINGS)
@pytest.mark.parametrize("unit", ["epochs", "steps"])
def test_client_steps_are_the_steps_the_trainers_plan(n, drop_last, sampling, unit):
    # Prepare: 3 epochs or 5 steps at batch 16
    amount = 3 if unit == "epochs" else 5
    cfg = TrainConfig(batch_size=16, drop_last=drop_last, batch_sampling=sampling, **_work(unit, amount))

    # Execute
    steps = client_steps(n, amount, cfg.work_unit, cfg.batch_size, cfg.drop_last)

    # Assert: the length of the trainers' own plan (`local_plan`, read by the sequential and the vectorised trainer)
    assert steps == len(local_plan(cfg, n, amount, 1, client_generator(0, 1, 0)).batches)


def _round_steps(sizes: list[int], cfg: TrainConfig, monkeypatch) -> tuple[list[int], list[int]]:
    """One vectorised round of every client of `sizes` (random 8x8 data, an mlp): the stacked steps the trainer
    takes, as the active clients of each, and each client's own steps (its result's `num_steps`)."""
    data = shard_data(sizes)
    model = mlp()
    strategy = make_strategy("fedavg", {})
    flat = FlatParams(model)
    strategy.setup(len(sizes), flat.get().numel(), torch.device("cpu"), model=model, seed=0)
    trainer = VectorizedTrainer(model, data, strategy, cfg)
    active: list[int] = []
    real_step = VectorizedTrainer._step

    def counting_step(self, st, t, padded, lr, xb, *args, **kwargs):
        active.append(xb.shape[0])  # the clients stacked in this step
        return real_step(self, st, t, padded, lr, xb, *args, **kwargs)

    monkeypatch.setattr(VectorizedTrainer, "_step", counting_step)
    results = trainer.train_round(flat.get(), flatten_buffers(model), list(range(len(sizes))), 1)
    trainer.close()
    return active, [r.num_steps for r in results]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("chunk", [0, 2])
def test_a_vectorised_round_steps_as_long_as_its_largest_client(monkeypatch, drop_last, chunk):
    # Prepare: one client holding 70 samples among four of 12-20 (batch 16: 5 batches of an epoch, or 4 under
    # drop_last, against 1-2), 2 epochs
    sizes = [12, 70, 20, 17, 16]
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=16, drop_last=drop_last, client_chunk_size=chunk, lr=0.05)
    steps = [client_steps(n, 2, "epochs", 16, drop_last) for n in sizes]

    # Execute
    active, taken = _round_steps(sizes, cfg, monkeypatch)

    # Assert: the clients' own steps are those planned; the trainer takes as many stacked steps as the chunks' longest
    # clients, the first chunk as many as the large client (epochs x its batches: ceil(70 / 16), or floor), and
    # prices a chunk at its clients x those steps
    largest = 2 * (70 // 16 if drop_last else math.ceil(70 / 16))
    assert taken == steps and max(steps) == largest
    chunks = stacked_chunks(steps, chunk)
    assert len(active) == sum(longest for _, longest in chunks)
    assert chunks[0] == (len(sizes) if chunk == 0 else chunk, largest)
    assert max(active) == chunks[0][0]
    assert stacked_client_steps(steps, chunk) == sum(k * s for k, s in chunks)
    if chunk == 0:
        assert len(active) == largest and stacked_client_steps(steps, chunk) == len(sizes) * largest
    assert stacked_client_steps(steps, chunk) > sum(steps)  # the clients' own steps: too few


@pytest.mark.parametrize("chunk", [0, 2])
def test_on_equal_shards_a_vectorised_round_costs_its_clients_steps(monkeypatch, chunk):
    # Prepare: the IID split of 80 samples among 5 clients (16 each)
    part = make_partition(np.repeat(np.arange(10), 8), 5, math.inf, seed=0, min_size=1)
    sizes = part.sizes.tolist()
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=16, client_chunk_size=chunk, lr=0.05)
    steps = [client_steps(n, 2, "epochs", 16) for n in sizes]

    # Execute
    active, taken = _round_steps(sizes, cfg, monkeypatch)

    # Assert: no padding: the stacked client steps are the equal-shard count, every step stacks full chunks
    assert sizes == [16] * 5 and taken == steps == [2] * 5
    assert stacked_client_steps(steps, chunk) == sum(steps) == 5 * 2
    assert sum(active) == sum(steps) and len(active) == (2 if chunk == 0 else 3 * 2)


@pytest.mark.parametrize(("participation", "chunk"), [(1.0, 0), (0.5, 0), (0.5, 2), (1.0, 3)])
def test_run_steps_counts_every_rounds_sampled_clients(participation, chunk):
    # Prepare: 6 clients, one of them large, 4 rounds of 1 epoch at batch 10
    sizes = [10, 10, 95, 20, 31, 10]
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=10, participation=participation, client_chunk_size=chunk,
                      seed=3)

    # Execute
    steps = run_steps(cfg, sizes)

    # Assert: over the rounds, the sampled clients' own steps, and their chunks' longest clients' (the engine's draw of
    # the clients: sample_clients)
    expected = RunSteps(0, 0)
    for t in range(1, 5):
        own = [math.ceil(sizes[c] / 10) for c in sample_clients(3, t, 6, participation)]
        ordered = sorted(own, reverse=True)
        size = chunk or len(own)
        padded = sum(len(ordered[i : i + size]) * ordered[i] for i in range(0, len(ordered), size))
        expected = RunSteps(expected.client + sum(own), expected.stacked + padded)
    assert steps == expected
    if participation == 1.0 and chunk == 0:
        assert steps == RunSteps(4 * 19, 4 * 6 * 10)  # 1 + 1 + 10 + 2 + 4 + 1 steps; the large client's 10 for all 6
    per_round = len(sample_clients(3, 1, 6, participation))
    assert run_steps(cfg, [30] * 6) == RunSteps(4 * per_round * 3, 4 * per_round * 3)  # equal shards: no padding


def test_run_steps_on_a_work_counted_in_steps_ignores_the_shards():
    # Prepare: 7 local steps per round, whatever a client holds
    cfg = TrainConfig(rounds=3, local_steps=7, batch_size=10)

    # Execute / Assert: every client steps 7 times, so the stacks carry no padding
    assert run_steps(cfg, [10, 95, 20]) == RunSteps(3 * 3 * 7, 3 * 3 * 7)


@pytest.mark.parametrize(("setting", "num_clients"), [("iid", 10), (0.5, 10), (0.1, 10), (0.5, 20)])
def test_a_split_by_class_sizes_its_clients_by_the_class_counts_alone(setting, num_clients):
    # Prepare: the digits' training pool (bundled) in the order of its files, and the same labels sorted by class
    # (what bench_gpu.pool_labels makes of a balanced training split's counts)
    labels = source_from_options("digits", {"test_fraction": 0.25}).labels
    alpha = math.inf if setting == "iid" else setting

    # Execute
    real = make_partition(labels, num_clients, alpha, seed=1, min_size=10)
    by_counts = make_partition(np.sort(labels), num_clients, alpha, seed=1, min_size=10)

    # Assert: the same shard sizes, so a partition made from the class counts prices the runs' own shards
    assert real.sizes.tolist() == by_counts.sizes.tolist()
    if setting == 0.1:
        assert real.sizes.max() > 1.5 * real.sizes.mean()  # what equal shares would miss


@pytest.mark.parametrize("fraction", [0.1, 0.33])
def test_a_stratified_proxy_split_keeps_the_class_counts_of_the_labels_counts(fraction):
    # Prepare: the digits' labels (unequal class counts) in file order and sorted
    labels = source_from_options("digits", {"test_fraction": 0.25}).labels

    # Execute
    keep_real, _ = stratified_split(labels, fraction, np.random.default_rng(0))
    keep_sorted, _ = stratified_split(np.sort(labels), fraction, np.random.default_rng(0))

    # Assert: the same count of every class kept
    assert np.bincount(labels[keep_real]).tolist() == np.bincount(np.sort(labels)[keep_sorted]).tolist()
