"""SCAFFOLD's and FedDyn's server states after each round: their papers' update rules over the round's clients, in
sequential and vectorised rounds, full and partial participation, on unequal shards; and the server step's numbers,
bit for bit, whatever order the end hooks ran in (the vectorised trainer's: its stack's, longest first)."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import mlp, shard_data
from torch import nn

from fedscape.fl.engine import run_federated
from fedscape.fl.local import batch_order
from fedscape.fl.schedule import update_weight
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientContext, ClientResult
from fedscape.fl.strategies.registry import make_strategy

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

SIZES = [8, 40, 16, 24, 32, 12]  # batch 8: 1 to 5 local steps, so the vectorised stack is not in the results' order
LR, ALPHA = 0.05, 0.1


def hparams(algorithm: str) -> dict | None:
    return {"alpha": ALPHA} if algorithm == "feddyn" else None


@pytest.mark.parametrize("participation", [1.0, 0.5])
@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
@pytest.mark.parametrize("algorithm", ["scaffold", "feddyn"])
def test_the_server_state_follows_the_papers_rule_each_round(algorithm, mode, participation):
    # Prepare: three rounds, every round's clients and global model kept
    data, rounds = shard_data(SIZES), 3
    cfg = TrainConfig(rounds=rounds, local_epochs=1, batch_size=8, lr=LR, momentum=0.0, seed=3, client_parallel=mode,
                      client_chunk_size=4, participation=participation, save_clients_at=tuple(range(1, rounds + 1)))
    strategy = make_strategy(algorithm, hparams(algorithm))
    share = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)  # p_i = n_i / n over all N clients

    # Execute
    result = run_federated(mlp(), data, strategy, cfg)

    # Assert: in float64 from the run's own models, each round's global model and the server's and clients' states
    # (Karimireddy et al. 2020, option II: c_i+ = c_i - c + (x - y_i) / (K lr), c += sum_i p_i (c_i+ - c_i); Acar et
    # al. 2021: g_k -= alpha (w_k - w), h -= alpha sum_k p_k (w_k - w), w+ = mean_k w_k - h / alpha), and the
    # invariant the rules keep: the server state is the p-weighted sum of all N clients' (absent ones at zero)
    server = torch.zeros(result.params.shape[1], dtype=torch.float64)
    kept = torch.zeros(len(SIZES), result.params.shape[1], dtype=torch.float64)
    for t in range(1, rounds + 1):
        x, clients = result.params[t - 1].double(), result.clients[t]
        ids, ys = clients.client_ids.tolist(), clients.params.double()
        assert len(ids) == (6 if participation == 1.0 else 3)
        weights = clients.num_samples.double() / clients.num_samples.sum()
        mean, start = (weights[:, None] * ys).sum(0), server  # SCAFFOLD: the c every client of the round subtracts
        for i, y in zip(ids, ys, strict=True):
            if algorithm == "scaffold":
                steps = len(batch_order(SIZES[i], cfg.batch_size, cfg.local_epochs, torch.Generator()))
                new = kept[i] - start + (x - y) / (steps * LR)
            else:
                new = kept[i] - ALPHA * (y - x)
            server = server + share[i] * (new - kept[i])
            kept[i] = new
        expected = mean if algorithm == "scaffold" else mean - server / ALPHA
        torch.testing.assert_close(result.params[t].double(), expected, rtol=0, atol=1e-6)
    state, store = (strategy.c, strategy.c_clients) if algorithm == "scaffold" else (strategy.h, strategy.grads)
    assert server.abs().max() > 1e-3  # the state moved
    torch.testing.assert_close(state.double(), server, rtol=0, atol=1e-6)
    for i in range(len(SIZES)):
        torch.testing.assert_close(store.get(i, "cpu").double(), kept[i], rtol=0, atol=1e-6)
    torch.testing.assert_close(server, (share[:, None] * kept).sum(0), rtol=0, atol=1e-12)


def one_round(algorithm: str, hooks: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """One server step of six clients on unequal shards after their end hooks, run in `hooks`' way: `results`, the
    stacked hook in the results' order; `stack`, in chunks of the vectorised trainer's order (most steps first);
    `sequential`, each client's `end_local` in turn. (The new global model, the server state, the clients' kept
    vectors.)"""
    model = nn.Linear(20, 10)
    gen = torch.Generator().manual_seed(seed)
    num_params = sum(p.numel() for p in model.parameters())
    global_params = torch.randn(num_params, generator=gen)
    steps = [1, 5, 2, 3, 4, 2]  # ceil(SIZES / 8)
    results = [ClientResult(i, n, global_params + 0.1 * torch.randn(num_params, generator=gen), torch.zeros(0), 1.0,
                            k, update_weight([LR] * k, 0.0))
               for i, (n, k) in enumerate(zip(SIZES, steps, strict=True))]
    strategy = make_strategy(algorithm, hparams(algorithm))
    strategy.setup(len(SIZES), num_params, torch.device("cpu"), model, client_sizes=SIZES)
    if hooks == "sequential":
        for r in results:
            ctx = ClientContext(1, r.client_id, global_params, None, None, torch.Generator(), lr=LR,
                                steps=r.num_steps, step_lrs=[LR] * r.num_steps)
            strategy.begin_local(model, ctx)
            strategy.end_local(model, ctx, r.params)
    else:
        order = sorted(results, key=lambda r: -r.num_steps) if hooks == "stack" else results
        for chunk in (order[:4], order[4:]):
            strategy.begin_stacked([r.client_id for r in chunk], global_params)
            strategy.end_stacked(chunk)
    new = strategy.server_update(global_params, results)
    if algorithm == "scaffold":
        return new, strategy.c, strategy.c_clients.values
    return new, strategy.h, strategy.grads.values


@pytest.mark.parametrize("hooks", ["stack", "sequential"])
@pytest.mark.parametrize("algorithm", ["scaffold", "feddyn"])
def test_the_server_step_sums_in_the_results_order_whatever_order_the_end_hooks_ran(algorithm, hooks):
    # Prepare: the state after the stacked hooks in the results' order
    reference = one_round(algorithm, "results", seed=4)

    # Execute
    new, state, store = one_round(algorithm, hooks, seed=4)

    # Assert: bit for bit (float32 sums in another order round otherwise)
    assert torch.equal(new, reference[0])
    assert torch.equal(state, reference[1]) and state.abs().max() > 0
    assert store.keys() == reference[2].keys() == set(range(len(SIZES)))
    assert all(torch.equal(store[i], reference[2][i]) for i in store)
