"""Error of the Hessian trace and diagonal against the number of Hessian-vector products: Hutchinson vs
Hutch++ / Diag++ (the `hessian.trace_estimator` choices), at equal products, over several seeds.

The model: with --checkpoint, a run's trajectory.pt at --round (default its last), on the samples of the aggregate
training data (or of --client k) its Hessian job evaluates (the run found in --config, its data loaded and
subsampled by the Hessian stage's own functions; --samples overrides `hessian.eval_samples`); otherwise a
`cnn_small` trained --epochs on the bundled digits. The reference is the exact Hessian, formed one column per
product (H e_i) when --exact is given or the model has at most --exact-max parameters: its trace, diagonal,
Frobenius norms (whole, of the diagonal, and of its best rank-k remainders for the Hutch++ sketch sizes
k = products // 3) and largest eigenvalues by magnitude.
The columns come from the operator's precision (--dtype; the Hessian stage computes in float32), accumulated in
float64; --exact-check columns are also formed in float64 and their largest difference printed. --exact-cache
keeps the reference figures in a .npz (the default run's 22,954 parameters on 512 samples took 29 min in float32
on one shared EPYC thread, ~2 h in float64). Without an exact reference: Hutch++ with --reference products, whose
own standard error is printed.

Per budget and estimator (`by variance`: Hutch++'s trace or Hutchinson's from the Rademacher probes among the same
products, whichever has the smaller estimated standard error, the rule Diag++ applies to the diagonal; its `diagonal
by` column says in how many seeds it kept Hutch++'s trace): the rms error of the trace (absolute and relative), the
mean reported standard error and how often +-2 of it covered the reference (`cover 2se`, nominal 95%; `cover spread`:
the same with the textbook standard error, the spread of the probes' z^T H z, or Hutch++'s residual samples, over
sqrt(probes), which the whole-vector estimates of `maths` replaced), the diagonal's relative error and cosine to the
reference, and the seconds per estimate. With an exact reference also the rms errors that the exact norms predict:
Hutchinson's sqrt(2 (||H||_F^2 - sum H_ii^2) / N) (Hutchinson 1989; Avron & Toledo 2011) and, for Hutch++, the same
over the N - 2k residual probes with the best rank-k remainder in place of H (a lower bound: the sketch only
approximates the top-k eigenvectors; Meyer et al. 2021). Prints the CPU model and torch version.

    python benchmarks/bench_trace.py --budgets 10 30 100 300 --seeds 10
    python benchmarks/bench_trace.py --budgets 10 30 100 --seeds 100 20 10   # seeds per budget
    python benchmarks/bench_trace.py --checkpoint results/train/digits/cnn_small/init~random/algo~fedavg/\
alpha~iid/clients~10/part~1.0/seed~0/trajectory.pt --round 30 --samples 512 --exact --seeds 20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_model

from fedscape.analysis.hessian.maths import HessianOperator, HutchinsonResult, ProbeMoments, hutchinson, hutchpp
from fedscape.analysis.hessian.stage import aggregate_eval_data, client_eval_data
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import load_federated_data
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.registry import build_model
from fedscape.plan.hessian import make_hessian_job
from fedscape.plan.workflow import load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOP_EIGENVALUES = 40  # by magnitude, for the rank-k remainders (k = products // 3 <= 33 at 100 products)


def trained_model(model: str, epochs: int, samples: int):
    """The model trained by SGD on the digits training set, and `samples` fixed training samples."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = build_model(model, 10, 1, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for b in torch.randperm(len(data.y_train), generator=g).split(16):
            opt.zero_grad()
            F.cross_entropy(net(data.x_train[b]), data.y_train[b]).backward()
            opt.step()
    return net, data.x_train[:samples], data.y_train[:samples]


def checkpoint_model(checkpoint: str | Path, config_path: str | Path, round_: int | None, samples: int | None,
                     client: int | None = None):
    """The global model of the run whose trajectory `checkpoint` is (a run of the config at `config_path`) at
    `round_` (None: its last), and the samples of the aggregate training data (or of client `client`) its Hessian
    job evaluates (the Hessian stage's `aggregate_eval_data`, `client_eval_data`; `samples` in place of
    `hessian.eval_samples` when given)."""
    config = load_config(config_path, SCHEMA)
    runs = build_runs(config)
    results = Results.of(config)
    target = Path(checkpoint).resolve()
    # a relative results_dir is below the workflow's working directory: the part of the checkpoint's path before it
    found = [(r, target.parents[len(path.parts) - 1]) for r in runs
             if (path := Path(results.run_file(r, "trajectory"))).parts == target.parts[-len(path.parts):]]
    if not found:
        raise SystemExit(f"--checkpoint {checkpoint} is not the trajectory of any run of {config_path} (e.g. "
                         f"{results.run_file(runs[0], 'trajectory')})")
    run, workdir = found[0]
    traj = load_trajectory(checkpoint, run_id=run.run_id)
    round_ = traj.final_round if round_ is None else round_
    job = make_hessian_job(config, runs, run, round_)
    settings = job.hessian if samples is None else dataclasses.replace(job.hessian, eval_samples=samples)
    data = load_federated_data(job.run, job.dataset_options, workdir / results.partition_file(run))
    if client is None:
        x, y = aggregate_eval_data(data, settings)
    elif 0 <= client < data.num_clients:
        x, y = client_eval_data(data, settings, client)
    else:
        raise SystemExit(f"--client {client}: the run has clients 0..{data.num_clients - 1}")
    where = "" if client is None else f", client {client}"
    return traj.model_at(round_), x, y, f"{run.run_id} round {round_}{where}"


@dataclasses.dataclass(frozen=True)
class ExactFigures:
    """What the exact Hessian tells the estimators' errors (float64)."""

    trace: float
    diagonal: torch.Tensor  # [P]
    frobenius: float  # ||H||_F
    diagonal_norm: float  # sqrt(sum H_ii^2)
    eigenvalues: np.ndarray  # the largest by magnitude, in decreasing magnitude
    asymmetry: float  # max |H - H^T| / max |H| of the columns as formed

    def remainder(self, k: int) -> float:
        """||H - H_k||_F of the best rank-k approximation H_k (the top-k eigenvalues by magnitude removed); NaN for
        k beyond the eigenvalues computed."""
        if k > len(self.eigenvalues):
            return math.nan
        return math.sqrt(max(self.frobenius**2 - float(np.sum(self.eigenvalues[:k] ** 2)), 0.0))

    def save(self, path: str | Path) -> None:
        np.savez(path, trace=self.trace, diagonal=self.diagonal.numpy(), frobenius=self.frobenius,
                 diagonal_norm=self.diagonal_norm, eigenvalues=self.eigenvalues, asymmetry=self.asymmetry)

    @classmethod
    def load(cls, path: str | Path) -> ExactFigures:
        z = np.load(path)
        return cls(float(z["trace"]), torch.as_tensor(z["diagonal"]), float(z["frobenius"]),
                   float(z["diagonal_norm"]), z["eigenvalues"], float(z["asymmetry"]))


def exact_columns(op: HessianOperator, every: float = 60.0) -> torch.Tensor:
    """The Hessian [P, P] one column H e_i per product, in the operator's precision, stored in float32."""
    h = torch.empty(op.dim, op.dim, dtype=torch.float32)
    t0 = last = time.perf_counter()
    for i in range(op.dim):
        e = torch.zeros(op.dim, dtype=op.dtype)
        e[i] = 1.0
        h[:, i] = op.hvp(e).float()
        now = time.perf_counter()
        if now - last > every:
            print(f"  exact Hessian: {i + 1}/{op.dim} columns, {now - t0:.0f} s, "
                  f"~{(now - t0) / (i + 1) * (op.dim - i - 1):.0f} s left", flush=True)
            last = now
    return h


def exact_figures(h: torch.Tensor, top: int = TOP_EIGENVALUES) -> ExactFigures:
    """The exact figures of a Hessian formed column by column: symmetrised in place ((H + H^T) / 2, which removes
    the columns' rounding asymmetry), norms accumulated in float64, the `top` eigenvalues of largest magnitude by
    Lanczos (scipy's ARPACK) on the matrix."""
    from scipy.sparse.linalg import LinearOperator, eigsh  # lazy: only the exact reference needs it

    n = h.shape[0]
    scale = float(h.abs().max())
    asym, block = 0.0, 2048
    for i in range(0, n, block):
        for j in range(i, n, block):
            a, b = h[i:i + block, j:j + block], h[j:j + block, i:i + block].T
            asym = max(asym, float((a - b).abs().max()))
            mean = (a.double() + b.double()) / 2
            h[i:i + block, j:j + block] = mean.float()
            h[j:j + block, i:i + block] = mean.T.float()
    diagonal = torch.diagonal(h).double().clone()
    frobenius = math.sqrt(sum(float((h[i:i + block].double() ** 2).sum()) for i in range(0, n, block)))
    matrix = h.numpy()
    operator = LinearOperator((n, n), matvec=lambda v: matrix @ np.asarray(v, dtype=np.float32).ravel(),
                              dtype=np.float32)
    values = eigsh(operator, k=min(top, n - 1), which="LM", return_eigenvectors=False, tol=1e-6,
                   v0=np.random.default_rng(0).standard_normal(n))
    values = values[np.argsort(-np.abs(values))].astype(np.float64)
    return ExactFigures(float(diagonal.sum()), diagonal, frobenius, float(diagonal.norm()), values,
                        asym / scale if scale > 0 else 0.0)


def column_check(op: HessianOperator, op64: HessianOperator, columns: int, seed: int = 0) -> float:
    """The largest difference of `columns` random columns H e_i of `op` from those of its float64 twin `op64`,
    relative to the largest entry of the float64 columns."""
    idx = torch.randperm(op.dim, generator=torch.Generator().manual_seed(seed))[:columns]
    worst = scale = 0.0
    for i in idx.tolist():
        e = torch.zeros(op.dim, dtype=torch.float64)
        e[i] = 1.0
        exact = op64.hvp(e)
        worst = max(worst, float((op.hvp(e.to(op.dtype)).double() - exact).abs().max()))
        scale = max(scale, float(exact.abs().max()))
    return worst / scale


def reference(op: HessianOperator, args, model, x, y) -> tuple[float, torch.Tensor, ExactFigures | None]:
    """The reference trace and diagonal: the exact Hessian's (from --exact-cache when it holds them), or Hutch++'s
    with --reference products."""
    t0 = time.perf_counter()
    if args.exact or op.dim <= args.exact_max:
        if args.exact_cache and Path(args.exact_cache).exists():
            exact = ExactFigures.load(args.exact_cache)
            if exact.diagonal.numel() != op.dim:
                raise SystemExit(f"--exact-cache {args.exact_cache} holds a Hessian of {exact.diagonal.numel()} "
                                 f"parameters, this model has {op.dim}: name another file")
            print(f"exact Hessian's figures read from {args.exact_cache}")
        else:
            exact = exact_figures(exact_columns(op))
            if args.exact_cache:
                exact.save(args.exact_cache)
        print(f"exact Hessian ({time.perf_counter() - t0:.0f} s, {args.dtype} columns, float64 sums): trace "
              f"{exact.trace:.6g}, ||H||_F {exact.frobenius:.6g}, ||diag H|| {exact.diagonal_norm:.6g}, "
              f"off-diagonal sqrt(||H||_F^2 - sum H_ii^2) "
              f"{math.sqrt(max(exact.frobenius**2 - exact.diagonal_norm**2, 0.0)):.6g}; columns' asymmetry "
              f"{exact.asymmetry:.2g} of max |H|")
        print("  top eigenvalues by magnitude: " + ", ".join(f"{v:.4g}" for v in exact.eigenvalues[:12]))
        print("  rank-k remainder ||H - H_k||_F: " + ", ".join(
            f"k={k}: {exact.remainder(k):.4g}" for k in sorted({max(b // 3, 1) for b in args.budgets} | {0})))
        if args.exact_check:
            with HessianOperator(copy.deepcopy(model).double(), x.double(), y) as op64:
                print(f"  {args.exact_check} random columns in {args.dtype} against float64: largest difference "
                      f"{column_check(op, op64, args.exact_check):.2g} of the largest entry")
        return exact.trace, exact.diagonal, exact
    ref = hutchpp(op, args.reference, seed=12345)
    print(f"reference trace {ref.trace:.6g} +- {ref.stderr:.2g} (Hutch++, {args.reference} products, "
          f"{time.perf_counter() - t0:.0f} s); the diagonal errors below include the reference's own")
    return ref.trace, ref.diagonal, None


class _RecordingOperator:
    """An operator that keeps each product it gives, (v, Hv) in float64."""

    def __init__(self, op):
        self.op, self.dim, self.device, self.dtype = op, op.dim, op.device, op.dtype
        self.products: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        h = self.op.hvp(v)
        self.products.append((v.double(), h.double()))
        return h


def by_variance(op, products: int, seed: int = 0) -> HutchinsonResult:
    """Hutch++'s trace, or Hutchinson's from the Rademacher probes among the same products (the sketch's and the
    residual's, products - products // 3 of them), whichever has the smaller estimated standard error: the rule
    `hutchpp` applies to its diagonal, tried on the trace. The diagonal is Hutch++'s (its own choice)."""
    recorder = _RecordingOperator(op)
    pp = hutchpp(recorder, products, seed)
    moments = ProbeMoments(recorder.products[0][0])
    # the sketch's orthonormal columns have norm 1, a Rademacher probe's entries are all +-1
    samples = np.array([float(moments.add(v, h).sum()) for v, h in recorder.products if bool((v.abs() == 1).all())])
    stderr = moments.trace_stderr(samples)
    if pp.stderr <= stderr:
        return pp
    return dataclasses.replace(pp, trace=float(samples.mean()), stderr=stderr, samples=samples)


ESTIMATORS = {"hutchinson": hutchinson, "hutchpp": hutchpp, "by variance": by_variance}


def predicted_rms(exact: ExactFigures | None, name: str, budget: int) -> float:
    """The rms trace error that the exact norms predict (module docstring); NaN without them."""
    if exact is None:
        return math.nan
    if name == "hutchinson":
        return math.sqrt(2 * max(exact.frobenius**2 - exact.diagonal_norm**2, 0.0) / budget)
    if name != "hutchpp":
        return math.nan
    k = budget // 3
    # the remainder's diagonal is not known; its off-diagonal mass is at most its Frobenius norm
    return math.sqrt(2 * exact.remainder(k) ** 2 / (budget - 2 * k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run's trajectory.pt (the run found in --config)")
    parser.add_argument("--config", default=str(ROOT / "config/config.yaml"), help="the config of --checkpoint's run")
    parser.add_argument("--round", type=int, help="the checkpoint's round (default: its last)")
    parser.add_argument("--client", type=int, help="with --checkpoint: client k's samples, not the aggregate data's")
    parser.add_argument("--model", default="cnn_small", help="without --checkpoint: the model trained on digits")
    parser.add_argument("--epochs", type=int, default=3, help="without --checkpoint: its training epochs")
    parser.add_argument("--samples", type=int, help="evaluation samples (default: the config's "
                        "hessian.eval_samples with --checkpoint, else 512)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="precision of the products (the Hessian stage's fp32: float32)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10], help="seeds, one for all budgets or one each")
    parser.add_argument("--exact", action="store_true", help="form the exact Hessian whatever the model's size")
    parser.add_argument("--exact-max", type=int, default=5000, help="largest model whose exact Hessian is formed")
    parser.add_argument("--exact-cache", help="a .npz that keeps the exact Hessian's figures between runs")
    parser.add_argument("--exact-check", type=int, default=0,
                        help="columns also formed in float64 to measure the rounding of --dtype's")
    parser.add_argument("--reference", type=int, default=3000, help="Hutch++ products of the reference otherwise")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.seeds) not in (1, len(args.budgets)):
        parser.error("--seeds takes one count or one per budget")
    if min(args.budgets) < 4:
        parser.error("Hutch++ needs budgets of at least 4 products")
    seeds = dict(zip(args.budgets, args.seeds * len(args.budgets) if len(args.seeds) == 1 else args.seeds,
                     strict=True))
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads")

    if args.checkpoint:
        net, x, y, what = checkpoint_model(args.checkpoint, args.config, args.round, args.samples, args.client)
    else:
        net, x, y = trained_model(args.model, args.epochs, args.samples or 512)
        what = f"{args.model} trained {args.epochs} epochs on digits"
    dtype = DTYPES[args.dtype]
    net, x = net.to(dtype), x.to(dtype)
    with HessianOperator(net, x, y) as op:
        print(f"{what}: {op.dim} parameters, {len(y)} samples, {args.dtype}")
        trace, diag, exact = reference(op, args, net, x, y)
        print(f"{'products':>8}  {'seeds':>5}  {'estimator':<11}  {'trace rms error':>15}  {'relative':>8}  "
              f"{'predicted':>9}  {'mean stderr':>11}  {'cover 2se':>9}  {'cover spread':>12}  "
              f"{'diag rel. error':>15}  {'diag cosine':>11}  {'diagonal by':>11}  {'seconds':>7}")
        for budget in args.budgets:
            rms = {}
            for name, estimate in ESTIMATORS.items():
                t0 = time.perf_counter()
                results = [estimate(op, budget, seed=s) for s in range(seeds[budget])]
                seconds = (time.perf_counter() - t0) / seeds[budget]
                errors = np.array([r.trace - trace for r in results])
                stderr = np.array([r.stderr for r in results])
                # the textbook standard error, from the spread of the probes' samples, that `stderr` replaced
                spread = np.array([r.samples.std(ddof=1) / math.sqrt(r.probes) for r in results])
                rel = np.mean([float((r.diagonal - diag).norm() / diag.norm()) for r in results])
                cosine = np.mean([float(r.diagonal @ diag / (r.diagonal.norm() * diag.norm())) for r in results])
                used = sorted({r.diagonal_estimator for r in results})
                by = used[0] if len(used) == 1 else "/".join(
                    f"{sum(r.diagonal_estimator == u for r in results)} {u}" for u in used)
                rms[name] = math.sqrt(float((errors**2).mean()))
                if name == "by variance":  # which trace it kept, in place of the diagonal's estimator
                    kept = sum(r.probes == budget - 2 * (budget // 3) for r in results)
                    by = f"{kept} Hutch++"
                print(f"{budget:>8}  {seeds[budget]:>5}  {name:<11}  {rms[name]:>15.4g}  "
                      f"{100 * rms[name] / abs(trace):>7.2f}%  {predicted_rms(exact, name, budget):>9.4g}  "
                      f"{stderr.mean():>11.3g}  {np.mean(np.abs(errors) <= 2 * stderr):>9.2f}  "
                      f"{np.mean(np.abs(errors) <= 2 * spread):>12.2f}  {rel:>15.3f}  "
                      f"{cosine:>11.3f}  {by:>11}  {seconds:>7.2f}", flush=True)
            print(f"{budget:>8}  {'':>5}  {'ratio':<11}  {rms['hutchpp'] / rms['hutchinson']:>15.2f}  "
                  f"(Hutch++ / Hutchinson; by variance / Hutchinson: {rms['by variance'] / rms['hutchinson']:.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
