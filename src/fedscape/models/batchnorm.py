"""Batch-norm statistics recomputed for a model that was never trained as such.

An interpolated model (a point of a linear path or a Bezier curve), a model with some layers averaged, or an average
of models (server-side SWA) carries running statistics that belong to other models: the interpolation of its ends'
statistics, or their average. Its activations no longer have those means and variances, and evaluating it with them
can inflate (or, by the mixing of the two ends' statistics, distort) its loss. The connectivity literature resets
them before evaluating: a pass over the training data in train mode with cumulative averages (Garipov et al. 2018
and Izmailov et al. 2018, `bn_update`, as torch.optim.swa_utils.update_bn; Ainsworth et al. 2023, Git Re-Basin;
Jordan et al. 2023, REPAIR).
"""

from __future__ import annotations

import torch
from torch import nn

from fedscape.models.specs import BN_STATS_BATCH_SIZE, BN_STATS_SAMPLES, BN_STATS_SEED


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether the model has batch norm with running statistics (what `recompute_bn_stats` changes)."""
    return bool(batch_norms(model))


def bn_sample(n: int, samples: int = BN_STATS_SAMPLES, seed: int = BN_STATS_SEED) -> torch.Tensor:
    """The indices (int64, on the CPU) of the samples the statistics are recomputed from, in the order of the passes:
    a random permutation of 0..n-1 from `seed`, its first `samples` (all n where n is not larger)."""
    if n < 1 or samples < 1:
        raise ValueError(f"need at least one sample to recompute batch-norm statistics from, got n={n}, "
                         f"samples={samples}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]


def bn_sample_inputs(x: torch.Tensor, samples: int = BN_STATS_SAMPLES, seed: int = BN_STATS_SEED) -> torch.Tensor:
    """The inputs the statistics are recomputed from, in the order of the passes: `x[bn_sample(len(x), ...)]`, on
    `x`'s device. A caller that recomputes at many points (a loss surface) draws them once and keeps them on its
    device, where `recompute_bn_stats` would gather them from `x` at every point."""
    return x[bn_sample(len(x), samples, seed).to(x.device)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, x: torch.Tensor, samples: int = BN_STATS_SAMPLES,
                       batch_size: int = BN_STATS_BATCH_SIZE, seed: int = BN_STATS_SEED) -> bool:
    """Recompute the running statistics of every batch norm of `model` from the inputs `x` (the training data the
    analysis evaluates on); return whether the model has any (a model without batch norm is left untouched).

    The sample `bn_sample(len(x), samples, seed)` goes through the model as `refresh_bn_stats` describes.
    """
    if not batch_norms(model):
        return False
    order = bn_sample(len(x), samples, seed)
    return refresh_bn_stats(model, x, batch_size, order)


@torch.no_grad()
def refresh_bn_stats(model: nn.Module, sample: torch.Tensor, batch_size: int = BN_STATS_BATCH_SIZE,
                     order: torch.Tensor | None = None) -> bool:
    """Reset the running statistics of every batch norm of `model`, then pass `sample` (its rows `order`, else all
    of them in turn; `bn_sample_inputs` draws them) through the model in train mode, `batch_size` rows per forward
    pass, without gradients; return whether the model has any batch norm.

    Each batch norm keeps the cumulative average of the batches' means and unbiased variances (momentum None:
    Izmailov et al. 2018's `bn_update`, torch's `update_bn`). The cumulative average is set as a momentum of 1/k at
    the k-th batch, which does not need the batch counter that fedscape's batch norms drop. The model's train/eval
    mode and every momentum are restored.
    """
    norms = batch_norms(model)
    if not norms:
        return False
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    rows = len(sample) if order is None else len(order)
    if rows < 1:
        raise ValueError("need at least one sample to recompute batch-norm statistics from")
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
    model.train()
    try:
        for k, start in enumerate(range(0, rows, batch_size), start=1):
            for m in norms:
                m.momentum = 1.0 / k  # running <- (1 - 1/k) running + batch / k: the mean of the k batches
            batch = (sample[start:start + batch_size] if order is None
                     else sample[order[start:start + batch_size].to(sample.device)])
            model(batch.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return True
