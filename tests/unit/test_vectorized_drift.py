"""Vectorised SCAFFOLD and FedDyn: every stacked client's gradients corrected by its own state (SCAFFOLD's c - c_i,
FedDyn's alpha (w - w_global) - g_k), and that state updated from its result, equal to one client at a time."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import shard_data
from helpers.vectorized import model_of, run_mode

from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel

TOL64 = 1e-10
SIZES = [21, 9, 5, 14, 11]  # batch 8: padded last batches, unequal step counts
# Each algorithm's server state and per-client store
STATE = {"scaffold": ("c", "c_clients"), "feddyn": ("h", "grads")}
ALGORITHMS = pytest.mark.parametrize("algorithm", sorted(STATE))


def both(make, monkeypatch, algorithm="scaffold", **train):
    """Sequential and vectorised runs (each its own strategy: it keeps per-client state) over four rounds of 4 of
    the 5 clients: (the two runs, the two strategies)."""
    data = shard_data(SIZES)
    train = {"rounds": 4, "save_clients_at": (), **train}
    strategies = [make_strategy(algorithm) for _ in range(2)]
    runs = [run_mode(mode, strategy, data, monkeypatch, model=make, **train)
            for mode, strategy in zip(("sequential", "vectorized"), strategies, strict=True)]
    return runs, strategies


@pytest.mark.parametrize(("make", "train"), [
    (lambda: model_of("cnn_small"), {"nesterov": True, "augment": "crop_flip"}),
    # a cosine lr over local steps: the clients of a step have different lrs, and each its own update weight
    (lambda: model_of("mlp"), {"lr_schedule": "cosine", "lr_schedule_over": "local_steps", "client_chunk_size": 3}),
    (lambda: model_of("resnet20", norm="batch"), {"local_epochs": 1}),
    (lambda: model_of("cnn_small"), {"local_steps": 3, "local_epochs": None, "momentum": 0.0}),
], ids=["cnn_small-nesterov", "mlp-cosine-chunks", "resnet20-bn", "steps-no-momentum"])
@ALGORITHMS
def test_float64_vectorized_rounds_equal_sequential(algorithm, make, train, monkeypatch, float64_default):
    # Execute
    (seq, vec), (seq_s, vec_s) = both(make, monkeypatch, algorithm, **train)

    # Assert: every round's global model and loss, the server's and every client's state; and the correction acts
    # (the server's state is not zero)
    server, clients = STATE[algorithm]
    assert seq.execution == "sequential" and vec.execution.startswith("vectorized")
    assert (seq.params - vec.params).abs().max().item() <= TOL64 * seq.params.abs().max().item()
    for s, v in zip(seq.rows, vec.rows, strict=True):
        assert s["train_loss"] == pytest.approx(v["train_loss"], rel=TOL64)
    seq_c, vec_c = getattr(seq_s, server), getattr(vec_s, server)
    assert (seq_c - vec_c).abs().max().item() <= TOL64 * seq_c.abs().max().item()
    seq_store, vec_store = getattr(seq_s, clients).values, getattr(vec_s, clients).values
    assert sorted(seq_store) == sorted(vec_store)
    for c, value in seq_store.items():
        assert (value - vec_store[c]).abs().max().item() <= TOL64 * value.abs().max().item()
    assert seq_c.abs().max().item() > 1e-5


@ALGORITHMS
def test_float32_vectorized_rounds_equal_sequential(algorithm, monkeypatch):
    # Execute
    (seq, vec), _ = both(lambda: model_of("cnn_small"), monkeypatch, algorithm)

    # Assert
    assert vec.params.dtype == torch.float32
    assert (seq.params - vec.params).abs().max().item() <= 1e-5
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 1e-2


def test_the_correction_changes_vectorised_training(monkeypatch):
    # Prepare / Execute: vectorised SCAFFOLD and FedAvg from the same model
    data = shard_data(SIZES)
    runs = {name: run_mode("vectorized", make_strategy(name), data, monkeypatch, rounds=3, save_clients_at=())
            for name in ("scaffold", "fedavg", "feddyn")}

    # Assert: SCAFFOLD's first round has no correction (every variate is 0) and equals FedAvg bit for bit; later
    # ones differ; FedDyn's regulariser acts from the first round's second step
    assert torch.equal(runs["scaffold"].params[1], runs["fedavg"].params[1])
    assert (runs["scaffold"].params[-1] - runs["fedavg"].params[-1]).abs().max().item() > 1e-4
    assert (runs["feddyn"].params[1] - runs["fedavg"].params[1]).abs().max().item() > 1e-6


@ALGORITHMS
def test_they_vectorise_under_auto_where_fedavg_does(algorithm):
    # Prepare
    strategy, fedavg = make_strategy(algorithm), make_strategy("fedavg")

    # Execute / Assert: the same decisions as FedAvg's, on a CPU and on a card
    for net in (model_of("cnn_small"), model_of("resnet20", norm="batch"), model_of("mlp")):
        for device in ("cpu", "cuda"):
            assert (resolve_client_parallel(net, strategy, TrainConfig(), device_type=device)
                    == resolve_client_parallel(net, fedavg, TrainConfig(), device_type=device))
    assert resolve_client_parallel(model_of("cnn_small"), strategy, TrainConfig()) == "vectorized"


@ALGORITHMS
def test_a_resumed_vectorised_run_keeps_the_clients_state(algorithm, tmp_path, float64_default):
    # Prepare: 4 rounds at once, and 2 then 2 more resumed from the progress files
    data = shard_data(SIZES)
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, participation=0.75, seed=3,
                      save_clients_at=(), client_parallel="vectorized")

    strategies = [make_strategy(algorithm) for _ in range(3)]

    # Execute
    whole = run_federated(model_of("cnn_small"), data, strategies[0], cfg)
    run_federated(model_of("cnn_small"), data, strategies[1], TrainConfig(**{**cfg.__dict__, "rounds": 2}),
                  progress_dir=tmp_path, progress_key="k")
    resumed = run_federated(model_of("cnn_small"), data, strategies[2], cfg, progress_dir=tmp_path, progress_key="k")

    # Assert: the model, the server's state and every client's, bit for bit
    assert torch.equal(whole.params[-1], resumed.params[-1])
    server, clients = STATE[algorithm]
    assert torch.equal(getattr(strategies[0], server), getattr(strategies[2], server))
    a, b = getattr(strategies[0], clients).values, getattr(strategies[2], clients).values
    assert a.keys() == b.keys() and all(torch.equal(a[c], b[c]) for c in a)


def test_the_stacked_state_is_freed_where_no_step_replays_and_when_the_trainer_closes():
    # Prepare: SCAFFOLD's stacked corrections, with eager steps and with steps replayed from the CPU stand-in graphs
    from helpers.graphs import emulated_graph

    from fedscape.fl.vectorized import VectorizedTrainer
    from fedscape.models.params import FlatParams, flatten_buffers

    data = shard_data(SIZES)
    model = model_of("cnn_small")
    params, buffers = FlatParams(model).get(), flatten_buffers(model)
    held = {}
    for name, make_graph in (("eager", None), ("replayed", emulated_graph)):
        strategy = make_strategy("scaffold")
        strategy.setup(data.num_clients, params.numel(), params.device, model=model)
        trainer = VectorizedTrainer(model, data, strategy, TrainConfig(batch_size=8, local_epochs=4, seed=3),
                                    make_graph=make_graph)

        # Execute: two rounds (the second replays the shapes the first met often enough)
        for round_ in (1, 2):
            strategy.server_update(params, trainer.train_round(params, buffers, list(range(data.num_clients)), round_))
        held[name] = bool(strategy._stacked_stores)
        trainer.close()
        held[f"{name}, closed"] = bool(strategy._stacked_stores)

    # Assert: kept only while graphs may replay from them
    assert trainer.captured
    assert held == {"eager": False, "eager, closed": False, "replayed": True, "replayed, closed": False}
