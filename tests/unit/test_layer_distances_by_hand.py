"""Per-layer distances of two models (`analysis.barriers.maths.layer_distances`; Adilova et al. 2023, Fig. 1b) by
hand: b = a + u with u orthogonal to a within every layer, so that each layer's Euclidean distance is |u| and its
cosine similarity |a| / |b|, and neither follows from the other (b is no multiple of a)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedscape.analysis.barriers.maths import Layer, Point, layer_distances, model_layers
from fedscape.models.registry import build_model

# Two layers of four flat parameters each, each in two slices (a weight and a bias apart in the flat vector)
LAYERS = [Layer(0, "conv", (slice(0, 2), slice(4, 5)), ()), Layer(1, "head", (slice(2, 4), slice(5, 8)), ())]


def _point(params) -> Point:
    return Point(torch.tensor(params, dtype=torch.float32), torch.zeros(0))


def test_two_layers_distances_by_hand():
    # Prepare: conv: a = (1, 2, 2), u = (2, -1, 0) (a.u = 0); head: a = (0, 3, 4, 0, 0), u = (1, 4, -3, 0, 0)
    a = _point([1, 2, 0, 3, 2, 4, 0, 0])
    u = [2, -1, 1, 4, 0, -3, 0, 0]
    b = _point([x + y for x, y in zip(a.params.tolist(), u, strict=True)])

    # Execute
    rows = layer_distances(a, b, LAYERS)

    # Assert: conv: |a| = 3, |u| = sqrt 5, |b| = sqrt 14, cos = a.b / (|a| |b|) = 9 / (3 sqrt 14);
    # head: |a| = 5, |u| = sqrt 26, |b| = sqrt 51, cos = 25 / (5 sqrt 51);
    # the whole model: |u| = sqrt(5 + 26), cos = 34 / (sqrt 34 sqrt 65)
    assert [(r["layer_index"], r["layer"]) for r in rows] == [(0, "conv"), (1, "head"), (-1, "full")]
    assert [r["distance"] for r in rows] == pytest.approx([math.sqrt(5), math.sqrt(26), math.sqrt(31)], rel=1e-12)
    assert [r["cosine"] for r in rows] == pytest.approx(
        [3 / math.sqrt(14), 5 / math.sqrt(51), math.sqrt(34 / 65)], rel=1e-7)


def test_a_layer_at_zero_has_no_cosine_but_a_distance():
    # Prepare: a's conv layer all zeros
    a = _point([0, 0, 0, 3, 0, 4, 0, 0])
    b = _point([1, 2, 0, 3, 2, 4, 0, 0])

    # Execute
    conv, head, full = layer_distances(a, b, LAYERS)

    # Assert: the angle to a zero vector is undefined; the distance is b's norm there
    assert math.isnan(conv["cosine"]) and conv["distance"] == pytest.approx(3.0, rel=1e-12)
    assert head["distance"] == 0.0 and head["cosine"] == pytest.approx(1.0, rel=1e-12)
    assert full["distance"] == pytest.approx(3.0, rel=1e-12)
    assert full["cosine"] == pytest.approx(25 / (5 * math.sqrt(34)), rel=1e-7)  # a.b / (|a| |b|)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_s_layer_distances_match_numpy(seed):
    # Prepare: a CNN's random weights a, and u drawn at random, then made orthogonal to a within each layer
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    layers = model_layers(model)
    rng = np.random.default_rng(seed)
    a = rng.normal(size=sum(layer.numel for layer in layers))
    u = rng.normal(size=a.size) * rng.uniform(0.1, 3.0)
    for layer in layers:
        idx = np.concatenate([np.arange(s.start, s.stop) for s in layer.param_slices])
        u[idx] -= (u[idx] @ a[idx]) / (a[idx] @ a[idx]) * a[idx]
    b = a + u

    # Execute
    rows = layer_distances(Point(torch.from_numpy(a), torch.zeros(0)), Point(torch.from_numpy(b), torch.zeros(0)),
                           layers)

    # Assert: numpy's norm and cosine of each layer's parameters (and the whole model's), which are |u| and
    # |a| / |b| by the orthogonality
    assert [r["layer"] for r in rows] == [*(layer.name for layer in layers), "full"]
    for row, layer in zip(rows, [*layers, None], strict=True):
        idx = (np.arange(a.size) if layer is None
               else np.concatenate([np.arange(s.start, s.stop) for s in layer.param_slices]))
        va, vb = a[idx], b[idx]
        assert row["distance"] == pytest.approx(np.linalg.norm(vb - va), rel=1e-10)
        assert row["cosine"] == pytest.approx(np.dot(va, vb) / (np.linalg.norm(va) * np.linalg.norm(vb)), rel=1e-10)
        assert row["distance"] == pytest.approx(np.linalg.norm(u[idx]), rel=1e-10)
        assert row["cosine"] == pytest.approx(np.linalg.norm(va) / np.linalg.norm(vb), rel=1e-10)
