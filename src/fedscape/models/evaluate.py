"""Loss and accuracy of a model on tensors held in memory (per counted target: `fedscape.models.loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedscape.models.loss import at_least_float32, correct_count, loss_sum, target_count
from fedscape.models.specs import EVAL_BATCH_SIZE


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and accuracy over a data set's `n` counted targets (samples; positions of a sequence
    task); NaN both where `n` is 0 (no value, as a table's NaN says)."""

    loss: float
    acc: float
    n: int

    @property
    def error(self) -> float:
        return 1.0 - self.acc


def batch_loss_sum(logits: torch.Tensor, y: torch.Tensor, *, wide: bool = False) -> torch.Tensor:
    """A batch's summed cross-entropy in float64: `loss_sum` in the logits' dtype, or with `wide` the per-target
    losses summed in float64.

    A float32 sum of 1,024 losses of 1e36 each overflows to +inf although their mean is representable, so a split's
    loss would hang on how it is cut into batches (`eval_batch_size`, declared neutral). The callers sum a split as
    always and, only where that total is not finite, sum it again `wide`: every finite loss stays bit for bit as it
    was, at no cost (the check rides on the host read the total needs anyway), and a split holding a NaN loss, or a
    target whose own loss overflowed, stays NaN or +inf.
    """
    if wide:
        return F.cross_entropy(logits, y, reduction="none").double().sum()  # ignored positions add 0, as in loss_sum
    return loss_sum(logits, y).double()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
             never_correct: tuple[int, ...] = ()) -> EvalResult:
    """Mean cross-entropy and accuracy in eval mode (no augmentation, batch norm uses running stats).

    A non-finite loss is returned as such (inf or nan) rather than raised: callers decide; a finite mean is never
    lost to a batch's float32 sum that overflowed (`batch_loss_sum`), so `batch_size` does not change it. The loss
    of a float64 model is taken in float64: float64 runs are compared to float64 rounding, and rounding their
    logits to float32 would move the loss by ~1e-8. A sequence task's targets [N, T] count per position
    (`fedscape.models.loss`): a batch whose every position is ignored adds nothing and weighs 0. `never_correct`: the
    data's classes whose prediction the accuracy never credits (`Dataset.never_correct`, `models.loss.correct_count`).

    A split with no counted target (no samples, or a sequence split whose every position is ignored) has no mean:
    its loss and accuracy are NaN, not 0 (a 0 loss and accuracy would read as a perfect fit and a total miss). NaN
    rather than an error: the callers (the training's rows, the barriers' splits, the init's pool and test set)
    write it into a table as "no value", and planning, not this function, is where an empty split is refused
    (`test_fraction` > 0, a non-empty proxy split).
    """
    was_training = model.training
    model.eval()
    try:
        total_loss, correct = _sums(model, x, y, batch_size, never_correct, wide=False)
        if not math.isfinite(float(total_loss)):  # a float32 batch sum may have overflowed: the split again, wide
            total_loss, correct = _sums(model, x, y, batch_size, never_correct, wide=True)
    finally:  # a caller that goes on after an error (out of memory) trains in the mode it left
        model.train(was_training)
    n = target_count(y)
    if n == 0:
        return EvalResult(loss=math.nan, acc=math.nan, n=0)
    return EvalResult(loss=float(total_loss) / n, acc=float(correct) / n, n=n)


def _sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, never_correct: tuple[int, ...], *,
          wide: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed loss (`batch_loss_sum`, `wide` or not) and the correct count of a split, on the model's device."""
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits = model(xb)
        total_loss += batch_loss_sum(at_least_float32(logits), yb, wide=wide)
        correct += correct_count(logits, yb, never_correct=never_correct)
    return total_loss, correct
