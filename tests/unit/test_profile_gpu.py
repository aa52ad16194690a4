"""benchmarks/profile_gpu.py's count of the operators a step launches (what bounds a launch-bound step on a card)."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from helpers.workflow import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import profile_gpu
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def _count(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return profile_gpu.compute_ops(prof.events())


@pytest.mark.parametrize(("work", "ops"), [
    (lambda t: t.view(2, 2).t().detach(), 0),  # views and aliases launch nothing
    (lambda t: torch.empty(3).resize_(5), 0),  # nor do allocations
    (lambda t: t.to(torch.float32), 0),  # nor a `to` where the tensor already is
    (lambda t: t.add_(1).mul_(2), 2),  # each in-place arithmetic is one
    (lambda t: t.to(torch.float64), 1),  # a conversion copies (its copy_, not `to`, is the leaf)
    (lambda t: t.sum().item(), 2),  # the sum, and the host read (on a card a copy to the host, and a wait)
])
def test_compute_ops_counts_the_operators_that_launch_work(work, ops):
    # Prepare
    t = torch.ones(4)

    # Execute
    counted = _count(lambda: work(t))

    # Assert
    assert counted == ops


def test_fedscape_s_sequential_step_launches_one_operator_more_than_torch_s_own_loop():
    # Prepare: the pilot's ConvNet at batch 4, as `profile_gpu.py seq --model convnet` runs it
    args = argparse.Namespace(steps=2, batch_size=4, model="convnet", norm="", clients=1, rows=1)

    # Execute
    ops = profile_gpu.operators_per_step(args, torch.device("cpu"))

    # Assert: the running loss sum is fedscape's only extra operator a step (momentum, weight decay and the step are
    # torch's SGD's in both); the plain step is the network's forward, backward and update
    plain, fedscape = ops["plain"][0], ops["fedscape"][0]
    assert plain > 50 and fedscape - plain == 1.0
