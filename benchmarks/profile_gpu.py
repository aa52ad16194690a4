"""Where a GPU step's time goes: torch.profiler over fedscape's training paths, against plain torch.

For each case it prints the wall time of one profiled call, the device kernels it launched and their summed time
(a launch-bound call has kernel time far below its wall time), then the top operators by their own device time and
by their own CPU time. The cases:

- ``vec_bn`` / ``vec_gn``: a vectorised round of resnet20 (batch / group norm) over ``--clients`` clients of a
  Dirichlet(0.5) split (uneven shards: batch norm's masked path), as `bench_vectorized.py` times it;
- ``vec_bn_equal``: the same with equal shards (no padding: torch's own batch norm over the grouped channels);
- ``seq``: fedscape's sequential local training of one client against torch's own loop, ``--model`` at
  ``--batch-size`` (``--norm``: the model's own default unless given), and the operators each launches per step and per
  call (`operators_per_step`), which on a card bound a launch-bound step's time and on a CPU are counted the same;
- ``captured``: resnet20 (batch norm) steps at batch 16 and 32: plain, fedscape sequential, fedscape captured
  (`bench_gpu.measure`), timed, not profiled.

    python benchmarks/profile_gpu.py --device cuda vec_bn vec_gn vec_bn_equal seq captured
    python benchmarks/profile_gpu.py --device cpu --clients 4 --steps 2 vec_bn seq      # a quick check
    python benchmarks/profile_gpu.py --device cpu --steps 10 --model convnet seq
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


# Leaf operators that launch no kernel: views and aliases of a tensor, allocations, and `to` where the tensor is
# already there (a copy would show as its own `copy_` below it, so `to` would not be a leaf).
NO_KERNEL_OPS = frozenset(f"aten::{name}" for name in (
    "view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "alias", "detach", "lift_fresh", "t",
    "transpose", "permute", "expand", "squeeze", "unsqueeze", "slice", "select", "narrow", "unbind", "split", "chunk",
    "unflatten", "flatten", "numpy_T", "empty", "empty_strided", "empty_like", "resize_", "to"))


def compute_ops(events) -> int:
    """The operators among a profile's `events` that compute (leaf aten operators, less `NO_KERNEL_OPS`): each
    launches about one kernel on a card, so that they count a launch-bound step's work on any device."""
    aten = [e for e in events if e.name.startswith("aten::")]
    return sum(1 for e in aten if e.name not in NO_KERNEL_OPS
               and not any(c.name.startswith("aten::") for c in e.cpu_children))


def profiled(fn, device: torch.device, activities: list[ProfilerActivity]) -> tuple[profile, float]:
    """The profile of one call of fn after a warm-up call, and its wall seconds; in fp32 (TF32 off), as a job runs."""
    with use_precision("fp32", device):
        fn()
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        return prof, time.perf_counter() - t0


def counted(fn, device: torch.device) -> int:
    """`compute_ops` of one profiled call of fn (`profiled`)."""
    return compute_ops(profiled(fn, device, [ProfilerActivity.CPU])[0].events())


def operators_per_step(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[float, float]]:
    """Computing operators of the plain loop and of fedscape's local_train, per step and per call beyond its steps:
    from calls of `--steps` and of twice as many (the difference is the steps', the rest the call's own; negative
    where a call's first steps take fewer than the later ones, as SGD's first step with momentum does)."""
    counts = {}
    for steps in (args.steps, 2 * args.steps):
        plain, fedscape = sequential_cases(argparse.Namespace(**{**vars(args), "steps": steps}), device)
        counts[steps] = {"plain": counted(plain, device), "fedscape": counted(fedscape, device)}
    out = {}
    for name in ("plain", "fedscape"):
        per_step = (counts[2 * args.steps][name] - counts[args.steps][name]) / args.steps
        out[name] = per_step, counts[args.steps][name] - per_step * args.steps
    return out


def report(label: str, fn, device: torch.device, rows: int) -> None:
    """Profile one call of fn (`profiled`) and print its summary, with the wall time of one more, unprofiled."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof, wall = profiled(fn, device, activities)
    with use_precision("fp32", device):
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
    # No default of its own: a model without the option (convnet, the pilot's) refuses any value, and each model that
    # has one keeps its own default (resnet18's group norm, the CIFAR ResNets' batch norm).
    parser.add_argument("--norm", default="", help="the sequential case's norm option (default: the model's own)")
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
            what = (f"{args.model}{f' ({args.norm} norm)' if args.norm else ''}, {args.steps} steps of batch "
                    f"{args.batch_size}")
            report(f"plain torch loop, {what}", plain, device, args.rows)
            report(f"fedscape sequential local_train, {what}", fedscape, device, args.rows)
            ops = operators_per_step(args, device)
            print(f"\n## computing operators (leaf aten operators less views and allocations: about one kernel each "
                  f"on a card), {what} and twice the steps: plain {ops['plain'][0]:.1f} a step, fedscape "
                  f"{ops['fedscape'][0]:.1f} ({ops['fedscape'][0] - ops['plain'][0]:+.1f}); a call's own, beyond its "
                  f"steps, fedscape's less plain's: {ops['fedscape'][1] - ops['plain'][1]:+.0f}")
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
