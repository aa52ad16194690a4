"""Grid points per second of the surface evaluator vs a plain load-state-dict-and-evaluate loop.

Both are measured in the same run, on the same data, model, plane and grid points, interleaved over
several repeats (the median is reported, so a noisy shared machine hurts both alike). The baseline
is what a loss-landscape script usually does per grid point (Li et al. 2018's `set_weights` +
`eval_loss`): build the parameters w = c + a d1 + b d2 tensor by tensor, `load_state_dict` them into
the model and call `fedscape.evaluate.evaluate` on the data. Goal: at least 1.4x on CPU.

    python benchmarks/bench_surface.py [--model cnn_small] [--points 40] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.data.datasets import load_dataset
from fedscape.models.evaluate import evaluate
from fedscape.models.networks import build_model
from fedscape.models.params import flatten_buffers, flatten_params


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small", choices=["cnn_small", "mlp"])
    parser.add_argument("--points", type=int, default=40, help="grid points per timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a workflow job uses its `threads`)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--points-per-batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ds = load_dataset("digits", proxy_fraction=0.2)
    x, y = ds.x_train, ds.y_train  # the aggregate training data of the default config (1078 images)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=1, image_size=8).eval()
    plane = random_plane(flatten_params(model), flatten_buffers(model), [p.shape for p in model.parameters()], 0)
    coords = np.random.default_rng(0).uniform(-1, 1, size=(args.points, 2))

    base_model = build_model(args.model, num_classes=10, in_channels=1, image_size=8).to(device).eval()
    x_base, y_base = x.to(device), y.to(device)
    variants = {
        "surface evaluator": SurfaceSettings(batch_size=args.batch_size, points_per_batch=args.points_per_batch),
        "  without channels-last": SurfaceSettings(batch_size=args.batch_size, channels_last=False,
                                                   points_per_batch=args.points_per_batch),
    }
    evaluators = {k: SurfaceEvaluator(build_model(args.model, num_classes=10, in_channels=1, image_size=8), plane, x,
                                      y, device, s) for k, s in variants.items()}
    runs = {"baseline (load_state_dict + evaluate)": lambda: baseline_loop(base_model, plane, coords, x_base, y_base,
                                                                          args.batch_size)}
    runs.update({k: (lambda ev=ev: ev.evaluate(coords)[0]) for k, ev in evaluators.items()})

    values = {k: fn() for k, fn in runs.items()}  # warm-up (oneDNN primitives, allocator), and a correctness check
    ref = values["baseline (load_state_dict + evaluate)"]
    for k, v in values.items():
        assert np.allclose(v, ref, rtol=1e-5, atol=1e-6), f"{k} disagrees with the baseline: {np.abs(v - ref).max()}"
    rates: dict[str, list[float]] = {k: [] for k in runs}
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
    print(f"{args.model} on {device} ({args.threads} thread(s)), {len(y)} samples, {args.points} grid points x "
          f"{args.repeats} repeats, points_per_batch={args.points_per_batch}")
    for k, r in rates.items():
        med = statistics.median(r)
        print(f"  {k:40s} {med:8.1f} points/s  (min {min(r):.1f}, max {max(r):.1f})  ratio {med / base:.2f}x")
    ratio = statistics.median(rates["surface evaluator"]) / base
    print(f"speed-up of the surface evaluator: {ratio:.2f}x (goal >= 1.4x on CPU)")


if __name__ == "__main__":
    main()
