"""Statistics of the client updates of a federated round (pure functions on flat parameter vectors).

Client drift (the distance of local models from the round-start and the aggregated model; the
client-drift explainer, a 2025 blog post; the drift SCAFFOLD corrects, Karimireddy et al. 2020; and Li et al. 2022's
local scope), gradient diversity
(Yin et al. 2018), mean pairwise cosine similarity of client updates and the L2 distance of the server
weights from their final values (Nguyen et al. 2022, "Where to begin?", bottom row of the poster's figure).

The engine computes `round_stats` every round from the clients' results (the keys are
`fedscape.fl.settings.STAT_KEYS`); `stats_from_checkpoints` recomputes them from saved checkpoints
(the rounds in `save_clients_at`) for runs trained before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedscape.fl.aggregate import client_rows, column_block

_CHUNK = 1 << 20  # columns per float64 block of the Gram matrix
_L2_BLOCK_BYTES = 1 << 26  # new memory of a block of l2_to_final's rows (64 MiB; a bigger row is a block alone)


def client_drift(reference: torch.Tensor, clients: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """Mean Euclidean distance of the client models [M, P] (or M rows [P]) from a reference model [P] (client drift),
    one client at a time."""
    rows = client_rows(clients)
    if rows[0].numel() != reference.numel():
        raise ValueError(f"need client models [M, {reference.numel()}], got rows of {rows[0].numel()}")
    return float(torch.stack([torch.linalg.vector_norm((c - reference).double()) for c in rows]).mean())


def _gram(rows: torch.Tensor | Sequence[torch.Tensor], minus: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 Gram matrix [M, M] of the updates rows[m] - minus (rows [M, P] or M rows [P]), a block of columns
    at a time: neither a float64 copy of all updates nor, given the clients' rows and the round start, an [M, P]
    stack of the clients or their updates. The bits of the stacked updates' blocks for float32 clients (every
    workflow run's); float64 ones over more than one block differ in the last bits, the product of a strided block of
    the stack summing in another order on the CPU than a block of its own (tests/unit/test_server_step_memory.py)."""
    rows = client_rows(rows)
    gram = torch.zeros(len(rows), len(rows), dtype=torch.float64, device=rows[0].device)
    for start in range(0, rows[0].numel(), _CHUNK):
        part = column_block(rows, start, start + _CHUNK, minus).double()
        gram += part @ part.T
    return gram


def _diversity(gram: torch.Tensor) -> float:
    num = float(gram.diagonal().sum())  # sum_m ||g_m||^2
    den = float(gram.sum())  # ||sum_m g_m||^2
    if den <= 0.0:
        return math.nan if num == 0.0 else math.inf
    return num / den


def _cosine_mean(gram: torch.Tensor) -> float:
    m = len(gram)
    if m < 2 or not bool(torch.isfinite(gram).all()):  # a NaN/inf update has no direction to compare, as 0 has none
        return math.nan
    norms = gram.diagonal().clamp_min(0).sqrt()
    i, j = torch.triu_indices(m, m, offset=1, device=gram.device)
    denom = norms[i] * norms[j]
    ok = denom > 0
    if not bool(ok.any()):
        return math.nan
    return float((gram[i, j][ok] / denom[ok]).mean())


def gradient_diversity(updates: torch.Tensor) -> float:
    """sum_m ||g_m||^2 / ||sum_m g_m||^2 of client updates [M, P] (Yin et al. 2018): 1/M if equal, 1 if orthogonal."""
    return _diversity(_gram(updates))


def update_cosine_mean(updates: torch.Tensor) -> float:
    """Mean cosine similarity over the pairs of client updates [M, P] (Nguyen et al. 2022). A client whose update
    is zero has no direction: its pairs are left out. NaN for M < 2, when no pair of nonzero updates is left, or when
    an update is not finite (as the round's other statistics are then)."""
    return _cosine_mean(_gram(updates))


def cosine_similarity(u: torch.Tensor, v: torch.Tensor) -> float:
    """cos(u, v) = u.v / (|u| |v|) of two flat vectors (NaN when one is zero)."""
    u, v = u.reshape(-1).double(), v.reshape(-1).double()
    denom = float(u.norm() * v.norm())
    return float(u @ v) / denom if denom > 0 else math.nan


def l2_to_final(params: torch.Tensor, block_bytes: int = _L2_BLOCK_BYTES) -> torch.Tensor:
    """||w_t - w_final|| for every row of a trajectory [R+1, P] (Nguyen et al. 2022, poster's bottom row), float64.

    A block of rows at a time, in two buffers made once (a block's difference and its float64 copy, at most
    `block_bytes` together, at least one row; fresh ones for each block would leave the allocator's heap holding
    several): the client_stats job reads whole trajectories, memory-mapped (meta.yaml's CIFAR-10 runs keep 501
    ResNet18s, 21 GB), and the differences of all rows at once would need three times that in new memory. Each row
    is subtracted in the trajectory's dtype, then converted to float64 and reduced on its own, as over the whole
    trajectory at once: the same numbers, bit for bit, whatever the block.
    """
    if params.ndim != 2:
        raise ValueError(f"need a trajectory [R+1, P], got {tuple(params.shape)}")
    final = params[-1]
    row_bytes = params.shape[1] * (params.element_size() + 8)  # a row's difference and its float64 copy
    rows = min(len(params), max(1, block_bytes // max(row_bytes, 1)))
    diff = torch.empty(rows, params.shape[1], dtype=params.dtype, device=params.device)
    wide = diff if params.dtype == torch.float64 else torch.empty_like(diff, dtype=torch.float64)
    out = torch.empty(len(params), dtype=torch.float64, device=params.device)
    for start in range(0, len(params), rows):
        n = min(rows, len(params) - start)
        torch.sub(params[start : start + n], final, out=diff[:n])
        if wide is not diff:
            wide[:n].copy_(diff[:n])
        out[start : start + n] = torch.linalg.vector_norm(wide[:n], dim=1)
    return out


@torch.no_grad()
def round_stats(start: torch.Tensor, clients: torch.Tensor | Sequence[torch.Tensor],
                aggregate: torch.Tensor) -> dict[str, float]:
    """Drift from the round start and the aggregate, gradient diversity and update cosine of one round.

    `start` [P] is the global model the clients started from, `clients` [M, P] (or the M clients' rows [P], as the
    engine passes its results' own, unstacked) their models after local training, `aggregate` [P] the new global
    model; updates are g_m = clients[m] - start, made a block of columns at a time (`_gram`).
    """
    gram = _gram(clients, start)
    return {
        "drift_from_start": float(gram.diagonal().clamp_min(0).sqrt().mean()),
        "drift_from_aggregate": client_drift(aggregate, clients),
        "gradient_diversity": _diversity(gram),
        "update_cosine_mean": _cosine_mean(gram),
    }


def stats_from_checkpoints(trajectory_params: torch.Tensor, trajectory_rounds: torch.Tensor,
                           client_rounds: dict) -> list[dict]:
    """`round_stats` of every round with saved client models, from the checkpoints of a finished run.

    `trajectory_params` [R+1, P] and `trajectory_rounds` [R+1] come from a Trajectory, `client_rounds`
    is `fedscape.models.checkpoint.load_clients(...)` ({round: ClientRound}). Rows: round, num_clients, stats.
    """
    row_of = {int(r): i for i, r in enumerate(trajectory_rounds.tolist())}
    rows = []
    for r, c in sorted(client_rounds.items()):
        if r not in row_of or r - 1 not in row_of:
            continue
        stats = round_stats(trajectory_params[row_of[r - 1]], c.params, trajectory_params[row_of[r]])
        rows.append({"round": int(r), "num_clients": int(len(c.params)), **stats})
    return rows
