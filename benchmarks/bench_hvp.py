"""Cost of one Hessian-vector product relative to one gradient on the same batch (goal <= 3x).

Measured in one run on the same model and batch:

* gradient: one forward + backward of the mean loss with the module's own parameters (the baseline);
* HVP, cached graph: fedscape.hessian.HessianOperator, the gradient graph built once and reused;
* HVP, rebuilt graph: double backward that rebuilds the gradient graph for every product
  (what a naive implementation, or `cache_graph: false`, does).

Prints median times and the ratios. Not a test: run it by hand, e.g.

    python benchmarks/bench_hvp.py --model cnn_small --samples 1024
    python benchmarks/bench_hvp.py --model resnet20 --samples 256 --device cuda
"""

from __future__ import annotations

import argparse

import torch
from timing import timed  # benchmarks/timing.py (the script's directory is on sys.path)

from fedscape.analysis.hessian.maths import HessianOperator
from fedscape.data.specs import DATASET_NAMES, dataset_info
from fedscape.models.networks import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    parser.add_argument("--samples", type=int, default=1024, help="samples in the batch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    channels, size, classes = dataset_info(args.dataset).shape
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=classes, in_channels=channels, image_size=size).to(device)
    x = torch.randn(args.samples, channels, size, size, device=device)
    y = torch.randint(0, classes, (args.samples,), device=device)
    v = torch.randn(sum(p.numel() for p in model.parameters()), device=device)

    cached = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=True)
    rebuilt = HessianOperator(model, x, y, batch_size=args.samples, cache_graph=False)
    torch.testing.assert_close(cached.hvp(v), rebuilt.hvp(v), rtol=1e-4, atol=1e-6)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    model.eval()
    t_grad = timed(gradient, device, args.repeats, warmup=2)
    t_flat_grad = timed(cached.gradient, device, args.repeats, warmup=2)
    t_cached = timed(lambda: cached.hvp(v), device, args.repeats, warmup=2)
    t_rebuilt = timed(lambda: rebuilt.hvp(v), device, args.repeats, warmup=2)
    cached.close()
    rebuilt.close()

    print(f"model {args.model} ({v.numel()} parameters), {args.samples} samples of {args.dataset}, on {device}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"gradient               {t_grad * 1e3:9.2f} ms   1.00x")
    print(f"gradient, flat params  {t_flat_grad * 1e3:9.2f} ms   {t_flat_grad / t_grad:.2f}x gradient")
    print(f"HVP, cached graph      {t_cached * 1e3:9.2f} ms   {t_cached / t_grad:.2f}x gradient (goal <= 3x)")
    print(f"HVP, rebuilt graph     {t_rebuilt * 1e3:9.2f} ms   {t_rebuilt / t_grad:.2f}x gradient, "
          f"{t_rebuilt / t_cached:.2f}x the cached HVP")


if __name__ == "__main__":
    main()
