"""Overhead of the per-round client statistics relative to the FedAvg server update.

The engine calls `fedscape.fl.client_stats.round_stats` once per round on the client models it already
holds. Measured in one run on the same stacked client models: the FedAvg server update (weighted
mean delta and server step, the baseline the engine runs every round anyway) and `round_stats`
(Gram matrix of the updates in float64 blocks, drift from the aggregate). Prints median times and
the ratio; a full round also trains every client locally, which costs orders of magnitude more.

    python benchmarks/bench_client_stats.py [--model resnet20] [--clients 10] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from machine import device_label, torch_line  # benchmarks/machine.py (the script's directory is on sys.path)
from timing import timed  # benchmarks/timing.py

from fedscape.data.specs import DATASET_NAMES, dataset_info
from fedscape.fl.client_stats import round_stats
from fedscape.fl.strategies.base import ClientResult
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.params import flatten_params
from fedscape.models.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    channels, size, classes = dataset_info(args.dataset).shape
    torch.manual_seed(0)
    start = flatten_params(build_model(args.model, num_classes=classes, in_channels=channels,
                                       image_size=size)).to(device)
    clients = start + 1e-2 * torch.randn(args.clients, start.numel(), device=device)
    results = [ClientResult(k, 100 + k, clients[k], torch.zeros(0, device=device), 0.0) for k in range(args.clients)]
    strategy = make_strategy("fedavg", {})
    aggregate = strategy.server_update(start, results)

    base = timed(lambda: strategy.server_update(start, results), device, args.repeats)
    stats = timed(lambda: round_stats(start, torch.stack([r.params for r in results]), aggregate), device,
                  args.repeats)
    print(f"# {device_label(device)}; {torch_line()}")
    print(f"{args.model}: {start.numel()} parameters, {args.clients} clients, device {device}")
    print(f"  FedAvg server update (baseline): {base * 1e3:8.2f} ms")
    print(f"  round_stats (engine hook):       {stats * 1e3:8.2f} ms   ratio {stats / base:.2f}x")


if __name__ == "__main__":
    main()
