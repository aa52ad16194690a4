"""The papers' training cost in device-hours, projected from step costs measured on this device.

For every (model, batch size) that the paper configs train (pilot.yaml, fedalign.yaml and meta.yaml by default), it
measures in one process, on seeded synthetic data of the data set's shape (N(0, 1) images, uniform labels: the work
per step is that of CIFAR for CIFAR's models):

- plain: a plain-torch SGD step of the same network (forward, cross-entropy, backward, `torch.optim.SGD.step`), the
  reference;
- sequential: fedscape's local training of one client (`fedscape.fl.sequential.local_train`), per step;
- captured: the same with its forward and backward passes replayed from CUDA graphs (`fedscape.fl.capture`, what
  `training.capture: auto` takes on a GPU where the check at capture passes), per step; on a CUDA device only;
- vectorized: fedscape's vectorised round of `--clients` clients (`fedscape.fl.vectorized`), per client step, where
  the runs of that kind train vectorised on this device (`resolve_client_parallel` of each run's own algorithm and
  training settings: a run set to `client_parallel: sequential`, or whose augmentation or algorithm cannot be
  stacked, trains one client after another, and its kind is not measured stacked).

Every step is FedAvg's (SGD on cross-entropy) without augmentation, in the plain reference and in fedscape's paths
alike: `bench_algorithms.py` gives the other algorithms' cost relative to FedAvg's. Runs of a data set that is not
made of images (meta.yaml's Reddit, layerwise.yaml's Shakespeare) are not measured; the script names them.

It then projects each config's local training into hours: every run the workflow plans, its rounds x the clients
sampled in each round x each client's local steps (epochs x batches of its share of the training pool, or the
configured steps). "before" prices every step at the sequential cost; "now" at the path its runs take on this device
(vectorised, else a sequential step, captured where the runs' `capture` allows and the check at capture passes);
"plain" at
the reference step. Evaluation, initialisation (pre-training,
warm-up) and the analysis jobs (Hessian, landscapes, barriers) are not included: local training dominates the papers'
workload. The clients' shares are taken equal (pool / clients); Dirichlet splits change the number of batches only by
the rounding of each client's last batch.

    python benchmarks/bench_gpu.py --device cuda                       # the papers' configs, M=50
    python benchmarks/bench_gpu.py --device cpu --steps 2 --repeats 1 --clients 2 --configs pilot   # a quick check
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import device_label, torch_line

from fedscape.core.runs import Run, build_runs
from fedscape.data.federated import FederatedData
from fedscape.data.specs import DATASETS
from fedscape.fl.capture import CapturedForward, capture_blocker
from fedscape.fl.sequential import local_train
from fedscape.fl.settings import TrainConfig, sample_clients
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel
from fedscape.models.device import precision_used, use_precision
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.plan.train import planned_train
from fedscape.plan.workflow import load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPERS = ROOT / "config" / "papers"


@dataclass(frozen=True)
class StepKind:
    """What one local step costs depends on: the network, its classes and the batch (and the optimiser's work)."""

    model: str
    options: tuple[tuple[str, object], ...]
    in_channels: int
    image_size: int
    num_classes: int
    batch_size: int
    momentum: float
    weight_decay: float
    path: str  # "vectorized" or "sequential": how its runs train their clients on the measuring device
    capture: bool  # whether its runs' sequential steps may be captured (training.capture is not "eager")

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.options)
        return (f"{self.model}{f' ({opts})' if opts else ''}, {self.in_channels}x{self.image_size}x{self.image_size} "
                f"images of {self.num_classes} classes, batch {self.batch_size}, {self.path}"
                f"{'' if self.capture else ', eager'}")

    def build(self) -> torch.nn.Module:
        return network(self.model, self.options, self.in_channels, self.image_size, self.num_classes)


def network(model: str, options: tuple, in_channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    """The network of a step kind's shape (its first five fields)."""
    return build_model(model, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **dict(options))


def run_work(config: dict, run: Run, device: torch.device, models: dict) -> tuple[StepKind, TrainConfig, int]:
    """The step kind of an image run, its training settings and its total client steps over all rounds. `models`:
    one network per (model, options, shape), built once to decide the runs' path."""
    job = planned_train(config, run)
    cfg = job.train_config()
    info = DATASETS[run.dataset]
    options = job.dataset_options
    pool = info.client_pool_bound(options.get("test_fraction", 0.25), options.get("proxy_fraction", 0.0))
    share = max(1, (pool - info.num_classes) // run.num_clients)  # client_pool_bound adds a class per rounding
    shape = (run.model, tuple(sorted(config.get("model_options", {}).get(run.model, {}).items())), info.in_channels,
             info.image_size, info.num_classes)
    if shape not in models:
        models[shape] = network(*shape)
    path = resolve_client_parallel(models[shape], make_strategy(job.algorithm, job.hyperparameters), cfg, device.type)
    kind = StepKind(*shape, cfg.batch_size, cfg.momentum, cfg.weight_decay, path, cfg.capture != "eager")
    batches = math.ceil(share / cfg.batch_size)
    steps = 0
    for t in range(1, cfg.rounds + 1):
        work = cfg.client_work(t, run.num_clients)
        for c in sample_clients(cfg.seed, t, run.num_clients, cfg.participation):
            steps += work[c] * (batches if cfg.work_unit == "epochs" else 1)
    return kind, cfg, steps


def project(config: dict, device: torch.device, models: dict) -> tuple[dict[StepKind, list[int]], dict[str, int]]:
    """A config's image runs as [runs, client steps] per step kind, and how many runs of each other data set it
    has (not measured)."""
    per_kind: dict[StepKind, list[int]] = {}
    others: dict[str, int] = {}
    for run in build_runs(config):
        if DATASETS[run.dataset].inputs != "image":
            others[run.dataset] = others.get(run.dataset, 0) + 1
            continue
        kind, _, steps = run_work(config, run, device, models)
        per_kind.setdefault(kind, [0, 0])
        per_kind[kind][0] += 1
        per_kind[kind][1] += steps
    return per_kind, others


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """The median seconds of `fn()` over `repeats` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_clients(kind: StepKind, num_clients: int, samples: int, device: torch.device) -> FederatedData:
    """`samples` seeded N(0, 1) images with uniform labels for each of `num_clients` clients."""
    gen = torch.Generator().manual_seed(0)
    n = num_clients * samples
    x = torch.randn(n, kind.in_channels, kind.image_size, kind.image_size, generator=gen).to(device)
    y = torch.randint(0, kind.num_classes, (n,), generator=gen).to(device)
    indices = [torch.arange(c * samples, (c + 1) * samples, device=device) for c in range(num_clients)]
    return FederatedData(x, y, indices, x[:256], y[:256])


def measure(kind: StepKind, args: argparse.Namespace, device: torch.device) -> dict:
    """ms per step of the plain reference, of fedscape's sequential step, and per client step of its vectorised
    round (None, with the reason, where it cannot be vectorised); which path `auto` takes here."""
    torch.manual_seed(0)
    model = kind.build().to(device).train()
    cfg = TrainConfig(local_epochs=1, batch_size=kind.batch_size, lr=0.01, momentum=kind.momentum,
                      weight_decay=kind.weight_decay, precision=args.precision, seed=0)
    samples = args.steps * kind.batch_size
    strategy = make_strategy("fedavg")
    row: dict = {"kind": kind}
    with use_precision(args.precision, device):
        # The reference: the same network, the same batches, torch's own loop.
        data = synthetic_clients(kind, 1, samples, device)
        plain_model = kind.build().to(device).train()
        start = [p.detach().clone() for p in plain_model.parameters()]

        def plain_epoch():
            # From the same weights every call, as a client starts from the global model: a model trained on
            # through the repeats drifts (on random labels towards tiny, even subnormal, values: slow on a CPU).
            with torch.no_grad():
                for p, p0 in zip(plain_model.parameters(), start, strict=True):
                    p.copy_(p0)
            opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=kind.momentum,
                                  weight_decay=kind.weight_decay)
            for b in range(args.steps):
                sl = slice(b * kind.batch_size, (b + 1) * kind.batch_size)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(plain_model(data.x_train[sl]), data.y_train[sl]).backward()
                opt.step()

        row["plain_ms"] = timed(plain_epoch, device, args.repeats) / args.steps * 1e3
        flat = FlatParams(model)
        global_params, global_buffers = flat.get(), flatten_buffers(model).to(device)
        strategy.setup(1, global_params.numel(), device, model=model, seed=0)
        row["sequential_ms"] = timed(
            lambda: local_train(model, flat, global_params, global_buffers, data, 0, 1, strategy, cfg),
            device, args.repeats) / args.steps * 1e3
        row["captured_ms"], row["why_not_captured"] = None, capture_blocker(model, strategy, device.type)
        if not kind.capture:
            row["why_not_captured"] = "its runs set training.capture: eager"
        if row["why_not_captured"] is None:
            capture = CapturedForward(model, kind.batch_size)  # captured and checked in the untimed warm-up call
            ms = timed(lambda: local_train(model, flat, global_params, global_buffers, data, 0, 1, strategy, cfg,
                                           capture=capture), device, args.repeats) / args.steps * 1e3
            if capture.on:
                row["captured_ms"] = ms
            else:
                row["why_not_captured"] = f"the check at capture failed: {capture.difference}"
            capture.close()
        reason = None if kind.path == "vectorized" else f"its runs train sequentially on {device.type}"
        row["vectorized_ms"], row["why_not"] = None, reason
        if reason is None:
            data = synthetic_clients(kind, args.clients, samples, device)
            strategy.setup(args.clients, global_params.numel(), device, model=model, seed=0)
            trainer = VectorizedTrainer(model, data, strategy, cfg)
            sampled = list(range(args.clients))
            row["vectorized_ms"] = timed(lambda: trainer.train_round(global_params, global_buffers, sampled, 1),
                                         device, args.repeats) / (args.steps * args.clients) * 1e3
    sequential = row["sequential_ms"] if row["captured_ms"] is None else row["captured_ms"]
    row["now_ms"] = row["vectorized_ms"] if kind.path == "vectorized" else sequential
    return row


def hours(steps: int, ms: float) -> float:
    return steps * ms / 3.6e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["pilot", "fedalign", "meta"],
                        help="paper configs (names under config/papers, or paths)")
    parser.add_argument("--clients", type=int, default=50, help="clients of the vectorised round")
    parser.add_argument("--steps", type=int, default=20, help="local steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median reported)")
    parser.add_argument("--precision", default="fp32", help="training.precision of the measured steps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_label(device)

    projections: dict[str, dict[StepKind, list[int]]] = {}
    not_measured: list[str] = []
    models: dict = {}
    for entry in args.configs:
        path = Path(entry) if entry.endswith((".yaml", ".yml")) else PAPERS / f"{entry}.yaml"
        projections[path.stem], others = project(load_config(path, SCHEMA), device, models)
        not_measured += [f"{path.stem}: {n} runs of {dataset} ({DATASETS[dataset].inputs} inputs)"
                         for dataset, n in sorted(others.items())]

    print(f"# local training step costs on {name}, precision {precision_used(args.precision, device)}, "
          f"{torch_line()}; {args.steps} steps x {args.repeats} repeats, vectorised over {args.clients} clients")
    if not_measured:
        print(f"# not measured (image models only): {'; '.join(not_measured)}")
    print("| model | plain ms/step | fedscape sequential ms/step | sequential / plain | vectorised ms/client step | "
          "plain / vectorised | runs' path | captured ms/step | plain / captured |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    costs: dict[StepKind, dict] = {}
    for kind in sorted({k for per_kind in projections.values() for k in per_kind}, key=lambda k: k.label):
        row = costs[kind] = measure(kind, args, device)
        vec = (f"{row['vectorized_ms']:.4g} | {row['plain_ms'] / row['vectorized_ms']:.1f}x"
               if row["vectorized_ms"] is not None else f"n/a: {row['why_not']} | ")
        cap = (f"{row['captured_ms']:.4g} | {row['plain_ms'] / row['captured_ms']:.1f}x"
               if row["captured_ms"] is not None else f"n/a: {row['why_not_captured']} | ")
        print(f"| {kind.label} | {row['plain_ms']:.4g} | {row['sequential_ms']:.4g} | "
              f"{row['sequential_ms'] / row['plain_ms']:.2f}x | {vec} | {kind.path} | {cap} |", flush=True)

    print(f"\n# projected hours of local training on {name} (training only: no evaluation, inits or analysis)")
    print("| config | model | runs | client steps | hours at plain steps | hours before (sequential) | hours now |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for config_name, per_kind in projections.items():
        total = {"plain": 0.0, "before": 0.0, "now": 0.0}
        for kind, (runs, steps) in per_kind.items():
            row = costs[kind]
            h = {"plain": hours(steps, row["plain_ms"]), "before": hours(steps, row["sequential_ms"]),
                 "now": hours(steps, row["now_ms"])}
            for key in total:
                total[key] += h[key]
            print(f"| {config_name} | {kind.label} | {runs} | {steps} | {h['plain']:.4g} | {h['before']:.4g} | "
                  f"{h['now']:.4g} |")
        print(f"| {config_name} | all | {sum(r for r, _ in per_kind.values())} | "
              f"{sum(s for _, s in per_kind.values())} | {total['plain']:.4g} | {total['before']:.4g} | "
              f"{total['now']:.4g} |", flush=True)


if __name__ == "__main__":
    main()
