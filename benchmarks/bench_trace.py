"""Error of the Hessian trace and diagonal against the number of Hessian-vector products: Hutchinson vs
Hutch++ / Diag++ (the `hessian.trace_estimator` choices), at equal products, over several seeds.

A `cnn_small` trained for a few epochs on the bundled digits (the default run's model and data, not its
checkpoint), its Hessian on a fixed set of samples. The reference is the exact Hessian's trace and
diagonal, formed one column per product (H e_i), when the model has at most --exact-max parameters (the
default run's 22,954 take ~25 min on 2 CPU threads: pass --exact-max 30000 for it); otherwise Hutch++ with
--reference products, whose own standard error is printed. Per budget and estimator: the rms error of the
trace, the mean reported standard error and how often +-2 of it covered the reference (`cover 2se`, nominal
95%), the diagonal's relative error and cosine to the reference. Prints the CPU model and the torch version.

    python benchmarks/bench_trace.py --budgets 10 30 100 300 --seeds 10
    python benchmarks/bench_trace.py --budgets 10 30 100 --seeds 100 20 10   # seeds per budget
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_model

from fedscape.analysis.hessian.maths import HessianOperator, hutchinson, hutchpp
from fedscape.data.datasets import load_dataset
from fedscape.models.registry import build_model


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


def exact_trace_diagonal(op: HessianOperator) -> tuple[float, torch.Tensor]:
    diag = torch.empty(op.dim, dtype=torch.float64)
    for i in range(op.dim):
        e = torch.zeros(op.dim)
        e[i] = 1.0
        diag[i] = float(op.hvp(e)[i])
    return float(diag.sum()), diag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[10], help="seeds, one for all budgets or one each")
    parser.add_argument("--exact-max", type=int, default=5000, help="largest model whose exact Hessian is formed")
    parser.add_argument("--reference", type=int, default=3000, help="Hutch++ products of the reference otherwise")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.seeds) not in (1, len(args.budgets)):
        parser.error("--seeds takes one count or one per budget")
    seeds = dict(zip(args.budgets, args.seeds * len(args.budgets) if len(args.seeds) == 1 else args.seeds,
                     strict=True))
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads")

    net, x, y = trained_model(args.model, args.epochs, args.samples)
    with HessianOperator(net, x, y) as op:
        t0 = time.perf_counter()
        if op.dim <= args.exact_max:
            trace, diag = exact_trace_diagonal(op)
            print(f"{args.model}: {op.dim} parameters, {len(y)} samples; exact trace {trace:.6g} "
                  f"({time.perf_counter() - t0:.0f} s)")
        else:
            ref = hutchpp(op, args.reference, seed=12345)
            trace, diag = ref.trace, ref.diagonal
            print(f"{args.model}: {op.dim} parameters, {len(y)} samples; reference trace {trace:.6g} +- "
                  f"{ref.stderr:.2g} (Hutch++, {args.reference} products, {time.perf_counter() - t0:.0f} s); "
                  "the diagonal errors below include the reference's own")
        print(f"{'products':>8}  {'seeds':>5}  {'estimator':<10}  {'trace error (rms)':>17}  {'mean stderr':>11}  "
              f"{'cover 2se':>9}  {'diag rel. error':>15}  {'diag cosine':>11}  {'seconds':>7}")
        for budget in args.budgets:
            rms = {}
            for name, estimate in (("hutchinson", hutchinson), ("hutchpp", hutchpp)):
                t0 = time.perf_counter()
                results = [estimate(op, budget, seed=s) for s in range(seeds[budget])]
                seconds = (time.perf_counter() - t0) / seeds[budget]
                errors = np.array([r.trace - trace for r in results])
                stderr = np.array([r.stderr for r in results])
                rel = np.mean([float((r.diagonal - diag).norm() / diag.norm()) for r in results])
                cosine = np.mean([float(r.diagonal @ diag / (r.diagonal.norm() * diag.norm())) for r in results])
                rms[name] = math.sqrt(float((errors**2).mean()))
                print(f"{budget:>8}  {seeds[budget]:>5}  {name:<10}  {rms[name]:>17.4g}  {stderr.mean():>11.3g}  "
                      f"{np.mean(np.abs(errors) <= 2 * stderr):>9.2f}  {rel:>15.3f}  {cosine:>11.3f}  {seconds:>7.2f}",
                      flush=True)
            print(f"{budget:>8}  {'':>5}  {'ratio':<10}  {rms['hutchpp'] / rms['hutchinson']:>17.2f}  "
                  "(Hutch++ / Hutchinson)", flush=True)


if __name__ == "__main__":
    main()
