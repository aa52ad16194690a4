"""Cost of one Hessian-vector product relative to one gradient on the same batch (goal <= 3x).

Measured in one run on the same model and batch:

* gradient: one forward + backward of the mean loss with the module's own parameters (the baseline);
* HVP, cached graph: fedscape.hessian.HessianOperator, the gradient graph built once and reused;
* HVP, rebuilt graph: double backward that rebuilds the gradient graph for every product
  (what a naive implementation, or `cache_graph: false`, does);
* HVP, forward-over-reverse: `HessianOperator(hvp="forward")`, torch.func.jvp of torch.func.grad.

Prints median times and the ratios, and the largest relative difference of each HVP from a float64 one. The
three HVPs alternate call by call (`--repeats` rounds), so that a change of load on a shared machine falls on
all of them. Not a test: run it by hand, e.g.

    python benchmarks/bench_hvp.py --model cnn_small --samples 1024
    python benchmarks/bench_hvp.py --model resnet20 --samples 256 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from machine import cpu_model
from timing import timed  # benchmarks/timing.py (the script's directory is on sys.path)

from fedscape.analysis.hessian.maths import HessianOperator
from fedscape.data.specs import DATASET_NAMES, dataset_info
from fedscape.models.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    parser.add_argument("--samples", type=int, default=1024, help="samples in the batch")
    parser.add_argument("--norm", default=None, help="the model's norm option (resnet20/56: batch, group, none)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
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

    cached = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=True, hvp="reverse")
    rebuilt = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=False, hvp="reverse")
    forward = HessianOperator(model, x, y, batch_size=args.samples, hvp="forward")
    products = {"HVP, cached graph": cached.hvp, "HVP, rebuilt graph": rebuilt.hvp,
                "HVP, forward-over-reverse": forward.hvp}
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
    for op in (cached, rebuilt, forward):
        op.close()

    norm = "" if args.norm is None else f", {args.norm} norm"
    print(f"model {args.model}{norm} ({v.numel()} parameters), {args.samples} samples of {args.dataset}, on {device}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    if device.type == "cpu":
        print(f"CPU: {cpu_model()}; torch {torch.__version__}")
    else:
        print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    print(f"gradient                    {t['gradient'] * 1e3:9.2f} ms   1.00x")
    print(f"gradient, flat params       {t['gradient, flat params'] * 1e3:9.2f} ms   "
          f"{t['gradient, flat params'] / t['gradient']:.2f}x gradient")
    for name in products:
        print(f"{name:<27} {t[name] * 1e3:9.2f} ms   {t[name] / t['gradient']:.2f}x gradient (goal <= 3x), "
              f"{t[name] / t['HVP, cached graph']:.2f}x the cached, relative difference from float64 "
              f"{errors[name]:.1e}")


if __name__ == "__main__":
    main()
