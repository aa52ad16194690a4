"""Cross-entropy, accuracy and counts of classifiers and of sequence models: the one definition every stage uses.

A classifier has targets y [N] (class ids) and logits [N, C]. A sequence task, a language model trained on every
position of its input (the layer-wise LMC paper's GPT, Adilova et al. 2023, trained as nanoGPT trains: targets are
the input shifted by one), has targets y [N, T] and logits [N, C, T], the class dimension second: torch's
``cross_entropy`` then averages over all N*T positions and ``logits.argmax(1) == y`` compares per position. A
target of ``IGNORE_INDEX`` (torch's default ``ignore_index``) marks a position that does not count (padding).

Means are over the counted positions (a per-token loss and accuracy: `target_count` of a classifier's targets is
N, so its numbers are those of a per-sample mean). A sample's weight where one is meant (FedAvg's client weights)
stays the number of samples, sequences for a sequence task.

A batch of a sequence task whose every position is ignored (all padding) has no counted target: its mean loss is 0
with a zero gradient (its sum, 0, over at least 1), so a training step on it moves nothing, where torch's mean
(0 / 0) would be NaN and poison the model; evaluation sums losses and counts, so such a batch weighs 0 there. A NaN
logit at a counted position still gives a NaN loss (a diverged model is not hidden).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedscape.data.specs import IGNORE_INDEX


def is_sequence(y: Tensor) -> bool:
    """Whether targets `y` are a sequence task's [N, T] (a classifier's are [N])."""
    return y.ndim > 1


def target_count(y: Tensor) -> int:
    """The number of counted targets of `y`: N for a classifier's [N], the positions not IGNORE_INDEX for [N, T]."""
    if not is_sequence(y):
        return len(y)
    return int((y != IGNORE_INDEX).sum())


def loss_sum(logits: Tensor, y: Tensor) -> Tensor:
    """Summed cross-entropy over the counted targets (ignored positions add 0)."""
    return F.cross_entropy(logits, y, reduction="sum")


def mean_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over the counted targets (per token for a sequence task; 0 where none counts).

    A sequence task's sum over a count of at least 1 (no branch on the count: no host sync in a captured CUDA graph),
    which is torch's mean (sum / counted positions) where some position counts; a classifier's is torch's mean."""
    if not is_sequence(y):
        return F.cross_entropy(logits, y)
    return loss_sum(logits, y) / (y != IGNORE_INDEX).sum().clamp_min(1)


def correct_count(logits: Tensor, y: Tensor, dims: int = 0, never_correct: tuple[int, ...] = ()) -> Tensor:
    """The number of counted targets predicted right (an ignored target is never a class, so never right); summed
    over every axis after the first `dims` (0: one number; 1: one per leading entry, e.g. per stacked model).

    A prediction of a class of `never_correct` is never right, though its target counts: a data set's classes that
    its accuracy credits no model for predicting (`fedscape.data.datasets.Dataset.never_correct`: Reddit's <PAD> and
    <UNK>, as LEAF scores them); the loss is not touched."""
    predicted = logits.argmax(dim=1 + dims)
    hits = predicted == y
    for c in never_correct:
        hits &= predicted != c
    return hits.sum() if dims == 0 else hits.flatten(dims).sum(dims)


def sample_losses(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """Each sample's summed cross-entropy [N] and its number of counted positions [N] (None for a classifier,
    whose samples count once each), for a mean over a masked subset of samples."""
    ce = F.cross_entropy(logits, y, reduction="none")
    if not is_sequence(y):
        return ce, None
    return ce.flatten(1).sum(1), (y != IGNORE_INDEX).flatten(1).sum(1).to(ce.dtype)


def masked_mean_loss(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the counted targets of the samples whose `mask` [N] is 1 (padding rows 0); 0 for a
    sequence batch none of whose positions counts, as `mean_loss`. (A classifier's batch holds a real sample
    whenever it is trained on: an all-padding one would be a trainer's error, and its NaN is kept.)"""
    ce, counts = sample_losses(logits, y)
    if counts is None:
        return (ce * mask).sum() / mask.sum()
    return (ce * mask).sum() / (counts * mask).sum().clamp_min(1)


def at_least_float32(logits: Tensor) -> Tensor:
    """Logits for the cross-entropy: bf16 ones (autocast) in float32, float32 and float64 ones as they are.

    A plain ``.float()`` would take float64 logits down to float32, and with them the loss and every
    gradient (1e-7 relative) that the sequential path computes in float64.
    """
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def stacked_mean_loss(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Each of K stacked models' mean cross-entropy [K] over the counted targets of its real samples: logits
    [K, B, C, ...], targets [K, B, ...] and `mask` [K, B] (1 for a real sample, 0 for a padded row); 0 for a model
    whose sequence batch has no counted position, as `masked_mean_loss`."""
    ce, counts = sample_losses(at_least_float32(logits).flatten(0, 1), y.flatten(0, 1))
    ce = ce.view_as(mask)
    if counts is None:
        return (ce * mask).sum(1) / mask.sum(1)
    return (ce * mask).sum(1) / (counts.view_as(mask) * mask).sum(1).clamp_min(1)
