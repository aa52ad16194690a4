"""Loss landscapes: planes, projection, surface grids, chunking, figures, config checks and tiny-run outputs."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.configs import DEFAULT, SCHEMA, problems_of
from helpers.tables import run_id
from helpers.workflow import TINY_CONFIG

from fedscape.analysis.landscape.definitions import PlaneError
from fedscape.analysis.landscape.figures import (
    GROUP_LINESTYLES,
    clipped_surface,
    group_styles,
    landscape_figure_job,
    plot_surface,
    with_run_labels,
    write_figure_data,
)
from fedscape.analysis.landscape.grid import Grid, chunk_bounds, gather_chunks, grid_extent
from fedscape.analysis.landscape.planes import (
    Plane,
    filter_normalized_direction,
    joint_pca_plane,
    load_plane,
    pca_plane,
    random_plane,
    save_plane,
    three_point_plane,
)
from fedscape.analysis.landscape.project import project
from fedscape.analysis.landscape.stage import surface_data
from fedscape.analysis.landscape.surface import (
    LayoutFlatParams,
    SurfaceEvaluator,
    SurfaceSettings,
    compute_surface,
    evaluate_chunk,
)
from fedscape.core.config import ConfigError
from fedscape.core.runs import Run, build_runs
from fedscape.data.datasets import dataset_from_options, load_dataset
from fedscape.data.federated import load_federated_data
from fedscape.data.partition import PartitionError
from fedscape.fl.settings import sample_clients
from fedscape.models.evaluate import evaluate
from fedscape.models.params import flatten_buffers, flatten_params, load_buffers, load_params
from fedscape.models.registry import build_model
from fedscape.outputs.style import PALETTE, log_levels
from fedscape.plan.landscape import (
    RANDOM_PLANE_STREAM_BUMPS,
    RESULT_VERSIONS,
    SUPPLIED_PLANE_EXTENT_BUMPS,
    plane_version,
)
from fedscape.plan.partition import partition_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.partition import partition_job

IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}


# -- fixtures --------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", proxy_fraction=0.2)
    return ds.x_train[:300], ds.y_train[:300]


def make_model(name: str = "cnn_small", seed: int = 0):
    torch.manual_seed(seed)
    if name == "resnet20":
        return build_model("resnet20", num_classes=10, in_channels=3, image_size=32).eval()
    return build_model(name, num_classes=10, in_channels=1, image_size=8).eval()


def shapes(model):
    return [tuple(p.shape) for p in model.parameters()]


def model_at(name: str, vec: torch.Tensor, buffers: torch.Tensor):
    m = make_model(name)
    load_params(m, vec)
    load_buffers(m, buffers)
    return m.eval()


# -- planes ----------------------------------------------------------------------------------------------
def test_filter_normalised_direction_matches_filter_norms_and_zeroes_1d_tensors():
    model = make_model("cnn_small")
    with torch.no_grad():
        model.features[0].weight[3].zero_()  # a dead filter gets a zero direction filter (epsilon)
    center = flatten_params(model)
    d = filter_normalized_direction(center, shapes(model), torch.Generator().manual_seed(7))
    offset = 0
    for name, p in model.named_parameters():
        n = p.numel()
        part = d[offset : offset + n].view(p.shape)
        if p.dim() <= 1:
            assert torch.count_nonzero(part) == 0, name
        else:
            w_norms = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            d_norms = part.reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-6)
        offset += n
    assert offset == d.numel()
    again = filter_normalized_direction(center, shapes(model), torch.Generator().manual_seed(7))
    other = filter_normalized_direction(center, shapes(model), torch.Generator().manual_seed(8))
    assert torch.equal(d, again) and not torch.equal(d, other)


def test_random_plane_is_seeded_and_has_two_different_directions():
    model = make_model("mlp")
    c, b = flatten_params(model), flatten_buffers(model)
    p1, p2 = random_plane(c, b, shapes(model), seed=3), random_plane(c, b, shapes(model), seed=3)
    assert torch.equal(p1.d1, p2.d1) and torch.equal(p1.d2, p2.d2)
    assert not torch.equal(p1.d1, p1.d2)
    assert p1.kind == "random" and p1.seed == 3


def orthonormality(plane: Plane) -> tuple[float, float, float]:
    """|d1|, |d2| and d1 . d2 of a plane's float32 directions, summed in float64: then they are 1, 1 and 0 within the
    float32 rounding of the components (2^-24 relative, 1.2e-7 on the dot at most), whatever the CPU. Summed in float32
    over 30k components they take a rounding of the CPU's kernels (|d2| - 1 was 1.2e-7 on AVX-512)."""
    d1, d2 = plane.d1.double(), plane.d2.double()
    return float(d1.norm()), float(d2.norm()), float(d1 @ d2)


def _two_dim_trajectory(num_params: int = 500, steps: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    final = torch.randn(num_params, generator=g)
    u, v = torch.randn(num_params, generator=g), torch.randn(num_params, generator=g)
    t = torch.linspace(1, 0, steps)
    coeff = torch.stack([3 * t, torch.sin(4 * t) * t], dim=1)  # a curved path ending at the final model
    return final + coeff[:, :1] * u + coeff[:, 1:] * v, final


@pytest.mark.parametrize("joint", [False, True])
def test_pca_projection_of_a_planar_trajectory_is_exact_with_the_final_model_at_the_origin(joint):
    traj, final = _two_dim_trajectory()
    empty = torch.zeros(0)
    if joint:  # two runs sharing the final model's plane, fitted jointly
        other, _ = _two_dim_trajectory(seed=0)
        other = final + 0.5 * (other - final)
        plane = joint_pca_plane([traj, other], final, empty)
        points = torch.cat([traj, other])
    else:
        plane = pca_plane(traj, final, empty)
        points = traj
    proj = project(points, plane)
    np.testing.assert_allclose(proj.coords[len(traj) - 1], [0.0, 0.0], atol=1e-6)
    assert proj.distance.max() < 1e-4 * float((points - final).norm(dim=1).max())
    rebuilt = torch.stack([plane.point(a, b) for a, b in proj.coords])
    torch.testing.assert_close(rebuilt, points, atol=1e-4, rtol=1e-5)
    r1, r2 = plane.explained_variance
    assert r1 >= r2 > 0 and r1 + r2 == pytest.approx(1.0, abs=1e-9)
    assert orthonormality(plane)[2] == pytest.approx(0.0, abs=1e-6)
    assert orthonormality(plane)[0] == pytest.approx(1.0, abs=1e-6)
    assert "variance" in plane.axis_labels[0]


@pytest.mark.parametrize("block_entries", [1 << 24, 5 * 7, 5 * 64])  # one block, one column, uneven blocks
def test_pca_in_column_blocks_equals_the_svd_of_the_centred_checkpoints(monkeypatch, block_entries):
    """The Gram matrix and the components are made block by block (memory of the float32 checkpoints only); the
    result is the top-2 right singular vectors of the mean-centred differences, whatever the blocks."""
    import fedscape.analysis.landscape.planes as planes

    g = torch.Generator().manual_seed(3)
    points = torch.randn(5, 301, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1])[:, None]
    center = points[-1].clone()
    diffs = (points.double() - center.double()).numpy()
    diffs -= diffs.mean(axis=0)
    _, sv, vt = np.linalg.svd(diffs, full_matrices=False)
    monkeypatch.setattr(planes, "GRAM_BLOCK_ENTRIES", block_entries)

    pca = planes.pca_directions(points, center)

    for got, want in ((pca.d1, vt[0]), (pca.d2, vt[1])):
        assert abs(float(np.dot(got.double().numpy(), want))) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(pca.explained_variance, sv[:2] ** 2 / (sv ** 2).sum(), rtol=1e-9)


def test_pca_of_a_straight_line_completes_the_plane_with_an_orthogonal_direction():
    g = torch.Generator().manual_seed(1)
    final, u = torch.randn(200, generator=g), torch.randn(200, generator=g)
    line = final + torch.linspace(2, 0, 5)[:, None] * u
    plane = pca_plane(line, final, torch.zeros(0), seed=5)
    assert plane.explained_variance[1] == 0.0
    assert plane.axis_labels[0].startswith("PC1 (100.0%")
    assert plane.axis_labels[1] == "d2: random (the checkpoints span 1 dimension)"
    assert orthonormality(plane)[2] == pytest.approx(0.0, abs=1e-6)
    assert project(line, plane).distance.max() < 1e-4


def test_three_point_plane_is_orthonormal_and_contains_its_checkpoints():
    p0, p1, p2 = (flatten_params(make_model("cnn_small", s)) for s in (0, 1, 2))
    plane = three_point_plane(p0, p1, p2, torch.zeros(0))
    assert orthonormality(plane)[2] == pytest.approx(0.0, abs=1e-6)
    assert orthonormality(plane)[:2] == pytest.approx((1.0, 1.0), abs=1e-6)
    proj = project(torch.stack([p0, p1, p2]), plane)
    np.testing.assert_allclose(proj.coords[0], [0, 0], atol=1e-6)
    assert proj.coords[1, 1] == pytest.approx(0.0, abs=1e-5) and proj.coords[2, 1] > 0
    assert proj.distance.max() < 1e-4
    with pytest.raises(ValueError, match="collinear"):
        three_point_plane(p0, p1, p0 + 2 * (p1 - p0), torch.zeros(0))


def test_projection_on_non_orthogonal_directions_recovers_coordinates_and_distance():
    # float64 points (project computes in float64): built in float32, the first point's own rounding put it 1.4e-6
    # off the plane, a seventh of the tolerance on its distance
    g = torch.Generator().manual_seed(0)
    c, d1, d2, off = (torch.randn(300, generator=g, dtype=torch.float64) for _ in range(4))
    d2 = d2 + 0.7 * d1  # not orthogonal
    off = off - (off @ d1) / (d1 @ d1) * d1
    basis = torch.stack([d1, d2])
    off = off - basis.T @ torch.linalg.solve(basis @ basis.T, basis @ off)  # orthogonal to the plane
    plane = Plane(c, torch.zeros(0), d1, d2, kind="random")
    pts = torch.stack([c + 0.3 * d1 - 1.2 * d2, c + 2 * d1 + 0.5 * d2 + off])
    proj = project(pts, plane)
    np.testing.assert_allclose(proj.coords, [[0.3, -1.2], [2.0, 0.5]], atol=1e-5)
    assert proj.distance[0] == pytest.approx(0.0, abs=1e-5)
    assert proj.distance[1] == pytest.approx(float(off.norm()), rel=1e-5)


# -- plane files -----------------------------------------------------------------------------------------
def test_plane_file_round_trip_keeps_arrays_and_meta(tmp_path):
    model = make_model("cnn_small")
    plane = random_plane(flatten_params(model), flatten_buffers(model), shapes(model), 4, runs=["r/1"], round=7,
                         model_meta={"model": "cnn_small"}, extra={"label": "x"})
    save_plane(tmp_path / "plane.npz", plane)
    back = load_plane(tmp_path / "plane.npz")
    for key in ("center", "center_buffers", "d1", "d2"):
        assert torch.equal(getattr(back, key), getattr(plane, key))
    assert back.meta == plane.meta
    assert back.extra == {"label": "x"}


def test_plane_written_with_numpy_by_the_hessian_stage_loads(tmp_path):
    meta = {"kind": "hessian", "runs": ["a"], "round": 3, "explained_variance": None,
            "axis_labels": ["eigenvector 1", "eigenvector 2"], "model_meta": {"model": "mlp"}, "seed": 0,
            "eigenvalues": [5.0, 2.0]}
    np.savez(tmp_path / "eigen_plane.npz", center=np.ones(6, np.float32), center_buffers=np.zeros(0, np.float32),
             d1=np.eye(6, dtype=np.float32)[0], d2=np.eye(6, dtype=np.float32)[1], meta=np.array(json.dumps(meta)))
    plane = load_plane(tmp_path / "eigen_plane.npz")
    assert plane.kind == "hessian" and plane.round == 3 and plane.extra["eigenvalues"] == [5.0, 2.0]
    assert plane.axis_labels == ("eigenvector 1", "eigenvector 2")


@pytest.mark.parametrize("damage, message", [
    ("drop_d2", r"lacks \['d2'\]"),
    ("kind", r"unknown plane kind 'hesian'.*Did you mean 'hessian'"),
    ("meta_keys", r"meta lacks \['seed'\]"),
    ("shape", r"direction d1 has 5 entries, the centre 6"),
    ("garbage", r"cannot read plane file"),
])
def test_bad_plane_files_are_rejected_with_a_clear_message(tmp_path, damage, message):
    meta = {"kind": "hessian", "runs": [], "round": None, "explained_variance": None, "axis_labels": ["x", "y"],
            "model_meta": {}, "seed": 0}
    arrays = {"center": np.ones(6, np.float32), "center_buffers": np.zeros(0, np.float32),
              "d1": np.ones(6, np.float32), "d2": np.ones(6, np.float32)}
    path = tmp_path / "p.npz"
    if damage == "drop_d2":
        arrays.pop("d2")
    elif damage == "kind":
        meta["kind"] = "hesian"
    elif damage == "meta_keys":
        meta.pop("seed")
    elif damage == "shape":
        arrays["d1"] = np.ones(5, np.float32)
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
    with pytest.raises((PlaneError, ValueError), match=message):
        load_plane(path)


@pytest.mark.parametrize(("supplied_as", "advice", "not_advised"), [
    (None, "make it again with `snakemake --cores 1 --forcerun {path}`", "your own file"),
    ("landscapes.h.plane_file", "it is your own file (`landscapes.h.plane_file`), which no job makes: fix or "
     "replace it", "forcerun"),
])
@pytest.mark.parametrize("damage", ["garbage", "drop_d2"])
def test_a_bad_plane_file_gets_advice_that_works_and_a_users_own_file_is_never_to_be_deleted(
        tmp_path, supplied_as, advice, not_advised, damage):
    # Prepare
    path = tmp_path / "plane.npz"
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        np.savez(path, center=np.ones(3, np.float32), d1=np.ones(3, np.float32), meta=np.array("{}"))

    # Execute
    with pytest.raises(PlaneError) as err:
        load_plane(path, supplied_as)

    # Assert
    message = str(err.value)
    assert advice.format(path=path) in message
    assert not_advised not in message and "delete" not in message


# -- surfaces --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
@pytest.mark.parametrize("settings", [SurfaceSettings(channels_last=False), SurfaceSettings(channels_last=True),
                                      SurfaceSettings(points_per_batch=3, batch_size=128)],
                         ids=["contiguous", "channels_last", "vmap3"])
def test_surface_at_the_centre_equals_the_centre_models_own_loss(digits, name, settings):
    x, y = digits
    model = make_model(name, seed=3)
    plane = random_plane(flatten_params(model), flatten_buffers(model), shapes(model), seed=1)
    direct = evaluate(model, x, y)
    ev = SurfaceEvaluator(make_model(name, seed=99), plane, x, y, "cpu", settings)
    loss, acc = ev.evaluate(np.array([[0.0, 0.0], [0.4, -0.2], [0.0, 0.0]]))
    assert loss[0] == pytest.approx(direct.loss, rel=1e-6, abs=1e-6)
    assert acc[0] == direct.acc
    assert loss[2] == loss[0]
    moved = model_at(name, plane.point(0.4, -0.2), flatten_buffers(model))
    assert loss[1] == pytest.approx(evaluate(moved, x, y).loss, rel=1e-5)


@pytest.mark.parametrize("ppb", [1, 2])
def test_surface_uses_the_centres_batch_norm_statistics_in_eval_mode(ppb):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    model = make_model("resnet20", seed=0)
    buffers = flatten_buffers(model)
    buffers = buffers + torch.rand(buffers.shape, generator=g)  # non-trivial running statistics (all > 0)
    load_buffers(model, buffers)
    plane = random_plane(flatten_params(model), buffers, shapes(model), seed=0)
    settings = SurfaceSettings(batch_size=8, points_per_batch=ppb)
    ev = SurfaceEvaluator(make_model("resnet20", seed=5), plane, x, y, "cpu", settings)
    loss, acc = ev.evaluate(np.zeros((1, 2)))
    direct = evaluate(model, x, y)
    assert loss[0] == pytest.approx(direct.loss, rel=1e-5) and acc[0] == direct.acc


def test_three_point_plane_surface_reproduces_each_checkpoints_loss(digits):
    x, y = digits
    models = [make_model("cnn_small", s) for s in (0, 1, 2)]
    vecs = [flatten_params(m) for m in models]
    plane = three_point_plane(*vecs, torch.zeros(0))
    coords = project(torch.stack(vecs), plane).coords
    ev = SurfaceEvaluator(make_model("cnn_small"), plane, x, y, "cpu")
    loss, _ = ev.evaluate(coords)
    for m, value in zip(models, loss, strict=True):
        assert abs(value - evaluate(m, x, y).loss) < 1e-5


def test_layout_flat_params_keeps_the_params_order_and_shares_storage():
    model = make_model("cnn_small")
    vec = flatten_params(model)
    flat = LayoutFlatParams(model, channels_last=True)
    assert flat.channels_last
    assert torch.equal(flat.get(), vec)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    new = torch.randn_like(vec)
    flat.set(new)
    assert torch.equal(flatten_params(model), new)
    assert model.features[0].weight.data_ptr() >= flat.vector.data_ptr()


@pytest.mark.parametrize("chunks, ppb", [(3, 1), (4, 2), (5, 3)])
def test_gathered_chunks_equal_the_single_job_surface_exactly(digits, chunks, ppb):
    x, y = digits[0][:96], digits[1][:96]
    model = make_model("cnn_small")
    plane = random_plane(flatten_params(model), flatten_buffers(model), shapes(model), seed=2)
    grid = Grid.from_extent((-1, 1, -0.5, 0.5), 4)
    settings = SurfaceSettings(points_per_batch=ppb, batch_size=64)
    whole = compute_surface(SurfaceEvaluator(make_model("cnn_small"), plane, x, y, "cpu", settings), grid, 1)
    parts = []
    for start, stop in reversed(chunk_bounds(grid.size, chunks, ppb)):  # each chunk in a fresh evaluator
        ev = SurfaceEvaluator(make_model("cnn_small"), plane, x, y, "cpu", settings)
        parts.append(evaluate_chunk(ev, grid, start, stop))
    gathered = gather_chunks(parts, grid)
    assert np.array_equal(gathered[0], whole[0]) and np.array_equal(gathered[1], whole[1])
    assert np.isfinite(whole[0]).all() and whole[0].shape == (4, 4)


def test_gather_refuses_missing_or_repeated_points():
    grid = Grid.from_extent((-1, 1, -1, 1), 3)
    part = {"index": np.arange(5), "loss": np.ones(5), "acc": np.ones(5)}
    with pytest.raises(ValueError, match="4 points missing"):
        gather_chunks([part], grid)
    rest = {"index": np.arange(4, 9), "loss": np.ones(5), "acc": np.ones(5)}
    with pytest.raises(ValueError, match="1 evaluated twice"):
        gather_chunks([part, rest], grid)


@pytest.mark.parametrize("n, chunks, align", [(25, 2, 1), (25, 4, 3), (9, 9, 1), (10, 6, 4), (121, 16, 8)])
def test_chunk_bounds_tile_the_grid_with_aligned_starts(n, chunks, align):
    bounds = chunk_bounds(n, chunks, align)
    assert len(bounds) == chunks
    covered = [i for s, e in bounds for i in range(s, e)]
    assert covered == list(range(n))
    assert all(s % align == 0 for s, e in bounds if e > s)


def test_divergent_points_are_recorded_not_raised(digits):
    x, y = digits
    model = make_model("cnn_small")
    c = flatten_params(model)
    plane = Plane(c, torch.zeros(0), torch.full_like(c, 1e30), torch.zeros_like(c), kind="random")
    ev = SurfaceEvaluator(make_model("cnn_small"), plane, x, y, "cpu")
    loss, acc = ev.evaluate(np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert np.isfinite(loss[0]) and not np.isfinite(loss[1])
    assert np.isnan(acc[1]) == np.isnan(loss[1])


def test_grid_extent_covers_points_and_centre_with_margin():
    pts = np.array([[1.0, 2.0], [3.0, -1.0]])
    amin, amax, bmin, bmax = grid_extent(pts, margin=0.1)
    assert (amin, amax) == pytest.approx((-0.3, 3.3)) and (bmin, bmax) == pytest.approx((-1.3, 2.3))
    assert grid_extent(pts, span=2.0) == (-2.0, 2.0, -2.0, 2.0)
    assert grid_extent(np.zeros((1, 2)), margin=0.2) == (-1.0, 1.0, -1.0, 1.0)  # only the centre
    flat = grid_extent(np.array([[4.0, 0.0]]), margin=0.0)  # all points on the a axis: b gets the same range
    assert flat[3] - flat[2] == pytest.approx(flat[1] - flat[0])
    grid = Grid.from_extent((0, 1, 10, 12), 3)
    np.testing.assert_allclose(grid.coords([0, 1, 3, 8]), [[0, 10], [0.5, 10], [0, 11], [1, 12]])


NEAR_CENTRE = [[2e-4, -5e-4]]  # the run's model on a plane file whose centre was saved through bf16: a rounding away


@pytest.mark.parametrize(("kind", "points", "expected"), [
    # random and hessian planes: at least the square [-1, 1]^2, widened by a point beyond it (plus the margin)
    ("hessian", NEAR_CENTRE, (-1.0, 1.0, -1.0, 1.0)),
    ("random", NEAR_CENTRE, (-1.0, 1.0, -1.0, 1.0)),
    ("hessian", [[0.0, 0.0]], (-1.0, 1.0, -1.0, 1.0)),
    ("hessian", [[3.0, -0.5]], (-1.0, 3.75, -1.0, 1.0)),
    ("random", [[-0.6, 2.0]], (-1.0, 1.0, -1.0, 2.5)),
    # the kinds whose points set the scale: their box plus the margin, however small
    ("three_points", NEAR_CENTRE, (-5e-5, 2.5e-4, -6.25e-4, 1.25e-4)),
    ("trajectory", [[3.0, -0.5]], (-0.75, 3.75, -0.625, 0.125)),
    (None, NEAR_CENTRE, (-5e-5, 2.5e-4, -6.25e-4, 1.25e-4)),
])
def test_the_automatic_extent_of_a_random_or_hessian_plane_holds_the_unit_square(kind, points, expected):
    # Execute
    extent = grid_extent(np.array(points), margin=0.25, kind=kind)

    # Assert
    assert extent == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("kind", "plane_file", "span", "bumped"), [
    ("hessian", "eigen_plane.npz", None, True),  # the one plane whose extent the fix can change
    ("hessian", None, None, False),  # the Hessian stage's own plane: its model projects to exactly (0, 0)
    ("hessian", "eigen_plane.npz", 0.5, False),  # an explicit span: no automatic extent
    ("random", None, None, False),  # its model is the centre itself (its own bump: test_random_streams)
    ("trajectory", None, None, False),
])
def test_only_a_supplied_hessian_plane_with_an_automatic_extent_reruns_for_the_square(kind, plane_file, span, bumped):
    # Prepare
    spec = {"kind": kind, "plane_file": plane_file, "span": span}

    # Execute
    version = plane_version(spec)

    # Assert
    stream = RANDOM_PLANE_STREAM_BUMPS if kind == "random" else 0
    assert version == RESULT_VERSIONS["landscape_plane"] + (SUPPLIED_PLANE_EXTENT_BUMPS if bumped else 0) + stream
    assert SUPPLIED_PLANE_EXTENT_BUMPS >= 1


# -- surface data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noise_partition(tmp_path_factory):
    """A run of the tiny config on a feature_noise partition (a kind with an input transform) and its file."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["partitions"] = {"noise": {"kind": "feature_noise", "sigma": 0.5}}
    config["experiments"] = [{"alpha": "iid"}, {"alpha": "noise"}]  # the tiny config's sections name the IID run
    config = check_config(config, SCHEMA)
    run = next(r for r in build_runs(config) if r.setting == "noise")
    path = tmp_path_factory.mktemp("noise") / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), path,
                    path.with_name("counts.csv"))
    return run, config["datasets"][run.dataset], path


@pytest.mark.parametrize("data", ["train", "client~0", "client~3", "test"])
def test_a_surface_evaluates_the_tensors_the_train_stage_trains_on(noise_partition, data):
    # Prepare
    run, options, path = noise_partition
    # Execute: the landscape chunk's data, and the train stage's (stages.train loads through load_federated_data)
    x, y = surface_data(run.dataset, options, data, path, run.fields())
    trained = load_federated_data(run.fields(), options, path)

    # Assert: the same tensors; the clients' inputs carry the kind's noise (the stored data would not)
    if data == "test":
        expected, stored = (trained.x_test, trained.y_test), None
    elif data == "train":
        expected, stored = trained.union(), torch.cat(trained.client_indices).sort().values
    else:
        m = int(data.split("~")[1])
        expected, stored = trained.client(m), trained.client_indices[m]
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    if stored is not None:
        clean = dataset_from_options(run.dataset, options).x_train[stored]
        assert x.shape == clean.shape and not torch.equal(x, clean)


def test_a_surface_refuses_another_runs_partition_and_an_unknown_client(noise_partition):
    run, options, path = noise_partition
    other = {**run.fields(), "alpha": "iid"}

    with pytest.raises(PartitionError, match="partition"):
        surface_data(run.dataset, options, "train", path, other)
    with pytest.raises(ValueError, match="client 99 does not exist: the partition has 4 clients"):
        surface_data(run.dataset, options, "client~99", path, run.fields())


# -- plane stage: every surface kind on synthetic runs -------------------------------------------------------
def _fake_runs(tmp_path: Path, n_runs: int = 3, rounds: int = 4, layout: tuple[str, ...] = ("names", "shapes"),
               status: str = "ok"):
    """Trajectories (and round-2 clients) of n runs of cnn_small: random walks from one init. `layout`: what their
    meta records of the parameters (a file may record their names alone, or neither); `status`: the runs' (diverged:
    at their last round)."""
    from fedscape.models.checkpoint import ClientRound, ModelMeta, save_clients, save_trajectory

    model = make_model("cnn_small")
    meta = ModelMeta("cnn_small", 10, 1, 8, {},
                     tuple(n for n, _ in model.named_parameters()) if "names" in layout else (),
                     tuple(tuple(p.shape) for p in model.parameters()) if "shapes" in layout else ())
    init = flatten_params(model)
    g = torch.Generator().manual_seed(0)
    paths, fields = [], []
    for r in range(n_runs):
        steps = 0.05 * torch.randn(rounds, init.numel(), generator=g)
        params = torch.cat([init[None], init + steps.cumsum(0)])
        run_dir = tmp_path / f"run{r}"
        save_trajectory(run_dir / "trajectory.pt", params, torch.zeros(rounds + 1, 0), torch.arange(rounds + 1),
                        meta, {"status": status})
        clients = params[1] + 0.02 * torch.randn(3, init.numel(), generator=g)
        save_clients(run_dir / "clients.pt", {2: ClientRound(2, torch.arange(3), torch.tensor([5, 6, 7]), clients,
                                                              torch.zeros(3, 0))}, meta, {})
        paths.append(run_dir)
        fields.append({"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg",
                       "alpha": ["iid", "1.0", "0.1"][r % 3], "num_clients": 3, "participation": "1.0", "seed": 0})
    return paths, fields


@pytest.mark.parametrize("kind", ["trajectory", "trajectories", "final_models", "local", "random", "three_points",
                                  "hessian"])
def test_plane_stage_projects_every_kinds_checkpoints(tmp_path, kind):
    from fedscape.analysis.landscape.stage import landscape_plane_job

    dirs, fields = _fake_runs(tmp_path)
    single = kind in ("trajectory", "local", "random", "hessian")
    use = [0] if single else [0, 1, 2]
    settings = {"label": "x", "kind": kind, "runs": [f"r{i}" for i in use], "run_fields": [fields[i] for i in use],
                "round": 2 if kind == "local" else "final", "center": "final", "seed": 0, "resolution": 5,
                "span": None, "margin": 0.25, "client": 0,
                "checkpoints": [{"run_id": "r0", "round": 0}, {"run_id": "r1", "round": "final"},
                                {"run_id": "r2", "round": "final"}] if kind == "three_points" else []}
    hessian = None
    if kind == "hessian":
        hessian = tmp_path / "eigen_plane.npz"
        traj = torch.load(dirs[0] / "trajectory.pt", weights_only=True)["params"]
        d = torch.zeros(2, traj.shape[1])
        d[0, 0], d[1, 1] = 1.0, 1.0
        save_plane(hessian, Plane(traj[-1], torch.zeros(0), d[0], d[1], kind="hessian", round=4))
    out = {k: str(tmp_path / f"out.{k}") for k in ("plane", "points", "grid")}
    landscape_plane_job(settings, [str(dirs[i] / "trajectory.pt") for i in use], str(dirs[0] / "clients.pt"),
                str(hessian) if hessian else None, out)
    plane = load_plane(out["plane"])
    points = pd.read_csv(out["points"])
    grid = Grid.from_dict(json.loads(Path(out["grid"]).read_text()))
    expected = {"trajectory": 5, "trajectories": 15, "final_models": 3, "local": 5, "random": 1, "three_points": 3,
                "hessian": 1}[kind]
    assert len(points) == expected and grid.shape == (5, 5)
    assert plane.model_meta["model"] == "cnn_small"
    a0, a1, b0, b1 = grid.extent
    assert ((points["a"] >= a0) & (points["a"] <= a1) & (points["b"] >= b0) & (points["b"] <= b1)).all()
    centre = {"trajectory": "final", "trajectories": "final", "final_models": "final", "local": "aggregate",
              "random": "center", "three_points": "checkpoint", "hessian": "center"}[kind]
    first = points[points["role"] == centre].iloc[-1 if kind in ("trajectory", "local") else 0]
    assert (first["a"], first["b"]) == pytest.approx((0.0, 0.0), abs=1e-6)
    if kind in ("final_models", "three_points"):  # three points always lie in their plane
        assert points["distance"].max() < 1e-3
    if kind == "local":
        assert list(points["role"]) == ["round_start", "client", "client", "client", "aggregate"]
    if kind == "trajectories":
        assert points["group"].nunique() == 3 and plane.kind == "joint_pca"


@pytest.mark.parametrize("layout", [("names",), ()], ids=["names alone", "nothing"])
def test_a_random_plane_of_a_file_that_records_no_parameter_shapes_is_the_plane_of_one_that_does(tmp_path, layout):
    from fedscape.analysis.landscape.stage import landscape_plane_job

    # Prepare: one run's trajectory written twice, recording the parameters' names and shapes, and `layout` alone
    planes = {}
    for recorded in (("names", "shapes"), layout):
        where = tmp_path / "-".join(recorded or ("none",))
        dirs, fields = _fake_runs(where, n_runs=1, layout=recorded)
        settings = {"label": "x", "kind": "random", "runs": ["r0"], "run_fields": [fields[0]], "round": "final",
                    "center": "final", "seed": 3, "resolution": 5, "span": None, "margin": 0.25, "client": 0,
                    "checkpoints": []}
        out = {k: str(where / f"out.{k}") for k in ("plane", "points", "grid")}

        # Execute
        landscape_plane_job(settings, [str(dirs[0] / "trajectory.pt")], None, None, out)
        planes[recorded] = load_plane(out["plane"])

    # Assert: the same filter-normalised directions, filter by filter as the model's code builds its parameters
    full, given = planes[("names", "shapes")], planes[layout]
    assert given.model_meta["param_shapes"] == [] and full.model_meta["param_shapes"]
    for key in ("center", "d1", "d2"):
        assert torch.equal(getattr(given, key), getattr(full, key)), key


@pytest.mark.parametrize("status", ["ok", "diverged"])
@pytest.mark.parametrize("round_", ["final", 2])
def test_a_three_points_plane_records_no_round_computed_or_not(tmp_path, status, round_):
    from fedscape.analysis.landscape.stage import landscape_plane_job

    # Prepare: three runs, diverged or not at round 4, the round of the plane's second checkpoint
    dirs, fields = _fake_runs(tmp_path, status=status)
    settings = {"label": "x", "kind": "three_points", "runs": ["r0", "r1", "r2"], "run_fields": fields,
                "round": round_, "center": "final", "seed": 0, "resolution": 5, "span": None, "margin": 0.25,
                "client": 0, "checkpoints": [{"run_id": "r0", "round": 0}, {"run_id": "r1", "round": 4},
                                             {"run_id": "r2", "round": 1}]}
    out = {k: str(tmp_path / f"out.{k}") for k in ("plane", "points", "grid")}

    # Execute
    landscape_plane_job(settings, [str(d / "trajectory.pt") for d in dirs], None, None, out)

    # Assert: its checkpoints name their rounds, the job's `round` (which its kind does not read) none
    plane = load_plane(out["plane"])
    assert plane.extra.get("status", "ok") == status
    assert plane.round is None


@pytest.mark.parametrize(("spec", "kept"), [
    # reads its checkpoints' rounds alone
    ({"kind": "three_points", "checkpoints": [{"run": IID, "round": 0}, {"run": IID},
                                              {"run": {"alpha": 0.5, "init": "random"}}]}, True),
    ({"kind": "random", "runs": [IID]}, False),  # its centre is the model of `round`
])
def test_a_plane_s_round_reruns_it_only_where_its_kind_reads_it(spec, kept):
    from fedscape.plan.landscape import landscape_plans, plane_settings

    def planned(round_, recorded: list[str] | None = None) -> dict:
        config = check_config(tiny(landscapes={"x": {**spec, "round": round_}}), SCHEMA)
        (plan,) = landscape_plans(config, build_runs(config))
        return plane_settings(config, plan, recorded)

    # Prepare: the plane job as Snakemake recorded it
    before = planned("final")

    # Execute: the config differs only in the landscape's `round`
    after = planned(2, [repr(before)])

    # Assert: the params text Snakemake compares is the recorded one where the kind does not read the round; the job
    # holds the round of now either way
    assert (repr(after) == repr(before)) == kept
    assert before["round"] == "final" and after["round"] == 2


# -- figures ---------------------------------------------------------------------------------------------
def _fake_surface(kind: str = "trajectory") -> dict:
    a, b = np.linspace(-1, 1, 7), np.linspace(-2, 2, 7)
    aa, bb = np.meshgrid(a, b)
    loss = 0.1 + aa**2 + bb**2
    loss[0, 0], loss[0, 1], loss[6, 6] = np.nan, np.inf, 1e6  # divergent cells and a huge one
    roles = np.array(["init", "global", "final"] if kind == "trajectory" else ["round_start", "client", "aggregate"])
    return {
        "a": a, "b": b, "loss": loss, "acc": np.clip(1 - loss / 10, 0, 1),
        "points_xy": np.array([[0.8, 1.5], [0.3, 0.4], [0.0, 0.0]]), "points_distance": np.zeros(3),
        "points_rel_distance": np.zeros(3), "points_round": np.array([0, 1, 2]),
        "points_client": np.array([-1, 0, -1]), "points_label": np.array(["r0", "r1", "r2"]),
        "points_group": np.array(["alpha=iid"] * 3), "points_role": roles, "points_run_id": np.array(["x"] * 3),
        "meta": {"surface_id": f"s/{'train'}", "kind": kind, "data": "train", "round": None,
                 "axis_labels": ["PC1 (90.0% of variance)", "PC2 (5.0% of variance)"]},
    }


@pytest.mark.parametrize("kind", ["trajectory", "local"])
def test_figure_with_divergent_cells_is_drawn_and_its_data_saved_beside_it(tmp_path, kind):
    surface = _fake_surface(kind)
    overlay = _fake_surface(kind) if kind == "local" else None
    if overlay is not None:
        overlay["meta"]["data"] = "client~0"
    plot_surface(surface, tmp_path / "s.pdf", tmp_path / "s.png", overlay=overlay, levels=12)
    write_figure_data(surface, tmp_path / "grid.csv", tmp_path / "points.csv")
    assert (tmp_path / "s.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert len(grid) == 49 and list(grid.columns) == ["a", "b", "loss", "acc"]
    np.testing.assert_array_equal(grid["loss"].to_numpy(), surface["loss"].ravel())
    assert len(pd.read_csv(tmp_path / "points.csv")) == 3


@pytest.mark.parametrize(("bn_stats", "said"), [(None, False), ("stored", False), ("recomputed", True)])
def test_a_surface_with_recomputed_batch_norm_statistics_says_so_in_its_title(tmp_path, monkeypatch, bn_stats, said):
    # Prepare: the figure as drawn, before it is written
    import fedscape.analysis.landscape.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "write_formats", lambda fig, *args, **kwargs: drawn.append(fig))
    surface = _fake_surface()
    if bn_stats is not None:
        surface["meta"]["bn_stats"] = bn_stats

    # Execute
    plot_surface(surface, tmp_path / "s.pdf", tmp_path / "s.png", levels=12)

    # Assert
    title = drawn[0].axes[0].get_title()
    assert title.startswith("s/train (trajectory)")
    assert ("BN statistics recomputed at each point" in title) == said


@pytest.mark.parametrize(("client", "warned"), [(0, False), (3, True)])  # the fake round's client is 0
def test_a_local_scope_warns_when_the_highlighted_client_did_not_train_that_round(tmp_path, caplog, client, warned):
    caplog.set_level(logging.WARNING, logger="fedscape.landscape")
    surface, overlay = _fake_surface("local"), _fake_surface("local")
    overlay["meta"]["data"] = f"client~{client}"

    plot_surface(surface, tmp_path / "s.pdf", tmp_path / "s.png", overlay=overlay, levels=12)

    assert any(f"client {client} did not train" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize(("runs", "settings", "expected"), [
    # alone on its plane, alpha 0.1 keeps the colour it has beside IID and alpha 1 (third), not the first one
    ({"g": run_id("0.1", 0)}, ["iid", "1.0", "0.1"], {"g": (PALETTE[2], "-", "o")}),
    ({"g": run_id("0.1", 0)}, [], {"g": (PALETTE[0], "-", "o")}),  # no workflow settings: those on the plane
    # two inits at one alpha: one colour, told apart by line style and marker
    ({"random": run_id("0.1", 0), "pretrained": run_id("0.1", 0, init="pretrained"), "iid": run_id("iid", 0)},
     ["iid", "0.1"], {"random": (PALETTE[1], "-", "o"), "pretrained": (PALETTE[1], GROUP_LINESTYLES[1], "s"),
                      "iid": (PALETTE[0], "-", "o")}),
])
def test_plane_groups_are_coloured_by_the_workflows_setting_order_and_share_a_colour_by_style(runs, settings,
                                                                                              expected):
    order = list(runs)
    groups, run_ids = np.array(order), np.array([runs[g] for g in order])

    assert group_styles(order, groups, run_ids, settings) == expected


def test_a_client_surface_without_an_overlay_highlights_its_own_client(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fedscape.landscape")
    surface = _fake_surface("local")
    surface["meta"]["data"] = "client~3"  # the fake round's only client is 0: the highlight is missing, and said

    plot_surface(surface, tmp_path / "s.pdf", tmp_path / "s.png", levels=12)

    assert any("client 3 did not train" in r.getMessage() for r in caplog.records)


def _sampled_runs_surface(kind: str) -> dict:
    """A surface of `kind` through two runs, of all clients and of 0.125 of them, labelled as a plane job wrote them
    before the participation labels kept every digit ('12% sampled')."""
    runs = [Run("digits", "cnn_small", "random", "fedavg", "0.1", 10, p, 0).run_id for p in ("1.0", "0.125")]
    old = {runs[0]: "all clients", runs[1]: "12% sampled"}
    if kind == "trajectories":
        rows = [(run, f"round {t}", "init" if t == 0 else "final", t) for run in runs for t in (0, 5)]
    else:
        rows = [(runs[0], "all clients, round 5", "checkpoint", 5), (runs[1], "12% sampled, round 5", "checkpoint", 5),
                (runs[1], "12% sampled, round 9", "checkpoint", 9)]
    n = len(rows)
    surface = _fake_surface()
    surface.update({
        "points_xy": np.zeros((n, 2)), "points_distance": np.zeros(n), "points_rel_distance": np.zeros(n),
        "points_round": np.array([r[3] for r in rows]), "points_client": np.full(n, -1),
        "points_run_id": np.array([r[0] for r in rows]), "points_label": np.array([r[1] for r in rows]),
        "points_group": np.array([old[r[0]] for r in rows]), "points_role": np.array([r[2] for r in rows]),
    })
    surface["meta"] = {**surface["meta"], "kind": kind, "runs": runs,
                       "axis_labels": ["direction all clients, round 5 -> 12% sampled, round 5",
                                       "orthogonal, towards 12% sampled, round 9"]}
    return surface


@pytest.mark.parametrize(("kind", "groups", "labels", "axes"), [
    ("trajectories", ["all clients"] * 2 + ["12.5% sampled"] * 2, ["round 0", "round 5", "round 0", "round 5"],
     ["direction all clients, round 5 -> 12% sampled, round 5", "orthogonal, towards 12% sampled, round 9"]),
    ("three_points", ["all clients"] + ["12.5% sampled"] * 2,
     ["all clients, round 5", "12.5% sampled, round 5", "12.5% sampled, round 9"],
     ["direction all clients, round 5 -> 12.5% sampled, round 5", "orthogonal, towards 12.5% sampled, round 9"]),
])
def test_a_figure_labels_the_runs_of_a_plane_made_before_a_label_changed_as_now(kind, groups, labels, axes):
    # Prepare: a plane job's points of old, 0.125 of the clients labelled '12% sampled'
    surface = _sampled_runs_surface(kind)

    # Execute
    relabelled = with_run_labels(surface)

    # Assert: the runs' groups, the point labels and axes that name a run are this version's; a trajectory's points
    # (rounds) and axes (its principal components: kept as the fake's text) are as they were
    assert relabelled["points_group"].tolist() == groups
    assert relabelled["points_label"].tolist() == labels
    assert relabelled["meta"]["axis_labels"] == axes


def test_the_figure_job_draws_and_writes_the_labels_of_now(tmp_path):
    # Prepare: the surface file of a plane job of old
    surface = _sampled_runs_surface("three_points")
    path = tmp_path / "surface.npz"
    np.savez(path, **{k: v for k, v in surface.items() if k != "meta"}, meta=np.array(json.dumps(surface["meta"])),
             plane_meta=np.array("{}"))
    outputs = {key: str(tmp_path / f"s.{key}") for key in ("pdf", "png", "grid_csv", "points_csv")}

    # Execute
    landscape_figure_job({"surface_id": "s/train", "levels": 12, "clip_loss": None}, str(path), None, outputs)

    # Assert
    points = pd.read_csv(outputs["points_csv"])
    assert points["group"].tolist() == ["all clients", "12.5% sampled", "12.5% sampled"]
    assert points["label"].tolist() == ["all clients, round 5", "12.5% sampled, round 5", "12.5% sampled, round 9"]


def test_a_surface_that_diverged_everywhere_still_gets_a_figure(tmp_path):
    surface = _fake_surface()
    surface["loss"][:] = np.nan
    plot_surface(surface, tmp_path / "s.pdf", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_contour_levels_are_log_spaced_and_clipped():
    loss = np.array([[0.01, 0.1], [1.0, np.nan]])
    levels = log_levels(loss, 5)
    np.testing.assert_allclose(np.diff(np.log(levels)), np.log(levels[1] / levels[0]))
    assert levels[0] == pytest.approx(0.01)
    assert log_levels(np.array([0.1, 1.0, 1e9]), 5)[-1] == pytest.approx(20.0)  # 20 x the median
    assert log_levels(loss, 5, clip=0.5)[-1] == pytest.approx(0.5)
    assert log_levels(loss, 5, clip=10.0)[-1] == pytest.approx(10.0)  # a shared scale may reach above the maximum


def test_infinite_and_nan_losses_are_masked_and_finite_ones_clipped_into_the_levels():
    loss = np.array([[0.5, 1.0], [np.inf, np.nan], [-np.inf, 1e6]])
    levels = log_levels(loss, 5)

    z = clipped_surface(loss, levels)

    assert z.mask.tolist() == [[False, False], [True, True], [True, False]]
    assert z[2, 1] == pytest.approx(levels[-1]) and z[0, 0] == pytest.approx(levels[0])


# -- config ----------------------------------------------------------------------------------------------
def tiny(**sections) -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config.update(copy.deepcopy(sections))
    return config


TRAJ = {"kind": "trajectory", "runs": [IID]}


@pytest.mark.parametrize("spec, message", [
    ({"kind": "local", "runs": [IID], "round": 2}, r"landscapes\.x\.round: round 2 is not in training\.save_clients"),
    ({"kind": "local", "runs": [IID], "round": 0}, r"landscapes\.x\.round: the local scope needs a round >= 1"),
    ({"kind": "trajectory", "runs": [{"init": "random"}]}, r"landscapes\.x\.runs: kind trajectory needs exactly one"),
    ({"kind": "trajectory", "runs": [{"alpha": 0.3}]}, r"landscapes\.x\.runs\[0\]: no run of the config matches"),
    ({"kind": "final_models", "runs": [{"init": "random"}]}, r"landscapes\.x\.runs: kind final_models needs at"),
    ({**TRAJ, "round": 9}, r"landscapes\.x\.round: round 9 must be 'final' or an integer in 0\.\.3"),
    ({**TRAJ, "round": 0}, r"landscapes\.x\.round: a trajectory plane needs a round >= 1"),
    ({"kind": "trajectories", "runs": [{"init": "random"}], "round": 0}, r"a trajectories plane needs a round >= 1"),
    ({**TRAJ, "data": ["client"], "client": 4}, r"landscapes\.x\.client: client 4 does not exist"),
    ({**TRAJ, "resolution": 3, "chunks": 10}, r"landscapes\.x\.chunks: 10 chunks for a 3x3 grid"),
    # chunks start at multiples of points_per_batch: 441 points in 7 groups of 64 leave an 8th chunk empty
    ({**TRAJ, "resolution": 21, "chunks": 8, "points_per_batch": 64},
     r"landscapes\.x\.chunks: 8 chunks for a 21x21 grid evaluated 64 points at a time \(7 such groups.*at most 7"),
    # ... and make chunks of more points than an even split: 2 of 79,524 in groups of 30,000 hold 60,000 and 19,524
    ({**TRAJ, "resolution": 282, "chunks": 2, "points_per_batch": 30000}, r"60,000 per chunk in 2 chunk\(s\)"),
    ({"kind": "three_points", "checkpoints": [{"run": IID, "round": 0}, {"run": IID}]}, r"needs exactly 3 checkpoints"),
    # 'final' is round 3 of these runs: the same point spelt twice
    ({"kind": "three_points", "checkpoints": [{"run": IID}, {"run": IID, "round": 1}, {"run": IID, "round": 3}]},
     r"landscapes\.x\.checkpoints: the three checkpoints must differ; \[0\] and \[2\] are both round 3 of "
     r".*alpha~iid.* \(rounds 'final' and 3\)"),
    ({"kind": "three_points", "checkpoints": [{"run": IID, "round": 1}, {"run": IID, "round": 0}, {"run": IID,
                                                                                                  "round": 1}]},
     r"\[0\] and \[2\] are both round 1 of"),
    # round 0 of two runs from one init is that init
    ({"kind": "three_points", "checkpoints": [{"run": IID, "round": 0}, {"run": {"alpha": 0.5, "init": "random"},
                                                                         "round": 0}, {"run": IID}]},
     r"\[0\] and \[1\] are both the init random of digits/.* \(round 0 of every run from it\)"),
    ({**TRAJ, "span": [1, 0, 0, 1]}, r"landscapes\.x\.span: .* amin < amax"),
    ({**TRAJ, "resolution": 1}, r"landscapes\.x\.resolution: 1 is less than the minimum"),
    ({**TRAJ, "chunk": 2}, r"unknown key 'chunk'\. Did you mean 'chunks'"),
    ({**TRAJ, "kind": "lokal"}, r"landscapes\.x\.kind: 'lokal' is not valid\. Did you mean 'local'"),
    ({**TRAJ, "runs": [{"alpah": "iid"}]}, r"unknown key 'alpah'\. Did you mean 'alpha'"),
])
def test_bad_landscape_specs_are_rejected_naming_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_config(tiny(landscapes={"x": spec}), SCHEMA)


# runs of the default config: from its one random init, and from the pretrained one
RANDOM_0_1 = {"alpha": 0.1, "init": "random", "algorithm": "fedavg", "participation": 1.0}
PRETRAINED_0_1 = {"alpha": 0.1, "init": "pretrained"}


@pytest.mark.parametrize(("round_", "runs", "refused"), [
    (0, None, True),          # the default's three runs from the random init: at round 0, that init three times
    ("final", None, False),
    (1, None, False),
    (0, [RANDOM_0_1, PRETRAINED_0_1, {"alpha": "iid", "init": "random"}], False),  # two inits: two models
])
def test_a_final_models_plane_whose_runs_share_one_model_at_its_round_is_refused(round_, runs, refused):
    # Prepare: the default config's final_alphas at another round, or of other runs
    config = copy.deepcopy(DEFAULT)
    config["landscapes"]["final_alphas"]["round"] = round_
    if runs is not None:
        config["landscapes"]["final_alphas"]["runs"] = runs

    # Execute
    problems = problems_of(config)

    # Assert: refused at planning, naming the key, what the models are and what to change
    message = ("landscapes.final_alphas.round: at round 0 the 3 runs' models are all one model, the init random of "
               "digits/cnn_small (round 0 of every run from it): runs from one init share their round-0 model, so "
               "no plane goes through them; set a later round (e.g. final), or select runs from different inits in "
               "landscapes.final_alphas.runs")
    assert (message in problems, problems == "") == (refused, not refused)


SAMPLED = sample_clients(0, 10, 10, 0.5)  # the clients that train in round 10 of the default's half-participation run


UNSAMPLED = min(set(range(10)) - set(SAMPLED))
HALF_0_1 = {"alpha": 0.1, "participation": 0.5}


@pytest.mark.parametrize(("run", "client", "data", "refused"), [
    (HALF_0_1, UNSAMPLED, ["train", "client"], True),
    (HALF_0_1, SAMPLED[0], ["train", "client"], False),
    (HALF_0_1, UNSAMPLED, ["train"], False),  # no surface of the client's data
    (RANDOM_0_1, UNSAMPLED, ["train", "client"], False),  # every client trains every round
])
def test_a_local_surface_of_a_client_that_did_not_train_that_round_is_refused(run, client, data, refused):
    # Prepare: a local landscape of the default config at round 10 (a round in save_clients_at)
    config = copy.deepcopy(DEFAULT)
    config["landscapes"]["local_x"] = {"kind": "local", "runs": [run], "round": 10, "client": client, "data": data}

    # Execute
    problems = problems_of(config)

    # Assert: the round's saved client models are the sampled clients' only, and the message lists them
    message = (f"landscapes.local_x.client: client {client} does not train in round 10 of run "
               f"digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~10/part~0.5/seed~0 (participation 0.5: "
               f"that round samples clients {SAMPLED})")
    assert (message in problems, problems == "") == (refused, not refused)


def test_landscape_specs_resolve_with_defaults():
    from fedscape.core.runs import build_runs
    from fedscape.plan.landscape import landscape_plans

    config = check_config(tiny(landscapes={
        "t": {"kind": "trajectories", "runs": [{"init": "random"}]},
        "p": {"kind": "three_points", "checkpoints": [{"run": IID, "round": 0}, {"run": IID},
                                                        {"run": {"alpha": 0.5, "init": "random"}}]},
        "h": {"kind": "hessian", "runs": [IID]},
    }), SCHEMA)
    plans = {p.label: p for p in landscape_plans(config, build_runs(config))}
    assert [r.setting for r in plans["t"].runs] == ["iid", "0.5"]  # IID first: the reference
    assert plans["t"].data == ("train",) and plans["t"].spec["resolution"] == 21
    assert [c.round for c in plans["p"].checkpoints] == [0, "final", "final"]
    assert plans["h"].round == 3  # the Hessian stage names its plane by round number
    assert check_config({}, SCHEMA)["landscapes"] == {}


@pytest.mark.parametrize(("p", "expected"), [((1.0, 0.0), (8.0, 0.0)), ((0.0, -3.0), (0.0, -8.0)),
                                             ((0.0, 0.0), (5.6, 5.6))])  # a client that did not move: up right
def test_a_client_s_label_sits_beyond_its_arrow_head_away_from_the_round_start(p, expected):
    from fedscape.analysis.landscape.figures import _outward
    from fedscape.outputs.style import pyplot

    # Prepare: a square axes whose units are equal on screen
    fig, ax = pyplot().subplots(figsize=(3, 3))
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    ax.set_aspect("equal")

    # Execute
    offset = _outward(ax, np.array([0.0, 0.0]), np.array(p))
    pyplot().close(fig)

    # Assert: 8 points along the update on screen
    assert offset == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("field", "values", "expected"), [
    ("participation", (1.0, 0.5), ["all clients", "50% sampled"]),
    ("participation", (0.5, 0.504), ["50% sampled", "50.4% sampled"]),
    ("algorithm", ("fedavg", "FedAvg"), ["FedAvg [1]", "FedAvg [2]"]),  # labels displayed alike: numbered
])
def test_the_runs_of_a_plane_have_distinct_legend_labels(field, values, expected):
    from fedscape.analysis.landscape.definitions import run_labels

    # Prepare: two runs that differ in one field alone
    base = {"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg", "alpha": 0.1,
            "num_clients": 10, "seed": 0, "participation": 1.0}

    # Execute
    labels = run_labels([{**base, field: v} for v in values])

    # Assert
    assert labels == expected
