"""Aggregation maths as pure functions over flat parameter vectors."""

from __future__ import annotations

import torch


def sample_weights(num_samples: torch.Tensor | list[int]) -> torch.Tensor:
    """Aggregation weights |D_m| / sum_j |D_j| (McMahan et al. 2017, eq. 2 of Li et al. 2022)."""
    n = torch.as_tensor(num_samples, dtype=torch.float64)
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"client sample counts must be non-negative and not all zero, got {n.tolist()}")
    return n / n.sum()


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_m w_m rows[m] for rows [M, P] and weights [M] that sum to 1, in float64 accumulation."""
    if rows.shape[0] != weights.shape[0]:
        raise ValueError(f"{rows.shape[0]} rows but {weights.shape[0]} weights")
    return (weights.to(rows.device, torch.float64) @ rows.double()).to(rows.dtype)


def mean_delta(global_params: torch.Tensor, client_params: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean client update: sum_m w_m (theta_m - theta_global)."""
    return weighted_mean(client_params - global_params.unsqueeze(0), weights)
