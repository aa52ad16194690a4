"""Worst-case sharpness by `hessian.sharpness.method`: projected ascent against APGD at the same gradients.

For each ball (plain at each --rho, adaptive at each --adaptive-rho, T = |w| + eta) and each --steps, both methods'
sharpness (`maths.sharpness`, as the Hessian stage calls it), the gradients each took (counted on the operator),
their seconds (the least of --repeats) and the ratio APGD / ascent; beside them each method's value with
--reference-steps, the closest this script gets to the maximum (every value is a lower bound of it). The model: with
--checkpoint, a run's global model and the samples its Hessian job evaluates (bench_trace.checkpoint_model);
otherwise a `cnn_small` trained --epochs on the bundled digits (bench_trace.trained_model; 0: its initialisation).
Prints the CPU model and torch version.

    python benchmarks/bench_sharpness.py --epochs 3 --samples 256
    python benchmarks/bench_sharpness.py --checkpoint results/train/digits/cnn_small/init~random/algo~fedavg/\
alpha~iid/clients~10/part~1.0/seed~0/trajectory.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_trace import checkpoint_model, trained_model
from machine import cpu_model

from fedscape.analysis.hessian.definitions import APGD, ASCENT, SHARPNESS_METHODS
from fedscape.analysis.hessian.maths import HessianOperator, sharpness

ROOT = Path(__file__).resolve().parents[1]
ETA = 0.01  # the adaptive form's eta: the schema's default (Kwon et al. 2021)


def measure(op: HessianOperator, rho: float, steps: int, eta: float | None, method: str,
            repeats: int) -> tuple[float, int, float]:
    """(sharpness, gradients taken, least seconds of `repeats`) of one method on one ball."""
    gradient, taken = op.gradient, []

    def counted(w: torch.Tensor | None = None) -> torch.Tensor:
        taken.append(1)
        return gradient(w)

    op.gradient = counted
    try:
        seconds = []
        for _ in range(repeats):
            taken.clear()
            t0 = time.perf_counter()
            value = sharpness(op, rho, steps, eta, method=method)
            seconds.append(time.perf_counter() - t0)
        return value, len(taken), min(seconds)
    finally:
        del op.gradient  # the class's method again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run's trajectory.pt (the run found in --config)")
    parser.add_argument("--config", default=str(ROOT / "config/config.yaml"), help="the config of --checkpoint's run")
    parser.add_argument("--round", type=int, help="the checkpoint's round (default: its last)")
    parser.add_argument("--model", default="cnn_small", help="without --checkpoint: the model trained on digits")
    parser.add_argument("--epochs", type=int, default=3, help="without --checkpoint: its training epochs")
    parser.add_argument("--samples", type=int, help="evaluation samples (default: the config's hessian.eval_samples "
                        "with --checkpoint, else 256, the default config's)")
    parser.add_argument("--rho", type=float, nargs="*", default=[0.05, 0.5, 2.0], help="radii of the plain ball")
    parser.add_argument("--adaptive-rho", type=float, nargs="*", default=[0.5], help="radii of the adaptive ball")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20], help="steps after the SAM step")
    parser.add_argument("--reference-steps", type=int, default=100, help="0: no reference")
    parser.add_argument("--repeats", type=int, default=3, help="timings per method, the least kept")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads")

    if args.checkpoint:
        net, x, y, what = checkpoint_model(args.checkpoint, args.config, args.round, args.samples)
    else:
        net, x, y = trained_model(args.model, args.epochs, args.samples or 256)
        what = f"{args.model} trained {args.epochs} epochs on digits"
    balls = [("plain", rho, None) for rho in args.rho] + [("adaptive", rho, ETA) for rho in args.adaptive_rho]
    with HessianOperator(net, x, y) as op:
        print(f"{what}: {op.dim} parameters, {len(y)} samples, loss {op.loss():.4g}")
        print(f"| ball | rho | steps | gradients | ascent | apgd | apgd / ascent | ascent / apgd at "
              f"{args.reference_steps} | ascent s | apgd s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for form, rho, eta in balls:
            reference = " / ".join(f"{sharpness(op, rho, args.reference_steps, eta, method=m):.4g}"
                                   for m in SHARPNESS_METHODS) if args.reference_steps else "-"
            for steps in args.steps:
                (ascent, taken, ascent_s), (apgd, apgd_taken, apgd_s) = (
                    measure(op, rho, steps, eta, m, args.repeats) for m in (ASCENT, APGD))
                gradients = taken if taken == apgd_taken else f"{taken} / {apgd_taken}"
                ratio = apgd / ascent if ascent > 0 else float("nan")
                print(f"| {form} | {rho:g} | {steps} | {gradients} | {ascent:.4g} | {apgd:.4g} | {ratio:.3f} | "
                      f"{reference} | {ascent_s:.2f} | {apgd_s:.2f} |")


if __name__ == "__main__":
    main()
