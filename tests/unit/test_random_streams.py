"""The random streams of the analyses kept apart from the others of the same seed, and the same on every machine: a
random landscape plane's directions are not the numbers a `random` init of its seed drew its weights from, and the
layer-wise control's directions are neither mode random's layer order nor scaled by a norm that BLAS's threads sum."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.diverged import HEALTHY, SCHEMA, raw_config

from fedscape.analysis.barriers.definitions import cumulation_order, random_direction
from fedscape.analysis.landscape.planes import random_plane
from fedscape.core.config import FIRST_RESULT_VERSION, RESULT_VERSION, load_schema
from fedscape.core.runs import build_runs
from fedscape.models.params import flatten_buffers, flatten_params, param_specs
from fedscape.models.registry import build_model
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.double(), v.double()
    return float(u @ v / (u.norm() * v.norm()))


# -- landscape planes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "num_classes", "in_channels", "size"), [
    ("mlp", 10, 1, 28), ("convnet", 10, 3, 32), ("word_lstm", 10004, 10004, 20)])
@pytest.mark.parametrize("seed", [0, 2])
def test_a_random_plane_is_independent_of_the_weights_of_the_init_of_its_seed(name, num_classes, in_channels, size,
                                                                              seed):
    # Prepare: a `random` init of the seed (stages.init: the model's own initialisation under torch.manual_seed)
    torch.manual_seed(seed)
    model = build_model(name, num_classes, in_channels, size)
    specs = param_specs(model)
    weights = flatten_params(model)

    # Execute
    plane = random_plane(weights, flatten_buffers(model), [s.shape for s in specs], seed)

    # Assert: each direction's cosine with every weight tensor (the filter-normalised ones: 2 dims or more) is that of
    # independent vectors, within 5 standard deviations (1/sqrt(entries)); drawn from the init's numbers, it was about
    # -0.35 (+0.94 for word_lstm's weight_hh)
    cosines = {(s.name, key): cosine(weights[s.slice], getattr(plane, key)[s.slice])
               for s in specs if len(s.shape) >= 2 for key in ("d1", "d2")}
    bounds = {s.name: 5 / math.sqrt(s.numel) for s in specs}
    assert {key: c for key, c in cosines.items() if abs(c) >= bounds[key[0]]} == {}


def plan_config(modes: list[str]) -> dict:
    """The diverged helper's two runs with a random, a trajectory and a hessian plane of the healthy run, and layer-wise
    `modes`."""
    config = raw_config()
    config["landscapes"] = {kind: {"kind": kind, "runs": [HEALTHY], "resolution": 3}
                            for kind in ("random", "trajectory", "hessian")}
    config["layer_barriers"]["modes"] = modes
    return check_config(config, load_schema(SCHEMA))


def version(settings: dict) -> int:
    return settings.get(RESULT_VERSION, FIRST_RESULT_VERSION)


def test_only_the_random_planes_jobs_carry_the_stream_bump():
    from fedscape.plan.landscape import RANDOM_PLANE_STREAM_BUMPS, RESULT_VERSIONS, landscape_plans, plane_settings

    # Prepare
    config = plan_config(["single"])

    # Execute
    versions = {plan.label: version(plane_settings(config, plan))
                for plan in landscape_plans(config, build_runs(config))}

    # Assert
    base = RESULT_VERSIONS["landscape_plane"]
    assert versions == {"random": base + RANDOM_PLANE_STREAM_BUMPS, "trajectory": base, "hessian": base}
    assert RANDOM_PLANE_STREAM_BUMPS >= 1


# -- the layer-wise control ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 3, 2**40])
def test_the_first_random_direction_is_not_drawn_from_the_random_layer_order_s_stream(seed):
    # Prepare: the numbers cumulation_order(..., "random", seed) permutes the layers with
    numel = 10_000
    order_stream = np.random.default_rng(seed).standard_normal(numel)

    # Execute: layer 0's first direction, of the same seed (both default to 0)
    d = random_direction(numel, 1.0, seed, layer_index=0, sample=0)

    # Assert: independent of it (it was that stream, scaled: cosine 1)
    assert abs(float(d @ order_stream) / float(np.linalg.norm(order_stream))) < 5 / math.sqrt(numel)


def test_the_random_layer_order_keeps_its_stream():
    # Execute
    order = cumulation_order(10, "random", seed=0)

    # Assert: the order mode random's results were computed with
    assert order == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]  # np.random.default_rng(0).permutation(10)


# The digest of eight directions of `numel` entries (layer 5, samples 0 to 7: a sum's last bit may agree by chance in
# one of them), as a process prints it
DIGEST = ("import hashlib; from fedscape.analysis.barriers.definitions import random_direction; "
          "print(hashlib.sha256(b''.join(random_direction({numel}, 3.7, 0, 5, s).tobytes() for s in range(8)))"
          ".hexdigest())")


@pytest.mark.parametrize("numel", [20_000, 300_007])
def test_a_random_direction_has_the_same_bytes_whatever_threads_blas_has(numel):
    # Prepare: OpenBLAS splits a dot product of more than 10,000 entries over its threads
    def digest(threads: int) -> str:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-c", DIGEST.format(numel=numel)], env=env, check=True,
                              capture_output=True, text=True)
        return done.stdout.strip()

    # Execute
    one, two = digest(1), digest(2)

    # Assert
    assert len(one) == 64 and one == two


@pytest.mark.parametrize(("modes", "bumped"), [
    (["single", "shallow", "deep"], False),
    (["single", "random", "ends"], False),  # the random order keeps its stream
    (["single", "random_direction"], True),
    (["single", "shallow", "deep", "random", "ends", "random_direction"], True),
])
def test_only_layer_jobs_of_the_control_carry_the_direction_bump(modes, bumped):
    from fedscape.plan.barriers import DIRECTION_STREAM_BUMPS, RESULT_VERSIONS, layer_pair, layer_settings

    # Prepare
    config = plan_config(modes)
    pair = layer_pair(config, build_runs(config), "ok_clients")

    # Execute
    settings = layer_settings(config, pair, 1)

    # Assert
    assert version(settings) == RESULT_VERSIONS["layer_barriers"] + (DIRECTION_STREAM_BUMPS if bumped else 0)
    assert DIRECTION_STREAM_BUMPS >= 1
