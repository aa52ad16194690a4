"""The float32 tolerance probe (tests/helpers/nudge.py): models a rounding or two from their own start, for every
test that builds them through the registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from helpers.nudge import nudge

from fedscape.models.registry import build_model

TESTS = Path(__file__).resolve().parents[1]


def test_a_nudged_model_is_one_or_two_float32_roundings_from_its_start():
    # Prepare
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    before = [p.detach().clone() for p in model.parameters()]

    # Execute
    nudge(model)

    # Assert: every nonzero weight moved up in magnitude by 1 or 2 units in the last place; zeros stay
    for old, new in zip(before, model.parameters(), strict=True):
        ulp = torch.nextafter(old.abs(), torch.tensor(torch.inf)) - old.abs()
        steps = ((new.detach().abs() - old.abs()) / ulp)[old != 0]
        assert set(steps.round().unique().tolist()) <= {1.0, 2.0}
        assert torch.equal(new.detach()[old == 0], old[old == 0])


def test_the_probe_plugin_nudges_the_models_that_the_tests_build(tmp_path):
    # Prepare: a test module that builds a model through the helpers (which bind build_model by name at import)
    # and compares it with the registry's unwrapped build, nudged
    (tmp_path / "test_probe.py").write_text(
        "import torch\n"
        "from helpers.vectorized import model_of\n"
        "from fedscape.models import registry\n"
        "from helpers.nudge import nudge\n"
        "def test_nudged():\n"
        "    plain = registry.build_model.__wrapped__\n"
        "    torch.manual_seed(0)\n"
        "    want = nudge(plain('cnn_small', num_classes=10, in_channels=1, image_size=8), 3.0)\n"
        "    for a, b in zip(model_of('cnn_small').parameters(), want.parameters(), strict=True):\n"
        "        assert torch.equal(a, b)\n")

    # Execute
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "helpers.nudge", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path / "test_probe.py")],
                         capture_output=True, text=True, env={"FEDSCAPE_NUDGE": "3", "PYTHONPATH": str(TESTS),
                                                             "PATH": "/usr/bin:/bin"}, timeout=300)

    # Assert
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
