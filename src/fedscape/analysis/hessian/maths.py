"""Second-order analysis of a model's loss without forming the Hessian.

Everything here works on Hessian-vector products (HVPs) of the mean cross-entropy over a fixed
evaluation set, with the model in eval mode (batch norm uses its running statistics, so the loss is
a deterministic function of the parameters):

* top-k eigenpairs by power iteration with deflation (PyHessian, Yao et al. 2020) or by Lanczos
  with full reorthogonalisation;
* the trace and the diagonal by Hutchinson's estimator with Rademacher probes and a fixed probe
  count, with the standard error of the trace (Hutchinson 1989; Bekas et al. 2007 for the diagonal), or by
  Hutch++ and Diag++ (Meyer et al. 2021; Baston & Nakatsukasa 2022), which `auto` takes from 100 products, or
  exactly for a model that is piecewise linear in its parameters (`exact`: the Gauss-Newton diagonal, from
  per-sample gradients rather than products);
* the eigenvalue spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019);
* the cross-client Hessian norm difference HN and direction similarity HD (Mendieta et al. 2022,
  "Local Learning Matters" / FedAlign, eqs. 3-4, Table 1).

Vectors are flat, in `fedscape.models.params` order, so eigenvectors can be used directly as the
directions of a landscape plane (FedAlign Fig. 1).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from fedscape.analysis.hessian.definitions import (
    ASCENT,
    EVAL_ALL,
    EXACT,
    HESSIAN_PRECISIONS,
    HUTCHPP,
    QUARTERS,
    SHARPNESS_METHODS,
    EigenSettings,
    HessianSettings,
    hutchpp_split,
)
from fedscape.core.names import unknown_name_error
from fedscape.core.seeds import derive_seed
from fedscape.data.datasets import batch_slices
from fedscape.data.specs import IGNORE_INDEX
from fedscape.models.device import precision_used
from fedscape.models.loss import loss_sum, target_count

log = logging.getLogger("fedscape.hessian")

# Random streams, all derived from HessianSettings.seed (core.seeds.derive_seed): the probes are shared by
# every data set of a job (common random numbers: identical clients give identical diagonals).
_STREAM_EIGEN, _STREAM_PROBES, _STREAM_DENSITY, _STREAM_SUBSET, _STREAM_SKETCH = 1, 2, 3, 4, 5
# A Lanczos step whose residual is at most this fraction of the operator's scale (the largest ||H q|| seen) closes an
# invariant subspace (`lanczos`); relative, so that a Hessian of 1e-15 is not taken for an exhausted one.
BREAKDOWN = 1e-10
# The float64 blocks in which the inner products of the clients' quarters (QUARTERS) are summed: at most
# GRAM_BLOCK_ENTRIES entries (512 MiB), so that the float32 quarters of many clients (3,400 of FEMNIST) need no float64
# copy of them all; and at most GRAM_BLOCK columns (up to 16 clients' blocks are of those columns, as they were).
GRAM_BLOCK_ENTRIES = 1 << 26
GRAM_BLOCK = 1 << 20
# The per-sample gradients the exact diagonal holds at once (samples x parameters): 2^25 floats, 128 MB in float32
# (ResNet20's 0.27 M parameters: 124 samples a pass).
PER_SAMPLE_BUDGET = 1 << 25


def per_sample_chunk(dim: int) -> int:
    """How many samples the exact diagonal takes per pass for a model of `dim` parameters (PER_SAMPLE_BUDGET)."""
    return max(1, PER_SAMPLE_BUDGET // dim)


# -- the operator ----------------------------------------------------------------------------------
HVP_MODES = ("reverse", "forward")
# The first torch release whose forward-mode derivative of group norm takes channels-last inputs: before it,
# `hvp="forward"` with `channels_last` on a model with group norm raises torch's "view size is not compatible with
# input tensor's size and stride" (measured with torch 2.4.1, 2.11.0 (the GPU kit's), 2.12.1 and 2.13.0; 2.14.1
# computes it).
FORWARD_GROUP_NORM_NHWC = (2, 14)


def torch_release() -> tuple[int, int]:
    """The running torch's (major, minor) release."""
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def default_hvp_mode(device: torch.device | str) -> str:
    """The HVP mode of a device: reverse-over-reverse everywhere (benchmarks/README.md, "Hessian-vector products").
    On a CPU forward-over-reverse was measured 1.35-1.83x slower. On an H200 it was 19% faster on resnet20 with batch
    norm (2.03x a gradient against the cached graph's 2.49x) but 21% slower on meta.yaml's resnet18 with group norm
    (3.51x a gradient against the cached graph's 2.89x, 512 samples): no one mode wins on a card, so the cached
    graph stays the default everywhere and `hvp="forward"` an option."""
    return "reverse"


class HessianOperator:
    """Hessian-vector products of the mean cross-entropy over (x, y) (Pearlmutter 1994).

    `hvp="reverse"`: double backprop (reverse-over-reverse). With `cache_graph`, the gradient graph of every
    batch is built once and each product is one backward pass through it (PyHessian); otherwise every product
    rebuilds it batch by batch (less memory, about one extra gradient per product). `hvp="forward"`:
    forward-over-reverse, the directional derivative of the gradient by forward-mode AD
    (`torch.func.jvp` of `torch.func.grad`; Pearlmutter 1994's R-operator), one forward and one backward
    pass with dual numbers per product and batch, no graph kept (`cache_graph` is ignored). None = the
    device's default (`default_hvp_mode`).

    The model is put in eval mode for the operator's lifetime (restored by `close`). Uneven batches are
    weighted by their size so the operator is the Hessian of the mean loss over all samples (over all counted
    positions for a sequence task's targets [N, T], `fedscape.models.loss`).

    `precision` sets the TF32 switches of matmuls and convolutions until `close`: "fp32" (the default) turns
    them off, since their ~1e-3 relative error could swamp the eigenvalues' 1e-4 tolerance and PyTorch's own
    default leaves cuDNN's on; "tf32" turns them on where TF32 exists (CUDA; a CPU computes it in fp32, as
    `fedscape.models.device.precision_used` says), so that `hessian.precision: tf32` computes what it records.

    `channels_last`: the convolutions see their inputs and weights in the channels-last (NHWC) layout, for which
    cuDNN and oneDNN have kernels of their own; the weights are copied into it inside the graph, so vectors keep
    the flat parameters' order and the products are the same up to rounding. Off by default: on a CPU it made a
    product 1.1-1.2x slower (benchmarks/README.md, "Hessian-vector products"); `bench_hvp.py` measures it on a GPU.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512, cache_graph: bool = True,
                 hvp: str | None = None, precision: str = "fp32", channels_last: bool = False):
        if len(y) == 0:
            raise ValueError("the evaluation set is empty")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        n = target_count(y)  # counted targets: samples, or a sequence task's positions (models.loss)
        if n == 0:  # the mean loss would be 0 / 0: a NaN that reads as a diverged model (NonFiniteLoss)
            raise ValueError(f"no counted target in the evaluation subset: every position of its {len(y)} sequences "
                             f"is ignored (target {IGNORE_INDEX}, padding), so it has no mean loss to take the "
                             f"Hessian of")
        self.model = model
        self._was_training = model.training
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.precision = precision_used(precision, self.device)
        if self.precision not in HESSIAN_PRECISIONS:
            raise ValueError(f"Hessian-vector products compute in one of {', '.join(HESSIAN_PRECISIONS)}, "
                             f"not {precision!r}")
        self._tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        self._w: Tensor | None = None
        self._grad: Tensor | None = None
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        model.eval()
        try:
            self._names = [n for n, _ in model.named_parameters()]
            self._shapes = [p.shape for p in model.parameters()]
            self._sizes = [p.numel() for p in model.parameters()]
            self._buffers = {n: b.detach() for n, b in model.named_buffers()}
            self.center = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
            self.n = n
            self.dim = self.center.numel()
            self.channels_last = channels_last
            layout = torch.channels_last if channels_last and len(x.shape) == 4 else None  # images, not token ids
            self.mode = default_hvp_mode(self.device) if hvp is None else hvp
            if self.mode not in HVP_MODES:
                raise ValueError(f"unknown HVP mode {self.mode!r}: one of {', '.join(HVP_MODES)}")
            if (layout is not None and self.mode == "forward" and torch_release() < FORWARD_GROUP_NORM_NHWC
                    and any(isinstance(m, nn.GroupNorm) for m in model.modules())):
                need = ".".join(map(str, FORWARD_GROUP_NORM_NHWC))
                raise ValueError(f"hvp='forward' with channels_last needs torch >= {need} on a model with group "
                                 f"norm (torch {torch.__version__} cannot take forward-mode derivatives of group "
                                 "norm on channels-last inputs): use hvp='reverse', the default, or "
                                 "channels_last=False")
            self.batches = batch_slices(x.to(self.device), y.to(self.device), batch_size, layout)
            self.cache_graph = cache_graph and self.mode == "reverse"
            self.products = 0
            if self.cache_graph:
                self._w = self.center.clone().requires_grad_(True)
                self._grad = self._gradient(self._w, create_graph=True)
        except BaseException:  # out of memory building the graph, a bad mode: the switches and the mode restored
            self.close()
            raise

    def params(self, w: Tensor) -> dict[str, Tensor]:
        """The model's parameters (by name, in their shapes) of the flat vector `w`, as views of it."""
        return {n: t.view(s) for n, t, s in zip(self._names, torch.split(w, self._sizes), self._shapes, strict=True)}

    def _batch_loss(self, w: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        params = self.params(w)
        if self.channels_last:  # a copy inside the graph: the gradient reaches w in its own order
            params = {n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                      for n, t in params.items()}
        logits = functional_call(self.model, {**params, **self._buffers}, (xb,))
        return loss_sum(logits, yb) / self.n

    def _gradient(self, w: Tensor, create_graph: bool) -> Tensor:
        total = torch.zeros_like(w)
        for xb, yb in self.batches:
            total = total + torch.autograd.grad(self._batch_loss(w, xb, yb), w, create_graph=create_graph)[0]
        return total

    def loss(self, w: Tensor | None = None) -> float:
        """The mean loss at `w` (default: the centre)."""
        w = self.center if w is None else w.to(self.device, self.dtype)
        with torch.no_grad():
            return float(sum(self._batch_loss(w, xb, yb).double() for xb, yb in self.batches))

    def gradient(self, w: Tensor | None = None) -> Tensor:
        """The gradient of the mean loss at `w` (default: the centre)."""
        w = (self.center if w is None else w.to(self.device, self.dtype)).detach().clone().requires_grad_(True)
        return self._gradient(w, create_graph=False).detach()

    def hvp(self, v: Tensor) -> Tensor:
        """H v for a flat vector v (same length as the parameters)."""
        v = v.to(self.device, self.dtype)
        if v.shape != self.center.shape:
            raise ValueError(f"vector has shape {tuple(v.shape)}, the parameters {tuple(self.center.shape)}")
        self.products += 1
        if self.mode == "forward":
            out = torch.zeros_like(self.center)
            for xb, yb in self.batches:
                gradient = torch.func.grad(lambda w, xb=xb, yb=yb: self._batch_loss(w, xb, yb))
                out += torch.func.jvp(gradient, (self.center,), (v,))[1]
            return out
        if self.cache_graph:
            return torch.autograd.grad(self._grad, self._w, v, retain_graph=True)[0].detach()
        out = torch.zeros_like(self.center)
        for xb, yb in self.batches:
            w = self.center.clone().requires_grad_(True)
            g = torch.autograd.grad(self._batch_loss(w, xb, yb), w, create_graph=True)[0]
            out += torch.autograd.grad(g, w, v)[0]
        return out

    def close(self) -> None:
        """Free the cached graph; restore the model's training mode and the TF32 switches."""
        self._w = self._grad = None
        self.model.train(self._was_training)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._tf32

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def exact_hessian(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The full Hessian of the mean cross-entropy w.r.t. the flat parameters (double backprop row by row; tiny models).

    Not torch.func.hessian: in torch 2.15 its forward-over-reverse (and vmapped reverse-over-reverse)
    gets the cross terms between a LayerNorm's gain and its input wrong (char_gpt's ln_f: entries off by
    O(1), where finite differences of the gradient agree with double backprop to 1e-9;
    tests/unit/test_text_models.py checks against finite differences).
    """
    with HessianOperator(model, x, y, batch_size=len(y), cache_graph=False) as op:
        xb, yb = op.batches[0]
        return torch.autograd.functional.hessian(lambda w: op._batch_loss(w, xb, yb), op.center.clone())


# -- random vectors --------------------------------------------------------------------------------
def _generator(seed: int, *stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *stream))


def rademacher(dim: int, generator: torch.Generator) -> Tensor:
    """A vector of independent +-1 entries (drawn on the CPU so every device sees the same probes)."""
    return torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int8).float() * 2 - 1


def _gaussian_unit(dim: int, generator: torch.Generator) -> Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v / v.norm()


def _project_out(v: Tensor, basis: Sequence[Tensor] | Tensor) -> Tensor:
    """v minus its components along orthonormal vectors (twice: classical Gram-Schmidt re-orthogonalised)."""
    if len(basis) == 0:
        return v
    q = basis if isinstance(basis, Tensor) else torch.stack(list(basis))
    for _ in range(2):
        v = v - q.T @ (q @ v)
    return v


# -- eigenvalues -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EigenResult:
    """Top-k eigenpairs, with the HVPs spent on each, convergence flags and residuals ||Hv - lambda v||."""

    values: tuple[float, ...]
    vectors: Tensor  # [k, P], orthonormal rows (float64, on the operator's device)
    iterations: tuple[int, ...]
    converged: tuple[bool, ...]
    residuals: tuple[float, ...]
    method: str

    @property
    def total_iterations(self) -> int:
        return int(sum(self.iterations))


def _check_top_k(k: int, dim: int) -> None:
    """Refuse more eigenpairs than the model has parameters (power iteration's extra ones were NaN, Lanczos's
    out of range)."""
    if k > dim:
        raise ValueError(f"top_k = {k} eigenvalues asked of a model with {dim} parameters: set hessian.top_k to "
                         f"at most {dim}")


def power_iteration(op: HessianOperator, k: int, tol: float = 1e-4, max_iter: int = 100,
                    seed: int = 0) -> EigenResult:
    """Top-k eigenpairs by power iteration with deflation (PyHessian, Yao et al. 2020; as used by FedAlign).

    Eigenvalue i is the Rayleigh quotient of the iterate, stopped when it changes by less than
    `tol` relative to its size (PyHessian's rule); each iterate is kept orthogonal to the
    eigenvectors already found. Like PyHessian it finds the eigenvalues of largest magnitude.

    That rule bounds no error: the quotient creeps at the rate (lambda_2 / lambda_1)^2, so with close eigenvalues
    it stops far from lambda_1 (10, 9.8, 9 and a bulk below 2 at tol 1e-3: lambda_1 off by up to 2.5%; a trained
    MLP's 0.78, 0.71 at tol 1e-4: by 4e-4), and with lambda and -lambda at once on a mixture of the two (+-3: 2.43
    after 3 products). A pair is flagged converged only where, besides, its residual r = ||H v - value v|| (v of
    unit norm) is at most tol |value|, Lanczos's test: then H has an eigenvalue within tol |value| of the value
    (the residual bound of a symmetric matrix; Bai et al. 2000, Templates for the Solution of Algebraic Eigenvalue
    Problems, ch. 4), as `tol` promises; or at most BREAKDOWN times the largest ||H v|| seen: an eigenvalue to
    rounding (a zero one, which no relative test reaches; Lanczos's invariant subspace). The rule stops near
    r / |value| ~ sqrt(tol), so the flag seldom holds: it says that power iteration did not establish its values
    to tol, not that they miss it (the value's error is nearer r^2 / gap, with the gap to the next eigenvalue
    unknown: 5 and 1 at tol 1e-3 gave 5 to 2e-5, r 4e-3 of it).
    """
    _check_top_k(k, op.dim)
    gen = _generator(seed, _STREAM_EIGEN)
    values, vectors, iterations, converged, residuals = [], [], [], [], []
    scale = 0.0  # the largest ||H v|| seen: a lower bound of ||H||_2
    for i in range(k):
        v = _project_out(_gaussian_unit(op.dim, gen).to(op.device), vectors)
        v = v / v.norm()
        previous, stopped, it = None, False, 0
        value = residual = math.nan
        vector = v
        for it in range(1, max_iter + 1):  # noqa: B007 (the count is kept after the loop)
            hv = op.hvp(v).double()
            value, vector = float(v @ hv), v
            residual = float((hv - value * v).norm())
            scale = max(scale, float(hv.norm()))
            if previous is not None and abs(value - previous) <= tol * (abs(previous) + 1e-12):
                stopped = True
                break
            previous = value
            w = _project_out(hv, vectors)
            norm = w.norm()
            if float(norm) == 0.0:  # v lies in the null space (after deflation): eigenvalue 0
                stopped = True
                break
            v = w / norm
        done = stopped and residual <= max(tol * abs(value), BREAKDOWN * scale)
        values.append(value)
        vectors.append(vector)
        iterations.append(it)
        converged.append(done)
        residuals.append(residual)
        log.info("eigenvalue %d/%d: %.6g after %d products (%s, residual %.3g)", i + 1, k, value, it,
                 "converged" if done else "stopped, residual above tol" if stopped else "NOT converged", residual)
    return EigenResult(tuple(values), torch.stack(vectors), tuple(iterations), tuple(converged), tuple(residuals),
                       "power")


@dataclass(frozen=True)
class LanczosResult:
    """The tridiagonal matrix of a Lanczos run and (optionally) its orthonormal basis."""

    alpha: np.ndarray  # [m]
    beta: np.ndarray  # [m-1] off-diagonal (0 where the run restarted after an invariant subspace)
    basis: Tensor | None  # [m, P]
    last_beta: float  # the norm of the residual after the last step
    scale: float  # the largest ||H q_j|| of the steps: a lower bound of ||H||_2, what BREAKDOWN is relative to

    @property
    def invariant(self) -> bool:
        """Whether the last step closed an invariant subspace: its residual at rounding level of the operator's scale
        (exactly zero for a zero operator), so every Ritz pair is an eigenpair of H."""
        return self.last_beta <= BREAKDOWN * self.scale

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of the tridiagonal matrix."""
        m = len(self.alpha)
        t = np.diag(self.alpha) + np.diag(self.beta, 1) + np.diag(self.beta, -1) if m > 1 else np.diag(self.alpha)
        return np.linalg.eigh(t)


def lanczos(op: HessianOperator, v0: Tensor, steps: int, stop: Callable[[LanczosResult], bool] | None = None,
            restart: torch.Generator | None = None) -> LanczosResult:
    """Lanczos tridiagonalisation with full reorthogonalisation (Golub & Van Loan, Matrix Computations, 10.1).

    A step whose residual is at most BREAKDOWN times the largest ||H q_j|| so far closes an invariant subspace (the
    spectrum seen from v0 is exhausted): relative to the operator's own scale, not to 1, since a confidently fitted
    model's Hessian can be 1e-15 throughout, where an absolute floor stopped after one step; only an exactly zero
    operator stops on an exact zero. There the run ends, or with `restart` goes on from a fresh Gaussian vector of
    that generator orthogonal to the basis (a zero off-diagonal: T splits into blocks, each an invariant subspace's),
    so that an operator with fewer distinct eigenvalues than the Ritz values wanted (a zero or scaled-identity
    Hessian) still gives them.
    """
    steps = min(steps, op.dim)
    basis = torch.zeros(steps, op.dim, dtype=torch.float64, device=op.device)
    alpha: list[float] = []
    beta: list[float] = []
    q = v0.to(op.device, torch.float64)
    q = q / q.norm()
    last = scale = 0.0
    for j in range(steps):
        basis[j] = q
        w = op.hvp(q).double()
        scale = max(scale, float(w.norm()))
        a = float(q @ w)
        w = _project_out(w, basis[: j + 1])
        b = float(w.norm())
        alpha.append(a)
        last = b
        result = LanczosResult(np.array(alpha), np.array(beta), basis[: j + 1], last, scale)
        if stop is not None and stop(result):
            return result
        if j + 1 == steps:
            break
        if result.invariant:
            if restart is None:
                return result
            w = _project_out(_gaussian_unit(op.dim, restart).to(op.device), basis[: j + 1])
            b = 0.0
            q = w / w.norm()
        else:
            q = w / b
        beta.append(b)
    return LanczosResult(np.array(alpha), np.array(beta[: len(alpha) - 1]), basis[: len(alpha)], last, scale)


def lanczos_eigen(op: HessianOperator, k: int, tol: float = 1e-4, max_iter: int = 100, seed: int = 0) -> EigenResult:
    """Top-k (largest algebraic) eigenpairs by Lanczos with full reorthogonalisation (Golub & Van Loan 10.1).

    Stops when every one of the k Ritz pairs has a residual bound beta_m |s_mi| <= tol |theta_i|, a
    bound on the relative eigenvalue error that power iteration's stopping rule does not give. Every test is
    relative to the operator's scale, so a Hessian of 1e-15 (a saturated softmax) converges as one of 1e2 does. An
    invariant subspace reached before k + 1 Ritz values restarts the run orthogonally to it (`lanczos`): a zero
    Hessian gives k zeros, converged, as power iteration does, where it raised before.
    """
    _check_top_k(k, op.dim)
    gen = _generator(seed, _STREAM_EIGEN)

    def converged(result: LanczosResult) -> bool:
        if len(result.alpha) <= k:
            return False
        theta, s = result.ritz()
        bounds = result.last_beta * np.abs(s[-1, -k:])
        return bool(np.all(bounds <= tol * np.abs(theta[-k:])))

    # the restarts draw from the same stream after the start vector: a run without one is as it was
    result = lanczos(op, _gaussian_unit(op.dim, gen), max(max_iter, k), stop=converged, restart=gen)
    theta, s = result.ritz()
    m = len(theta)
    take = list(range(m - 1, m - 1 - k, -1))  # m >= k: the run restarts until its steps reach min(k, dim)
    vectors = torch.as_tensor(s[:, take].T.copy(), device=op.device) @ result.basis
    bounds = result.last_beta * np.abs(s[-1, take])
    done = bool(np.all(bounds <= tol * np.abs(theta[take]))) or result.invariant
    values = tuple(float(theta[i]) for i in take)
    residuals = tuple(float(b) for b in bounds)
    log.info("lanczos: top-%d eigenvalues %s after %d products (%s)", k, ", ".join(f"{v:.6g}" for v in values), m,
             "converged" if done else "NOT converged")
    # Lanczos shares its products among the k eigenpairs: the count is reported once, on the first.
    return EigenResult(values, vectors, (m,) + (0,) * (k - 1), (done,) * k, residuals, "lanczos")


def top_eigen(op: HessianOperator, settings: HessianSettings | EigenSettings) -> EigenResult:
    """Top-k eigenpairs with the configured method."""
    if settings.method == "lanczos":
        return lanczos_eigen(op, settings.top_k, settings.tol, settings.max_iter, settings.seed)
    return power_iteration(op, settings.top_k, settings.tol, settings.max_iter, settings.seed)


# -- trace and diagonal ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HutchinsonResult:
    """Trace and diagonal estimates from the same Rademacher probes (Hutchinson 1989; Bekas et al. 2007)."""

    trace: float
    stderr: float  # standard error of the trace, from whole probe vectors (see hutchinson and hutchpp)
    diagonal: Tensor  # [P] float64 on the CPU: mean of z * Hz
    samples: np.ndarray  # z^T H z per probe (Hutch++: z^T A z per residual probe)
    diagonal_estimator: str = "hutchinson"  # or "diag++" (see hutchpp), or "exact" (gauss_newton_diagonal)
    # Four estimates of the diagonal from disjoint quarters of the probes (probe i of a job's Rademacher probes in
    # quarter i mod 4, Hutch++'s sketch columns counted first whichever diagonal it keeps, so that quarter a of every
    # client holds the same probes), each unbiased and independent of the others (given Diag++'s sketch), float32 on
    # the CPU (the memory two float64 halves took): the inner product of two of them is an unbiased estimate of
    # ||diag H||^2, which the diagonal's own squared norm overestimates by its variance, and the product of two such
    # differences across clients one of (||D_k||^2 - ||D_j||^2)^2 (`diagonal_consistency`). None: the diagonal
    # alone, or fewer than 4 probes.
    quarters: tuple[Tensor, ...] | None = None

    @property
    def probes(self) -> int:
        return len(self.samples)


def hutchinson(op: HessianOperator, probes: int, seed: int = 0, every: float = 30.0) -> HutchinsonResult:
    """Hutchinson estimates of tr(H) and diag(H) with a fixed number of Rademacher probes (Hutchinson 1989).

    The probe count is fixed rather than stopped on a running-mean rule: that rule (PyHessian's)
    was measured to stop at about 4% error.

    The standard error of the trace is sqrt(Var(z^T H z) / probes) with Hutchinson's variance for Rademacher
    probes, Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2) (Hutchinson 1989; Avron & Toledo 2011), estimated by
    `ProbeMoments` from whole probe vectors, as `hutchpp` does for its residual. The spread of the probes' few
    z^T H z, the textbook estimate, is too noisy at small budgets to be trusted: its +-2 covered the trace in 85%
    of the seeds of the default run's checkpoint at 10 products, and 64% to 90% at 2 to 20 products on synthetic
    spectra, where the whole-vector estimate covers it in 90% to 94% (tests/unit/test_hessian.py,
    benchmarks/README.md). Where the estimate is not positive, the spread is used.
    """
    if probes < 2:
        raise ValueError(f"at least two probes are needed for a standard error, got {probes}")
    gen = _generator(seed, _STREAM_PROBES)
    moments = ProbeMoments(torch.empty(op.dim, dtype=torch.float64, device=op.device))
    samples = np.empty(probes)
    t0 = last = time.perf_counter()
    for i in range(probes):
        z = rademacher(op.dim, gen).to(op.device, op.dtype)
        samples[i] = float(moments.add(z.double(), op.hvp(z).double()).sum())
        now = time.perf_counter()
        if now - last > every:
            log.info("hutchinson: %d/%d probes, trace %.6g so far (%.0f s)", i + 1, probes, samples[: i + 1].mean(),
                     now - t0)
            last = now
    return HutchinsonResult(float(samples.mean()), moments.trace_stderr(samples), moments.diagonal().cpu(), samples,
                            quarters=moments.quarters())


class ProbeMoments:
    """Running sums over Rademacher probes p of the products v = M p of one matrix M: the mean of p * v estimates
    diag(M) (Bekas et al. 2007), and `off_diagonal` the sum of its entries' variances, ||M||_F^2 - sum_i M_ii^2
    (Var(p_i (Mp)_i) = sum_{j != i} M_ij^2 for Rademacher p)."""

    def __init__(self, like: Tensor, first: int = 0):
        """`first`: the position of the first probe among the job's probes, which sets the quarter of each (probe i
        here in quarter (first + i) % 4): Diag++'s residual probes follow Hutch++'s k sketch columns (first = k), as
        in Hutchinson's diagonal over the same products, so that quarter a of every client holds the same probes
        whichever diagonal each client keeps (`diagonal_consistency`)."""
        self.n, self.squares, self.diag_squares, self.first = 0, 0.0, 0.0, first
        self._quarter_sums = tuple(torch.zeros_like(like) for _ in range(QUARTERS))  # of p * v, by quarter

    def add(self, p: Tensor, v: Tensor) -> Tensor:
        """Count probe p with its product v = M p; returns p * v (its sum is the probe's sample p^T M p)."""
        pv = p * v
        self._quarter_sums[(self.first + self.n) % QUARTERS].add_(pv)
        self.n += 1
        self.squares += float(v @ v)
        self.diag_squares += float(pv @ pv)
        return pv

    @property
    def diag_sum(self) -> Tensor:
        return sum(self._quarter_sums[1:], self._quarter_sums[0])

    def diagonal(self) -> Tensor:
        return self.diag_sum / self.n

    def quarters(self, offset: Tensor | None = None) -> tuple[Tensor, ...] | None:
        """The diagonal estimated four times, from disjoint quarters of the probes, plus `offset` (a part of the
        diagonal known exactly), float32 on the CPU; None with fewer than 4 probes."""
        if self.n < QUARTERS:
            return None
        counts = [len(range((r - self.first) % QUARTERS, self.n, QUARTERS)) for r in range(QUARTERS)]
        estimates = [s / c for s, c in zip(self._quarter_sums, counts, strict=True)]
        if offset is not None:
            estimates = [e + offset for e in estimates]
        return tuple(e.float().cpu() for e in estimates)

    def trace_stderr(self, samples: np.ndarray) -> float:
        """The standard error of the mean of the probes' samples p^T M p: sqrt(Var / n) with Hutchinson's variance
        for Rademacher probes, 2 `off_diagonal()` (Hutchinson 1989; Avron & Toledo 2011), or the samples' spread
        where that estimate is not positive."""
        variance = 2.0 * self.off_diagonal()
        if not variance > 0:
            variance = float(samples.var(ddof=1))
        return math.sqrt(variance / self.n)

    def off_diagonal(self) -> float:
        """||M||_F^2 - sum_i M_ii^2, unbiased (two probes or more): the mean of ||Mp||^2 less the mean over pairs
        of probes of <p * Mp, p' * Mp'>, each averaging whole vectors rather than one number per probe."""
        pairs = (float(self.diag_sum @ self.diag_sum) - self.diag_squares) / (self.n * (self.n - 1))
        return self.squares / self.n - pairs


def hutchpp(op: HessianOperator, products: int, seed: int = 0) -> HutchinsonResult:
    """tr(H) by Hutch++ (Meyer et al. 2021) and diag(H) by Diag++ (Baston & Nakatsukasa 2022), one budget.

    k = products // 3 Rademacher sketch columns give Q = orth(H S) and HQ (2k products), hence
    tr(Q^T H Q) and diag(Q (HQ)^T) exactly. Each remaining product h = H z serves both residuals: the
    trace of (I - QQ^T) H (I - QQ^T) as y^T (h - HQ Q^T z) with y = (I - QQ^T) z (Hutch++; HQ is known,
    so no second product), and the diagonal of (I - QQ^T) H as z * (I - QQ^T) h (unbiased for any Q;
    deflating both sides would miss the diagonal of the cross terms). With products >= 3 dim the
    sketch spans the space and both are exact up to rounding.

    The diagonal is Diag++'s, or Hutchinson's from the same products' k + m Rademacher probes (the sketch's
    and the residual's), whichever has the smaller estimated variance (`ProbeMoments.off_diagonal` of H
    over k + m probes against that of (I - QQ^T) H over m): Diag++ spends a third of the products on a
    sketch, which pays only where the top eigenvectors carry the off-diagonal mass. On a tiny MLP's
    Hessian it did not: cosine to the exact diagonal 0.61 against Hutchinson's 0.76 at 10 products,
    0.94 against 0.97 at 100 (benchmarks/README.md). Below 4 residual probes (budgets 4 to 7
    and 9) it is Hutchinson's: Diag++ would have no four quarters for HN and HD.

    `stderr` is that of the trace residual given the sketch, from Hutchinson's variance for Rademacher
    probes, Var(z^T A z) = 2 (||A||_F^2 - sum_i A_ii^2) with A = (I - QQ^T) H (I - QQ^T) (Hutchinson 1989;
    Avron & Toledo 2011), estimated by `ProbeMoments` from whole vectors: the spread of the few z^T A z a
    small budget leaves (4 at 10 products) gave a standard error whose +-2 covered the trace in 80% of the
    seeds of a synthetic spectrum; this one in 96% (tests/unit/test_hessian.py). Where the estimate is not
    positive, the spread is used.
    """
    k, probes = hutchpp_split(products, op.dim)
    if k < 1 or probes < 2:
        raise ValueError(f"Hutch++ needs at least 4 Hessian-vector products (a sketch column, its product and two "
                         f"probes for a standard error), got {products}")
    gen = _generator(seed, _STREAM_SKETCH)
    sketch = [rademacher(op.dim, gen).to(op.device, torch.float64) for _ in range(k)]
    hs = torch.stack([op.hvp(s.to(op.dtype)).double() for s in sketch], dim=1)
    q = torch.linalg.qr(hs, mode="reduced").Q
    hq = torch.stack([op.hvp(q[:, j].to(op.dtype)).double() for j in range(k)], dim=1)
    exact_trace = float((q * hq).sum())
    residual_trace = ProbeMoments(q[:, 0])  # of A = (I - QQ^T) H (I - QQ^T)
    # of (I - QQ^T) H: residual probe i in quarter (k + i) % 4 as in plain_diag, whose first k probes are the sketch's.
    # Clients choose their diagonal apart; with residual probe i in quarter i % 4 here, a Diag++ client's quarter a
    # and a Hutchinson client's quarter b != a shared probes wherever k % 4 != 0 (100 products: k = 33), and their
    # product estimated D_k . D_j plus the two Hessians' shared off-diagonal mass (HD 0.749 for 0.733 on a synthetic
    # pair). Aligned, the product is unbiased: a Diag++ quarter's mean given the sketch and every other quarter's
    # probes is diag(QQ^T H) + diag((I - QQ^T) H) = D_j, whatever the sketch columns in the other client's quarter.
    residual_diag = ProbeMoments(q[:, 0], first=k)
    plain_diag = ProbeMoments(q[:, 0])  # of H, over the sketch's probes and the residual's
    for j, s in enumerate(sketch):
        plain_diag.add(s, hs[:, j])
    samples = np.empty(probes)
    gen = _generator(seed, _STREAM_PROBES)
    for i in range(probes):
        z = rademacher(op.dim, gen).to(op.device, torch.float64)
        h = op.hvp(z.to(op.dtype)).double()
        qz = q.T @ z
        plain_diag.add(z, h)
        residual_diag.add(z, h - q @ (q.T @ h))
        hpz = h - hq @ qz  # H (I - QQ^T) z
        samples[i] = float((z - q @ qz) @ hpz)
        residual_trace.add(z, hpz - q @ (q.T @ hpz))
    # the diagonal is read only as HN and HD's four quarters: a residual of fewer than 4 probes has none, while the
    # k + m probes of Hutchinson's may (trace_probes 5-7 and 9)
    if probes >= QUARTERS and residual_diag.off_diagonal() / probes <= plain_diag.off_diagonal() / plain_diag.n:
        sketched = (q * hq).sum(dim=1)  # diag(QQ^T H), exact given the sketch
        diag, quarters, diagonal_estimator = (sketched + residual_diag.diagonal(), residual_diag.quarters(sketched),
                                              "diag++")
    else:
        diag, quarters, diagonal_estimator = plain_diag.diagonal(), plain_diag.quarters(), "hutchinson"
    return HutchinsonResult(exact_trace + float(samples.mean()), residual_trace.trace_stderr(samples), diag.cpu(),
                            samples, diagonal_estimator, quarters)


# How the exact diagonal takes its per-sample gradients: `per_class`, one vmapped gradient (a forward and a
# backward pass over the samples) per column of the softmax Hessian's square root; `per_sample`, one forward pass
# per sample and a backward pass through it per column (`torch.func.vjp`), C - 2 forward passes fewer. Equal in
# exact arithmetic (tests/unit/test_hessian_exact.py).
DIAGONAL_FORMS = ("per_class", "per_sample")


def default_diagonal_form(device: torch.device | str) -> str:
    """The exact diagonal's form on a device (benchmarks/README.md, "The exact diagonal's two forms"): `per_sample` on
    a card, where it took 0.63x the time of `per_class` on resnet20 with batch norm (CIFAR-10, an NVIDIA H200; the
    ResNets are what the papers' GPU jobs take); `per_class` on a CPU, where `per_sample` took 1.35x its time on
    cnn_small (the default run's model) and 1.13-1.23x on the pilot's ConvNet, 0.79x and 0.81x on resnet20 (10 and
    100 classes). The two are equal to rounding, so the choice changes only the time."""
    return "per_sample" if torch.device(device).type == "cuda" else "per_class"


def gauss_newton_diagonal(op: HessianOperator, form: str | None = None) -> Tensor:
    """diag(H) of the operator's mean cross-entropy, exactly, for a model that is piecewise linear in its parameters
    (`fedscape.models.specs.piecewise_linear`): [P] float64 on the CPU, from per-sample gradients, no products.

    H = G + R, with G = (1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i the generalised Gauss-Newton matrix (J_i the
    Jacobian of sample i's logits, p_i their softmax) and R = (1/n) sum_i sum_c (p_ic - y_ic) d2 f_ic / dw2
    (Martens 2014, "New insights and perspectives on the natural gradient method"; Schraudolph 2002). In a network of
    linear maps (convolutions, fully connected layers, eval-mode batch norm, average pools, sums of residual
    branches) and piecewise-linear activations (ReLU, max-pool), each logit is linear in any one parameter wherever
    the activation pattern holds, which is almost everywhere, so d2 f_ic / dw_j^2 = 0 and diag(R) = 0: diag(H) =
    diag(G) (BackPACK's observation for the diagonal blocks of ReLU networks: Dangel, Kunstner & Hennig 2020).
    diag(G) = (1/n) sum_i sum_c (J_i^T s_ic)^2 with s_ic the columns of a square root of the softmax Hessian,
    S = diag(sqrt p) - p sqrt(p)^T (S S^T = diag(p) - p p^T since the p sum to 1), of rank C - 1 and taken with
    C - 1 columns: one per-sample gradient of s_ic . f(x_i) per class but one. Group norm and layer norm,
    attention, LSTMs and smooth activations are not piecewise linear there; tests/unit/test_hessian_exact.py checks
    every model the registry declares so against products. `form`: how the per-sample gradients are taken
    (`DIAGONAL_FORMS`; default: the device's, `default_diagonal_form`).
    """
    form = default_diagonal_form(op.device) if form is None else form
    if form not in DIAGONAL_FORMS:
        raise ValueError(f"unknown exact diagonal form {form!r}; valid: {', '.join(DIAGONAL_FORMS)}")
    for _, yb in op.batches:
        if yb.dim() != 1 or bool((yb < 0).any()):
            raise ValueError("the exact Hessian diagonal needs one class per sample (a sequence task's positions or "
                             "ignored targets are not covered)")
    buffers = op._buffers

    def logit_along(w: Tensor, x: Tensor, s: Tensor) -> Tensor:
        logits = functional_call(op.model, {**op.params(w), **buffers}, (x.unsqueeze(0),))
        return (logits[0] * s).sum()

    def squares_along(w: Tensor, x: Tensor, columns: Tensor) -> Tensor:
        # one sample's forward pass, kept for a backward pass per column: sum_c (J^T s_c)^2
        _, pull = vjp(lambda w: functional_call(op.model, {**op.params(w), **buffers}, (x.unsqueeze(0),))[0], w)
        total = torch.zeros_like(w)
        for c in range(columns.shape[1]):
            total = total + pull(columns[:, c])[0].square()
        return total

    per_sample = vmap(grad(logit_along), in_dims=(None, 0, 0))
    per_sample_squares = vmap(squares_along, in_dims=(None, 0, 0))
    chunk = per_sample_chunk(op.dim)
    total = torch.zeros(op.dim, dtype=torch.float64, device=op.device)
    center = op.center.detach()
    for xb, _ in op.batches:
        for start in range(0, len(xb), chunk):
            x = xb[start : start + chunk]
            with torch.no_grad():
                p = functional_call(op.model, {**op.params(center), **buffers}, (x,)).double().softmax(dim=1)
            root = p.sqrt()
            columns = torch.diag_embed(root) - p.unsqueeze(2) * root.unsqueeze(1)  # [b, logit, column c]
            # S sqrt(p) = 0, so S has rank C - 1: S H, H the Householder reflection that maps e_C to -sqrt(p) (its
            # vector sqrt(p) + e_C, never short), has S H e_C = 0 and S H (S H)^T = S S^T; its first C - 1 columns
            # give the same sum with one per-sample gradient fewer
            w = root.clone()
            w[:, -1] += 1
            w = w / w.norm(dim=1, keepdim=True)
            columns = (columns - 2 * (columns @ w.unsqueeze(2)) * w.unsqueeze(1))[:, :, :-1]
            if form == "per_sample":
                total += per_sample_squares(center, x, columns.to(op.dtype)).sum(dim=0).double()
                continue
            for c in range(columns.shape[2]):
                g = per_sample(center, x, columns[:, :, c].to(op.dtype))
                total += g.square_().sum(dim=0).double()  # in place: no second [chunk, P] block
    return (total / op.n).cpu()


def exact_trace_and_diagonal(op: HessianOperator) -> HutchinsonResult:
    """The diagonal of `gauss_newton_diagonal` and its sum, the trace, as a HutchinsonResult without probes: standard
    error 0, and the diagonal as its own four quarters, which `diagonal_consistency` reads as exact."""
    diagonal = gauss_newton_diagonal(op)
    quarter = diagonal.float()
    return HutchinsonResult(float(diagonal.sum()), 0.0, diagonal, np.empty(0), EXACT, (quarter,) * QUARTERS)


def trace_and_diagonal(op: HessianOperator, settings: HessianSettings) -> HutchinsonResult:
    """The trace and diagonal with the configured estimator: `trace_probes` products, or exact."""
    if settings.trace_estimator == EXACT:
        return exact_trace_and_diagonal(op)
    if settings.trace_estimator == HUTCHPP:
        return hutchpp(op, settings.trace_probes, settings.seed)
    return hutchinson(op, settings.trace_probes, settings.seed)


# -- worst-case sharpness --------------------------------------------------------------------------
def _project_ball(u: Tensor, rho: float) -> Tensor:
    """u scaled onto the L2 ball of radius rho when outside it."""
    norm = float(u.norm())
    return u * (rho / norm) if norm > rho else u


def _unit(v: Tensor) -> Tensor:
    norm = float(v.norm())
    return v / norm if norm > 0 else torch.zeros_like(v)


# APGD's constants (Croce & Hein 2020, Sec. 3.2, as Andriushchenko et al. 2023's sharpness code sets them): the first
# step is twice the radius, the step halves at a checkpoint, the momentum's weight on the new step is 0.75, and a
# checkpoint halves the step where fewer than 0.75 of the steps since the last one raised the loss.
APGD_FIRST_STEP = 2.0
APGD_MOMENTUM = 0.75
APGD_RISES = 0.75


def apgd_checkpoints(iterations: int) -> frozenset[int]:
    """The iterations w_j = ceil(p_j N) after which APGD checks its progress: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2), every p_j <= 1: a set, so that
    p_j of one ceiling count once (N = 5: 2, 3, 4, 5). In whole hundredths, so that no float rounding moves one (the
    sharpness code's floats put 0.57 N at 58 for N = 100, AutoAttack's integers at the paper's 57)."""
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return frozenset(-(-pj * iterations // 100) for pj in p[1:])


def sharpness(op: HessianOperator, rho: float, steps: int, eta: float | None = None, seed: int = 0,
              method: str = ASCENT) -> float:
    """max over ||e / T|| <= rho of L(w + e) - L(w) at the operator's centre w, searched for in u = e / T with
    `steps + 1` gradients (APGD: at most) by `method`.

    T = 1: the sharpness of SAM (Foret et al. 2021, eq. 1, with p = 2), here of the loss over the whole evaluation
    set, not SAM's per-batch m-sharpness; T = |w| + eta elementwise: adaptive sharpness (Kwon et al. 2021, ASAM).
    Not Keskar et al. 2017's measure, which maximises over a box |e_i| <= eps (|w_i| + 1) and reports
    100 (L(w + e) - L(w)) / (1 + L(w)). Both methods start at the SAM / ASAM step u = rho d with d the unit of T g
    (a seeded random direction if g = 0) and take every step along the unit gradient in u:

    * ASCENT: `steps` steps u <- P(u + rho d), P the projection onto the ball. It can stick at large radii
      (benchmarks/README.md, "Worst-case sharpness");
    * APGD: Auto-PGD (Croce & Hein 2020, Algorithm 1) on the ball, the reference for worst-case sharpness
      (Andriushchenko et al. 2023, `eval_APGD_sharpness` with its L2 ball, no random start and 2 rho as the first
      step): its first iteration from u = 0 is the SAM step, then `steps` more, z = P(u + s d) and
      u <- P(u + 0.75 (z - u) + 0.25 (u - u_prev)), the step s halved and the search moved back to the best point
      at the checkpoints (`apgd_checkpoints`) where the loss rose in fewer than 0.75 of the steps since the last
      one, or neither the best nor s moved since it; the best point's gradient is kept for the move back. As the
      paper and AutoAttack's code, not as the sharpness code, whose momentum weighs z against the point before
      last and whose move back keeps the current perturbation; and in u, where the sharpness code steps along
      g |w| / ||g|| and projects onto the ellipsoid in e.

    Every iterate is feasible, so the largest loss seen (or L(w) itself) is a lower bound of the maximum and the
    result is >= 0.

    A NaN loss at a perturbed point of finite weights is one whose logits overflowed (as a barrier's point,
    `barriers.maths.evaluate_point`): the loss rose past what float holds, so the sharpness is +inf, where
    `max` would drop the NaN and call the model flat. A perturbed point that is not finite (a gradient that
    overflowed on the way) gives NaN: no measurement. A NaN L(w) gives NaN.
    """
    if method not in SHARPNESS_METHODS:
        raise unknown_name_error("sharpness method", method, SHARPNESS_METHODS)
    w = op.center.double()
    scale = torch.ones_like(w) if eta is None else w.abs() + eta
    base = op.loss()
    if math.isnan(base):
        return math.nan

    def ascent_direction(u: Tensor) -> Tensor:
        return _unit(scale * op.gradient((w + scale * u).to(op.dtype)).double())

    d = ascent_direction(torch.zeros_like(w))
    if float(d.norm()) == 0:
        d = _unit(rademacher(op.dim, _generator(seed, _STREAM_SKETCH, 1)).to(w.device).double())
    search = _ascent if method == ASCENT else _apgd
    try:
        return search(op, w, scale, ascent_direction, d, rho, steps, base) - base
    except _NaNLoss as nan:
        return nan.sharpness


class _NaNLoss(Exception):
    """A NaN loss at a perturbed point, which ends the search: the sharpness is `sharpness` (`sharpness`'s rule)."""

    def __init__(self, sharpness: float):
        super().__init__(sharpness)
        self.sharpness = sharpness


def _perturbed_loss(op: HessianOperator, point: Tensor) -> float:
    """The loss at `point`; _NaNLoss where it is NaN: +inf at finite weights, else NaN (`sharpness`)."""
    loss = op.loss(point)
    if math.isnan(loss):
        raise _NaNLoss(math.inf if bool(torch.isfinite(point).all()) else math.nan)
    return loss


def _ascent(op: HessianOperator, w: Tensor, scale: Tensor, ascent_direction: Callable[[Tensor], Tensor], d: Tensor,
            rho: float, steps: int, base: float) -> float:
    """The largest loss of `sharpness`'s ASCENT, L(w) included."""
    u = _project_ball(rho * d, rho)
    best = base
    for step in range(steps + 1):
        if step:
            u = _project_ball(u + rho * ascent_direction(u), rho)
        best = max(best, _perturbed_loss(op, (w + scale * u).to(op.dtype)))
    return best


def _apgd(op: HessianOperator, w: Tensor, scale: Tensor, ascent_direction: Callable[[Tensor], Tensor], d: Tensor,
          rho: float, steps: int, base: float) -> float:
    """The largest loss of `sharpness`'s APGD, L(w) included: `steps + 1` iterations from u = 0, whose direction
    is `d`."""
    iterations = steps + 1
    checkpoints = apgd_checkpoints(iterations)
    step = APGD_FIRST_STEP * rho
    u = u_prev = torch.zeros_like(w)
    loss = best = checked = base
    best_u, best_d = u, d
    rises, last, halved = 0, 0, False
    for k in range(iterations):
        z = _project_ball(u + step * d, rho)
        moved = z if k == 0 else _project_ball(u + APGD_MOMENTUM * (z - u) + (1 - APGD_MOMENTUM) * (u - u_prev), rho)
        u_prev, u = u, moved
        new = _perturbed_loss(op, (w + scale * u).to(op.dtype))
        rises += new > loss
        loss = new
        if loss > best:
            best, best_u, best_d = loss, u, None  # its direction: below, unless this is the last iterate
        if k + 1 in checkpoints:
            # the loss rose in too few steps since the last checkpoint, or neither the best nor the step moved
            halved = rises < APGD_RISES * (k + 1 - last) or (not halved and best == checked)
            rises, last, checked = 0, k + 1, best
            if halved:
                step /= 2
                u, loss = best_u, best
        if k + 1 < iterations:
            d = best_d if u is best_u and best_d is not None else ascent_direction(u)
            if u is best_u:
                best_d = d
    return best


# -- spectral density ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DensityResult:
    """Gauss quadrature nodes and weights of the spectral density, one set per SLQ probe."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]


def slq_density(op: HessianOperator, steps: int = 90, probes: int = 10, seed: int = 0) -> DensityResult:
    """Stochastic Lanczos quadrature of the eigenvalue density (Ghorbani et al. 2019; Lin et al. 2016).

    For each normalised Rademacher probe v, m Lanczos steps give T = S diag(theta) S^T; the density
    is approximated by sum_i S_0i^2 delta(t - theta_i), averaged over probes.
    """
    probed = list(slq_probes(op, steps, probes, seed))
    return DensityResult([nodes for _, nodes, _ in probed], [weights for _, _, weights in probed])


def slq_probes(op: HessianOperator, steps: int = 90, probes: int = 10, seed: int = 0, skip: Container[int] = ()
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The probes of `slq_density` one at a time, as each finishes: its number, its nodes and its weights; those in
    `skip` (finished by an earlier attempt of a job) left out. Probe i's vector is the i-th draw of the density's
    stream whichever are left out, so that a probe computed after a kill is the one an unbroken density computes."""
    gen = _generator(seed, _STREAM_DENSITY)
    for i in range(probes):
        v = rademacher(op.dim, gen)  # drawn for a skipped probe too: the next probe's vector is the next draw
        if i in skip:
            continue
        t0 = time.perf_counter()
        theta, s = lanczos(op, v.double(), steps).ritz()
        log.info("density: probe %d/%d, %d Lanczos steps, eigenvalues in [%.4g, %.4g] (%.1f s)", i + 1, probes,
                 len(theta), theta.min(), theta.max(), time.perf_counter() - t0)
        yield i, theta, s[0, :] ** 2


# -- cross-client consistency ----------------------------------------------------------------------
def diagonal_consistency(diagonals: Sequence[Sequence[Tensor] | None]) -> tuple[float, float, list[int]]:
    """HN and HD of FedAlign (Mendieta et al. 2022, eqs. 3-4) from per-client Hessian diagonals, and the positions
    of the clients whose diagonal the probes did not resolve, from one pass over the diagonals.

    HN = mean over client pairs of (||D_k||^2 - ||D_j||^2)^2 (as written in the paper) and HD = mean over pairs of
    cos(D_k, D_j), with D_k the Hessian diagonal on client k's data. Each client's diagonal comes as four
    independent unbiased estimates Q_k1..Q_k4 from disjoint probes (`HutchinsonResult.quarters`; an exact diagonal:
    (D, D, D, D)), and every quantity is a product of estimates from disjoint quarters, so unbiased:
    ||D_k||^2 is the mean over quarters a != b of Q_ka . Q_kb, D_k . D_j that of Q_ka . Q_jb (the clients share
    their probes, so the same quarter would add their correlation; quarter a holds the same probes in every client's
    diagonal, Diag++'s or Hutchinson's, `ProbeMoments`), and (||D_k||^2 - ||D_j||^2)^2 the mean over
    the three ways to split the quarters into two pairs {a, b}, {c, d} of d_ab d_cd, d_ab = Q_ka . Q_kb -
    Q_ja . Q_jb. Squaring one estimate of the difference instead adds its variance: HN fell with the probe count
    (on a 570-parameter MLP of three label-skewed clients, exact HN 0.061: 0.117 at 20 probes, 0.089 at 50, 0.071
    at 100), and the squared norm of an estimate itself (||H||_F^2 - ||D||^2) / n more, several times ||D_k||^2 on
    a small CNN at 20 probes. A pair's cosine estimate is clipped to [-1, 1] (noise past the bounds of a cosine),
    and is NaN where a norm estimate is not positive: too few probes to resolve that client's diagonal
    (its squared-norm estimate not positive, or no quarters: fewer than 4 probes), so HD is NaN too. HN and HD are
    NaN with fewer than two clients, or where a client's diagonal has no quarters.
    """
    missing = [i for i, d in enumerate(diagonals) if d is None]
    if missing or not diagonals:
        return math.nan, math.nan, missing
    g = _quarter_gram(diagonals)
    norms = _squared_norms(g)
    unresolved = [i for i, norm in enumerate(norms) if not norm > 0]
    if len(diagonals) < 2:
        return math.nan, math.nan, unresolved
    splits = ((0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2))
    hn, hd = [], []
    for k, j in itertools.combinations(range(len(diagonals)), 2):
        hn.append(float(np.mean([float((g[k, a, k, b] - g[j, a, j, b]) * (g[k, c, k, d] - g[j, c, j, d]))
                                 for a, b, c, d in splits])))
        if norms[k] > 0 and norms[j] > 0:
            cross = float(np.mean([float(g[k, a, j, b]) for a, b in itertools.permutations(range(QUARTERS), 2)]))
            hd.append(min(1.0, max(-1.0, cross / math.sqrt(norms[k] * norms[j]))))
        else:
            hd.append(math.nan)
    return float(np.mean(hn)), float(np.mean(hd)), unresolved


def hessian_norm_direction(diagonals: Sequence[Sequence[Tensor] | None]) -> tuple[float, float]:
    """HN and HD of `diagonal_consistency`."""
    hn, hd, _ = diagonal_consistency(diagonals)
    return hn, hd


def unresolved_diagonals(diagonals: Sequence[Sequence[Tensor] | None]) -> list[int]:
    """The positions of the clients whose diagonal the probes did not resolve (`diagonal_consistency`)."""
    return diagonal_consistency(diagonals)[2]


def _quarter_gram(diagonals: Sequence[Sequence[Tensor]]) -> Tensor:
    """[C, 4, C, 4] float64 inner products of every client's quarter estimates, summed over column blocks (no
    float64 copy of all clients' diagonals at once: GRAM_BLOCK_ENTRIES)."""
    vectors = [q.detach() for quarters in diagonals for q in quarters]
    if any(len(quarters) != QUARTERS for quarters in diagonals):
        raise ValueError(f"each client's diagonal needs {QUARTERS} estimates from disjoint probes, got "
                         f"{[len(q) for q in diagonals]}")
    columns = max(1, min(GRAM_BLOCK, GRAM_BLOCK_ENTRIES // len(vectors)))
    gram = torch.zeros(len(vectors), len(vectors), dtype=torch.float64)
    for start in range(0, vectors[0].numel(), columns):
        block = torch.stack([v[start : start + columns].double().cpu() for v in vectors])
        gram += block @ block.T
    return gram.view(len(diagonals), QUARTERS, len(diagonals), QUARTERS)


def _squared_norms(g: Tensor) -> list[float]:
    """||D_k||^2 of each client: the mean over quarters a < b of Q_ka . Q_kb."""
    return [float(np.mean([float(g[k, a, k, b]) for a, b in itertools.combinations(range(QUARTERS), 2)]))
            for k in range(len(g))]


# -- evaluation sets and one full analysis ---------------------------------------------------------
def eval_subset(n: int, max_samples: int | str | None, seed: int, key: int = 0) -> Tensor:
    """Sorted indices of a fixed, seeded evaluation subset of n samples (all of them when n <= max_samples, or
    max_samples is None or EVAL_ALL)."""
    if max_samples is None or max_samples == EVAL_ALL or n <= max_samples:
        return torch.arange(n)
    perm = torch.randperm(n, generator=_generator(seed, _STREAM_SUBSET, key))
    return perm[:max_samples].sort().values


@dataclass(frozen=True)
class HessianReport:
    """Everything measured on one data set."""

    n_eval: int  # samples (a token task's sequences), as `eval_samples` counts them, not counted positions
    loss: float
    eigen: EigenResult | None
    hutchinson: HutchinsonResult
    density: DensityResult | None
    products: int
    seconds: float
    sharpness: float = math.nan  # NaN unless settings.sharpness
    adaptive_sharpness: float = math.nan


class NonFiniteLoss(ValueError):
    """The loss at the analysed model is not finite although its weights are (outputs that overflow, e.g. through
    eval-mode batch-norm statistics): its Hessian is undefined, and the eigensolvers would fail on NaN products."""


def _finite_loss(op: HessianOperator, n: int) -> float:
    """The operator's loss, or NonFiniteLoss where it is not finite (on `n` evaluated samples)."""
    loss = op.loss()
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"its loss on the {n} evaluated samples is {loss}: the Hessian is undefined")
    return loss


# The pieces of one analysis (`analyse`), which a job keeps as each finishes so that, killed, it resumes after the last
# one (`hessian.stage`): the eigenpairs with the trace and diagonal (a HessianReport without density or sharpness),
# each SLQ probe of the density (most of a job's products: 10 probes of 90 steps, Ghorbani et al. 2019) and the
# sharpness. Each draws from a random stream of its own (_STREAM_*; the density's probes in turn, `slq_probes`) and a
# product does not depend on the products before it, so a piece computed after a kill is the one an unbroken analysis
# computes, bit for bit on a CPU.
EIGEN_PIECE, SHARPNESS_PIECE = "eigen", "sharpness"


def density_piece(probe: int) -> str:
    return f"density_{probe}"


def analysis_pieces(settings: HessianSettings, density: bool) -> list[str]:
    """The pieces of an analysis with `settings` (and the SLQ density where `density`), in the order computed."""
    return [EIGEN_PIECE, *(density_piece(i) for i in range(settings.density_probes) if density),
            *([SHARPNESS_PIECE] if settings.sharpness else [])]


@dataclass(frozen=True)
class DensityProbe:
    """A piece of an analysis: one SLQ probe's nodes and weights (`slq_probes`), the products and seconds it took."""

    nodes: np.ndarray
    weights: np.ndarray
    products: int
    seconds: float


@dataclass(frozen=True)
class SharpnessResult:
    """A piece of an analysis: its sharpness and adaptive sharpness (`sharpness`), and the seconds they took."""

    sharpness: float
    adaptive_sharpness: float
    seconds: float


def analyse(model: nn.Module, x: Tensor, y: Tensor, settings: HessianSettings, eigen: bool = True,
            density: bool | None = None, pieces: Mapping[str, object] | None = None,
            finished: Callable[[str, object], None] | None = None) -> HessianReport:
    """Eigenpairs, trace and diagonal (Hutchinson or Hutch++ / Diag++), optionally the SLQ density, and the sharpness
    where `settings` ask for it, on (x, y): the report of the analysis's pieces (`analysis_pieces`). `pieces`: those
    an earlier attempt finished, taken as they are; `finished(name, piece)`: called as each of the others finishes.
    Each piece's products and seconds are those since the piece before it (the first's include building the
    operator)."""
    density = settings.density if density is None else density
    done = dict(pieces or {})
    mark = (time.perf_counter(), 0)  # when the last piece finished, and the products by then
    with HessianOperator(model, x, y, settings.batch_size, settings.cache_graph, precision=settings.precision) as op:

        def cost() -> tuple[int, float]:
            """The products and seconds since the last piece finished."""
            nonlocal mark
            now = time.perf_counter()
            spent, mark = (op.products - mark[1], now - mark[0]), (now, op.products)
            return spent

        def keep(name: str, piece: object) -> None:
            done[name] = piece
            if finished is not None:
                finished(name, piece)

        loss = _finite_loss(op, len(y))
        if EIGEN_PIECE not in done:
            eig = top_eigen(op, settings) if eigen else None
            hutch = trace_and_diagonal(op, settings)
            keep(EIGEN_PIECE, HessianReport(len(y), loss, eig, hutch, None, *cost()))
        if density:
            skip = {i for i in range(settings.density_probes) if density_piece(i) in done}
            for i, nodes, weights in slq_probes(op, settings.density_steps, settings.density_probes, settings.seed,
                                                skip):
                keep(density_piece(i), DensityProbe(nodes, weights, *cost()))
        if settings.sharpness and SHARPNESS_PIECE not in done:
            sharp = sharpness(op, settings.sharpness_rho, settings.sharpness_steps, None, settings.seed,
                              settings.sharpness_method)
            adaptive = sharpness(op, settings.adaptive_radius, settings.sharpness_steps, settings.sharpness_eta,
                                 settings.seed, settings.sharpness_method)
            keep(SHARPNESS_PIECE, SharpnessResult(sharp, adaptive, cost()[1]))
    return report_of_pieces(done, settings, density)


def report_of_pieces(pieces: Mapping[str, object], settings: HessianSettings, density: bool) -> HessianReport:
    """The report of an analysis made of `pieces` (every one of `analysis_pieces`): its products those of the
    eigenpairs, trace and density (not the sharpness's gradients), its seconds those of every piece."""
    first = pieces[EIGEN_PIECE]
    probes = [pieces[density_piece(i)] for i in range(settings.density_probes)] if density else []
    sharp = pieces[SHARPNESS_PIECE] if settings.sharpness else SharpnessResult(math.nan, math.nan, 0.0)
    return replace(first, density=DensityResult([p.nodes for p in probes], [p.weights for p in probes]) if density
                   else None, products=first.products + sum(p.products for p in probes),
                   seconds=first.seconds + sum(p.seconds for p in probes) + sharp.seconds,
                   sharpness=sharp.sharpness, adaptive_sharpness=sharp.adaptive_sharpness)


def top_eigenpairs(model: nn.Module, x: Tensor, y: Tensor, settings: HessianSettings | EigenSettings) -> EigenResult:
    """The top-k eigenpairs on (x, y) alone, as `analyse` computes them (the same operator, the same products first),
    so bit for bit theirs on a CPU."""
    with HessianOperator(model, x, y, settings.batch_size, settings.cache_graph, precision=settings.precision) as op:
        _finite_loss(op, len(y))
        return top_eigen(op, settings)


def orthonormal_plane(v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit directions spanning (v1, v2), the second orthogonalised against the first (Gram-Schmidt)."""
    d1 = v1.double() / v1.double().norm()
    d2 = v2.double() - (v2.double() @ d1) * d1
    norm = d2.norm()
    if float(norm) == 0:
        raise ValueError("the two eigenvectors are parallel")
    return d1, d2 / norm
