"""How to run K clients' convolutions at once: the forms of a stacked convolution, one layer at a time.

Vectorised training (fedscape.fl.vectorized) runs each convolution of K stacked client models as one grouped
convolution, one group per client, in the grouped layout [B, K*C, H, W] (`fedscape.models.layers.grouped_layout`).
This times, at resnet20's 3x3 convolutions (K clients x B images of 32x32), the forward alone and the forward with
both backward products (input and weight gradients, as training takes them) of:

- ``grouped_cl``: the grouped convolution channels-last (the grouped layout's memory order on a CPU);
- ``grouped_cf``: the same channels-first (its memory order on a GPU: `grouped_memory_format`);
- ``vmap``: `torch.vmap` of a client's convolution (what models without their own stacked forward get);
- ``unfold_bmm``: im2col and one batched matrix product per layer;
- ``loop``: one convolution per client;
- ``grouped_cl_tf32`` (CUDA only): channels-last with TF32 convolutions, for scale (the default precision is fp32).

Each form's input starts as stacked batches [K, B, C, H, W], so its layout change is counted. The total weights each
layer by its count in resnet20. Precision fp32 (TF32 off), cuDNN's benchmark mode on, as training runs.

    python benchmarks/bench_stacked_conv.py --device cuda                  # 50 clients x 16 images
    python benchmarks/bench_stacked_conv.py --clients 4 --batch-size 4     # a CPU's quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from machine import device_label, torch_line

from fedscape.models.device import use_precision

# resnet20's 3x3 convolutions: (in channels, out channels, input size, stride, how many)
LAYERS = ((3, 16, 32, 1, 1), (16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5), (32, 64, 16, 2, 1),
          (64, 64, 8, 1, 5))


def grouped(x: torch.Tensor, w: torch.Tensor, stride: int, fmt: torch.memory_format) -> torch.Tensor:
    k, b, c = x.shape[:3]
    h = x.transpose(0, 1).reshape(b, k * c, *x.shape[3:]).contiguous(memory_format=fmt)
    return F.conv2d(h, w.flatten(0, 1), None, stride, 1, 1, k)


def unfold_bmm(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    k, b, c, height, width = x.shape
    cols = F.unfold(x.reshape(k * b, c, height, width), 3, padding=1, stride=stride)  # [K*B, C*9, L]
    positions = cols.shape[-1]
    cols = cols.view(k, b, c * 9, positions).transpose(1, 2).reshape(k, c * 9, b * positions)
    return torch.bmm(w.reshape(k, w.shape[1], -1), cols).view(k, -1, b, positions)


def loop(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.stack([F.conv2d(x[i], w[i], None, stride, 1) for i in range(x.shape[0])])


def vmapped(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.vmap(lambda xi, wi: F.conv2d(xi, wi, None, stride, 1))(x, w)


FORMS: dict[str, tuple[Callable, str]] = {
    "grouped_cl": (lambda x, w, s: grouped(x, w, s, torch.channels_last), "fp32"),
    "grouped_cf": (lambda x, w, s: grouped(x, w, s, torch.contiguous_format), "fp32"),
    "vmap": (vmapped, "fp32"),
    "unfold_bmm": (unfold_bmm, "fp32"),
    "loop": (loop, "fp32"),
    "grouped_cl_tf32": (lambda x, w, s: grouped(x, w, s, torch.channels_last), "tf32"),
}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn over `repeats` calls after 3 warm-up calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(form: str, layer: tuple[int, ...], args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(forward + backward ms, forward ms) of one layer in one form."""
    fn, precision = FORMS[form]
    c_in, c_out, size, stride, _ = layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.clients, args.batch_size, c_in, size, size, generator=gen).to(device).requires_grad_(True)
    w = torch.randn(args.clients, c_out, c_in, 3, 3, generator=gen).to(device).requires_grad_(True)

    def train() -> None:
        torch.autograd.grad(fn(x, w, stride).sum(), (x, w))

    def forward() -> None:
        with torch.no_grad():
            fn(x, w, stride)

    with use_precision(precision, device):
        return timed(train, device, args.repeats), timed(forward, device, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per layer and form (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    forms = [f for f in FORMS if FORMS[f][1] == "fp32" or device.type == "cuda"]
    print(f"# stacked convolutions of resnet20, {args.clients} clients x {args.batch_size} images, "
          f"{device_label(device)}, median of {args.repeats}; forward + backward ms / forward ms; {torch_line()}")
    print("| layer | count | " + " | ".join(forms) + " |")
    print("|---|---:|" + "---:|" * len(forms))
    totals = dict.fromkeys(forms, 0.0)
    for layer in LAYERS:
        cells = []
        for form in forms:
            train, forward = measure(form, layer, args, device)
            totals[form] += train * layer[4]
            cells.append(f"{train:.2f} / {forward:.2f}")
        c_in, c_out, size, stride, count = layer
        print(f"| {c_in}->{c_out} at {size}x{size}, stride {stride} | {count} | " + " | ".join(cells) + " |",
              flush=True)
    print("| resnet20's 19, forward + backward | | " + " | ".join(f"{totals[f]:.2f}" for f in forms) + " |")


if __name__ == "__main__":
    main()
