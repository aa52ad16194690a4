"""Grid points per second of the surface evaluator vs a plain load-state-dict-and-evaluate loop.

Both are measured in the same run, on the same data, model, plane and grid points, interleaved over
several repeats (the median is reported, so a noisy shared machine hurts both alike). The baseline
is what a loss-landscape script usually does per grid point (Li et al. 2018's `set_weights` +
`eval_loss`): build the parameters w = c + a d1 + b d2 tensor by tensor, `load_state_dict` them into
the model and call `fedscape.evaluate.evaluate` on the data. Goal: at least 1.4x on CPU.

A plain eval loop is measured beside them: the same network's forward passes over the same batches, in eval mode
under no_grad, with the parameters left alone: the card's (or CPU's) images/s for that network, which a surface
evaluation can approach but not pass. Goal: the surface evaluator at >= 0.9x its images/s on a GPU.
For a model with batch norm it also times the evaluator with the statistics recomputed at every grid point
(`landscapes.<label>.bn_stats: recomputed`, from the evaluated data's fixed sample): what that option costs.
All of it runs inside the job's precision (`use_precision`, fp32 unless `--precision`), as the landscape jobs do.

    python benchmarks/bench_surface.py [--model cnn_small] [--points 40] [--repeats 5] [--device cpu]
    python benchmarks/bench_surface.py --model resnet20 --norm batch --samples 8000 --batch-size 2048 --device cuda

The 32x32 models evaluate seeded CIFAR-shaped data (N(0, 1) images, uniform labels); the 8x8 ones the digits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from machine import cpu_model, torch_line

from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.data.datasets import load_dataset
from fedscape.models.batchnorm import has_batch_norm
from fedscape.models.device import precision_used, use_precision
from fedscape.models.evaluate import evaluate
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model


def baseline_loop(model: torch.nn.Module, plane, coords: np.ndarray, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int) -> np.ndarray:
    """Per point: state dict of c + a d1 + b d2 built per tensor, load_state_dict, evaluate()."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    device = next(model.parameters()).device
    c, d1, d2 = (v.to(device) for v in (plane.center, plane.d1, plane.d2))
    out = []
    for a, b in coords:
        state, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = shape.numel()
            seg = slice(offset, offset + n)
            state[name] = (c[seg] + a * d1[seg] + b * d2[seg]).view(shape)
            offset += n
        model.load_state_dict(state, strict=False)
        out.append(evaluate(model, x, y, batch_size).loss)
    return np.asarray(out)


# (in_channels, image size) of each model's data: the digits for the 8x8 models, CIFAR-shaped for the others.
SHAPES = {"cnn_small": (1, 8), "mlp": (1, 8), "convnet": (3, 32), "resnet20": (3, 32)}


def plain_eval(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Forward passes only, parameters untouched: the network's own eval throughput."""
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small", choices=sorted(SHAPES))
    parser.add_argument("--norm", help="the model's norm option (resnet20: batch or group)")
    parser.add_argument("--samples", type=int, default=8000, help="synthetic samples of the 32x32 models")
    parser.add_argument("--precision", default="fp32", help="the landscape job's precision")
    parser.add_argument("--points", type=int, default=40, help="grid points per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a workflow job uses its `threads`)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--points-per-batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    channels, size = SHAPES[args.model]
    if (channels, size) == (1, 8):
        ds = load_dataset("digits", proxy_fraction=0.2)
        x, y = ds.x_train, ds.y_train  # the aggregate training data of the default config (1078 images)
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.samples, channels, size, size, generator=gen)
        y = torch.randint(0, 10, (args.samples,), generator=gen)
    options = {"norm": args.norm} if args.norm else {}

    def network() -> torch.nn.Module:
        return build_model(args.model, num_classes=10, in_channels=channels, image_size=size, **options)

    torch.manual_seed(0)
    model = network().eval()
    plane = random_plane(flatten_params(model), flatten_buffers(model), [p.shape for p in model.parameters()], 0)
    coords = np.random.default_rng(0).uniform(-1, 1, size=(args.points, 2))

    precision = use_precision(args.precision, device)
    precision.__enter__()  # the whole measurement, as a landscape job computes (fedscape.models.device.job_precision)
    base_model = network().to(device).eval()
    x_base, y_base = x.to(device), y.to(device)
    variants = {
        "surface evaluator": SurfaceSettings(batch_size=args.batch_size, points_per_batch=args.points_per_batch),
        "  without channels-last": SurfaceSettings(batch_size=args.batch_size, channels_last=False,
                                                   points_per_batch=args.points_per_batch),
    }
    evaluators = {k: SurfaceEvaluator(network(), plane, x, y, device, s) for k, s in variants.items()}
    recomputed = "  with BN statistics recomputed"  # other values than the rest: not checked against the baseline
    if has_batch_norm(model):
        evaluators[recomputed] = SurfaceEvaluator(network(), plane, x, y, device,
                                                  SurfaceSettings(batch_size=args.batch_size), bn_x=x)
    runs = {"baseline (load_state_dict + evaluate)": lambda: baseline_loop(base_model, plane, coords, x_base, y_base,
                                                                          args.batch_size)}
    runs.update({k: (lambda ev=ev: ev.evaluate(coords)[0]) for k, ev in evaluators.items()})
    plain_model = network().to(device).eval()
    if evaluators["surface evaluator"].flat.channels_last and x.dim() == 4:  # as the evaluator runs it on a CPU
        plain_model = plain_model.to(memory_format=torch.channels_last)
        x_base = x_base.contiguous(memory_format=torch.channels_last)
    plain = "plain eval loop (forward passes only)"

    values = {k: fn() for k, fn in runs.items()}  # warm-up (oneDNN primitives, allocator), and a correctness check
    plain_eval(plain_model, x_base, args.batch_size)
    ref = values["baseline (load_state_dict + evaluate)"]
    for k, v in values.items():
        assert k == recomputed or np.allclose(v, ref, rtol=1e-5, atol=1e-6), \
            f"{k} disagrees with the baseline: {np.abs(v - ref).max()}"
    rates: dict[str, list[float]] = {k: [] for k in [*runs, plain]}
    # One pass of the plain loop per grid point, so that its points/s are images/s over the same data.
    runs[plain] = lambda: [plain_eval(plain_model, x_base, args.batch_size) for _ in range(args.points)]
    for _ in range(args.repeats):
        for k, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[k].append(args.points / (time.perf_counter() - t0))

    base = statistics.median(rates["baseline (load_state_dict + evaluate)"])
    precision.__exit__(None, None, None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}"
    norm = f" (norm {args.norm})" if args.norm else ""
    print(f"{args.model}{norm} on {device} [{name}] ({args.threads} thread(s)), {len(y)} samples, {args.points} grid "
          f"points x {args.repeats} repeats, points_per_batch={args.points_per_batch}, batch {args.batch_size}, "
          f"precision {precision_used(args.precision, device)}, {torch_line()}")
    for k, r in rates.items():
        med = statistics.median(r)
        print(f"  {k:40s} {med:8.1f} points/s = {med * len(y):9.0f} images/s  (min {min(r):.1f}, max {max(r):.1f})"
              f"  ratio {med / base:.2f}x")
    ratio = statistics.median(rates["surface evaluator"]) / base
    print(f"speed-up of the surface evaluator: {ratio:.2f}x (goal >= 1.4x on CPU)")
    share = statistics.median(rates["surface evaluator"]) / statistics.median(rates[plain])
    print(f"surface evaluator / plain eval loop, images/s: {share:.2f}x (goal >= 0.9x on a GPU)")


if __name__ == "__main__":
    main()
