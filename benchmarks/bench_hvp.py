"""Cost of one Hessian-vector product relative to one gradient on the same batch (goal <= 3x).

Measured in one run on the same model and batch:

* gradient: one forward + backward of the mean loss with the module's own parameters (the baseline);
* HVP, cached graph: fedscape.hessian.HessianOperator, the gradient graph built once and reused;
* HVP, rebuilt graph: double backward that rebuilds the gradient graph for every product
  (what a naive implementation, or `cache_graph: false`, does);
* HVP, forward-over-reverse: `HessianOperator(hvp="forward")`, torch.func.jvp of torch.func.grad;
* HVP, cached graph, channels_last: `HessianOperator(channels_last=True)`, the convolutions on NHWC inputs and
  weights (convolutional models only), which cuDNN and oneDNN serve with kernels of their own.

All inside `use_precision("fp32")` as a Hessian job computes (on CUDA: TF32 off, cuDNN's benchmark mode on); on
CUDA also a gradient and a cached-graph HVP in TF32 (`hessian.precision: tf32`), in both layouts.

Prints median times and the ratios, and the largest relative difference of each HVP from a float64 one. The
three HVPs alternate call by call (`--repeats` rounds), so that a change of load on a shared machine falls on
all of them.

For a model piecewise linear in its parameters (`fedscape.models.specs.piecewise_linear`) also the exact diagonal
of `hessian.trace_estimator: exact` (`gauss_newton_diagonal`: one per-sample gradient per class but one) in each of its
forms (`DIAGONAL_FORMS`: a forward and a backward pass per class but one, or one forward pass per sample and a
backward pass per class but one), each timed once on the first `--exact-samples` samples and scaled to the batch
(its work is per sample), in Hessian-vector products of the cached graph: what it costs against the products an
estimate takes (FedAlign's 300), the forms' ratio, which decides the device's default (`default_diagonal_form`),
and, last (the float64 diagonal is the dearest part: a run cut short keeps the forms' times), each one's largest
difference from the float64 one relative to the diagonal's largest entry.

Then (`--eigen K`, default 2; 0 skips it) the top-K eigenvalues as a Hessian job computes them: `top_eigen` with
the schema's default `hessian` settings (Lanczos, tol 1e-4, at most 100 products, seed 0, batches of 512, cached
graph), the operator built as `maths.analyse` builds it, inside `use_precision` as `hessian_stage` runs, for the
float32 model in each HVP mode, and on CUDA also with `hessian.precision: tf32`; each against the same computed by
a float64 copy of the model and batch. Prints every eigenvalue's relative difference from float64 and whether it
is within the goal, 1e-4 relative.

Not a test: run it by hand, e.g.

    python benchmarks/bench_hvp.py --model cnn_small --samples 1024
    python benchmarks/bench_hvp.py --model resnet20 --dataset cifar10 --samples 1024 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from machine import cpu_model, torch_line
from timing import timed  # benchmarks/timing.py (the script's directory is on sys.path)

from fedscape.analysis.hessian.definitions import HessianSettings
from fedscape.analysis.hessian.maths import (
    DIAGONAL_FORMS,
    HessianOperator,
    default_diagonal_form,
    gauss_newton_diagonal,
    per_sample_chunk,
    top_eigen,
)
from fedscape.core.config import default_filling_validator, load_schema
from fedscape.data.specs import DATASET_NAMES, dataset_info
from fedscape.models.device import use_precision
from fedscape.models.registry import build_model
from fedscape.models.specs import piecewise_linear
from fedscape.plan.hessian import settings_from_config

ROOT = Path(__file__).resolve().parents[1]
EIGEN_GOAL = 1e-4  # relative difference of each top eigenvalue from float64 (the stage's default `tol`)


def job_settings(top_k: int) -> HessianSettings:
    """The settings of a Hessian job of the schema's default `hessian` section, with `top_k` eigenvalues."""
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    section: dict = {}
    # the section's schema with the definitions its keys refer to (`$ref: "#/$defs/..."`, resolved from its root)
    default_filling_validator()({**schema["properties"]["hessian"], "$defs": schema["$defs"]}).validate(section)
    return dataclasses.replace(settings_from_config(section), top_k=top_k)


def job_eigenvalues(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: HessianSettings,
                    device: torch.device, hvp: str) -> tuple[tuple[float, ...], int, bool]:
    """The top eigenvalues, Lanczos products and convergence of a Hessian job with `settings` on (x, y): inside
    `use_precision` as `hessian_stage` runs (its `job_precision`), the operator as `maths.analyse` builds it, except
    for the HVP mode `hvp` (a job takes the device's default)."""
    with use_precision(settings.precision, device), \
            HessianOperator(model, x, y, settings.batch_size, settings.cache_graph, hvp=hvp,
                            precision=settings.precision) as op:
        eigen = top_eigen(op, settings)
    return eigen.values, eigen.total_iterations, all(eigen.converged)


def eigen_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, top_k: int, device: torch.device) -> None:
    """Print the top-k eigenvalues of each float32 variant against a float64 copy's, and whether each is within
    EIGEN_GOAL relative."""
    settings = job_settings(top_k)
    variants = [("fp32", "reverse", "HVP, cached graph"), ("fp32", "forward", "HVP, forward-over-reverse")]
    if device.type == "cuda":  # TF32 exists on CUDA only: elsewhere `tf32` computes in fp32 (precision_used)
        variants += [("tf32", "reverse", "HVP, cached graph, TF32"),
                     ("tf32", "forward", "HVP, forward-over-reverse, TF32")]
    reference, products, converged = job_eigenvalues(copy.deepcopy(model).double(), x.double(), y,
                                                     dataclasses.replace(settings, precision="fp32"), device,
                                                     "reverse")
    print(f"\ntop-{top_k} eigenvalues as a Hessian job computes them ({settings.method}, tol {settings.tol:g}, at most "
          f"{settings.max_iter} products, seed {settings.seed}, batches of {settings.batch_size}), against float64; "
          f"goal: within {EIGEN_GOAL:g} relative")
    print(f"{'float64, cached graph':<35} {products:4d} products{'' if converged else ' (NOT converged)'}   "
          + "   ".join(f"lambda_{i + 1} {value:.10g}" for i, value in enumerate(reference)))
    for precision, hvp, name in variants:
        values, products, converged = job_eigenvalues(model, x, y, dataclasses.replace(settings, precision=precision),
                                                      device, hvp)
        differences = [abs(value - exact) / abs(exact) for value, exact in zip(values, reference, strict=True)]
        cells = "   ".join(f"lambda_{i + 1} {d:.1e} {'ok' if d <= EIGEN_GOAL else 'OVER the goal'}"
                           for i, d in enumerate(differences))
        print(f"{name:<35} {products:4d} products{'' if converged else ' (NOT converged)'}   {cells}")


def tf32_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, samples: int,
               repeats: int, device: torch.device, channels_last: bool) -> tuple[float, ...]:
    """Median seconds of a gradient and of a cached-graph HVP in TF32, as a `hessian.precision: tf32` job computes
    (CUDA only: elsewhere TF32 is fp32), and with `channels_last` of the same HVP in the NHWC layout."""
    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    with use_precision("tf32", device):
        layouts = (False, True) if channels_last else (False,)
        operators = [HessianOperator(model, x, y, batch_size=samples, cache_graph=True, hvp="reverse",
                                     precision="tf32", channels_last=layout) for layout in layouts]
        fns = [gradient, *((lambda op=op: op.hvp(v)) for op in operators)]
        for fn in fns:  # warm-up
            fn()
            fn()
        times = [[timed(fn, device, 1, warmup=0) for fn in fns] for _ in range(repeats)]
        for op in operators:
            op.close()
    return tuple(statistics.median(r[i] for r in times) for i in range(len(fns)))


def exact_diagonal_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                         report: Callable[[str, float], None]) -> dict[str, float]:
    """Each form's seconds of one exact diagonal of the batch, after one untimed, handed to `report(form, seconds)` as
    soon as that form is timed; then form -> its largest difference from a float64 copy's relative to that diagonal's
    largest entry. The float64 reference comes last, its passes the dearest: a run cut short keeps the forms timed."""
    diagonals = {}
    with HessianOperator(model, x, y, batch_size=len(y), cache_graph=False) as op:
        for form in DIAGONAL_FORMS:
            diagonals[form] = gauss_newton_diagonal(op, form)  # warm-up
            report(form, timed(lambda form=form: gauss_newton_diagonal(op, form), device, 1, warmup=0))
    with HessianOperator(copy.deepcopy(model).double(), x.double(), y, batch_size=len(y), cache_graph=False) as ref:
        reference = gauss_newton_diagonal(ref, "per_class")
    return {form: float((diagonal - reference).abs().max() / reference.abs().max())
            for form, diagonal in diagonals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    parser.add_argument("--samples", type=int, default=1024, help="samples in the batch")
    parser.add_argument("--norm", default=None, help="the model's norm option (resnet20/56: batch, group, none)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--exact-samples", type=int, default=0,
                        help="samples the exact diagonal is timed on (rounded up to whole chunks of its passes, at "
                             "most --samples), its time scaled to --samples (0: all of them)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--eigen", type=int, default=2, metavar="K",
                        help="check the top-K eigenvalues against float64 (0: skip)")
    args = parser.parse_args()
    if args.exact_samples < 0 or args.samples < 1:
        parser.error(f"--samples must be at least 1 and --exact-samples at least 0 (0: all of them); got "
                     f"{args.samples} and {args.exact_samples}")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    channels, size, classes = dataset_info(args.dataset).shape
    torch.manual_seed(0)
    options = {} if args.norm is None else {"norm": args.norm}
    model = build_model(args.model, num_classes=classes, in_channels=channels, image_size=size, **options).to(device)
    x = torch.randn(args.samples, channels, size, size, device=device)
    y = torch.randint(0, classes, (args.samples,), device=device)
    v = torch.randn(sum(p.numel() for p in model.parameters()), device=device)

    # As a Hessian job computes (`hessian_stage` runs inside `use_precision`): on CUDA with cuDNN's benchmark mode.
    precision = use_precision("fp32", device)
    precision.__enter__()
    cached = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=True, hvp="reverse")
    rebuilt = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=False, hvp="reverse")
    forward = HessianOperator(model, x, y, batch_size=args.samples, hvp="forward")
    operators = [cached, rebuilt, forward]
    products = {"HVP, cached graph": cached.hvp, "HVP, rebuilt graph": rebuilt.hvp,
                "HVP, forward-over-reverse": forward.hvp}
    convolutional = any(p.dim() == 4 for p in model.parameters()) and x.dim() == 4
    if convolutional:
        operators.append(HessianOperator(model, x, y, batch_size=args.samples, cache_graph=True, hvp="reverse",
                                         channels_last=True))
        products["HVP, cached, channels_last"] = operators[-1].hvp
    model64 = copy.deepcopy(model).double()
    with HessianOperator(model64, x.double(), y, batch_size=args.samples, cache_graph=False, hvp="reverse") as ref:
        exact = ref.hvp(v.double())
    errors = {name: float((hvp(v).double() - exact).norm() / exact.norm()) for name, hvp in products.items()}

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    model.eval()
    timers = {"gradient": gradient, "gradient, flat params": cached.gradient,
              **{name: (lambda hvp=hvp: hvp(v)) for name, hvp in products.items()}}
    for fn in timers.values():  # warm-up
        fn()
        fn()
    times = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, fn in timers.items():
            times[name].append(timed(fn, device, 1, warmup=0))
    t = {name: statistics.median(values) for name, values in times.items()}
    # What is measured so far is printed before the exact diagonal, which may outrun a device call's limit
    # (one backward pass per class but one, in float64 too).
    norm = "" if args.norm is None else f", {args.norm} norm"
    print(f"model {args.model}{norm} ({v.numel()} parameters), {args.samples} samples of {args.dataset}, on {device}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    if device.type == "cpu":
        print(f"CPU: {cpu_model()}; {torch_line()}")
    else:
        print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    print(f"gradient                    {t['gradient'] * 1e3:9.2f} ms   1.00x")
    print(f"gradient, flat params       {t['gradient, flat params'] * 1e3:9.2f} ms   "
          f"{t['gradient, flat params'] / t['gradient']:.2f}x gradient")
    for name in products:
        print(f"{name:<28}{t[name] * 1e3:9.2f} ms   {t[name] / t['gradient']:.2f}x gradient (goal <= 3x), "
              f"{t[name] / t['HVP, cached graph']:.2f}x the cached, relative difference from float64 "
              f"{errors[name]:.1e}")
    for op in operators:
        op.close()
    precision.__exit__(None, None, None)
    if device.type == "cuda":
        tf32 = tf32_times(model, x, y, v, args.samples, args.repeats, device, convolutional)
        print(f"TF32 (hessian.precision: tf32): gradient {tf32[0] * 1e3:.2f} ms, HVP, cached graph {tf32[1] * 1e3:.2f} "
              f"ms = {tf32[1] / tf32[0]:.2f}x the TF32 gradient, {tf32[1] / t['gradient']:.2f}x the fp32 gradient")
        if len(tf32) > 2:
            print(f"TF32, channels_last: HVP, cached graph {tf32[2] * 1e3:.2f} ms = {tf32[2] / tf32[0]:.2f}x the TF32 "
                  f"gradient, {tf32[2] / t['gradient']:.2f}x the fp32 gradient")
    if piecewise_linear(args.model, options):
        # whole chunks of the diagonal's per-sample passes, so that the scaled time is the batch's
        chunk = per_sample_chunk(v.numel())
        few = min(args.samples, -(-(args.exact_samples or args.samples) // chunk) * chunk)
        scale = args.samples / few  # per-sample work: the time of the whole batch
        seconds: dict[str, float] = {}

        def report(form: str, spent: float) -> None:
            seconds[form] = spent
            print(f"exact diagonal (trace_estimator: exact), form {form:<8} {spent * scale * 1e3:9.2f} ms = "
                  f"{spent * scale / t['HVP, cached graph']:.1f} HVPs of the cached graph (an estimate takes "
                  f"trace_probes of them: 300 in FedAlign; timed on {few} samples)", flush=True)
            if len(seconds) == len(DIAGONAL_FORMS):
                print(f"exact diagonal, per_sample / per_class: {seconds['per_sample'] / seconds['per_class']:.2f}x "
                      f"(default on {device.type}: {default_diagonal_form(device)})", flush=True)

        with use_precision("fp32", device):
            errors = exact_diagonal_costs(model, x[:few], y[:few], device, report)
        print("exact diagonal, largest difference from float64 of the largest entry: "
              + ", ".join(f"form {form} {error:.1e}" for form, error in errors.items()), flush=True)
    if args.eigen:
        eigen_check(model, x, y, args.eigen, device)


if __name__ == "__main__":
    main()
