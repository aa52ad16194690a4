"""Round time of vectorised vs sequential client training (fedscape.fl.vectorized).

cnn_small on digits, M clients (default 10, 50, 100) with a Dirichlet split, the default config's
local training (2 local epochs, batch 16, lr 0.05). One "round" is the local training of every
client plus the server update, from the same global model in both modes; the modes alternate over
the repeats so that both see the same machine load, and the ratio is taken in the same run. The
process CPU time per round is reported too: on a machine shared with other jobs it is a steadier
measure of the work done than wall time (with one thread; more threads spin while they wait).

    python benchmarks/bench_vectorized.py                   # CPU, torch's default thread count
    python benchmarks/bench_vectorized.py --threads 2       # the '2 CPU cores' figure
    python benchmarks/bench_vectorized.py --device cuda --clients 10 50 100 500
    python benchmarks/bench_vectorized.py --algorithm fedsam --clients 10 50   # two passes per step (FedASAM too)
    python benchmarks/bench_vectorized.py --model convnet --clients 10 16        # CIFAR-shaped synthetic data
    python benchmarks/bench_vectorized.py --model resnet20 --norm batch --clients 10 16   # batch norm per client
    python benchmarks/bench_vectorized.py --model resnet20 --norm group --clients 10 16
    python benchmarks/bench_vectorized.py --model mlp --vmap --clients 10 50      # digits, under vmap
    python benchmarks/bench_vectorized.py --device cuda --model resnet20 --norm batch --clients 50 \
        --layout channels_last channels_first        # the grouped layout's memory orders side by side
    python benchmarks/bench_vectorized.py --device cuda --model resnet56_bottleneck --norm batch --batch-size 64 \
        --samples-per-client 640 --clients 16 --pointwise grouped bmm   # stacked 1x1 convolutions in both forms

On CUDA the peak device memory of each mode's rounds is printed too (`torch.cuda.max_memory_allocated`: the
stacked clients' activations, gradients and optimiser state; cuDNN's workspaces where torch's allocator holds them).

The 32x32 models (convnet, resnet20, resnet56 and resnet56_bottleneck with batch or group norm, through their own
`forward_stacked`) train on seeded
synthetic CIFAR-shaped data (N(0, 1) images, uniform labels, `--samples-per-client` each), since CIFAR itself
cannot be downloaded here; the work per step is that of CIFAR.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import yaml
from machine import device_label, torch_line

from fedscape.core.setting import parse_alpha
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import make_partition
from fedscape.fl.sequential import local_train
from fedscape.fl.settings import CAPTURE_MODES, TrainConfig, sample_clients
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, vectorization_blocker
from fedscape.models import layers
from fedscape.models.device import precision_used, use_precision
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.models.specs import DEFAULT_PRECISION, PRECISIONS

# The grouped layout's memory orders (`fedscape.models.layers.grouped_memory_format`; auto: the device's own).
LAYOUTS = {"auto": None, "channels_last": torch.channels_last, "channels_first": torch.contiguous_format}
# The models the benchmark knows: (in_channels, image size) of their data; digits for 8x8 ones, else CIFAR-shaped.
SHAPES = {"cnn_small": (1, 8), "mlp": (1, 8), "convnet": (3, 32), "resnet20": (3, 32), "resnet56": (3, 32),
          "resnet56_bottleneck": (3, 32)}


def make_data(num_clients: int, alpha: str, device: torch.device, model: str = "cnn_small",
              samples_per_client: int = 64) -> FederatedData:
    if SHAPES[model] != (1, 8):
        return synthetic_data(num_clients, alpha, device, *SHAPES[model], samples_per_client)
    ds = load_dataset("digits", seed=0, test_fraction=0.25, proxy_fraction=0.2)
    part = make_partition(ds.y_train.numpy(), num_clients, parse_alpha(alpha), seed=0, min_size=2)
    return FederatedData(ds.x_train.to(device), ds.y_train.to(device),
                         [torch.as_tensor(ix, device=device) for ix in part.client_indices],
                         ds.x_test.to(device), ds.y_test.to(device))


def synthetic_data(num_clients: int, alpha: str, device: torch.device, channels: int, size: int,
                   samples_per_client: int) -> FederatedData:
    """Seeded CIFAR-shaped data: N(0, 1) images and uniform labels of 10 classes, split by alpha."""
    gen = torch.Generator().manual_seed(0)
    n = num_clients * samples_per_client
    x = torch.randn(n, channels, size, size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    part = make_partition(y.numpy(), num_clients, parse_alpha(alpha), seed=0, min_size=2)
    return FederatedData(x.to(device), y.to(device), [torch.as_tensor(ix, device=device) for ix in part.client_indices],
                         x[:256].to(device), y[:256].to(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(num_clients: int, args: argparse.Namespace, device: torch.device) -> dict:
    data = make_data(num_clients, args.alpha, device, args.model, args.samples_per_client)
    torch.manual_seed(0)
    channels, size = SHAPES[args.model]
    options = {"norm": args.norm} if args.norm else {}
    model = build_model(args.model, num_classes=10, in_channels=channels, image_size=size, **options)
    # One strategy per path: a strategy may keep per-client state between rounds (MOON's previous models)
    strategy, seq_strategy = (make_strategy(args.algorithm, args.hparams) for _ in range(2))
    model = strategy.prepare_model(model, seed=0).to(device).train()  # MOON's projection head
    flat = FlatParams(model)
    global_params, global_buffers = flat.get(), flatten_buffers(model).to(device)
    cfg = TrainConfig(local_epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr,
                      client_chunk_size=args.chunk_size, precision=args.precision, seed=0, capture=args.capture)
    reason = vectorization_blocker(model, strategy) or (strategy.stacked_blocker(model, False) if args.vmap else None)
    if reason is not None:  # the vectorised trainer would silently train something else
        raise SystemExit(f"cannot benchmark vectorised training: {reason}")
    for s in (strategy, seq_strategy):
        s.setup(num_clients, global_params.numel(), device, model=model, seed=0)
    vectorized = VectorizedTrainer(model, data, strategy, cfg, stacked_forward=not args.vmap)
    sampled = sample_clients(0, 1, num_clients, 1.0)

    def sequential_round(round_: int):
        results = [local_train(model, flat, global_params, global_buffers, data, c, round_, seq_strategy, cfg)[0]
                   for c in sampled]
        return seq_strategy.server_update(global_params, results)

    def vectorized_round(round_: int):
        results = vectorized.train_round(global_params, global_buffers, sampled, round_)
        return strategy.server_update(global_params, results)

    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    cpu: dict[str, list[float]] = {"sequential": [], "vectorized": []}  # process CPU time: robust to other load
    peak: dict[str, float | None] = {"sequential": None, "vectorized": None}  # GiB allocated at most, on CUDA
    outputs = {}
    for round_ in range(args.warmup + args.repeats):  # the first `warmup` rounds are not timed
        for mode, fn in (("sequential", sequential_round), ("vectorized", vectorized_round)):
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            with use_precision(args.precision, device):  # as the engine trains a run
                outputs[mode] = fn(round_ + 1)
            sync(device)
            if device.type == "cuda":
                peak[mode] = max(peak[mode] or 0.0, torch.cuda.max_memory_allocated(device) / 2**30)
            if round_ >= args.warmup:
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorized"])
    seq_cpu, vec_cpu = statistics.median(cpu["sequential"]), statistics.median(cpu["vectorized"])
    sizes = [len(ix) for ix in data.client_indices]
    return {"clients": num_clients, "samples_min": min(sizes), "samples_max": max(sizes),
            "sequential_s": seq, "vectorized_s": vec, "speedup": seq / vec,
            "sequential_cpu_s": seq_cpu, "vectorized_cpu_s": vec_cpu, "cpu_ratio": seq_cpu / vec_cpu,
            "max_abs_diff": float((outputs["sequential"] - outputs["vectorized"]).abs().max()),
            "peak_gib_sequential": peak["sequential"], "peak_gib_vectorized": peak["vectorized"],
            "replayed_steps": 0 if vectorized.graphs is None else vectorized.graphs.replays}


def gib(value: float | None) -> str:
    """A peak of device memory in GiB, '-' where none is measured (a CPU: no allocator statistics)."""
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds first (on CUDA a step shape met STACKED_CAPTURE_MIN_STEPS times over the "
                             "rounds so far is captured: more warm-up rounds time the steady state of a long run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--alpha", default="0.5", help="Dirichlet alpha of the split, or iid")
    parser.add_argument("--algorithm", default="fedavg")
    parser.add_argument("--hparams", type=yaml.safe_load, default={},
                        help="the algorithm's hyperparameters as a YAML mapping, e.g. '{head: projection}' (MOON)")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--chunk-size", type=int, default=TrainConfig.client_chunk_size)
    parser.add_argument("--vmap", action="store_true",
                        help="functional_call under vmap even where the model has a forward_stacked")
    parser.add_argument("--capture", default="auto", choices=CAPTURE_MODES,
                        help="training.capture of the vectorised rounds (CUDA: recurring stacked steps from graphs)")
    parser.add_argument("--layout", nargs="+", default=["auto"], choices=sorted(LAYOUTS),
                        help="the vectorised steps' grouped memory order(s), each timed in its own row")
    parser.add_argument("--pointwise", nargs="+", default=["auto"], choices=["auto", *layers.POINTWISE_FORMS],
                        help="the form(s) of the stacked 1x1 convolutions (`layers.pointwise_form`; auto: the "
                             "device's), each timed in its own row")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                        help="fp32 (TF32 off), tf32 (CUDA) or bf16 autocast: training.precision")
    parser.add_argument("--model", default="cnn_small", choices=sorted(SHAPES))
    parser.add_argument("--norm", help="the model's norm option (resnet20: batch, group or none)")
    parser.add_argument("--samples-per-client", type=int, default=64, help="synthetic data of the 32x32 models")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_label(device)
    data = ("digits" if SHAPES[args.model] == (1, 8)
            else f"synthetic CIFAR-shaped data, {args.samples_per_client}/client")
    norm = f" (norm {args.norm})" if args.norm else ""
    algorithm = f"{args.algorithm}{f' {args.hparams}' if args.hparams else ''}"
    print(f"# vectorised vs sequential client training: {algorithm}, {args.model}{norm} on {data}, alpha {args.alpha}, "
          f"{args.local_epochs} local epochs, batch {args.batch_size}, chunk {args.chunk_size}, {name}, "
          f"precision {precision_used(args.precision, device)}, capture {args.capture}, "
          f"median of {args.repeats} rounds after {args.warmup} untimed, {torch_line()}")
    print("| layout | 1x1 | clients | samples/client | sequential s/round | vectorized s/round | speedup | "
          "CPU s seq / vec | CPU ratio | max abs diff | replayed steps | peak GiB seq / vec |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    default_format, default_pointwise = layers.grouped_memory_format, layers.pointwise_form
    try:
        for layout, pointwise in [(a, b) for a in args.layout for b in args.pointwise]:
            fmt = LAYOUTS[layout]
            layers.grouped_memory_format = default_format if fmt is None else (lambda device, fmt=fmt: fmt)
            layers.pointwise_form = (default_pointwise if pointwise == "auto"
                                     else (lambda device, form=pointwise: form))
            for m in args.clients:
                row = {"layout": layout, "pointwise": pointwise, **bench(m, args, device)}
                rows.append(row)
                print(f"| {layout} | {pointwise} | {m} | {row['samples_min']}-{row['samples_max']} | "
                      f"{row['sequential_s']:.3f} | {row['vectorized_s']:.3f} | {row['speedup']:.1f}x | "
                      f"{row['sequential_cpu_s']:.2f} / "
                      f"{row['vectorized_cpu_s']:.2f} | {row['cpu_ratio']:.1f}x | {row['max_abs_diff']:.1e} | "
                      f"{row['replayed_steps']} | {gib(row['peak_gib_sequential'])} / "
                      f"{gib(row['peak_gib_vectorized'])} |", flush=True)
    finally:
        layers.grouped_memory_format, layers.pointwise_form = default_format, default_pointwise
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "precision": precision_used(args.precision, device), "args": vars(args),
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
