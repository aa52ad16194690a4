"""FedAvg engine: aggregation maths, equivalence with centralised SGD, checkpoints and resume."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers.resume import killed_after_round
from helpers.tiny import tiny_data, tiny_model

from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import make_partition
from fedscape.fl import engine as engine_mod
from fedscape.fl.aggregate import mean_delta, sample_weights, weighted_mean
from fedscape.fl.engine import run_federated
from fedscape.fl.local import batch_order, client_generator
from fedscape.fl.sequential import SequentialTrainer
from fedscape.fl.settings import DIVERGED_LOSS, TrainConfig, clients_per_round, sample_clients
from fedscape.fl.strategies.base import ClientResult, Strategy
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.swa import SWA_METRICS, SWAConfig
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.checkpoint import (
    CheckpointError,
    ClientRound,
    ModelMeta,
    load_clients,
    load_trajectory,
    save_clients,
    save_trajectory,
)
from fedscape.models.evaluate import EvalResult, evaluate
from fedscape.models.params import FlatParams, flatten_buffers, flatten_params, load_params
from fedscape.models.registry import build_model


def test_weighted_aggregation_matches_hand_computation():
    global_params = torch.tensor([1.0, 1.0])
    clients = torch.tensor([[3.0, 1.0], [1.0, 5.0], [0.0, 0.0]])
    weights = sample_weights([10, 30, 60])

    delta = mean_delta(global_params, clients, weights)

    # deltas: [2, 0], [0, 4], [-1, -1] weighted 0.1, 0.3, 0.6
    assert torch.allclose(delta, torch.tensor([0.2 - 0.6, 1.2 - 0.6]))
    assert torch.allclose(weighted_mean(clients, weights), torch.tensor([0.6, 1.6]))


@pytest.mark.parametrize("bad", [[0, 0], [-1, 3]])
def test_sample_weights_reject_bad_counts(bad):
    with pytest.raises(ValueError, match="sample counts"):
        sample_weights(bad)


def test_fedavg_server_update_is_weighted_mean_of_unequal_clients():
    strategy = make_strategy("fedavg")
    global_params = torch.zeros(3)
    results = [ClientResult(0, 1, torch.tensor([1.0, 0.0, 0.0]), torch.zeros(0), 0.0),
               ClientResult(1, 3, torch.tensor([0.0, 4.0, 0.0]), torch.zeros(0), 0.0)]

    new = strategy.server_update(global_params, results)

    assert torch.allclose(new, torch.tensor([0.25, 3.0, 0.0]))


def test_fedavgm_with_zero_momentum_equals_fedavg():
    data = tiny_data()
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.1, seed=1)
    a = run_federated(tiny_model(), data, make_strategy("fedavg"), cfg)
    b = run_federated(tiny_model(), data, make_strategy("fedavgm", {"server_momentum": 0.0}), cfg)

    assert torch.equal(a.params, b.params)


def test_one_client_one_epoch_equals_centralised_sgd():
    data = tiny_data(num_clients=1, n=50)
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, seed=3)
    model = tiny_model()
    reference = tiny_model()

    result = run_federated(model, data, Strategy(), cfg)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for b in batch_order(50, 8, 1, client_generator(3, 1, 0)):
        opt.zero_grad()
        F.cross_entropy(reference(data.x_train[b]), data.y_train[b]).backward()
        opt.step()
    assert torch.allclose(result.params[1], flatten_params(reference), atol=1e-6)
    assert torch.equal(result.params[0], flatten_params(tiny_model()))


def test_round_metrics_and_client_checkpoints():
    data = tiny_data(num_clients=4, n=100, sizes=[10, 20, 30, 40])
    cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.05, save_clients_at=(1, 3), seed=0)

    result = run_federated(tiny_model(), data, Strategy(), cfg)

    assert [r["round"] for r in result.rows] == [0, 1, 2, 3]
    assert result.params.shape[0] == 4
    assert set(result.clients) == {1, 3}
    assert result.clients[1].num_samples.tolist() == [10, 20, 30, 40]
    # the aggregate of round 1 is the sample-weighted mean of its saved client models
    w = sample_weights(result.clients[1].num_samples)
    assert torch.allclose(weighted_mean(result.clients[1].params, w), result.params[1], atol=1e-6)


def test_partial_participation_samples_seeded_subsets():
    picks = [sample_clients(0, t, 50, 0.2) for t in range(1, 6)]

    assert all(len(p) == 10 and len(set(p)) == 10 for p in picks)
    assert picks == [sample_clients(0, t, 50, 0.2) for t in range(1, 6)]
    assert len({tuple(p) for p in picks}) > 1
    assert sample_clients(0, 1, 10, 1.0) == list(range(10))


@pytest.mark.parametrize(("num_clients", "participation", "expected"), [
    (100, 0.29, 29),  # 0.29 * 100 is 28.999... in floats: rounded, not floored to 28
    (10, 0.15, 2),    # 1.5: the half to the even neighbour
    (5, 0.5, 2),      # 2.5: down to the even 2
    (7, 0.5, 4),      # 3.5: up to the even 4
    (10, 0.01, 1),    # 0.1 rounds to 0: at least one client
])
def test_clients_per_round_rounds_half_to_even_and_takes_at_least_one(num_clients, participation, expected):
    # Execute
    count = clients_per_round(num_clients, participation)
    sampled = sample_clients(3, 1, num_clients, participation)

    # Assert: the count, and a sample of that many distinct clients
    assert count == expected
    assert len(sampled) == len(set(sampled)) == expected and set(sampled) <= set(range(num_clients))


def test_a_round_s_batch_norm_statistics_are_the_sample_weighted_mean_of_its_clients():
    # Prepare: a batch-norm CNN on three unequal shards (12, 30 and 48 samples: weights 2/15, 5/15 and 8/15), every
    # client in the one round
    sizes = [12, 30, 48]
    data = tiny_data(num_clients=3, sizes=sizes)
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, norm="batch")
    initial = copy.deepcopy(model)
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=8, lr=0.1, seed=4, save_clients_at=(1,))

    # Execute
    result = run_federated(model, data, Strategy(), cfg)

    # Assert: each client's statistics are those plain SGD over its batches leaves (trained here, not through the
    # engine), and the round's are their mean weighted by hand with the clients' samples
    clients = []
    for c, n in enumerate(sizes):
        local = copy.deepcopy(initial).train()
        opt = torch.optim.SGD(local.parameters(), lr=0.1)
        for b in batch_order(n, 8, 1, client_generator(4, 1, c)):
            opt.zero_grad()
            F.cross_entropy(local(data.x_train[data.client_indices[c][b]]), data.y_train[data.client_indices[c][b]]
                            ).backward()
            opt.step()
        clients.append(flatten_buffers(local).double())
    expected = sum(n * b for n, b in zip(sizes, clients, strict=True)) / sum(sizes)
    torch.testing.assert_close(result.clients[1].buffers.double(), torch.stack(clients), rtol=0, atol=1e-5)
    torch.testing.assert_close(result.buffers[1].double(), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, torch.stack(clients).mean(0), atol=1e-3)  # the plain mean is another


def test_run_is_bit_identical_on_cpu():
    data = tiny_data()
    cfg = TrainConfig(rounds=2, local_epochs=2, batch_size=8, lr=0.1, seed=5)

    a = run_federated(tiny_model(), data, Strategy(), cfg)
    b = run_federated(tiny_model(), data, Strategy(), cfg)

    assert torch.equal(a.params, b.params)


@pytest.mark.parametrize("keep", [True, False])
def test_kept_optimizer_state_makes_one_client_over_rounds_centralised_sgd(keep, float64_default):
    """keep_optimizer_state: one client with all data, 3 rounds = one SGD run with one momentum buffer."""
    # Prepare: in float64, as each round passes the client through the server's average, whose rounding the next
    # rounds carry on: in float32 each side departed from its float64 run by up to 1e-7, so their gap was bounded
    # only by a fifth of a 1e-6 tolerance
    data = tiny_data(num_clients=1, n=50)
    cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, seed=3, keep_optimizer_state=keep)
    reference = tiny_model()
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for t in (1, 2, 3):  # one optimiser across the rounds: the centralised run
        for b in batch_order(50, 8, 1, client_generator(3, t, 0)):
            opt.zero_grad()
            F.cross_entropy(reference(data.x_train[b]), data.y_train[b]).backward()
            opt.step()

    # Execute
    result = run_federated(tiny_model(), data, Strategy(), cfg)

    # Assert: equal with kept momentum (to float64 rounding); a fresh optimiser every round is another run
    assert result.params.dtype == flatten_params(reference).dtype == torch.float64
    gap = float((result.params[-1] - flatten_params(reference)).abs().max())
    assert (gap < 1e-12) is keep, gap
    if not keep:
        assert gap > 1e-4


def test_kept_optimizer_state_survives_a_resume(tmp_path, monkeypatch):
    # Prepare
    data = tiny_data(num_clients=3, sizes=[20, 30, 40])
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, participation=0.67, seed=1,
                      keep_optimizer_state=True)
    reference = run_federated(tiny_model(), data, Strategy(), cfg)
    killed_after_round(monkeypatch, 2, lambda: run_federated(tiny_model(), data, Strategy(), cfg,
                                                             progress_dir=tmp_path, progress_key="k"))

    # Execute
    resumed = run_federated(tiny_model(), data, Strategy(), cfg, progress_dir=tmp_path, progress_key="k")

    # Assert
    assert torch.equal(resumed.params, reference.params)


@pytest.mark.parametrize(("mode", "expected"), [("auto", "sequential"), ("vectorized", ValueError)])
def test_kept_optimizer_state_trains_clients_sequentially(mode, expected):
    cfg = TrainConfig(keep_optimizer_state=True, client_parallel=mode)
    if expected is ValueError:
        with pytest.raises(ValueError, match="keep_optimizer_state"):
            resolve_client_parallel(tiny_model(), Strategy(), cfg)
    else:
        assert resolve_client_parallel(tiny_model(), Strategy(), cfg) == expected

def test_resume_after_crash_gives_identical_checkpoints(tmp_path, monkeypatch):
    data = tiny_data(num_clients=3)
    cfg = TrainConfig(rounds=5, local_epochs=1, batch_size=8, lr=0.1, momentum=0.5, save_clients_at=(2, 4), seed=2)
    reference = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg)
    killed_after_round(monkeypatch, 3, lambda: run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg,
                                                             progress_dir=tmp_path, progress_key="k"))
    # a truncated file of the next round (killed while writing) must not matter
    (tmp_path / "round_00004.pt").write_bytes(b"garbage")

    resumed = run_federated(tiny_model(seed=99), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path,
                            progress_key="k")

    assert torch.equal(resumed.params, reference.params)
    assert torch.equal(resumed.clients[4].params, reference.clients[4].params)
    assert torch.equal(resumed.clients[2].params, reference.clients[2].params)


@pytest.mark.parametrize(("killed_after", "expected", "trained"), [
    (0, [(1, "now")], True),  # round 0 only evaluated: no round trained before this call
    (2, [(1, None), (3, "now")], True),  # rounds 1-2 by a call of unknown compute and code
    (3, [(1, None)], False),  # every round done: this call trains none
])
def test_progress_saved_before_attempts_were_kept_counts_as_one_attempt_of_unknown_compute(tmp_path, monkeypatch,
                                                                                          killed_after, expected,
                                                                                          trained):
    # Prepare: a run killed after round `killed_after`, its progress as saved before it listed the attempts
    data = tiny_data(num_clients=3)
    cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.1, seed=2)
    killed_after_round(monkeypatch, killed_after, lambda: run_federated(tiny_model(), data, Strategy(), cfg,
                                                                        progress_dir=tmp_path, progress_key="k"))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["attempts"]
    torch.save(state, tmp_path / "state.pt")

    # Execute
    resumed = run_federated(tiny_model(), data, Strategy(), cfg, progress_dir=tmp_path, progress_key="k",
                            attempt={"code": "now"})

    # Assert: the earlier rounds' attempt first, with its first round alone (no compute, no code)
    assert [(a["from_round"], a.get("code")) for a in resumed.attempts] == expected
    assert resumed.attempts[0].keys() == ({"from_round"} if killed_after else {"from_round", "code", "execution"})
    assert resumed.trained == trained


def test_progress_of_other_settings_is_not_resumed(tmp_path):
    data = tiny_data()
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.1, seed=0)
    run_federated(tiny_model(seed=1), data, Strategy(), cfg, progress_dir=tmp_path, progress_key="old")

    fresh = run_federated(tiny_model(), data, Strategy(), cfg, progress_dir=tmp_path, progress_key="new")

    assert torch.equal(fresh.params[0], flatten_params(tiny_model()))


def test_divergence_stops_with_status():
    data = tiny_data()
    cfg = TrainConfig(rounds=5, local_epochs=1, batch_size=8, lr=1e6, seed=0)

    result = run_federated(tiny_model(), data, Strategy(), cfg)

    assert result.status == "diverged"
    assert result.rows[-1]["status"] == "diverged"
    assert len(result.rows) < 6


@pytest.mark.parametrize(("loss", "diverged"), [(2.3e19, True), (DIVERGED_LOSS * 1.01, True), (DIVERGED_LOSS, False)])
def test_a_finite_but_exploding_loss_also_marks_the_run_diverged(monkeypatch, loss, diverged):
    """One rule: a training loss above DIVERGED_LOSS (not only a NaN) is a divergence, and training stops."""
    # Prepare: the global model's training loss at round 2 is replaced by `loss`
    calls = []
    real = engine_mod.evaluate

    def evaluate(model, x, y, batch_size, never_correct=()):
        result = real(model, x, y, batch_size, never_correct)
        calls.append(None)
        return EvalResult(loss, result.acc, result.n) if len(calls) == 5 else result  # round 2, training data

    monkeypatch.setattr(engine_mod, "evaluate", evaluate)
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=8, lr=0.1, seed=0)

    # Execute
    result = run_federated(tiny_model(), tiny_data(), Strategy(), cfg)

    # Assert
    assert [row["status"] for row in result.rows][:3] == ["ok", "ok", "diverged" if diverged else "ok"]
    assert (len(result.rows) == 3) is diverged and result.status == ("diverged" if diverged else "ok")


# -- eval_every: where a run stops is not its cadence's ---------------------------------------------------------------
ROW_METRICS = ("round", "train_loss", "train_acc", "test_loss", "test_acc", "status", *SWA_METRICS)


def _metrics(rows: list[dict]) -> list[dict]:
    """The rows' metrics (not their timing), NaN as None (NaN never equals itself): the same computation gives equal
    lists."""
    return [{k: None if isinstance(row.get(k), float) and math.isnan(row[k]) else row.get(k) for k in ROW_METRICS}
            for row in rows]


@pytest.fixture(scope="module")
def digits_clients() -> FederatedData:
    """digits: 6 clients of 60 samples of a Dirichlet(0.5) split (seed 0), 200 test samples."""
    ds = load_dataset("digits", proxy_fraction=0.2)
    part = make_partition(ds.y_train.numpy(), 6, 0.5, 0, 10, 1000)
    return FederatedData(ds.x_train, ds.y_train, [torch.as_tensor(i)[:60] for i in part.client_indices],
                         ds.x_test[:200], ds.y_test[:200])


def _digits_run(data: FederatedData, lr: float, eval_every: int, swa: SWAConfig | None, **kw):
    """8 rounds of FedAvg with momentum 0.9 on `data` from an MLP of seed 0, sequentially."""
    cfg = TrainConfig(rounds=8, local_epochs=1, batch_size=16, lr=lr, momentum=0.9, seed=0, eval_every=eval_every,
                      client_parallel="sequential")
    return run_federated(tiny_model(), data, make_strategy("fedavg"), cfg, swa=swa, **kw)


# Each round an SWA cycle end (its lr unscheduled: lr_ratio 1), so that an exploded model between two evaluations
# would be averaged in.
EVERY_ROUND_SWA = SWAConfig(start_round=1, cycle=1, lr_ratio=1.0)


@pytest.mark.parametrize("swa", [None, EVERY_ROUND_SWA], ids=["plain", "swa"])
@pytest.mark.parametrize(("lr", "status"), [
    (0.5, "ok"),  # calm: every round's loss in bounds
    # the global model of round 1 at 3.9e11, the clients' mean local training loss of round 1 at 2.8e8: above the
    # bound; the run recovers by round 4 (a loss of 16), where eval_every 4 evaluated it next
    (20.0, "diverged"),
    # the global model of round 1 at 2.7e7, the clients' of round 1 at 936, in bounds: round 2's clients, who start
    # from it, are not
    (5.0, "diverged"),
], ids=["calm", "clients-exploded", "start-model-exploded"])
def test_a_run_evaluated_every_4_rounds_ends_as_the_one_evaluated_every_round(digits_clients, lr, status, swa):
    # Prepare: the run evaluated every round
    every = _digits_run(digits_clients, lr, 1, swa)
    stop = every.rows[-1]["round"]

    # Execute
    thinned = _digits_run(digits_clients, lr, 4, swa)

    # Assert: the same status and models, rows at its cadence and where it stops, equal to the every-round run's
    assert thinned.status == every.status == status
    assert _metrics(thinned.rows) == _metrics([row for row in every.rows if row["round"] in (0, 4, 8, stop)])
    assert torch.equal(thinned.rounds, every.rounds) and torch.equal(thinned.params, every.params)
    assert thinned.client_stats == every.client_stats
    assert (thinned.swa is None) == (every.swa is None) == (swa is None or status == "diverged")
    assert thinned.swa is None or torch.equal(thinned.swa["params"], every.swa["params"])


def test_a_resumed_run_stops_at_the_round_it_restored_where_the_next_rounds_clients_show_that_it_exploded(
        digits_clients, tmp_path, monkeypatch):
    # Prepare: lr 5, whose round 1 exploded with its clients' loss in bounds (above), killed after round 1
    reference = _digits_run(digits_clients, 5.0, 4, None)
    killed_after_round(monkeypatch, 1, lambda: _digits_run(digits_clients, 5.0, 4, None, progress_dir=tmp_path,
                                                           progress_key="k"))

    # Execute
    resumed = _digits_run(digits_clients, 5.0, 4, None, progress_dir=tmp_path, progress_key="k")

    # Assert: the same end; the restored round's time and memory are unknown
    assert resumed.status == reference.status == "diverged" and resumed.rows[-1]["round"] == 1
    assert _metrics(resumed.rows) == _metrics(reference.rows) and torch.equal(resumed.params, reference.params)
    assert math.isnan(resumed.rows[-1]["seconds"]) and math.isnan(resumed.rows[-1]["peak_mem_mb"])


@pytest.mark.parametrize("reported", [1e6, float("inf"), DIVERGED_LOSS])
def test_clients_whose_loss_left_the_bounds_in_a_round_the_global_model_came_through_change_nothing(
        monkeypatch, caplog, reported):
    """The evaluation decides: a round whose clients' loss is out of bounds goes on where the global model's is not,
    and the run reports at its cadence alone."""
    # Prepare: the clients of round 2 report `reported` as their local training loss
    cfg = TrainConfig(rounds=6, local_epochs=1, batch_size=8, lr=0.1, momentum=0.5, seed=0, eval_every=3,
                      client_parallel="sequential")
    reference = run_federated(tiny_model(), tiny_data(), make_strategy("fedavg"), cfg)
    real = SequentialTrainer.train_round

    def train_round(self, global_params, global_buffers, sampled, round_):
        results = real(self, global_params, global_buffers, sampled, round_)
        return [dataclasses.replace(r, train_loss=reported) for r in results] if round_ == 2 else results

    monkeypatch.setattr(SequentialTrainer, "train_round", train_round)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        result = run_federated(tiny_model(), tiny_data(), make_strategy("fedavg"), cfg)

    # Assert: the same run, said where a loss was out of bounds
    assert result.status == "ok" and _metrics(result.rows) == _metrics(reference.rows)
    assert [row["round"] for row in result.rows] == [0, 3, 6] and torch.equal(result.params, reference.params)
    assert ("round 2: the clients' mean local training loss" in caplog.text) is (reported > DIVERGED_LOSS)


@pytest.mark.parametrize(("scale", "diverged"), [(1e4, True), (float("nan"), True), (1.0, False)])
def test_an_initial_model_that_already_diverged_is_refused_before_any_round(tmp_path, scale, diverged):
    """A start whose training loss is not finite or above DIVERGED_LOSS is the init's fault: refused on every call,
    rather than a run that "finishes" untrained with status diverged."""
    # Prepare: the tiny model's weights scaled (1e4: a finite loss far above DIVERGED_LOSS; NaN: a broken init)
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.1, seed=0)

    # Execute / Assert
    if diverged:
        with pytest.raises(engine_mod.InitialModelDiverged, match="initial model's training loss"):
            run_federated(model, tiny_data(), Strategy(), cfg, progress_dir=tmp_path, progress_key="k")
        # a second call (the job run again without remaking the init) is refused as well, not resumed as finished
        with pytest.raises(engine_mod.InitialModelDiverged):
            run_federated(model, tiny_data(), Strategy(), cfg, progress_dir=tmp_path, progress_key="k")
    else:
        assert run_federated(model, tiny_data(), Strategy(), cfg).status == "ok"


def test_kept_models_are_stacked_as_torch_stack_stacks_them_and_each_record_lets_go_of_its_own():
    # Prepare: three kept rounds' records of a 5-parameter model
    records = [{"round": r, "params": torch.randn(5, generator=torch.Generator().manual_seed(r))} for r in range(3)]
    expected = torch.stack([r["params"] for r in records])

    # Execute
    stacked = engine_mod._stack_kept(records, "params")

    # Assert: the same tensor, and the records no longer hold a second copy of it
    assert torch.equal(stacked, expected) and stacked.dtype == expected.dtype
    assert all("params" not in r for r in records)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_evaluate_takes_the_loss_in_the_models_dtype(dtype):
    # Prepare: a model and data in `dtype`, and the summed cross-entropy of its logits in that dtype
    model, data = tiny_model().to(dtype), tiny_data()
    x, y = data.x_train.to(dtype), data.y_train
    with torch.no_grad():
        logits = model(x)
    expected = float(F.cross_entropy(logits, y, reduction="sum")) / len(y)
    in_float32 = float(F.cross_entropy(logits.float(), y, reduction="sum")) / len(y)

    # Execute
    got = evaluate(model, x, y, batch_size=len(y))

    # Assert: float64 runs are compared to float64 rounding, which float32 logits would miss by far
    assert got.loss == pytest.approx(expected, rel=1e-12)
    assert (abs(in_float32 - expected) > 1e-10 * expected) == (dtype == torch.float64)


@pytest.mark.parametrize(("kwargs", "message"), [({"rounds": 0}, "rounds"), ({"participation": 1.5}, "participation"),
                                                 ({"rounds": 3, "save_clients_at": (4,)}, "save_clients_at")])
def test_train_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_two_identical_runs_write_byte_identical_checkpoints(tmp_path):
    # Prepare: the same run twice, each saved under its own directory (the temporary names differ)
    data = tiny_data()
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.1, seed=5, save_clients_at=(1, 2))
    model = tiny_model()
    meta = ModelMeta("tiny", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    digests = []
    for name in ("a", "b"):
        result = run_federated(tiny_model(), data, Strategy(), cfg)
        (tmp_path / name).mkdir()
        save_trajectory(tmp_path / name / "trajectory.pt", result.params, result.buffers, result.rounds, meta,
                        {"run_id": "r", "status": result.status})
        save_clients(tmp_path / name / "clients.pt", result.clients, meta, {"run_id": "r"})

        # Execute
        digests.append([hashlib.sha256((tmp_path / name / f).read_bytes()).hexdigest()
                        for f in ("trajectory.pt", "clients.pt")])

    # Assert: equal SHA-256, so a checksum can confirm that a run was reproduced
    assert digests[0] == digests[1]


def test_a_loaded_trajectory_is_the_callers_own_however_the_file_is_written_or_replaced_after(tmp_path):
    """A trajectory is mapped from its file rather than read (a few rounds of a 21 GB one cost those pages alone):
    writing into the loaded tensors must not reach the file, and a rerun's atomic replacement of the file must not
    change what a reader holds."""
    # Prepare: a trajectory on disk, loaded
    meta = ModelMeta("mlp", 10, 1, 28)
    params = torch.arange(12, dtype=torch.float32).view(3, 4)
    path = tmp_path / "t.pt"
    save_trajectory(path, params, torch.zeros(3, 0), torch.arange(3), meta, {})
    written = path.read_bytes()
    traj = load_trajectory(path)

    # Execute: the reader writes into its tensors, and the file is replaced as a rerun replaces it
    traj.params[0].fill_(-1.0)
    save_trajectory(path, params + 100, torch.zeros(3, 0), torch.arange(3), meta, {})

    # Assert: the reader sees its own write and the old values elsewhere; the replaced file holds the new values only
    assert traj.params[0].eq(-1.0).all() and torch.equal(traj.params[1:], params[1:])
    assert torch.equal(load_trajectory(path).params, params + 100) and path.read_bytes() != written


def test_checkpoint_round_trip(tmp_path):
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    meta = ModelMeta("cnn_small", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    params = torch.stack([flatten_params(model), flatten_params(model) + 1])
    save_trajectory(tmp_path / "t.pt", params, torch.zeros(2, 0), torch.arange(2), meta, {"seed": 4})
    clients = {1: ClientRound(1, torch.tensor([0, 2]), torch.tensor([5, 7]), params, torch.zeros(2, 0))}
    save_clients(tmp_path / "c.pt", clients, meta, {})

    traj = load_trajectory(tmp_path / "t.pt")
    loaded = load_clients(tmp_path / "c.pt")

    assert torch.equal(traj.params, params) and traj.meta == {"seed": 4} and traj.model_meta == meta
    assert torch.equal(flatten_params(traj.model_at(1)), params[1])
    assert torch.equal(loaded[1].params, params) and loaded[1].client_ids.tolist() == [0, 2]
    with pytest.raises(KeyError, match="round 5"):
        traj.model_at(5)


@pytest.mark.parametrize(("status", "error"), [("ok", True), ("diverged", False)])
def test_non_finite_weights_in_a_run_marked_ok_are_damage_not_divergence(tmp_path, status, error):
    # Prepare: the last model of a trajectory has NaN weights
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    meta = ModelMeta("mlp", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    params = torch.stack([flatten_params(model), torch.full_like(flatten_params(model), math.nan)])
    save_trajectory(tmp_path / "t.pt", params, torch.zeros(2, 0), torch.arange(2), meta, {"status": status})
    traj = load_trajectory(tmp_path / "t.pt")

    # Execute / Assert
    if error:
        with pytest.raises(CheckpointError, match=r"t\.pt: the model of round 1 has NaN/inf parameters although "
                                                  r"the run is marked ok"):
            traj.unusable(1)
    else:
        assert "NaN/inf parameters" in traj.unusable(1)
    assert traj.unusable(0) is None

@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_checkpoint_names_file_and_fix(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "something-else"}, path)
    else:
        path.write_bytes(content)

    with pytest.raises(CheckpointError, match=r"snakemake --cores 1 --forcerun .*bad\.pt") as err:
        load_trajectory(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("given", "load", "says"), [
    ("clients.pt", load_trajectory, "is not a fedscape trajectory checkpoint: this is a clients checkpoint: read it "
                                    "with load_clients"),
    ("trajectory.pt", load_clients, "is not a fedscape clients checkpoint: this is a trajectory checkpoint: read "
                                    "it with load_trajectory"),
    ("metrics.csv", load_trajectory, "it is truncated or not a fedscape checkpoint; no job makes it: fedscape's "
                                     "checkpoints are the .pt files"),
])
def test_a_file_that_is_no_checkpoint_of_the_kind_asked_says_what_it_is_without_a_remake_hint(tmp_path, given, load,
                                                                                             says):
    # Prepare: a healthy run's trajectory and clients, and a table beside them
    _saved_trajectory(tmp_path / "trajectory.pt", "cnn_small")
    (tmp_path / "metrics.csv").write_text("round,loss\n0,2.3\n")

    # Execute
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / given)

    # Assert: what the file is and which loader reads it; never the command that would rerun a healthy training
    assert f"{tmp_path / given} " in str(err.value)
    assert says in str(err.value)
    assert "--forcerun" not in str(err.value)


@pytest.mark.parametrize(("round_", "expected"), [(0, 0), (2, 2), ("final", 3)])
def test_a_round_is_an_int_or_final(tmp_path, round_, expected):
    # Prepare: a 3-round trajectory whose rows differ
    path = tmp_path / "trajectory.pt"
    _saved_trajectory(path, "cnn_small", rounds=3)
    traj = load_trajectory(path)

    # Execute
    model = traj.model_at(round_)

    # Assert
    assert traj.row(round_) == expected
    assert torch.equal(flatten_params(model), traj.params[expected])


@pytest.mark.parametrize("round_", ["2", "last", 2.0, True, None])
def test_a_round_of_another_type_is_a_type_error_naming_it(tmp_path, round_):
    # Prepare
    path = tmp_path / "trajectory.pt"
    _saved_trajectory(path, "cnn_small", rounds=3)
    traj = load_trajectory(path)

    # Execute / Assert: model_at, row and unusable alike
    for call in (traj.model_at, traj.row, traj.unusable):
        with pytest.raises(TypeError, match=re.escape(f"round is an int or 'final', got {round_!r}")):
            call(round_)


def test_an_unsaved_round_of_the_clients_names_the_saved_ones(tmp_path):
    # Prepare: clients saved at round 1
    _saved_trajectory(tmp_path / "trajectory.pt", "cnn_small")
    saved = load_clients(tmp_path / "clients.pt")

    # Execute / Assert: a present round as before, a missing one names the file and the saved rounds
    assert saved[1].round == 1 and list(saved) == [1] and saved.get(10) is None and 10 not in saved
    with pytest.raises(KeyError, match=r"clients\.pt: the clients of round 10 are not saved; it holds rounds 1 "
                                       r"\(training\.save_clients_at\)"):
        saved[10]  # noqa: B018


def _saved_trajectory(path, model_name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                      width_change: int = 0, rounds: int = 1):
    """A trajectory of `rounds` rounds (row t: every parameter t) and its clients saved at round 1, beside it."""
    model = build_model(model_name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    meta = ModelMeta(model_name, num_classes, in_channels, image_size, {},
                     tuple(n for n, _ in model.named_parameters()), tuple(tuple(p.shape) for p in model.parameters()))
    flat = flatten_params(model)
    params = torch.arange(rounds + 1.0).unsqueeze(1).repeat(1, flat.numel() + width_change)
    save_trajectory(path, params, torch.zeros(rounds + 1, 0), torch.arange(rounds + 1), meta, {"status": "ok"})
    clients = {1: ClientRound(1, torch.tensor([0]), torch.tensor([5]), params[:1], torch.zeros(1, 0))}
    save_clients(path.with_name("clients.pt"), clients, meta, {})
    return flat.numel()


RUN = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~4/part~1.0/seed~0"


@pytest.mark.parametrize(("model_name", "num_classes", "found"), [
    ("mlp", 10, "found mlp for 10 classes of 1x8x8 inputs ({n} parameters)"),
    ("cnn_small", 100, "found cnn_small for 100 classes of 1x8x8 inputs ({n} parameters)"),
])
def test_a_trajectory_of_another_model_is_one_line_naming_file_expected_and_found(tmp_path, model_name, num_classes,
                                                                                  found):
    # Prepare: the file of a run of another model (or of a dataset with another class count)
    path = tmp_path / "trajectory.pt"
    n = _saved_trajectory(path, model_name, num_classes=num_classes)
    expected = sum(p.numel() for p in build_model("cnn_small", num_classes=10, in_channels=1,
                                                  image_size=8).parameters())

    # Execute
    with pytest.raises(CheckpointError) as err:
        load_trajectory(path, run_id=RUN)
    with pytest.raises(CheckpointError) as err_clients:
        load_clients(tmp_path / "clients.pt", run_id=RUN)

    # Assert
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: expected the model of run {RUN}, cnn_small for 10 "
                                                      f"classes of 1x8x8 inputs ({expected} parameters")
    assert found.format(n=n) in message
    assert f"snakemake --cores 1 --forcerun {path}" in message
    assert str(err_clients.value).startswith(f"{tmp_path / 'clients.pt'}: expected the model of run {RUN}")


@pytest.mark.parametrize("kind", ["trajectory", "clients"])
def test_a_checkpoint_of_another_run_of_the_same_model_is_refused_by_its_recorded_run(tmp_path, kind):
    # Prepare: the checkpoints of the seed-1 run of the same model and data (a valid file, in the wrong place)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    meta = ModelMeta("cnn_small", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    params = flatten_params(model).unsqueeze(0)
    other = RUN.replace("seed~0", "seed~1")
    save_trajectory(tmp_path / "trajectory.pt", params, torch.zeros(1, 0), torch.arange(1), meta, {"run_id": other})
    save_clients(tmp_path / "clients.pt", {1: ClientRound(1, torch.tensor([0]), torch.tensor([5]), params,
                                                          torch.zeros(1, 0))}, meta, {"run_id": other})
    load = load_trajectory if kind == "trajectory" else load_clients
    path = tmp_path / f"{kind}.pt"

    # Execute / Assert: its own run loads it, this run refuses it with both run ids and the command that remakes it
    load(path, run_id=other)
    with pytest.raises(CheckpointError) as err:
        load(path, run_id=RUN)
    assert f"{path} is not a checkpoint of run {RUN}: run_id '{other}' (expected '{RUN}')" in str(err.value)
    assert "--forcerun" in str(err.value)


def test_a_trajectory_of_the_runs_model_loads_and_one_whose_width_disagrees_with_its_model_is_damaged(tmp_path):
    # Prepare
    good, bad = tmp_path / "good" / "trajectory.pt", tmp_path / "bad" / "trajectory.pt"
    good.parent.mkdir()
    bad.parent.mkdir()
    n = _saved_trajectory(good, "cnn_small")
    _saved_trajectory(bad, "cnn_small", width_change=-3)

    # Execute / Assert
    assert load_trajectory(good, run_id=RUN).params.shape == (2, n)
    with pytest.raises(CheckpointError, match=rf"{bad}: holds {n - 3} parameters per model, but its own model "
                                              rf"\(cnn_small for 10 classes of 1x8x8 inputs\) has {n}"):
        load_trajectory(bad)


def _layout_meta(model, model_name: str = "cnn_small", options: dict | None = None, **recorded) -> ModelMeta:
    """`model`'s meta (10 classes of 1x8x8 inputs), its recorded names and shapes replaced by `recorded`'s."""
    layout = {"param_names": tuple(n for n, _ in model.named_parameters()),
              "param_shapes": tuple(tuple(p.shape) for p in model.parameters())}
    return ModelMeta(model_name, 10, 1, 8, options or {}, **{**layout, **recorded})


@pytest.mark.parametrize(("change", "says"), [
    ("reordered", "records parameter 3 as 'last_block.0.bias' [32], but this version of the model's code builds "
                  "'features.2.bias' [32] there"),
    ("reshaped", "records parameter 6 as 'fc.weight' [128, 64], but this version of the model's code builds "
                 "'fc.weight' [64, 128] there"),
])
def test_a_trajectory_whose_recorded_parameter_layout_is_not_the_built_models_refuses_to_build_it(tmp_path, change,
                                                                                                  says):
    # Prepare: cnn_small's trajectory as an earlier version of its code would have written it, at today's count:
    # two equally shaped biases in the other order (their shapes alone cannot tell), or fc's weight transposed
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    names = [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for p in model.parameters()]
    if change == "reordered":
        names[3], names[5] = names[5], names[3]
    else:
        shapes[6] = shapes[6][::-1]
    meta = _layout_meta(model, param_names=tuple(names), param_shapes=tuple(shapes))
    params = flatten_params(model).unsqueeze(0)
    save_trajectory(tmp_path / "trajectory.pt", params, torch.zeros(1, 0), torch.arange(1), meta, {"status": "ok"})
    traj = load_trajectory(tmp_path / "trajectory.pt")  # the count agrees: loading the rows alone is fine

    # Execute / Assert: building its model (every reader's way to its parameters) names the file, the first
    # parameter that differs and why, rather than loading the rows scrambled
    for build in (lambda: traj.model_at(0), traj.model_meta.build):
        with pytest.raises(CheckpointError) as err:
            build()
        message = str(err.value)
        assert message.startswith(f"{tmp_path / 'trajectory.pt'}: its model (cnn_small for 10 classes of 1x8x8 "
                                  f"inputs) {says}: the checkpoint was written by another version of the model's code")
        assert "--forcerun" in message and "\n" not in message


@pytest.mark.parametrize("recorded", ["as built", "no names", "projection head"])
def test_a_trajectory_recording_its_models_layout_or_none_builds_it(tmp_path, recorded):
    # Prepare: a trajectory that records the layout its model is built with (MOON's projection head among it, as
    # `ModelMeta.with_options` records it), or one written before names were recorded (only its count is checked)
    options = {"projection_head": True} if recorded == "projection head" else {}
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, **options)
    unrecorded = {"param_names": (), "param_shapes": ()} if recorded == "no names" else {}
    meta = _layout_meta(model, options=options, **unrecorded)
    params = torch.stack([flatten_params(model), flatten_params(model) + 1])
    save_trajectory(tmp_path / "trajectory.pt", params, torch.zeros(2, 0), torch.arange(2), meta, {"status": "ok"})

    # Execute
    built = load_trajectory(tmp_path / "trajectory.pt").model_at(1)

    # Assert
    assert torch.equal(flatten_params(built), params[1])
    assert [n for n, _ in built.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_flat_params_view_shares_storage():
    model = tiny_model()
    flat = FlatParams(model)
    v = torch.arange(flat.vector.numel(), dtype=torch.float32)

    flat.set(v)

    assert torch.equal(flatten_params(model), v)
    with torch.no_grad():
        next(model.parameters()).add_(1)
    assert flat.vector[0] == 1
    other = tiny_model(1)
    load_params(other, v)
    assert torch.equal(flatten_params(other), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flattened_params_and_buffers_keep_the_models_dtype(dtype):
    # Prepare: a model with floating buffers (batch norm) in `dtype`, its running statistics moved off 0 and 1
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=8, norm="batch").to(dtype)
    model(torch.randn(4, 1, 8, 8, dtype=dtype))

    # Execute
    params, buffers = flatten_params(model), flatten_buffers(model)

    # Assert: float64 runs are compared to float64 rounding, so a float64 model's vectors stay float64, exactly
    assert params.dtype == buffers.dtype == dtype
    assert torch.equal(params, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(buffers, torch.cat([b.reshape(-1) for b in model.buffers() if b.is_floating_point()]))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_gives_the_model_its_mode_back_when_a_batch_fails(training):
    # Prepare: a model whose second batch raises (as a card out of memory does)
    model, data = tiny_model(), tiny_data()
    model.train(training)
    calls = []

    def fail_second(module, args):
        calls.append(module.training)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")

    model.register_forward_pre_hook(fail_second)

    # Execute
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(model, data.x_train, data.y_train, batch_size=4)

    # Assert: the batches ran in eval mode, and the model is back in the mode it came in
    assert calls == [False, False] and model.training is training


# -- a checkpoint's buffers: recorded by name and shape, and checked against the model built from its meta ----------
def _batch_norm_trajectory(path, options: dict, recorded: bool) -> torch.Tensor:
    """A trajectory of resnet20 with batch norm (running statistics moved off 0 and 1), whose meta names `options`;
    its buffer layout recorded as a train job records it (`ModelMeta.with_options`), or not (a file written before
    the record). Its buffers' row."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=8, norm="batch")
    model(torch.randn(4, 1, 8, 8))
    meta = ModelMeta("resnet20", 10, 1, 8, options).with_options({}, model)
    if not recorded:
        meta = dataclasses.replace(meta, buffer_names=None, buffer_shapes=None)
    buffers = flatten_buffers(model)
    save_trajectory(path, flatten_params(model)[None], buffers[None], torch.arange(1), meta, {"status": "ok"})
    return buffers


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
@pytest.mark.parametrize(("options", "says"), [
    ({"norm": "batch"}, None),
    ({}, None),  # batch norm by default
    # group norm has batch norm's parameters, and no buffers
    ({"norm": "group"}, {True: "records buffer 0 as 'stem_norm.running_mean' [16], but the model built from its name "
                               "and options has no buffer there",
                         False: "holds 1376 buffer entries per model, but the model built from its name and options "
                                "has 0"}),
], ids=["batch", "default", "group"])
def test_a_trajectory_whose_buffers_are_not_its_models_refuses_to_build_it_naming_the_file(tmp_path, options, says,
                                                                                           recorded):
    # Prepare: a batch-norm model's trajectory whose meta names its own norm, or group norm (as a meta written
    # with the wrong options would)
    path = tmp_path / "trajectory.pt"
    buffers = _batch_norm_trajectory(path, options, recorded)
    traj = load_trajectory(path)  # the parameters' layout and count agree: loading the rows alone is fine

    # Execute / Assert: its own model loads its buffers; another one's build names the file, what differs and the
    # remedy, where it failed at the first load with a bare count
    if says is None:
        assert torch.equal(flatten_buffers(traj.model_at(0)), buffers)
        return
    for build in (lambda: traj.model_at(0), traj.model_meta.build):
        with pytest.raises(CheckpointError) as err:
            build()
        message = str(err.value)
        assert message.startswith(f"{path}: its model (resnet20 with options {{'norm': 'group'}} for 10 classes of "
                                  f"1x8x8 inputs) {says[recorded]}: its buffers were flattened from another model")
        assert "--forcerun" in message and "\n" not in message


def test_a_checkpoint_records_its_buffers_for_new_files_and_reads_old_ones_unchanged(tmp_path):
    # Prepare: a new file's meta (as a train job writes it) and an old one's, as read from their files
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=8, norm="batch")
    new = ModelMeta("resnet20", 10, 1, 8, {"norm": "batch"}).with_options({}, model)
    old = {key: value for key, value in new.to_dict().items() if not key.startswith("buffer_")}

    # Execute
    read_new, read_old = ModelMeta.from_dict(new.to_dict()), ModelMeta.from_dict(old)

    # Assert: the new meta names every floating buffer in order (each batch norm's running mean and variance); the
    # old one records none, and writes back the keys it was read with
    names = [n for n, b in model.named_buffers() if b.is_floating_point()]
    assert read_new == new and read_new.buffer_names == tuple(names) and len(names) == 2 * 19
    assert read_new.num_buffers == flatten_buffers(model).numel() == 2 * 688  # 688 channels
    assert read_old.buffer_names is None and read_old.num_buffers is None
    assert read_old.to_dict() == old


def test_a_trajectory_whose_buffer_rows_disagree_with_its_recorded_buffers_is_damaged(tmp_path):
    # Prepare: a file whose rows hold fewer buffer entries than its meta records
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=8, norm="batch")
    meta = ModelMeta("resnet20", 10, 1, 8, {"norm": "batch"}).with_options({}, model)
    path = tmp_path / "trajectory.pt"
    save_trajectory(path, flatten_params(model)[None], flatten_buffers(model)[None, :-3], torch.arange(1), meta,
                    {"status": "ok"})

    # Execute / Assert
    with pytest.raises(CheckpointError, match=rf"{path}: holds 1373 buffer entries per model, but its own model "
                                              r"\(resnet20 with options \{'norm': 'batch'\} for 10 classes of 1x8x8 "
                                              r"inputs\) records 1376: the file is damaged; .*--forcerun"):
        load_trajectory(path)
