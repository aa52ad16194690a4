"""The run seed (`TrainConfig.seed`) reaches every random stream of training: each client's batch order
(`fl.local.client_generator`), the clients sampled each round (`fl.settings.sample_clients`), and so a whole run. A
stream that dropped it would give every seed of a setting the same draws, and the statistics over seeds one run's."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_data, tiny_model

from fedscape.fl.engine import run_federated
from fedscape.fl.local import batch_order, client_generator
from fedscape.fl.settings import TrainConfig, sample_clients
from fedscape.fl.strategies.base import Strategy

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

SIZES = [10, 20, 30, 30]  # unequal shards: each client its own number of batches


@pytest.mark.parametrize(("round_", "client"), [(1, 0), (3, 2)])
def test_two_seeds_give_a_client_two_batch_orders(round_, client):
    # Prepare / Execute: the batches of 50 samples in one pass, the client's generator from seeds 1 and 2
    orders = [batch_order(50, 8, 1, client_generator(seed, round_, client)) for seed in (1, 2)]
    again = batch_order(50, 8, 1, client_generator(1, round_, client))

    # Assert: each seed its own order of the same samples; one seed, one order
    assert [b.tolist() for b in orders[0]] != [b.tolist() for b in orders[1]]
    assert sorted(torch.cat(orders[0]).tolist()) == sorted(torch.cat(orders[1]).tolist()) == list(range(50))
    assert [b.tolist() for b in again] == [b.tolist() for b in orders[0]]


def test_two_seeds_sample_other_clients():
    # Prepare / Execute: 10 of 50 clients in each of rounds 1-3, from seeds 1 and 2
    picks = {seed: [sample_clients(seed, t, 50, 0.2) for t in (1, 2, 3)] for seed in (1, 2)}

    # Assert: the seeds' rounds differ (the chance that 10 of 50 clients come out the same is 1e-10 a round)
    assert all(len(p) == 10 for p in picks[1] + picks[2])
    assert all(a != b for a, b in zip(picks[1], picks[2], strict=True))


@pytest.mark.parametrize("client_parallel", ["sequential", "vectorized"])
def test_two_seeds_train_a_run_of_all_clients_to_two_models(client_parallel):
    # Prepare: every client in the round, so that the seed reaches the model through the batch orders alone
    data = tiny_data(num_clients=4, sizes=SIZES)

    def run(seed):
        cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=8, lr=0.1, seed=seed, client_parallel=client_parallel)
        return run_federated(tiny_model(), data, Strategy(), cfg)

    # Execute
    a, b, again = run(1), run(2), run(1)

    # Assert: one initial model, two trained ones; the same seed trains the same one
    assert a.execution == b.execution == client_parallel and torch.equal(a.params[0], b.params[0])
    assert not torch.allclose(a.params[1], b.params[1], atol=1e-4)
    assert torch.equal(a.params[1], again.params[1])


@pytest.mark.parametrize("client_parallel", ["sequential", "vectorized"])
def test_the_clients_a_run_trains_are_its_own_seed_s_sample(client_parallel):
    # Prepare: half of four clients a round, the clients of every round saved
    data = tiny_data(num_clients=4, sizes=SIZES)
    rounds = (1, 2, 3)

    def trained(seed):
        cfg = TrainConfig(rounds=3, local_epochs=1, batch_size=8, lr=0.1, seed=seed, participation=0.5,
                          save_clients_at=rounds, client_parallel=client_parallel)
        result = run_federated(tiny_model(), data, Strategy(), cfg)
        return [result.clients[t].client_ids.tolist() for t in rounds]

    # Execute
    by_seed = {seed: trained(seed) for seed in (1, 2)}

    # Assert: each run trained the clients its seed samples, and the two seeds' rounds are not all the same clients
    for seed, clients in by_seed.items():
        assert clients == [sample_clients(seed, t, 4, 0.5) for t in rounds]
    assert by_seed[1] != by_seed[2]
