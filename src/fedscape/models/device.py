"""Where a job computes: the torch device, its CPU threads, its name and its peak memory."""

from __future__ import annotations

import platform
import resource

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available on this node")
    return device


def use_threads(threads: int | None) -> None:
    """Cap torch's CPU threads at the job's Snakemake `threads`.

    Parallel jobs that each use every core oversubscribe them (small models slow down many times over).
    """
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))


def device_name(device: torch.device | str) -> str:
    """A readable name of the training device: the GPU model, or the CPU's processor/machine."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
