"""What the landscape and barrier figures and tables show a reader: layer heatmaps with printed values on one scale per
row, the full-model barrier's loss and error on panels of their own, landscape planes drawn to scale with checkpoints
far off the plane hollow, error ratios over near error-free ends left out, and t written as the grid reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.synthetic import digits_like

from fedscape.analysis.barriers import figures
from fedscape.analysis.barriers.definitions import (
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    RATIO_FLOORS,
    barrier_ratio,
)
from fedscape.analysis.barriers.maths import Point, interpolation_curve
from fedscape.analysis.barriers.tables import barriers_from_curves, interpolation_tables_job, layer_barrier_tables_job
from fedscape.analysis.landscape import figures as landscape_figures
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.outputs.style import pyplot

RUN = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~10/part~1.0/seed~0"
RUN_B = "digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~10/part~1.0/seed~0"
LAYERS = ["features.0", "features.2", "last_block.0", "fc", "classifier"]


@pytest.fixture(autouse=True)
def _close_figures():
    """The figures these tests capture before they are written (and closed) are closed after each test."""
    yield
    pyplot().close("all")


def _outputs(tmp_path: Path, name: str) -> dict[str, Path]:
    return {ext: tmp_path / f"{name}.{ext}" for ext in ("png", "pdf", "csv")}


def _captured(monkeypatch, module) -> list:
    """The figures `module` draws, captured before they are written."""
    figs = []
    monkeypatch.setattr(module, "save_figure_outputs", lambda fig, outputs, df: figs.append(fig))
    return figs


# -- layer-wise heatmaps: each value printed, one scale per row ---------------------------------------------------
def _layer_table(rounds: list[int], layers: int, barrier) -> pd.DataFrame:
    """layer_barriers.csv of pair "q", modes single and shallow: loss barrier `barrier(mode, k, r)` of layer k at
    round r, the error barrier a tenth of it."""
    rows = []
    for mode in ("single", "shallow"):
        for r in rounds:
            for k in range(layers):
                averaged = str(k) if mode == "single" else " ".join(map(str, range(k + 1)))
                value = barrier(mode, k, r)
                rows += [{"run_id": RUN, "round": r, "pair": "q", "mode": mode, "layer_index": k,
                          "layer": f"layer{k}", "split": split, "barrier_loss": value, "barrier_error": value / 10,
                          "aligned": False, "averaged": averaged} for split in ("train", "test")]
    return pd.DataFrame(rows, columns=LAYER_BARRIER_COLUMNS)


def _scale(mode: str, k: int, r: int) -> float:
    """Round 1's barriers 50x round 30's, mode shallow's 10x single's; layer 1 of single at round 30 not computed."""
    if (mode, k, r) == ("single", 1, 30):
        return math.nan
    return (-1) ** k * (0.1 if mode == "single" else 1.0) * (k + 1) / (1 if r == 1 else 50)


def test_every_finite_cell_of_a_layer_heatmap_prints_its_value_and_a_row_shares_one_scale(tmp_path, monkeypatch):
    # Prepare
    table = _layer_table([1, 30], 3, _scale)
    table.to_csv(tmp_path / "b.csv", index=False)
    figs = _captured(monkeypatch, figures)

    # Execute
    figures.layer_heatmaps(tmp_path / "b.csv", "q", "train", _outputs(tmp_path, "h"), modes=("single", "shallow"))

    # Assert: the heatmaps (axes with an image: not the colour bars) in rows loss, error and columns single, shallow
    (fig,) = figs
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    for row, value in enumerate(("barrier_loss", "barrier_error")):
        row_panels = panels[2 * row: 2 * row + 2]
        norms = [(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in row_panels]
        top = table[value].abs().max()  # the row's largest |barrier|, of mode shallow: single's too are on its scale
        assert norms == [pytest.approx((-top, top))] * 2
        for ax, mode in zip(row_panels, ("single", "shallow"), strict=True):
            grid = (table[(table["mode"] == mode) & (table["split"] == "train")]
                    .pivot(index="layer_index", columns="round", values=value))
            printed = {(round(t.get_position()[1]), round(t.get_position()[0])): float(t.get_text()) for t in ax.texts}
            expected = {(i, j): grid.iloc[i, j] for i in range(grid.shape[0]) for j in range(grid.shape[1])
                        if np.isfinite(grid.iloc[i, j])}
            assert printed.keys() == expected.keys()  # every finite cell, and no text on the NaN one
            assert printed == {cell: pytest.approx(v, rel=1e-2) for cell, v in expected.items()}


def test_a_layer_heatmap_larger_than_the_printed_grid_prints_no_values(tmp_path, monkeypatch):
    # Prepare: more layers than PRINTED_GRID's rows
    layers = figures.PRINTED_GRID[0] + 1
    _layer_table([1, 2], layers, lambda mode, k, r: 0.1 * (k + 1)).to_csv(tmp_path / "b.csv", index=False)
    figs = _captured(monkeypatch, figures)

    # Execute
    figures.layer_heatmaps(tmp_path / "b.csv", "q", "train", _outputs(tmp_path, "h"), modes=("single",))

    # Assert
    (fig,) = figs
    assert [list(ax.texts) for ax in fig.axes if ax.images] == [[], []]


# -- the full-model barrier over training: loss and error on panels of their own ------------------------------------
def test_the_full_model_loss_and_error_barriers_are_stacked_panels_sharing_the_round_axis(tmp_path, monkeypatch):
    # Prepare: a full-model barrier (both layers averaged) at rounds 1 and 2, loss 0.2 and error 0.01
    table = _layer_table([1, 2], 2, lambda mode, k, r: 0.1 * (k + 1))
    table.to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame([{"run_id": RUN, "round": r, "pair": "q", "layer_index": k, "layer": name, "distance": 1.0,
                   "cosine": 0.9, "aligned": False} for r in (1, 2) for k, name in [(0, "a"), (1, "b"), (-1, "full")]],
                 columns=LAYER_DISTANCE_COLUMNS).to_csv(tmp_path / "d.csv", index=False)
    figs = _captured(monkeypatch, figures)

    # Execute
    figures.layer_training_figure_job(tmp_path / "b.csv", tmp_path / "d.csv", "q", _outputs(tmp_path, "t"))

    # Assert: no twin axes (two axes on one box); the loss panel above the error panel, in one column, sharing x;
    # each barrier's curves (train, test) in its own panel
    (fig,) = figs
    fig.canvas.draw()
    boxes = [tuple(np.round(ax.get_position().bounds, 6)) for ax in fig.axes]
    assert len(set(boxes)) == len(boxes) == 4
    loss_ax, error_ax = fig.axes[:2]
    assert loss_ax.get_shared_x_axes().joined(loss_ax, error_ax)
    (lx, ly, lw, _), (ex, ey, ew, eh) = loss_ax.get_position().bounds, error_ax.get_position().bounds
    assert (lx, lw) == pytest.approx((ex, ew)) and ly > ey + eh

    def curves(ax) -> list[list[float]]:
        return [list(line.get_ydata()) for line in ax.get_lines() if list(line.get_xdata()) == [1, 2]]  # not 0's
    assert curves(loss_ax) == [pytest.approx([0.2, 0.2])] * 2
    assert curves(error_ax) == [pytest.approx([0.02, 0.02])] * 2


# -- landscape planes: to scale, and checkpoints far off the plane hollow ---------------------------------------------
def _surface(kind: str, a_span: float, b_span: float, rel: list[float], xy: list[list[float]] | None = None) -> dict:
    """A surface of `kind` on the grid [-a_span/2, a_span/2] x [-b_span/2, b_span/2] with checkpoints at `xy` whose
    rel_distance is `rel` (a trajectory's points, a local scope's start, clients and aggregate, or final models)."""
    n = len(rel)
    a, b = np.linspace(-a_span / 2, a_span / 2, 9), np.linspace(-b_span / 2, b_span / 2, 9)
    aa, bb = np.meshgrid(a, b)
    xy = np.array(xy) if xy is not None else np.column_stack([np.linspace(-0.3, 0, n) * a_span,
                                                              np.linspace(-0.3, 0, n) * b_span])
    roles = {"trajectory": ["init", *["global"] * (n - 2), "final"],
             "local": ["round_start", *["client"] * (n - 2), "aggregate"],
             "final_models": ["checkpoint"] * n}[kind]
    return {
        "a": a, "b": b, "loss": 0.1 + aa ** 2 + bb ** 2, "acc": np.zeros((9, 9)), "points_xy": xy,
        "points_distance": np.zeros(n), "points_rel_distance": np.array(rel, dtype=float),
        "points_round": np.arange(n), "points_client": np.array([-1, *range(n - 2), -1]),
        "points_label": np.array([f"p{i}" for i in range(n)]), "points_group": np.array(["g"] * n),
        "points_role": np.array(roles), "points_run_id": np.array([RUN] * n),
        "meta": {"surface_id": "s/train", "kind": kind, "data": "train", "round": 3,
                 "axis_labels": ["PC1 (90.0% of variance)", "PC2 (5.0% of variance)"]},
    }


def _drawn(monkeypatch, surface: dict):
    """The figure `plot_surface` draws of `surface`, before it is written."""
    figs = []
    monkeypatch.setattr(landscape_figures, "write_formats", lambda fig, *args, **kwargs: figs.append(fig))
    landscape_figures.plot_surface(surface, "s.pdf", "s.png", levels=8)
    return figs[0]


def _box_inches(fig, ax) -> tuple[float, float]:
    """The drawn axes box (after its aspect is applied), in inches."""
    ax.apply_aspect()
    bounds = ax.get_position().bounds
    width, height = fig.get_size_inches()
    return bounds[2] * width, bounds[3] * height


@pytest.mark.parametrize("kind", ["trajectory", "local", "final_models"])
@pytest.mark.parametrize(("a_span", "b_span"), [(2.0, 1.0), (1.0, 2.0), (1.0, 1.0), (6.0, 2.2)])
def test_a_landscape_plane_is_drawn_to_scale_in_a_figure_sized_from_its_extent(monkeypatch, kind, a_span, b_span):
    # Prepare
    surface = _surface(kind, a_span, b_span, [0.0, 0.0, 0.0])

    # Execute
    fig = _drawn(monkeypatch, surface)

    # Assert: one unit is as long on either axis, the box has the extent's shape, and the figure holds the box and
    # its margins
    ax = fig.axes[0]
    assert ax.get_aspect() == 1.0
    width, height = _box_inches(fig, ax)
    assert width / height == pytest.approx(a_span / b_span)
    assert width * height == pytest.approx(landscape_figures.PLANE_BOX_SIDE ** 2)
    fig_width, fig_height = fig.get_size_inches()
    assert fig_width == pytest.approx(width + landscape_figures.PLANE_MARGINS["left"]
                                      + landscape_figures.PLANE_MARGINS["right"])
    assert "not to scale" not in ax.get_title()


@pytest.mark.parametrize(("a_span", "b_span", "stretched"), [(30.0, 1.0, "vertical axis stretched 10x"),
                                                             (1.0, 12.0, "horizontal axis stretched 4x")])
def test_a_plane_longer_than_the_bound_stretches_its_short_axis_and_says_so(monkeypatch, a_span, b_span, stretched):
    # Prepare
    surface = _surface("trajectory", a_span, b_span, [0.0, 0.0, 0.0])

    # Execute
    fig = _drawn(monkeypatch, surface)

    # Assert: the box as elongated as MAX_STRETCH allows, no more; the title names the stretch
    ax = fig.axes[0]
    width, height = _box_inches(fig, ax)
    assert max(width / height, height / width) == pytest.approx(landscape_figures.MAX_STRETCH)
    assert ax.get_title().endswith(f"not to scale: {stretched}")


def _marker_faces(ax, point) -> list:
    """The face colours of the markers drawn at `point` (lines with a marker through it; connecting lines have none)."""
    return [line.get_markerfacecolor() for line in ax.get_lines() if line.get_marker() not in (None, "None", "")
            and any(np.allclose(xy, point) for xy in np.column_stack([line.get_xdata(), line.get_ydata()]))]


@pytest.mark.parametrize("kind", ["trajectory", "local", "final_models"])
@pytest.mark.parametrize(("rel", "hollow"), [(0.8, True), (0.01, False), (landscape_figures.OFF_PLANE, False)])
def test_a_checkpoint_far_off_the_plane_is_drawn_hollow_and_the_title_says_so(monkeypatch, kind, rel, hollow):
    # Prepare: the second of four checkpoints (an inner point of a trajectory, a client of the local scope) at `rel`
    # from the plane; the others on it
    xy = [[-0.4, -0.3], [0.25, 0.2], [-0.1, 0.3], [0.0, 0.0]]
    surface = _surface(kind, 2.0, 2.0, [0.0, rel, 0.0, 0.0], xy=xy)

    # Execute
    fig = _drawn(monkeypatch, surface)

    # Assert
    ax = fig.axes[0]
    faces = _marker_faces(ax, xy[1])
    assert faces and all((face == "none") == hollow for face in faces)
    assert all(face != "none" for point in (xy[0], xy[2]) for face in _marker_faces(ax, point))
    assert (landscape_figures.OFF_PLANE_NOTE in ax.get_title()) == hollow


# -- the ratio of an error barrier over ends as good as error-free ---------------------------------------------------
@pytest.mark.parametrize(("barrier", "mean", "floor", "expected"), [
    (46 / 1078, 1 / 1078, 1e-3, math.nan),  # the default run's pair: one end 2 misses of 1,078, the other none
    (46 / 1078, 2e-3, 1e-3, 46 / 2.156),    # above the floor: the ratio
    (0.0, 5e-4, 1e-3, 0.0),                 # a zero barrier stays 0, below the floor too
    (46 / 1078, 1 / 1078, 0.0, 46.0),       # no floor (the loss's): as before
])
def test_a_ratio_over_an_ends_mean_below_its_floor_is_nan(barrier, mean, floor, expected):
    got = barrier_ratio(barrier, mean, floor)

    assert got == pytest.approx(expected, nan_ok=True)


def _curve(t: np.ndarray, error_b: float) -> pd.DataFrame:
    """The train curve of one pair: loss 0.1 at the ends, 0.3 at the inner points; error 0 at a, `error_b` at b and
    0.05 inside."""
    inner = (t > 0) & (t < 1)
    return pd.DataFrame({"pair_id": "p", "run_a": RUN, "round_a": 3, "run_b": RUN_B, "round_b": 3, "t": t,
                         "split": "train", "loss": np.where(inner, 0.3, 0.1),
                         "error": np.where(inner, 0.05, np.where(t == 1, error_b, 0.0)), "aligned": False,
                         "path": "linear", "bn_stats": "stored"}, columns=INTERPOLATION_COLUMNS)


@pytest.mark.parametrize(("error_b", "error_ratio"), [(2 / 1078, math.nan), (0.01, 0.05 / 0.005 - 1)])
def test_barriers_csv_leaves_out_an_error_ratio_over_ends_as_good_as_error_free(error_b, error_ratio):
    # Prepare
    curves = _curve(np.linspace(0.0, 1.0, 5), error_b)

    # Execute
    (row,) = barriers_from_curves(curves).to_dict("records")

    # Assert: the loss ratio as ever (its floor is 0); the error's NaN below its floor
    assert RATIO_FLOORS["loss"] == 0.0
    assert row["barrier_loss_ratio"] == pytest.approx(2.0)
    expected = math.nan if math.isnan(error_ratio) else row["barrier_error"] / (error_b / 2)
    assert row["barrier_error_ratio"] == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(("end_error_b", "kept"), [(2 / 1078, False), (0.01, True)])
def test_the_layer_table_leaves_out_an_error_ratio_an_older_job_wrote_over_a_mean_below_the_floor(tmp_path,
                                                                                                 end_error_b, kept):
    # Prepare: a per-job row as a job wrote it before the floor: the error ratio over ends of 0 and `end_error_b`
    mean = end_error_b / 2
    row = {"run_id": RUN, "round": 1, "pair": "q", "mode": "single", "layer_index": 0, "layer": "fc",
           "split": "train", "barrier_loss": 0.1, "barrier_error": 0.04, "aligned": False, "averaged": "0",
           "bn_stats": "stored", "barrier_loss_ratio": 0.5, "barrier_error_ratio": 0.04 / mean,
           "end_loss_a": 0.2, "end_loss_b": 0.2, "end_error_a": 0.0, "end_error_b": end_error_b}
    pd.DataFrame([row], columns=LAYER_BARRIER_COLUMNS).to_csv(tmp_path / "job.csv", index=False)
    pd.DataFrame(columns=LAYER_DISTANCE_COLUMNS).to_csv(tmp_path / "d.csv", index=False)

    # Execute
    layer_barrier_tables_job([tmp_path / "job.csv"], [tmp_path / "d.csv"], tmp_path / "b.csv", tmp_path / "dd.csv")

    # Assert
    table = pd.read_csv(tmp_path / "b.csv")
    assert table.loc[0, "barrier_error_ratio"] == pytest.approx(0.04 / mean if kept else math.nan, nan_ok=True)
    assert table.loc[0, "barrier_loss_ratio"] == 0.5


# -- t as the grid reads ------------------------------------------------------------------------------------------
def test_the_interpolation_table_writes_t_as_the_grid_reads_also_from_an_older_curve_file(tmp_path):
    # Prepare: a curve file of an older job, t as linspace gives it (0.15000000000000002)
    t = np.linspace(0.0, 1.0, 21)
    assert t[3] != 0.15
    _curve(t, 0.01).to_csv(tmp_path / "curve.csv", index=False)

    # Execute
    interpolation_tables_job([tmp_path / "curve.csv"], tmp_path / "interpolation.csv", tmp_path / "barriers.csv")

    # Assert
    written = pd.read_csv(tmp_path / "interpolation.csv")["t"].tolist()
    assert written == [k / 20 for k in range(21)]
    assert "0.15000000000000002" not in (tmp_path / "interpolation.csv").read_text()


@pytest.mark.usefixtures("one_thread")
def test_an_interpolation_job_writes_t_as_the_grid_reads():
    # Prepare
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    a = Point(flatten_params(model), flatten_buffers(model))

    # Execute
    rows = interpolation_curve(model, a, a, digits_like(n=8), points=21)

    # Assert
    assert sorted({row["t"] for row in rows}) == [k / 20 for k in range(21)]
