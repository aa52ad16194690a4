"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
