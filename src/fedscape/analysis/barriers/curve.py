"""Mode connectivity along a trained quadratic Bezier curve (Garipov et al. 2018, "Loss Surfaces, Mode
Connectivity, and Fast Ensembling of DNNs").

The curve ``phi(t) = (1-t)^2 w_a + 2t(1-t) theta + t^2 w_b`` joins the two models; its bend ``theta`` starts at
the midpoint (the curve is then the straight segment) and is trained by SGD on ``E_{t ~ U(0,1)} L(phi(t))``,
one t and one mini-batch per step, the endpoints fixed. A barrier that the straight line shows and the curve
does not means one basin with a bent valley; a barrier on both means the models sit in different basins (as
far as a quadratic curve can tell).

Floating buffers (batch-norm statistics) are not trained: they follow the straight line ``(1-t) a + t b`` (the
Bezier curve with its bend at the buffers' midpoint). With `bn_stats: stored` the curve is trained in eval mode
with those statistics, so the loss it minimises is the one that is evaluated; with `bn_stats: recomputed` it is
trained in train mode (each mini-batch normalised with its own statistics) and every point is evaluated with
statistics recomputed from the training data, as Garipov et al. train and evaluate their curves.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedscape.analysis.barriers.definitions import CurveSettings, curve_lr_factor
from fedscape.analysis.barriers.maths import PROGRESS_SECONDS, Point, Splits, curve_rows
from fedscape.models.loss import mean_loss
from fedscape.models.params import buffer_specs, param_specs
from fedscape.models.specs import EVAL_BATCH_SIZE

log = logging.getLogger("fedscape.barriers")


def bezier_params(a: Tensor, theta: Tensor, b: Tensor, t: float) -> Tensor:
    """(1-t)^2 a + 2t(1-t) theta + t^2 b (Garipov et al. 2018, quadratic Bezier curve).

    Written as a + 2t(1-t) (theta - a) + t^2 (b - a): the same polynomial, exactly a wherever the bend and b
    equal a (a model with itself), which the three-term form misses by a rounding error.
    """
    return a + 2.0 * t * (1.0 - t) * (theta - a) + t**2 * (b - a)


def bezier_point(a: Point, theta: Tensor, b: Point, t: float) -> Point:
    """The point phi(t) of the curve with bend `theta`: exactly a at t = 0 and b at t = 1 (Garipov et al. 2018)."""
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    return Point(bezier_params(a.params, theta, b.params, t), (1.0 - t) * a.buffers + t * b.buffers)


def midpoint_bend(a: Point, b: Point) -> Tensor:
    """The initial bend (a + b) / 2: the curve starts as the straight segment (Garipov et al. 2018)."""
    return 0.5 * a.params + 0.5 * b.params


def train_bend(model: nn.Module, a: Point, b: Point, x: Tensor, y: Tensor, settings: CurveSettings,
               theta: Tensor | None = None, train_mode: bool = False) -> tuple[Tensor, list[float]]:
    """The bend theta minimising E_t L(phi(t)) by SGD with t ~ U(0, 1) per step (Garipov et al. 2018).

    Returns theta and the mini-batch loss of every step. Batches are drawn from (x, y) epoch by epoch in an
    order that, like the values of t, derives from `settings.seed` alone. Weight decay is Garipov et al.'s
    (dnn-mode-connectivity's train.py and curves.py: the optimiser's weight decay 0 for a curve, and
    0.5 wd ||phi(t)||^2 over every parameter of the point, biases and normalisation gains included, added to the
    loss), whose gradient on theta is wd 2t(1-t) phi(t), not SGD's wd theta; the losses returned leave it out.
    `train_mode`: batch norm normalises
    each mini-batch with its own statistics (Garipov et al.; for `bn_stats: recomputed`), else with the
    interpolated running statistics (eval mode); fedscape's models differ between the modes in batch norm alone.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need as many labels as inputs and at least one sample, got {len(x)} and {len(y)}")
    device = a.params.device
    pspecs, bspecs = param_specs(model), buffer_specs(model)
    names, shapes, sizes = [s.name for s in pspecs], [s.shape for s in pspecs], [s.numel for s in pspecs]
    theta = (midpoint_bend(a, b) if theta is None else theta).detach().clone().to(device).requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=settings.lr, momentum=settings.momentum)
    gen = torch.Generator().manual_seed(settings.seed)
    was_training = model.training
    model.train(train_mode)
    losses: list[float] = []
    order, cursor = torch.randperm(len(y), generator=gen), 0
    logged = time.perf_counter()
    for step in range(settings.steps):
        if time.perf_counter() - logged >= PROGRESS_SECONDS and losses:
            tail = losses[-100:]
            log.info("Bezier bend: step %d/%d, mean loss of the last %d steps %.4g", step, settings.steps, len(tail),
                     sum(tail) / len(tail))
            logged = time.perf_counter()
        if cursor + settings.batch_size > len(y) and cursor > 0:  # a new epoch: a new order, no ragged batch
            order, cursor = torch.randperm(len(y), generator=gen), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        t = float(torch.rand((), generator=gen, dtype=torch.float64))
        for group in opt.param_groups:
            group["lr"] = settings.lr * curve_lr_factor(step, settings.steps)
        flat = bezier_params(a.params, theta, b.params, t)
        state = {n: v.view(s) for n, v, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        buffers = (1.0 - t) * a.buffers + t * b.buffers
        state.update({s.name: buffers[s.slice].view(s.shape) for s in bspecs})
        xb, yb = x[idx].to(device), y[idx].to(device)
        loss = mean_loss(functional_call(model, state, (xb,)).float(), yb)
        opt.zero_grad(set_to_none=True)
        (loss + 0.5 * settings.weight_decay * flat.square().sum()).backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.train(was_training)
    return theta.detach(), losses


@torch.no_grad()
def bezier_curve(model: nn.Module, a: Point, theta: Tensor, b: Point, splits: Splits, points: int = 21,
                 batch_size: int = EVAL_BATCH_SIZE, bn_x: Tensor | None = None,
                 never_correct: tuple[int, ...] = ()) -> list[dict]:
    """Rows (t, split, loss, error) along the Bezier curve, on the grid of the linear interpolation (Garipov et al.
    2018); `bn_x`: every point's batch-norm statistics recomputed from these training inputs (`evaluate_point`, as
    `never_correct`)."""
    return curve_rows(model, lambda t: bezier_point(a, theta, b, t), splits, points, batch_size, bn_x, never_correct)
