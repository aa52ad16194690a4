"""The client_stats job's memory and time: `l2_to_final` holds a block of a trajectory's rows at a time (the job reads
every run's whole trajectory, memory-mapped: meta.yaml's CIFAR-10 runs keep 21 GB each) with the numbers of the whole
at once, and the SLURM profile gives the job the time to read its inputs, more on the resubmission."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from fedscape.fl.client_stats import l2_to_final

ROOT = Path(__file__).resolve().parents[2]


def whole_at_once(params: torch.Tensor) -> torch.Tensor:
    """l2_to_final as it was: every row's difference at once, in the trajectory's dtype, then float64."""
    return torch.linalg.vector_norm((params - params[-1]).double(), dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("rows", "width"), [(7, 50_000), (13, 1_000), (1, 40_000)])  # 50,000 > torch's grain size
@pytest.mark.parametrize("block_rows", [0, 1, 3, 1_000])  # under one row (a row alone), uneven, everything at once
@pytest.mark.parametrize("threads", [1, 2])
def test_l2_to_final_by_blocks_is_bit_identical_to_the_whole_at_once(dtype, rows, width, block_rows, threads):
    # Prepare: a random trajectory, a block of `block_rows` rows (a difference and its float64 copy each)
    params = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows), dtype=dtype) * 3
    block_bytes = block_rows * width * (params.element_size() + 8)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    # Execute
    try:
        got = l2_to_final(params, block_bytes=block_bytes)
    finally:
        torch.set_num_threads(before)

    # Assert: the same float64 numbers, bit for bit; the final row's distance exactly 0
    assert got.dtype == torch.float64 and torch.equal(got, whole_at_once(params))
    assert got[-1] == 0


def test_l2_to_final_reads_a_memory_mapped_trajectory(tmp_path):
    # Prepare: a trajectory saved and mapped back, as load_trajectory reads it on the CPU
    params = torch.randn(9, 30_000, generator=torch.Generator().manual_seed(0))
    torch.save({"params": params}, tmp_path / "trajectory.pt")
    mapped = torch.load(tmp_path / "trajectory.pt", mmap=True, weights_only=True)["params"]

    # Execute
    got = l2_to_final(mapped, block_bytes=2 * 30_000 * 12)

    # Assert
    assert torch.equal(got, whole_at_once(params))


PEAK_SCRIPT = """
import resource, sys, torch
from fedscape.fl.client_stats import l2_to_final
torch.set_num_threads(1)
params = torch.randn(25, 2_000_000)  # 200 MB in float32
l2_to_final(params[:2, :10])  # torch's first norm loads its code: not the trajectory's memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
l2_to_final(params)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / (params.numel() * 4))
"""


def test_l2_to_final_needs_little_new_memory_beside_its_trajectory():
    # Prepare: a fresh interpreter, whose peak resident memory is its own, importing fedscape as this one does
    path = os.pathsep.join(part for part in (os.environ.get("PYTHONPATH"), str(ROOT / "src")) if part)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}

    # Execute: the new peak of l2_to_final as a share of the trajectory's size
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], env=env, capture_output=True, text=True, timeout=300)

    # Assert: well under the trajectory (the whole at once took 3 times it: its difference and a float64 copy)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) < 0.5


def profile_value(key: str, size_mb: float, attempt: int) -> int:
    """The profile's `client_stats` resource `key` as Snakemake evaluates it for inputs of `size_mb` at `attempt`."""
    expression = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())["set-resources"]["client_stats"][key]
    namespace = {"input": SimpleNamespace(size_mb=size_mb), "attempt": attempt}
    return eval(str(expression), namespace)  # noqa: S307 - the profile's own expressions


@pytest.mark.parametrize("size_mb", [1.0, 21_355.0 * 288])  # a tiny run; meta.yaml's 288 CIFAR-10 trajectories
def test_the_client_stats_job_asks_for_the_time_to_read_its_inputs_and_more_on_each_attempt(size_mb):
    # Execute
    runtime = [profile_value("runtime", size_mb, attempt) for attempt in (1, 2)]
    memory = [profile_value("mem_mb", size_mb, attempt) for attempt in (1, 2)]

    # Assert: minutes to read every input at 100 MB/s and an hour beside, doubled on the resubmission; at least the
    # 4,000 MB the default gave, doubled too
    assert runtime[0] >= 60 + size_mb / 100 / 60 - 1 and runtime[1] == 2 * runtime[0]
    assert memory[0] >= 4000 and memory[1] == 2 * memory[0]
    assert all(isinstance(value, int) for value in runtime + memory)
