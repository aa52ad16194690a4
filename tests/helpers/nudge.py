"""A probe of float32 tolerances, as a pytest plugin: `pytest -p helpers.nudge -k float32 tests/unit` runs the tests
with every model that fedscape's registry builds starting a rounding or two away from its own start (each weight
times 1 + FEDSCAPE_NUDGE * 2^-23, FEDSCAPE_NUDGE 1 unless set). A float32 comparison that fails there held by
rounding luck at its own start (a value rounded exactly onto a ReLU's kink at one start and not at the other: see
docs/architecture.md on tests that compare two computation paths)."""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

import fedscape.models.registry as registry


def nudge(model: nn.Module, times: float = 1.0) -> nn.Module:
    """``model`` with each weight times 1 + times * 2^-23, in place (1-2 float32 units in the last place at 1)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + times * 2**-23)
    return model


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    """Before the conftests and the test modules bind the registry's `build_model` by name: every model built
    through it nudged (a plugin loaded with -p takes this hook; importing this module patches nothing)."""
    build = registry.build_model
    times = float(os.environ.get("FEDSCAPE_NUDGE", "1"))
    registry.build_model = functools.wraps(build)(lambda *a, **kw: nudge(build(*a, **kw), times))
