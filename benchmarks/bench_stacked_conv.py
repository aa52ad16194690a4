"""How to run K clients' convolutions at once: the forms of a stacked convolution, one layer at a time.

Vectorised training (fedscape.fl.vectorized) runs each convolution of K stacked client models as one grouped
convolution, one group per client, in the grouped layout [B, K*C, H, W] (`fedscape.models.layers.grouped_layout`).
This times, at the convolutions of ``--model`` (resnet20: the pilot's, 50 clients x 16 images by default;
resnet56_bottleneck: FedAlign's, 16 clients x 64 images, its 1x1 reduce and expand convolutions too), the forward
alone and the forward with both backward products (input and weight gradients, as training takes them) of:

- ``grouped_cl``: the grouped convolution channels-last (the grouped layout's memory order on a CPU);
- ``grouped_cf``: the same channels-first (its memory order on a GPU: `grouped_memory_format`);
- ``grouped_cf_bmm``: from and to that channels-first grouped layout, a 1x1 convolution as one batched matrix
  product (each client's [C', C] weights times its [C, B*H*W] pixels, the layout changes on both sides counted),
  any other as ``grouped_cf``: whether a stacked forward would gain by taking its 1x1 convolutions out of cuDNN's
  grouped kernels (half of the bottleneck ResNet56's arithmetic);
- ``vmap``: `torch.vmap` of a client's convolution (what models without their own stacked forward get);
- ``unfold_bmm``: im2col and one batched matrix product per layer (for a 1x1 convolution, a batched matrix product
  over the pixels);
- ``loop``: one convolution per client;
- ``grouped_cl_tf32`` (CUDA only): channels-last with TF32 convolutions, for scale (the default precision is fp32).

Each form's input starts as stacked batches [K, B, C, H, W], so its layout change is counted. The total weights each
layer by its count in the model. Precision fp32 (TF32 off), cuDNN's benchmark mode on, as training runs. The last row
divides the convolutions' arithmetic (`train_flops`: the forward's multiply-adds and the two backward products' as
many again each) by each form's total time: the TFLOP/s it reaches, to set against the card's fp32 peak (a stacked
step can gain over the plain one only what its convolutions reach above the plain step's rate).

    python benchmarks/bench_stacked_conv.py --device cuda                  # resnet20, 50 clients x 16 images
    python benchmarks/bench_stacked_conv.py --device cuda --model resnet56_bottleneck    # 16 clients x 64 images
    python benchmarks/bench_stacked_conv.py --clients 4 --batch-size 4     # a CPU's quick look
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from machine import device_label, torch_line
from timing import timed

from fedscape.models.device import use_precision
from fedscape.models.layers import stacked_pointwise

# The models' convolutions on 32x32 images (as their forward hooks list them): (in channels, out channels, kernel,
# input size, stride, how many), and the clients and batch size of the papers' runs that stack them.
LAYERS = {
    "resnet20": ((3, 16, 3, 32, 1, 1), (16, 16, 3, 32, 1, 6), (16, 32, 3, 32, 2, 1), (32, 32, 3, 16, 1, 5),
                 (32, 64, 3, 16, 2, 1), (64, 64, 3, 8, 1, 5)),
    "resnet56_bottleneck": ((3, 16, 3, 32, 1, 1), (16, 16, 1, 32, 1, 1), (16, 16, 3, 32, 1, 6), (16, 64, 1, 32, 1, 7),
                            (32, 32, 3, 16, 1, 5), (32, 32, 3, 32, 2, 1), (32, 128, 1, 16, 1, 6),
                            (64, 16, 1, 32, 1, 5), (64, 32, 1, 32, 1, 1), (64, 64, 3, 8, 1, 5),
                            (64, 64, 3, 16, 2, 1), (64, 128, 1, 32, 2, 1), (64, 256, 1, 8, 1, 6),
                            (128, 32, 1, 16, 1, 5), (128, 64, 1, 16, 1, 1), (128, 256, 1, 16, 2, 1),
                            (256, 64, 1, 8, 1, 5)),
}
DEFAULTS = {"resnet20": (50, 16), "resnet56_bottleneck": (16, 64)}  # (clients, batch size)


def train_flops(layer: tuple[int, ...], clients: int, batch: int) -> int:
    """The floating-point operations of one layer's convolution for `clients` x `batch` images, forward and both
    backward products (input and weight gradients, each as many as the forward), as torch's FlopCounterMode counts
    them: 2 per multiply-add; the layer's count in the model not included."""
    c_in, c_out, kernel, size, stride, _ = layer
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return 3 * 2 * clients * batch * c_out * c_in * kernel * kernel * out * out


def grouped(x: torch.Tensor, w: torch.Tensor, stride: int, fmt: torch.memory_format) -> torch.Tensor:
    k, b, c = x.shape[:3]
    h = x.transpose(0, 1).reshape(b, k * c, *x.shape[3:]).contiguous(memory_format=fmt)
    return F.conv2d(h, w.flatten(0, 1), None, stride, w.shape[-1] // 2, 1, k)


def grouped_bmm(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    if w.shape[-1] != 1:
        return grouped(x, w, stride, torch.contiguous_format)
    k, b, c = x.shape[:3]
    h = x.transpose(0, 1).reshape(b, k * c, *x.shape[3:]).contiguous()  # the grouped layout, as grouped_cf's input
    return stacked_pointwise(h, w, None, (stride, stride), k)  # what training runs where pointwise_form says bmm


def unfold_bmm(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    k, b, c, height, width = x.shape
    size = w.shape[-1]
    cols = F.unfold(x.reshape(k * b, c, height, width), size, padding=size // 2, stride=stride)  # [K*B, C*k*k, L]
    taps, positions = cols.shape[1:]
    cols = cols.view(k, b, taps, positions).transpose(1, 2).reshape(k, taps, b * positions)
    return torch.bmm(w.reshape(k, w.shape[1], -1), cols).view(k, -1, b, positions)


def loop(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.stack([F.conv2d(x[i], w[i], None, stride, w.shape[-1] // 2) for i in range(x.shape[0])])


def vmapped(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.vmap(lambda xi, wi: F.conv2d(xi, wi, None, stride, wi.shape[-1] // 2))(x, w)


FORMS: dict[str, tuple[Callable, str]] = {
    "grouped_cl": (lambda x, w, s: grouped(x, w, s, torch.channels_last), "fp32"),
    "grouped_cf": (lambda x, w, s: grouped(x, w, s, torch.contiguous_format), "fp32"),
    "grouped_cf_bmm": (grouped_bmm, "fp32"),
    "vmap": (vmapped, "fp32"),
    "unfold_bmm": (unfold_bmm, "fp32"),
    "loop": (loop, "fp32"),
    "grouped_cl_tf32": (lambda x, w, s: grouped(x, w, s, torch.channels_last), "tf32"),
}


def measure(form: str, layer: tuple[int, ...], args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(forward + backward ms, forward ms) of one layer in one form."""
    fn, precision = FORMS[form]
    c_in, c_out, kernel, size, stride, _ = layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.clients, args.batch_size, c_in, size, size, generator=gen).to(device).requires_grad_(True)
    w = torch.randn(args.clients, c_out, c_in, kernel, kernel, generator=gen).to(device).requires_grad_(True)

    def train() -> None:
        torch.autograd.grad(fn(x, w, stride).sum(), (x, w))

    def forward() -> None:
        with torch.no_grad():
            fn(x, w, stride)

    with use_precision(precision, device):
        return (timed(train, device, args.repeats, warmup=3) * 1e3,
                timed(forward, device, args.repeats, warmup=3) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet20", choices=sorted(LAYERS))
    parser.add_argument("--clients", type=int, help="stacked clients (default: the model's papers' runs, DEFAULTS)")
    parser.add_argument("--batch-size", type=int, help="images per client (default: the papers' batch size)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per layer and form (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clients, batch = DEFAULTS[args.model]
    args.clients, args.batch_size = args.clients or clients, args.batch_size or batch
    device = torch.device(args.device)
    forms = [f for f in FORMS if FORMS[f][1] == "fp32" or device.type == "cuda"]
    print(f"# stacked convolutions of {args.model}, {args.clients} clients x {args.batch_size} images, "
          f"{device_label(device)}, median of {args.repeats}; forward + backward ms / forward ms; {torch_line()}")
    print("| layer | count | " + " | ".join(forms) + " |")
    print("|---|---:|" + "---:|" * len(forms))
    totals = dict.fromkeys(forms, 0.0)
    for layer in LAYERS[args.model]:
        cells = []
        for form in forms:
            train, forward = measure(form, layer, args, device)
            totals[form] += train * layer[-1]
            cells.append(f"{train:.2f} / {forward:.2f}")
        c_in, c_out, kernel, size, stride, count = layer
        print(f"| {kernel}x{kernel} {c_in}->{c_out} at {size}x{size}, stride {stride} | {count} | " + " | ".join(cells)
              + " |", flush=True)
    number = sum(layer[-1] for layer in LAYERS[args.model])
    print(f"| {args.model}'s {number}, forward + backward | | " + " | ".join(f"{totals[f]:.2f}" for f in forms)
          + " |")
    flops = sum(train_flops(layer, args.clients, args.batch_size) * layer[-1] for layer in LAYERS[args.model])
    print(f"| TFLOP/s of the {flops / 1e9:.1f} GFLOP | | " + " | ".join(f"{flops / totals[f] / 1e9:.3g}" for f in forms)
          + " |")


if __name__ == "__main__":
    main()
