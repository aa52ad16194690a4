"""What a benchmark ran on, printed with its numbers: speed ratios differ between CPU models (and oneDNN's ISA)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

# A convolution large enough for oneDNN, run in a child process: oneDNN prints its ISA only in verbose mode, which
# must be set before its first primitive; the child inherits ONEDNN_MAX_CPU_ISA and the like.
_ONEDNN_PROBE = ("import torch; torch.nn.functional.conv2d(torch.zeros(8, 16, 8, 8), torch.zeros(16, 16, 3, 3), "
                 "padding=1)")


CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo with its family and model numbers where it gives them (else what
    platform knows): a name such as "AMD EPYC" covers several generations (Zen 3 and Zen 4 are family 25, Zen 5
    family 26), whose speed ratios differ."""
    fields: dict[str, str] = {}
    for line in CPUINFO.read_text().splitlines() if CPUINFO.exists() else []:
        if not line.strip():
            break  # the first processor's block: every core of a machine is the same model
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
               if key in fields]
    return f"{fields['model name']} ({', '.join(numbers)})" if numbers else fields["model name"]


def onednn_isa() -> str:
    """The instruction set oneDNN's CPU kernels use here (e.g. 'Intel AVX2', 'Intel AVX-512 ...'), from its verbose
    log; 'unknown' where torch has no oneDNN or the probe fails.

    It can differ from ATen's own dispatch: ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN's (the convolutions) alone, which is
    how an AVX2-only CPU's convolutions can be measured on an AVX-512 one.
    """
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"^onednn_verbose,(?:v1,)?info,cpu,isa:(.+)$", out, flags=re.M)
    return match[1].strip() if match else "unknown"


def torch_line() -> str:
    """The torch version, the instruction set ATen's kernels dispatch to and oneDNN's (e.g. AVX2, AVX512)."""
    import torch  # lazy: the workflow benchmark measures jobs that must not import torch

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return f"torch {torch.__version__}, CPU kernels {capability}, oneDNN ISA {onednn_isa()}"


def device_label(device) -> str:
    """The device a benchmark ran on (a torch.device): the GPU's name, or the CPU model and torch's thread count."""
    import torch  # lazy: as in torch_line

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"
