"""Where a GPU step's time goes: torch.profiler over fedscape's training paths, against plain torch.

For each case it prints the wall time of one profiled call, the device kernels it launched and their summed time
(a launch-bound call has kernel time far below its wall time), then the top operators by their own device time and
by their own CPU time. The cases:

- ``vec_bn`` / ``vec_gn``: a vectorised round of resnet20 (batch / group norm) over ``--clients`` clients of a
  Dirichlet(0.5) split (uneven shards: batch norm's masked path), as `bench_vectorized.py` times it;
- ``vec_bn_equal``: the same with equal shards (no padding: torch's own batch norm over the grouped channels);
- ``seq``: fedscape's sequential local training of one client against torch's own loop, ``--model`` at
  ``--batch-size``;
- ``captured``: resnet20 (batch norm) steps at batch 16 and 32: plain, fedscape sequential, fedscape captured
  (`bench_gpu.measure`), timed, not profiled.

    python benchmarks/profile_gpu.py --device cuda vec_bn vec_gn vec_bn_equal seq captured
    python benchmarks/profile_gpu.py --device cpu --clients 4 --steps 2 vec_bn seq      # a quick check
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from bench_gpu import StepKind, measure, sync, synthetic_clients
from bench_vectorized import make_data
from machine import device_label, torch_line
from torch.profiler import ProfilerActivity, profile

from fedscape.fl.sequential import local_train
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.device import use_precision
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model

CASES = ("vec_bn", "vec_gn", "vec_bn_equal", "seq", "captured")


def report(label: str, fn, device: torch.device, rows: int) -> None:
    """Profile one call of fn (after a warm-up call) and print its summary; in fp32 (TF32 off), as a job runs."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with use_precision("fp32", device):
        fn()
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        sync(device)
        unprofiled = time.perf_counter() - t0
    averages = prof.key_averages()
    kernels = [e for e in averages if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.self_device_time_total for e in kernels) / 1e3
    print(f"\n## {label}: {unprofiled * 1e3:.1f} ms unprofiled, {wall * 1e3:.1f} ms profiled; "
          f"{sum(e.count for e in kernels)} kernels, {kernel_ms:.1f} ms of kernel time "
          f"({kernel_ms / (unprofiled * 1e3):.0%} of the unprofiled wall time)")
    if device.type == "cuda":
        print(averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def resnet20(norm: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm=norm).to(device).train()


def vectorized_case(norm: str, equal: bool, args: argparse.Namespace, device: torch.device):
    model = resnet20(norm, device)
    if equal:
        kind = StepKind("resnet20", (("norm", norm),), 3, 32, 10, args.batch_size, 0.0, 0.0, "vectorized", False,
                        args.clients)
        data = synthetic_clients(kind, args.clients, args.steps * args.batch_size, device)
        cfg = TrainConfig(local_epochs=1, batch_size=args.batch_size, lr=0.01, seed=0)
    else:
        data = make_data(args.clients, "0.5", device, "resnet20", 64)
        cfg = TrainConfig(local_epochs=2, batch_size=args.batch_size, lr=0.05, seed=0)
    flat = FlatParams(model)
    params, buffers = flat.get(), flatten_buffers(model).to(device)
    strategy = make_strategy("fedavg")
    strategy.setup(args.clients, params.numel(), device, model=model, seed=0)
    trainer = VectorizedTrainer(model, data, strategy, cfg)
    sampled = list(range(args.clients))
    return lambda: trainer.train_round(params, buffers, sampled, 1)


def sequential_cases(args: argparse.Namespace, device: torch.device):
    """fedscape's local training of one client, and torch's own loop over the same batches."""
    options = {"norm": args.norm} if args.norm else {}
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=32, **options).to(device).train()
    kind = StepKind(args.model, tuple(options.items()), 3, 32, 10, args.batch_size, 0.9, 5e-4, "sequential", False, 0)
    data = synthetic_clients(kind, 1, args.steps * args.batch_size, device)
    cfg = TrainConfig(local_epochs=1, batch_size=args.batch_size, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=0)
    flat = FlatParams(model)
    params, buffers = flat.get(), flatten_buffers(model).to(device)
    strategy = make_strategy("fedavg")
    strategy.setup(1, params.numel(), device, model=model, seed=0)
    plain = kind.build().to(device).train()

    def plain_epoch():
        opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for b in range(args.steps):
            sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(plain(data.x_train[sl]), data.y_train[sl]).backward()
            opt.step()

    return plain_epoch, lambda: local_train(model, flat, params, buffers, data, 0, 1, strategy, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", choices=CASES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=50, help="clients of the vectorised rounds")
    parser.add_argument("--steps", type=int, default=20, help="steps of the sequential and equal-shard cases")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="resnet18", help="the sequential case's model")
    parser.add_argument("--norm", default="group", help="the sequential case's norm option")
    parser.add_argument("--rows", type=int, default=12, help="operators per table")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {device_label(device)}; {torch_line()}")
    for case in args.cases:
        if case in ("vec_bn", "vec_gn", "vec_bn_equal"):
            norm = "group" if case == "vec_gn" else "batch"
            label = f"{case}: vectorised round, resnet20 ({norm} norm), {args.clients} clients, batch {args.batch_size}"
            report(label, vectorized_case(norm, case == "vec_bn_equal", args, device), device, args.rows)
        elif case == "seq":
            plain, fedscape = sequential_cases(args, device)
            what = f"{args.model} ({args.norm} norm), {args.steps} steps of batch {args.batch_size}"
            report(f"plain torch loop, {what}", plain, device, args.rows)
            report(f"fedscape sequential local_train, {what}", fedscape, device, args.rows)
        else:
            for batch in (16, 32):
                kind = StepKind("resnet20", (("norm", "batch"),), 3, 32, 10, batch, 0.9, 5e-4, "sequential", True, 0)
                ns = argparse.Namespace(steps=args.steps, repeats=3, precision="fp32", clients=0)
                row = measure([kind], ns, device)[kind]
                print(f"\n## captured: resnet20 (batch norm), batch {batch}: plain {row['plain_ms']:.3f} ms/step, "
                      f"sequential {row['sequential_ms']:.3f}, captured {row['captured_ms']} "
                      f"({row['why_not_captured'] or 'captured'})")


if __name__ == "__main__":
    main()
