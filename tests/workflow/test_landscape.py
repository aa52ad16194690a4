"""Loss landscapes: planes, projection, surface grids, chunking, figures, config checks and tiny-run outputs."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.workflow import snakemake

from fedscape.analysis.landscape.definitions import SURFACES_COLUMNS
from fedscape.analysis.landscape.figures import plot_surface
from fedscape.analysis.landscape.gather import load_surface

IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}
SURFACE_KEYS = {"a", "b", "loss", "acc", "points_xy", "points_distance", "points_rel_distance", "points_round",
                "points_client", "points_label", "points_group", "points_role", "points_run_id", "plane_meta", "meta"}


# -- fixtures --------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


TRAJ = {"kind": "trajectory", "runs": [IID]}


# -- the tiny end-to-end run -----------------------------------------------------------------------------
def test_surfaces_of_the_tiny_run(tiny_run):
    cfg = yaml.safe_load((tiny_run / "tiny.yaml").read_text())["landscapes"]
    table = pd.read_csv(tiny_run / "results/tables/surfaces.csv", keep_default_na=False)
    assert list(table.columns) == SURFACES_COLUMNS
    want = {f"{label}/{'client~' + str(spec['client']) if d == 'client' else d}"
            for label, spec in cfg.items() for d in spec.get("data", ["train"])}
    assert set(table["surface_id"]) == want
    for row in table.itertuples():
        surface = load_surface(tiny_run / row.path)
        assert set(surface) == SURFACE_KEYS
        res = cfg[row.surface_id.split("/")[0]]["resolution"]
        assert row.resolution == res and surface["loss"].shape == (res, res) == surface["acc"].shape
        assert np.isfinite(surface["loss"]).all() and ((surface["acc"] >= 0) & (surface["acc"] <= 1)).all()
        figure_dir = (tiny_run / row.path).parent
        for name in ("surface.pdf", "surface.png", "surface_grid.csv", "surface_points.csv"):
            assert (figure_dir / name).stat().st_size > 0, name
        grid = pd.read_csv(figure_dir / "surface_grid.csv")
        np.testing.assert_allclose(grid["loss"].to_numpy(), surface["loss"].ravel())
    local = table.set_index("surface_id").loc["tiny_local/train"]
    assert local.kind == "local" and int(local["round"]) == 3
    assert local.runs.endswith("alpha~iid/clients~4/part~1.0/seed~0")
    surface = load_surface(tiny_run / local.path)
    roles = list(surface["points_role"])
    assert roles == ["round_start"] + ["client"] * 4 + ["aggregate"]
    np.testing.assert_allclose(surface["points_xy"][-1], [0.0, 0.0], atol=1e-6)  # the centre is the aggregate
    r1, r2 = surface["meta"]["explained_variance"]
    assert 1 >= r1 >= r2 >= 0 and "variance" in surface["meta"]["axis_labels"][0]
    assert len(list(((tiny_run / local.path).parent / "chunks").glob("chunk~*.npz"))) == 2


def test_a_redrawn_figure_needs_only_the_saved_surface(tiny_run, tmp_path):
    table = pd.read_csv(tiny_run / "results/tables/surfaces.csv")
    path = tiny_run / table.set_index("surface_id").loc["tiny_local/train", "path"]
    shutil.copy2(path, tmp_path / "surface.npz")  # nothing else: no plane, checkpoints or data
    plot_surface(load_surface(tmp_path / "surface.npz"), tmp_path / "again.pdf", tmp_path / "again.png")
    assert (tmp_path / "again.png").stat().st_size > 0


def test_an_interrupted_surface_recomputes_only_its_missing_chunk(tiny_run, tmp_path):
    surface_dir = next((tiny_run / "results/landscape").rglob("tiny_local/train"))
    lost = [surface_dir / "chunks/chunk~1.npz", *surface_dir.glob("surface*"), tiny_run / "results/tables/surfaces.csv"]
    for i, path in enumerate(lost):  # as if the job was killed before the last chunk finished
        shutil.copy2(path, tmp_path / str(i))
        path.unlink()
    try:
        proc = snakemake(tiny_run, "--configfile", "tiny.yaml", "-n", "--quiet", "rules")
    finally:
        for i, path in enumerate(lost):
            shutil.copy2(tmp_path / str(i), path)
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts == {"landscape_chunk": 1, "landscape_gather": 1, "landscape_figure": 1, "surfaces_table": 1,
                      "all": 1, "total": 5}, proc.stdout
