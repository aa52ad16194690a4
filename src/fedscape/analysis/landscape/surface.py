"""Loss and accuracy on a grid of a plane: L(centre + a d1 + b d2) in eval mode, chunk by chunk.

Speed (benchmarks/bench_surface.py measures it against a load-state-dict-and-evaluate loop):
the model's parameters are views of one flat buffer, so a grid point is loaded with one fused
``centre + a d1 + b d2`` into that buffer (no module rebuilding, no state dict); the data is moved
to the device once and pre-sliced into batches; on CPU, conv models run channels-last (the views
into the flat buffer are laid out NHWC), which oneDNN executes much faster; optionally several grid
points are evaluated in one batched forward pass (``torch.func.functional_call`` + ``vmap``), which
pays off on GPUs for small models.

Batch-norm statistics: every grid point is evaluated with the centre's running statistics (Li et al. 2018's
surfaces), or, with ``bn_x`` (`bn_stats: recomputed`), with statistics recomputed at that point from a fixed sample
of the training inputs before it is evaluated (`fedscape.models.batchnorm`; as the barriers' points are), so that a
point far from the centre is not judged by normalisation statistics that belong to another model.

Numerical trouble is data, not an error: a NaN/inf loss is recorded as such (accuracy NaN when the
loss is NaN) and the grid goes on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from fedscape.analysis.landscape.grid import Grid, chunk_bounds, gather_chunks
from fedscape.analysis.landscape.planes import Plane
from fedscape.data.datasets import batch_slices
from fedscape.models.batchnorm import bn_sample_inputs, has_batch_norm, refresh_bn_stats
from fedscape.models.evaluate import batch_loss_sum
from fedscape.models.loss import at_least_float32, correct_count, sample_losses, target_count
from fedscape.models.params import FlatParams, load_buffers
from fedscape.models.specs import EVAL_BATCH_SIZE

log = logging.getLogger("fedscape.landscape")


# -- evaluator -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SurfaceSettings:
    """How a surface is evaluated (never what: the grid values do not depend on these up to float rounding)."""

    batch_size: int = EVAL_BATCH_SIZE  # samples per forward pass
    points_per_batch: int = 1  # grid points per batched forward (vmap); >1 pays off on GPU for small models
    channels_last: bool | None = None  # None: on for conv models on CPU (about 1.6x there, bench_surface.py)


class LayoutFlatParams(FlatParams):
    """`FlatParams` whose 4-D tensors may sit channels-last (NHWC) inside the one flat buffer.

    `set`/`get` speak the usual `fedscape.models.params` order; `to_layout` converts a flat vector once so that
    `vector` can then be written directly (the grid's centre and directions are converted up front).
    """

    def __init__(self, model: nn.Module, channels_last: bool = False):
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters")
        self.model = model
        device, dtype = params[0].device, params[0].dtype
        self._segments: list[tuple[int, tuple[int, ...], bool]] = []
        total = sum(p.numel() for p in params)
        self.vector = torch.empty(total, device=device, dtype=dtype)
        offset = 0
        with torch.no_grad():
            for p in params:
                n, shape = p.numel(), tuple(p.shape)
                nhwc = channels_last and p.dim() == 4
                seg = self.vector[offset : offset + n]
                view = seg.view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2) if nhwc else seg.view(shape)
                view.copy_(p.detach())
                p.data = view
                self._segments.append((offset, shape, nhwc))
                offset += n
        self.channels_last = any(nhwc for _, _, nhwc in self._segments)

    def to_layout(self, vector: torch.Tensor) -> torch.Tensor:
        """A flat vector in `fedscape.models.params` order, rearranged into this buffer's layout."""
        if not self.channels_last:
            return vector
        out = vector.clone()
        for offset, shape, nhwc in self._segments:
            if nhwc:
                n = math.prod(shape)
                out[offset : offset + n] = vector[offset : offset + n].view(shape).permute(0, 2, 3, 1).reshape(-1)
        return out

    def from_layout(self, vector: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return vector
        out = vector.clone()
        for offset, shape, nhwc in self._segments:
            if nhwc:
                n0, c, h, w = shape
                n = n0 * c * h * w
                out[offset : offset + n] = vector[offset : offset + n].view(n0, h, w, c).permute(0, 3, 1, 2).reshape(-1)
        return out

    @torch.no_grad()
    def set(self, vector: torch.Tensor) -> None:
        if vector.numel() != self.vector.numel():
            raise ValueError(f"flat vector has {vector.numel()} entries, the model {self.vector.numel()}")
        self.vector.copy_(self.to_layout(vector.to(self.vector)))

    def get(self) -> torch.Tensor:
        return self.from_layout(self.vector.detach().clone())


class SurfaceEvaluator:
    """Loss and accuracy of ``centre + a d1 + b d2`` on fixed data, in eval mode, for many (a, b).

    `bn_x`: training inputs to recompute a model's batch-norm statistics from at every grid point (their fixed
    sample `models.batchnorm.bn_sample_inputs`, drawn once); None keeps the centre's. A model without batch norm
    ignores it. `never_correct`: the data's classes whose prediction the accuracy never credits
    (`Dataset.never_correct`, as `models.evaluate.evaluate` takes them).

    The cross-entropy is taken of the logits at least in float32 (`models.loss.at_least_float32`), as `evaluate`
    takes it: a float64 model's surface is its float64 loss (its centre is `evaluate`'s loss to float64 rounding)."""

    def __init__(self, model: nn.Module, plane: Plane, x: torch.Tensor, y: torch.Tensor,
                 device: torch.device | str = "cpu", settings: SurfaceSettings = SurfaceSettings(),
                 bn_x: torch.Tensor | None = None, never_correct: tuple[int, ...] = ()):
        self.device = torch.device(device)
        self.settings = settings
        self.never_correct = never_correct
        self.model = model.to(self.device).eval()
        recomputes = bn_x is not None and has_batch_norm(self.model)
        if recomputes and settings.points_per_batch > 1:
            # a batched pass shares one set of buffers between its grid points: each needs its own statistics
            raise ValueError(f"batch-norm statistics recomputed at every grid point need points_per_batch 1, got "
                             f"{settings.points_per_batch}")
        has_conv = any(p.dim() == 4 for p in self.model.parameters())
        cl = settings.channels_last
        if cl is None:
            cl = has_conv and self.device.type == "cpu" and settings.points_per_batch == 1
        self.flat = LayoutFlatParams(self.model, channels_last=bool(cl) and settings.points_per_batch == 1)
        if plane.num_params != self.flat.vector.numel():
            raise ValueError(f"the plane has {plane.num_params} parameters, the model {self.flat.vector.numel()}")
        load_buffers(self.model, plane.center_buffers.to(self.device))
        dtype = self.flat.vector.dtype
        self.center = self.flat.to_layout(plane.center.to(self.device, dtype))
        self.d1 = self.flat.to_layout(plane.d1.to(self.device, dtype))
        self.d2 = self.flat.to_layout(plane.d2.to(self.device, dtype))
        x, y = x.to(self.device), y.to(self.device)
        layout = torch.channels_last if self.flat.channels_last and x.dim() == 4 else None
        self.batches = batch_slices(x, y, settings.batch_size, layout)
        self.bn_sample = None  # the inputs each grid point's statistics are recomputed from; None: the centre's
        if recomputes:
            self.bn_sample = bn_sample_inputs(bn_x).to(self.device)
            if layout is not None:
                self.bn_sample = self.bn_sample.contiguous(memory_format=layout)
        self.n = target_count(y)  # counted targets: samples, or a sequence task's positions (models.loss)
        if self.n == 0:
            raise ValueError("no evaluation data: the surface's data set is empty")
        self._batched = None
        if settings.points_per_batch > 1:
            self._batched = self._make_batched()

    @property
    def recomputes_bn(self) -> bool:
        """Whether every grid point gets batch-norm statistics of its own."""
        return self.bn_sample is not None

    def _make_batched(self):
        names = [n for n, _ in self.model.named_parameters()]
        shapes = [tuple(p.shape) for p in self.model.parameters()]
        buffers = {n: b for n, b in self.model.named_buffers()}
        model = self.model

        def forward(params: dict, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (params, buffers), (xb,))

        batched = vmap(forward, in_dims=(0, None))

        def run(stacked: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
            params, offset = {}, 0
            for name, shape in zip(names, shapes, strict=True):
                n = math.prod(shape)
                params[name] = stacked[:, offset : offset + n].view(stacked.shape[0], *shape)
                offset += n
            return batched(params, xb)

        return run

    @torch.inference_mode()
    def evaluate(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean cross-entropy and accuracy at each (a, b) of `coords` [K, 2] (float64 arrays)."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        k = len(coords)
        loss = torch.empty(k, dtype=torch.float64, device=self.device)
        correct = torch.empty(k, dtype=torch.int64, device=self.device)
        step = max(1, self.settings.points_per_batch)
        for start in range(0, k, step):
            group = coords[start : start + step]
            if self._batched is None:
                for off, (a, b) in enumerate(group):
                    loss[start + off], correct[start + off] = self._one(float(a), float(b))
            else:
                lo, co = self._many(group)
                loss[start : start + len(group)] = lo
                correct[start : start + len(group)] = co
        loss_np = loss.cpu().numpy()
        for i in np.flatnonzero(~np.isfinite(loss_np)):  # a float32 batch sum may have overflowed: again, wide
            a, b = coords[i]
            total, right = self._one(float(a), float(b), wide=True)
            loss_np[i], correct[i] = float(total), right
        loss_np = loss_np / self.n
        acc_np = correct.cpu().numpy().astype(np.float64) / self.n
        acc_np[np.isnan(loss_np)] = np.nan
        return loss_np, acc_np

    def _one(self, a: float, b: float, *, wide: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        vec = self.flat.vector
        torch.add(self.center, self.d1, alpha=a, out=vec)
        vec.add_(self.d2, alpha=b)
        if self.bn_sample is not None:
            refresh_bn_stats(self.model, self.bn_sample)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for xb, yb in self.batches:
            logits = self.model(xb)
            total += batch_loss_sum(at_least_float32(logits), yb, wide=wide)
            correct += correct_count(logits, yb, never_correct=self.never_correct)
        return total, correct

    def _many(self, group: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ab = torch.as_tensor(group, dtype=self.center.dtype, device=self.device)
        stacked = self.center + ab[:, :1] * self.d1 + ab[:, 1:] * self.d2  # [K, P]
        kk = len(group)
        total = torch.zeros(kk, dtype=torch.float64, device=self.device)
        correct = torch.zeros(kk, dtype=torch.int64, device=self.device)
        for xb, yb in self.batches:
            logits = self._batched(stacked, xb)  # [K, B, C] ([K, B, C, T] for a sequence task)
            ce, _ = sample_losses(at_least_float32(logits.flatten(0, 1)), yb.repeat(kk, *(1,) * (yb.ndim - 1)))
            total += ce.view(kk, -1).double().sum(dim=1)  # a sequence's own float32 sum may overflow: `evaluate`
            correct += correct_count(logits, yb, dims=1, never_correct=self.never_correct)
        return total, correct


def evaluate_chunk(evaluator: SurfaceEvaluator, grid: Grid, start: int, stop: int,
                   progress_every: float = 30.0) -> dict[str, np.ndarray]:
    """Evaluate the flat grid indices start..stop-1; logs progress (k/N, seconds)."""
    indices = np.arange(start, stop, dtype=np.int64)
    coords = grid.coords(indices)
    loss = np.empty(len(indices))
    acc = np.empty(len(indices))
    # blocks of whole point groups: one device synchronisation per block, progress logged between blocks
    step = max(1, evaluator.settings.points_per_batch) * 8
    t0 = last = time.perf_counter()
    for s in range(0, len(indices), step):
        loss[s : s + step], acc[s : s + step] = evaluator.evaluate(coords[s : s + step])
        now = time.perf_counter()
        if now - last >= progress_every or s + step >= len(indices):
            log.info("grid points %d/%d (%.1f s, %.2f points/s)", min(s + step, len(indices)), len(indices), now - t0,
                     min(s + step, len(indices)) / max(now - t0, 1e-9))
            last = now
    bad = int((~np.isfinite(loss)).sum())
    if bad:
        log.warning("%d of %d grid points have a non-finite loss (recorded as NaN/inf)", bad, len(indices))
    return {"index": indices, "loss": loss, "acc": acc}


def compute_surface(evaluator: SurfaceEvaluator, grid: Grid, chunks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The whole grid in one process (chunk by chunk, as the workflow's jobs would)."""
    parts = [evaluate_chunk(evaluator, grid, s, e)
             for s, e in chunk_bounds(grid.size, chunks, evaluator.settings.points_per_batch)]
    return gather_chunks(parts, grid)
