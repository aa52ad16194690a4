"""What the server step and the round statistics copy of the sampled clients: a block of columns at a time, never an
[M, P] stack of all of them (nor of their updates, nor a float64 copy of them) beside the results' own rows, which on
the training device doubled the clients' memory however small `client_chunk_size` was; and the statistics' numbers,
bit for bit, are those of the stacked formula (the server step's: tests/unit/test_aggregate_blocks.py). And what
SCAFFOLD and FedDyn keep of a round's clients from their end hooks to the server step: no model-sized vector each."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import mlp, shard_data
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fedscape.fl import aggregate, client_stats
from fedscape.fl.aggregate import AGGREGATE_BLOCK, mean_delta, sample_weights, weighted_mean
from fedscape.fl.client_stats import _cosine_mean, _diversity, round_stats
from fedscape.fl.engine import make_trainer
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientResult, ClientStore
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.params import FlatParams, flatten_buffers, flatten_params


class _LargestNew(TorchDispatchMode):
    """The bytes of the largest tensor any op makes (not a view of, nor written into, one that exists)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not out._is_view() and not func._schema.is_mutable:
            self.largest = max(self.largest, out.numel() * out.element_size())
        return out


def _clients(num_rows: int, width: int, dtype: torch.dtype, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """M clients' rows [P] of their own (as the results hold them) and the model they started from."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(width, generator=gen, dtype=torch.float64).to(dtype)
    rows = [start + (torch.randn(width, generator=gen, dtype=torch.float64) * 0.1).to(dtype) for _ in range(num_rows)]
    return rows, start


@pytest.mark.parametrize("form", ["stacked", "rows"])
@pytest.mark.parametrize("which", ["weighted_mean", "mean_delta"])
def test_the_sums_copy_no_more_than_a_block_of_the_rows(which, form):
    rows, centre = _clients(2, 3 * AGGREGATE_BLOCK + 5, torch.float32, seed=1)
    given = torch.stack(rows) if form == "stacked" else rows
    weights = sample_weights([3, 5])
    bound = max(centre.numel() * centre.element_size(), len(rows) * AGGREGATE_BLOCK * 8)  # the result, a block

    with _LargestNew() as made:
        weighted_mean(given, weights) if which == "weighted_mean" else mean_delta(centre, given, weights)

    # all rows stacked, in float64 (or their differences in float32) at once would be 2 x 3 x 2^18 x 4 (x 8) bytes
    assert made.largest <= bound, f"{made.largest} bytes made at once, more than a block or the result ({bound})"


@pytest.mark.parametrize("algorithm", ["fedavg", "fedadam", "fednova", "scaffold", "feddyn"])
def test_a_server_step_copies_no_more_than_a_block_of_the_clients(monkeypatch, algorithm):
    monkeypatch.setattr(aggregate, "AGGREGATE_BLOCK", 7)
    model = nn.Linear(20, 10)  # P = 210: the clients stacked [6, P] are 5040 bytes, a block's float64 copy 336
    global_params = flatten_params(model).detach()
    rows, _ = _clients(6, global_params.numel(), torch.float32, seed=2)
    results = [ClientResult(i, 10 + i, row, torch.zeros(0), 1.0, num_steps=3, update_weight=0.1 * (i + 1))
               for i, row in enumerate(rows)]
    strategy = make_strategy(algorithm)
    strategy.setup(8, global_params.numel(), torch.device("cpu"), model)
    strategy.begin_stacked([r.client_id for r in results], global_params)  # the end hooks (FedDyn's g_k)
    strategy.end_stacked(results)
    bound = max(global_params.numel() * 4, len(rows) * 7 * 8)  # a [P] vector of the step, a block's float64 copy

    with _LargestNew() as made:
        new = strategy.server_update(global_params, results)

    assert made.largest <= bound, f"{made.largest} bytes made at once, more than a block or a model ({bound})"
    assert not torch.equal(new, global_params)


def _model_vectors(obj, num_params: int, seen: set[int]) -> int:
    """The flat model-sized vectors [P] that `obj` (a strategy, its attributes, their dicts and lists) holds outside its
    ClientStores (the clients' kept vectors, on the host: `fedscape.fl.state_sizes`), each tensor counted once."""
    if isinstance(obj, torch.Tensor):
        new = id(obj) not in seen and obj.dim() == 1 and obj.numel() == num_params
        seen.add(id(obj))
        return int(new)
    if isinstance(obj, ClientStore):
        return 0
    if isinstance(obj, dict):
        return sum(_model_vectors(v, num_params, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_model_vectors(v, num_params, seen) for v in obj)
    return _model_vectors(vars(obj), num_params, seen) if hasattr(obj, "__dict__") else 0


@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
@pytest.mark.parametrize("algorithm", ["scaffold", "feddyn"])
def test_a_round_keeps_no_model_sized_vector_per_client_until_the_server_step(algorithm, mode):
    # Prepare: rounds of 2 and of 6 clients trained by the run's trainer (its end hooks), the server step not taken
    def held_after_end_hooks(num_clients: int) -> int:
        model, data = mlp(), shard_data([8] * num_clients)
        cfg = TrainConfig(rounds=1, local_steps=1, local_epochs=None, batch_size=8, lr=0.1, client_parallel=mode,
                          client_chunk_size=0)
        flat, strategy = FlatParams(model), make_strategy(algorithm)
        strategy.setup(num_clients, flat.vector.numel(), torch.device("cpu"), model)
        trainer = make_trainer(model, flat, data, strategy, cfg)
        try:
            trainer.train_round(flat.get(), flatten_buffers(model), list(range(num_clients)), 1)
        finally:
            trainer.close()
        return _model_vectors(strategy, flat.vector.numel(), set())

    # Execute
    few, many = held_after_end_hooks(2), held_after_end_hooks(6)

    # Assert: the server state (SCAFFOLD's c, FedDyn's h) and references, as many for 6 clients as for 2 (each
    # client's c_i+ - c_i or w_k - w kept until the server step: 4 more)
    assert few >= 1 and many == few, f"{many} model-sized vectors held after 6 clients' end hooks, {few} after 2"


def _stacked_round_stats(start: torch.Tensor, rows: list[torch.Tensor], aggregate_params: torch.Tensor,
                         chunk: int) -> dict[str, float]:
    """round_stats as it was before blocks of the clients' rows: every update made [M, P] at once."""
    clients = torch.stack(rows)
    updates = clients - start
    gram = torch.zeros(len(rows), len(rows), dtype=torch.float64)
    for s in range(0, updates.shape[1], chunk):
        part = updates[:, s : s + chunk].double()
        gram += part @ part.T
    drift = torch.stack([torch.linalg.vector_norm((c - aggregate_params).double()) for c in clients]).mean()
    return {"drift_from_start": float(gram.diagonal().clamp_min(0).sqrt().mean()), "drift_from_aggregate": float(drift),
            "gradient_diversity": _diversity(gram), "update_cosine_mean": _cosine_mean(gram)}


# (chunk, width, dtype): float32 clients (every workflow run's, every checkpoint's) across chunks; float64 ones within
# one (models of up to 2^20 parameters), whose one chunk was the updates themselves
BITS = [(7, w, torch.float32) for w in (1, 6, 7, 8, 50)] + [(1 << 20, (1 << 20) + 3, torch.float32)]
BITS += [(7, w, torch.float64) for w in (1, 6, 7)] + [(1 << 20, 1 << 20, torch.float64)]


@pytest.mark.parametrize(("chunk", "width", "dtype"), BITS)
def test_round_stats_of_the_clients_rows_are_the_stacked_formulas_bits(monkeypatch, chunk, width, dtype):
    monkeypatch.setattr(client_stats, "_CHUNK", chunk)
    rows, start = _clients(4, width, dtype, seed=width)
    aggregate_params = torch.stack(rows).mean(0)  # the new global model: any vector

    got = round_stats(start, rows, aggregate_params)

    assert got == _stacked_round_stats(start, rows, aggregate_params, chunk)


@pytest.mark.parametrize("width", [8, 50])
def test_float64_round_stats_across_chunks_are_the_stacked_formulas_to_rounding(monkeypatch, width):
    # The stacked float64 updates' chunks were strided views of them, which the CPU's matrix product sums in another
    # order than a chunk of its own: the last bits of the Gram matrix may differ, nothing else
    monkeypatch.setattr(client_stats, "_CHUNK", 7)
    rows, start = _clients(4, width, torch.float64, seed=width)
    aggregate_params = torch.stack(rows).mean(0)  # the new global model: any vector

    got = round_stats(start, rows, aggregate_params)

    assert got == pytest.approx(_stacked_round_stats(start, rows, aggregate_params, 7), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("form", ["stacked", "rows"])
def test_round_stats_copy_no_more_than_a_block_of_the_clients(monkeypatch, form):
    monkeypatch.setattr(client_stats, "_CHUNK", 7)
    rows, start = _clients(6, 210, torch.float32, seed=3)
    given = torch.stack(rows) if form == "stacked" else rows
    aggregate_params = torch.stack(rows).mean(0)
    bound = max(210 * 8, 6 * 7 * 8)  # one client's float64 distance to the aggregate, a block's float64 copy

    with _LargestNew() as made:
        round_stats(start, given, aggregate_params)

    # the updates of all clients at once would be 6 x 210 x 4 bytes
    assert made.largest <= bound, f"{made.largest} bytes made at once, more than a block or a model ({bound})"
