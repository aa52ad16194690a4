"""Aggregation maths as pure functions over flat parameter vectors."""

from __future__ import annotations

import torch


def sample_weights(num_samples: torch.Tensor | list[int]) -> torch.Tensor:
    """Aggregation weights |D_m| / sum_j |D_j| (McMahan et al. 2017, eq. 2 of Li et al. 2022)."""
    n = torch.as_tensor(num_samples, dtype=torch.float64)
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"client sample counts must be non-negative and not all zero, got {n.tolist()}")
    return n / n.sum()


# Columns of the client rows summed per float64 block. The server step runs on the training device, where a float64
# copy of all [M, P] rows at once (with mean_delta's float32 differences, three times the stacked clients: ~1.3 GB
# for 10 ResNet18s, ~8.6 GB for 64) once ran a one-GPU run out of memory; a block's copy is M x 2^18 x 8 bytes (20 MiB
# for 10 clients, 128 MiB for 64). Each column's float64 sum is the one a single product of all columns gives, bit for
# bit (tests/unit/test_aggregate_blocks.py checks it on the CPU, for widths across blocks).
AGGREGATE_BLOCK = 1 << 18


def _blocked_mean(rows: torch.Tensor, weights: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
    """sum_m w_m (rows[m] - minus) of rows [M, P] in float64, a block of AGGREGATE_BLOCK columns at a time, in
    rows' dtype."""
    if rows.ndim != 2 or rows.shape[0] != weights.shape[0]:
        raise ValueError(f"need rows [M, P] with one weight each, got rows {tuple(rows.shape)} and "
                         f"{weights.shape[0]} weights")
    w = weights.to(rows.device, torch.float64)
    out = torch.empty(rows.shape[1], dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[1], AGGREGATE_BLOCK):
        block = rows[:, start : start + AGGREGATE_BLOCK]
        if minus is not None:
            block = block - minus[start : start + AGGREGATE_BLOCK]
        out[start : start + AGGREGATE_BLOCK] = w @ block.double()
    return out


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_m w_m rows[m] for rows [M, P] and weights [M] that sum to 1, in float64 accumulation."""
    return _blocked_mean(rows, weights)


def mean_delta(global_params: torch.Tensor, client_params: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean client update: sum_m w_m (theta_m - theta_global), each block's differences made in the clients'
    dtype (no [M, P] copy of them)."""
    return _blocked_mean(client_params, weights, global_params)
