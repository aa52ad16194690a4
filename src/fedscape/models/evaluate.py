"""Loss and accuracy of a model on tensors held in memory (per counted target: `fedscape.models.loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedscape.models.loss import correct_count, loss_sum, target_count
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


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> EvalResult:
    """Mean cross-entropy and accuracy in eval mode (no augmentation, batch norm uses running stats).

    A non-finite loss is returned as such (inf or nan) rather than raised: callers decide. The loss of a float64
    model is taken in float64: float64 runs are compared to float64 rounding, and rounding their logits to float32
    would move the loss by ~1e-8. A sequence task's targets [N, T] count per position (`fedscape.models.loss`): a
    batch whose every position is ignored adds nothing and weighs 0.

    A split with no counted target (no samples, or a sequence split whose every position is ignored) has no mean:
    its loss and accuracy are NaN, not 0 (a 0 loss and accuracy would read as a perfect fit and a total miss). NaN
    rather than an error: the callers (the training's rows, the barriers' splits, the init's pool and test set)
    write it into a table as "no value", and planning, not this function, is where an empty split is refused
    (`test_fraction` > 0, a non-empty proxy split).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            logits = model(xb)
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 in float32, float64 kept
            total_loss += loss_sum(wide, yb).double()
            correct += correct_count(logits, yb)
    finally:  # a caller that goes on after an error (out of memory) trains in the mode it left
        model.train(was_training)
    n = target_count(y)
    if n == 0:
        return EvalResult(loss=math.nan, acc=math.nan, n=0)
    return EvalResult(loss=float(total_loss) / n, acc=float(correct) / n, n=n)
