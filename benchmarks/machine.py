"""What a benchmark ran on, printed with its numbers: speed ratios differ between CPU models (and oneDNN's ISA)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform knows)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def torch_line() -> str:
    """The torch version and the CPU instruction set its kernels dispatch to (e.g. AVX2, AVX512)."""
    import torch  # lazy: the workflow benchmark measures jobs that must not import torch

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return f"torch {torch.__version__}, CPU kernels {capability}"
