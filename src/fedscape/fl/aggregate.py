"""Aggregation maths as pure functions over flat parameter vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_weights(num_samples: torch.Tensor | list[int]) -> torch.Tensor:
    """Aggregation weights |D_m| / sum_j |D_j| (McMahan et al. 2017, eq. 2 of Li et al. 2022)."""
    n = torch.as_tensor(num_samples, dtype=torch.float64)
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"client sample counts must be non-negative and not all zero, got {n.tolist()}")
    return n / n.sum()


# Columns of the client rows summed per float64 block. The server step runs on the training device, where a float64
# copy of all [M, P] rows at once (with mean_delta's float32 differences, three times the stacked clients: ~1.3 GB
# for 10 ResNet18s, ~8.6 GB for 64) once ran a one-GPU run out of memory. The clients' rows are read where they lie
# (`client_rows`), never stacked whole: a block's copies are at most M x 2^18 x 12 bytes (the block, or its
# differences, and their float64 copy: 30 MiB for 10 clients, 192 MiB for 64). Each column's float64 sum is the one a
# single product of all columns gives, bit for bit (tests/unit/test_aggregate_blocks.py checks it on the CPU, for
# widths across blocks, and on a card in benchmarks/gpu_session.py's `tests` part).
AGGREGATE_BLOCK = 1 << 18


def client_rows(rows: torch.Tensor | Sequence[torch.Tensor], count: int | None = None) -> list[torch.Tensor]:
    """The clients' flat vectors [P] of rows [M, P] (views: no copy) or of a sequence of M rows [P] (the results'
    own, which the server step and the round statistics read a block of columns at a time instead of stacking all of
    them, a second copy of the clients beside theirs); `count`: the M they must number."""
    rows = list(rows)
    if not rows or (count is not None and len(rows) != count) or any(r.ndim != 1 or r.shape != rows[0].shape
                                                                      for r in rows):
        raise ValueError(f"need rows [M, P] (M >= 1){'' if count is None else f' with one weight each ({count})'}, "
                         f"got {len(rows)} of shapes {sorted({tuple(r.shape) for r in rows})}")
    return rows


def column_block(rows: list[torch.Tensor], start: int, stop: int, minus: torch.Tensor | None = None) -> torch.Tensor:
    """Columns start:stop of the rows stacked [M, stop - start], less that slice of `minus` [P] where given: the same
    numbers as those columns of `torch.stack(rows) - minus`, made a block's memory at a time."""
    block = torch.stack([r[start:stop] for r in rows])
    return block if minus is None else block - minus[start:stop]


def weighted_mean(rows: torch.Tensor | Sequence[torch.Tensor], weights: torch.Tensor,
                  minus: torch.Tensor | None = None) -> torch.Tensor:
    """sum_m w_m (rows[m] - minus) for rows [M, P] (or M rows [P]) and weights [M] that sum to 1 (minus: none where not
    given), in float64 accumulation a block of AGGREGATE_BLOCK columns at a time, in rows' dtype."""
    rows = client_rows(rows, weights.shape[0])
    w = weights.to(rows[0].device, torch.float64)
    out = torch.empty_like(rows[0])
    for start in range(0, out.numel(), AGGREGATE_BLOCK):
        stop = start + AGGREGATE_BLOCK
        out[start:stop] = w @ column_block(rows, start, stop, minus).double()
    return out


def mean_delta(global_params: torch.Tensor, client_params: torch.Tensor | Sequence[torch.Tensor],
               weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean client update: sum_m w_m (theta_m - theta_global) of clients [M, P] (or M rows [P]), each
    block's differences made in the clients' dtype (no [M, P] copy of them)."""
    return weighted_mean(client_params, weights, global_params)
