"""Per-algorithm cost of one round relative to FedAvg (the FedAlign paper's Table 5, on digits).

Every algorithm trains the same clients from the same global model; the script reports the median
wall and CPU seconds of a round and the ratio to FedAvg measured in the same run (sequential client
training for all, so the ratios compare the local objectives and not the vectorised path).

    python benchmarks/bench_algorithms.py --threads 1
    python benchmarks/bench_algorithms.py --model resnet20 --algorithms fedavg gradaug fedalign stochdepth
    python benchmarks/bench_algorithms.py --device cuda --model resnet56
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import make_partition
from fedscape.fl.hparams.registry import ALGORITHM_NAMES, check_algorithm_model
from fedscape.fl.sequential import local_train
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--algorithms", nargs="*", default=None, help="default: every algorithm the model supports")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per algorithm (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ds = load_dataset("digits", proxy_fraction=0.2)
    part = make_partition(ds.y_train.numpy(), args.clients, 0.5, 0, 10, 1000)
    data = FederatedData(ds.x_train.to(device), ds.y_train.to(device),
                         [torch.as_tensor(i, device=device) for i in part.client_indices], ds.x_test.to(device),
                         ds.y_test.to(device))
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=16, lr=0.05, momentum=0.9, client_parallel="sequential")
    names = args.algorithms or [n for n in ALGORITHM_NAMES if _supported(n, args.model)]
    if "fedavg" in names:
        names.remove("fedavg")
    names.insert(0, "fedavg")

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = build_model(args.model, 10, 1, 8).to(device).train()
        flat = FlatParams(model)
        strategy = make_strategy(name)
        strategy.setup(data.num_clients, flat.vector.numel(), device, model=model, seed=0)
        start, buffers = flat.get(), flatten_buffers(model).to(device)
        walls, cpus = [], []
        for r in range(args.rounds + 1):  # the first round warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            results = [local_train(model, flat, start, buffers, data, c, r + 1, strategy, cfg)[0]
                       for c in range(data.num_clients)]
            strategy.server_update(start, results)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        rows.append((name, statistics.median(walls), statistics.median(cpus)))

    base_wall, base_cpu = rows[0][1], rows[0][2]
    print(f"model {args.model}, {args.clients} clients, 2 local epochs, batch 16, device {device}, "
          f"{args.threads} thread(s); median of {args.rounds} rounds")
    print(f"{'algorithm':12s} {'s/round':>9s} {'x fedavg':>9s} {'CPU s':>9s} {'CPU x':>7s}")
    for name, wall, cpu in rows:
        print(f"{name:12s} {wall:9.3f} {wall / base_wall:9.2f} {cpu:9.3f} {cpu / base_cpu:7.2f}")


def _supported(name: str, model: str) -> bool:
    try:
        check_algorithm_model(name, model)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
