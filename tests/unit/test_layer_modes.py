"""Layer-wise barriers beyond single/shallow/deep (Adilova et al. 2023): the cumulations of their Fig. 4 (random
order, both ends towards the middle), barriers after weight matching (Ainsworth et al. 2023), the tables and
the figures (Fig. 4 heatmaps, Fig. 1b as lines)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA, TINY
from helpers.figures import assert_figure_files
from helpers.resume import killed_at_call
from helpers.synthetic import digits_like

from fedscape.analysis.barriers.alignment import (
    align_points,
    apply_permutation,
    point_state,
    random_permutation,
    state_point,
)
from fedscape.analysis.barriers.definitions import (
    ALL_MODES,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    cumulation_order,
    format_averaged,
    mode_entries,
    mode_groups,
    parse_averaged,
)
from fedscape.analysis.barriers.maths import (
    Point,
    layer_distances,
    layerwise_barriers,
    midpoint_barrier,
    model_layers,
)
from fedscape.core.config import ConfigError
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.permutation import permutation_spec
from fedscape.models.registry import build_model
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

CNN_LAYERS = ["features.0", "features.2", "last_block.0", "fc", "classifier"]
IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}




def cnn_point(seed: int):
    torch.manual_seed(seed)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    return model, Point(flatten_params(model), flatten_buffers(model))


# -- orders and groups -----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "expected"), [
    ("single", [(0,), (1,), (2,), (3,), (4,)]),
    ("shallow", [(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4)]),
    ("deep", [(0, 1, 2, 3, 4), (1, 2, 3, 4), (2, 3, 4), (3, 4), (4,)]),
    ("ends", [(0,), (0, 4), (0, 1, 4), (0, 1, 3, 4), (0, 1, 2, 3, 4)]),  # 0, 4, 1, 3, 2: both ends inwards
])
def test_mode_groups_by_hand(mode, expected):
    assert mode_groups(5, mode) == expected


@pytest.mark.parametrize("mode", ["shallow", "deep", "random", "ends"])
@pytest.mark.parametrize("num_layers", [1, 2, 5, 8, 21])
def test_cumulation_order_is_a_permutation_and_each_entry_adds_its_layer(mode, num_layers):
    order = cumulation_order(num_layers, mode, seed=3)
    entries = mode_entries(num_layers, mode, seed=3)

    assert sorted(order) == list(range(num_layers))
    steps = sorted(entries, key=lambda entry: len(entry[1]))  # in the order the group grows
    assert [layer for layer, _ in steps] == order
    for k, (layer, group) in enumerate(steps):
        assert group == tuple(sorted(order[: k + 1])) and layer in group
    assert steps[-1][1] == tuple(range(num_layers))  # the last step averages every layer


def test_random_order_is_seeded():
    first = cumulation_order(12, "random", seed=0)

    assert cumulation_order(12, "random", seed=0) == first
    assert cumulation_order(12, "random", seed=1) != first
    assert first != list(range(12))  # not the shallow order by accident
    assert cumulation_order(12, "shallow", seed=5) == list(range(12))  # the seed only moves `random`


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="Did you mean 'random'"):
        mode_entries(3, "randon")


def test_averaged_cells_round_trip():
    assert parse_averaged(format_averaged((4, 0, 2))) == [0, 2, 4]
    assert parse_averaged(3) == [3]  # a CSV reader makes a single layer an int


# -- barriers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_cumulation_over_every_layer_is_the_full_model_barrier_in_every_mode(seed):
    model, a = cnn_point(2 * seed)
    _, b = cnn_point(2 * seed + 1)
    splits = digits_like(seed=seed)

    df = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=ALL_MODES, seed=seed))
    full = midpoint_barrier(model, a, b, splits)

    every = format_averaged(range(len(CNN_LAYERS)))
    assert len(df) == len(ALL_MODES) * len(CNN_LAYERS) * 2
    for mode in ("shallow", "deep", "random", "ends"):
        rows = df[(df["mode"] == mode) & (df["averaged"] == every)].set_index("split")
        assert len(rows) == 2
        for split, (loss, error) in full.items():
            assert rows.loc[split, ["barrier_loss", "barrier_error"]].tolist() == pytest.approx([loss, error],
                                                                                                 rel=1e-12)
    # not vacuous: a group of fewer layers has another barrier
    first = df[(df["mode"] == "ends") & (df["averaged"] == "0 4") & (df["split"] == "train")]
    assert first["barrier_loss"].iloc[0] != pytest.approx(full["train"][0], rel=1e-3)
    # the random mode's rows name the layer each step adds, in the seeded order
    random_rows = df[(df["mode"] == "random") & (df["split"] == "train")]
    assert random_rows["layer_index"].tolist() == cumulation_order(len(CNN_LAYERS), "random", seed)


def test_permuted_copy_has_zero_layerwise_barriers_after_alignment():
    # Prepare: b is a with its hidden units randomly permuted: the same function, other weights
    model, a = cnn_point(0)
    spec = permutation_spec(model)
    b = state_point(model, apply_permutation(spec, random_permutation(spec, seed=1), point_state(model, a)))
    splits = digits_like()

    # Execute
    aligned, _ = align_points(model, a, b)
    before = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=ALL_MODES))
    after = pd.DataFrame(layerwise_barriers(model, a, aligned, splits, modes=ALL_MODES))
    distances = pd.DataFrame(layer_distances(a, aligned, model_layers(model)))

    # Assert
    assert (before["barrier_loss"].abs() > 1e-6).any()  # permuting alone makes barriers
    assert (after[["barrier_loss", "barrier_error"]] == 0.0).all().all()
    assert (distances["distance"] == 0.0).all()


# -- config ----------------------------------------------------------------------------------------
def layer_config(**section) -> dict:
    config = copy.deepcopy(TINY)
    config["layer_barriers"] = {"pairs": {"q": {"run": IID, "clients": [0, 1]}}, **section}
    return config


@pytest.mark.parametrize(("section", "message"), [
    ({"modes": ["single", "randm"]}, r"layer_barriers\.modes"),
    ({"modes": []}, r"layer_barriers\.modes"),
    ({"modes": ["deep", "deep"]}, r"layer_barriers\.modes"),
    ({"order_seed": -1}, r"layer_barriers\.order_seed"),
    ({"align": "yes"}, r"layer_barriers\.align"),
])
def test_invalid_layer_configs_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        check_config(layer_config(**section), SCHEMA)


def test_layer_settings_carry_the_new_options_only_when_they_differ_from_the_defaults():
    from fedscape.core.runs import build_runs
    from fedscape.plan.barriers import layer_pairs, layer_settings, targets

    default = check_config(layer_config(), SCHEMA)
    custom = check_config(layer_config(modes=["single", "random", "ends"], order_seed=4, align=True), SCHEMA)

    (pair,) = layer_pairs(default, build_runs(default))
    plain, rich = layer_settings(default, pair, 1), layer_settings(custom, pair, 1)

    assert not {"modes", "order_seed", "align"} & set(plain)  # the settings of jobs from before the options
    assert (rich["modes"], rich["order_seed"], rich["align"]) == (["single", "random", "ends"], 4, True)
    default_targets, custom_targets = targets(default, build_runs(default)), targets(custom, build_runs(custom))
    assert any(p.endswith("q/over_training.png") for p in default_targets)
    assert not any("cumulation_" in p or "aligned_" in p for p in default_targets)
    assert any(p.endswith("q/cumulation_train.png") for p in custom_targets)
    assert any(p.endswith("q/aligned_test.pdf") for p in custom_targets)


# -- tables ----------------------------------------------------------------------------------------
def test_layer_tables_read_older_job_files_as_unaligned_with_their_averaged_layers(tmp_path):
    from fedscape.analysis.barriers.tables import layer_barrier_tables_job

    # Prepare: a job file from before `aligned`, `averaged` and `bn_stats`, and one written now
    old = pd.DataFrame([{"run_id": "r", "round": 1, "pair": "q", "mode": mode, "layer_index": i, "layer": f"l{i}",
                         "split": "train", "barrier_loss": 0.1, "barrier_error": 0.0}
                        for mode in ("single", "shallow", "deep") for i in range(3)])
    new = old.assign(round=2, aligned=True, averaged="0", bn_stats="recomputed")
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    dist = pd.DataFrame([{"run_id": "r", "round": 1, "pair": "q", "layer_index": -1, "layer": "full",
                          "distance": 1.0, "cosine": 0.5}])
    dist.to_csv(tmp_path / "dist.csv", index=False)

    # Execute
    layer_barrier_tables_job([tmp_path / "old.csv", tmp_path / "new.csv"], [tmp_path / "dist.csv"], tmp_path / "b.csv",
                             tmp_path / "d.csv")

    # Assert
    table = pd.read_csv(tmp_path / "b.csv", dtype={"averaged": str})
    assert list(table.columns) == LAYER_BARRIER_COLUMNS
    older = table[table["round"] == 1].set_index(["mode", "layer_index"])
    assert not older["aligned"].any() and table[table["round"] == 2]["aligned"].all()
    assert older.loc[("shallow", 1), "averaged"] == "0 1"
    assert older.loc[("deep", 1), "averaged"] == "1 2"
    assert older.loc[("single", 2), "averaged"] == "2"
    assert (older["bn_stats"] == "stored").all() and (table[table["round"] == 2]["bn_stats"] == "recomputed").all()
    distances = pd.read_csv(tmp_path / "d.csv")
    assert list(distances.columns) == LAYER_DISTANCE_COLUMNS and not distances["aligned"].any()


# -- figures ---------------------------------------------------------------------------------------
def rid(alpha: str) -> str:
    return f"digits/cnn_small/init~random/algo~fedavg/alpha~{alpha}/clients~10/part~1.0/seed~0"


def layer_tables_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """layer_barriers.csv and layer_distances.csv of one client pair at rounds 1-3, unaligned and aligned, every
    mode; the full-model barrier is 0.1 * round (halved when aligned)."""
    barriers, distances = [], []
    for r in (1, 2, 3):
        for aligned in (False, True):
            scale = 0.5 if aligned else 1.0
            for mode in ALL_MODES:
                for layer, group in mode_entries(len(CNN_LAYERS), mode, seed=0):
                    for split in ("train", "test"):
                        value = scale * 0.1 * r * len(group) / len(CNN_LAYERS)
                        barriers.append({"run_id": rid("iid"), "round": r, "pair": "q", "mode": mode,
                                         "layer_index": layer, "layer": CNN_LAYERS[layer], "split": split,
                                         "barrier_loss": value, "barrier_error": value / 2, "aligned": aligned,
                                         "averaged": format_averaged(group)})
            for k, layer in [*enumerate(CNN_LAYERS), (-1, "full")]:
                distances.append({"run_id": rid("iid"), "round": r, "pair": "q", "layer_index": k, "layer": layer,
                                  "distance": scale * (k + 2) * r, "cosine": 1.0 - 0.1 * r, "aligned": aligned})
    return (pd.DataFrame(barriers, columns=LAYER_BARRIER_COLUMNS),
            pd.DataFrame(distances, columns=LAYER_DISTANCE_COLUMNS))


def outputs(tmp_path: Path, name: str) -> dict[str, Path]:
    return {ext: tmp_path / "figures" / f"{name}.{ext}" for ext in ("png", "pdf", "csv")}


def test_full_model_barriers_are_the_entries_averaging_every_layer():
    from fedscape.analysis.barriers.figures import full_model_barriers

    barriers, _ = layer_tables_fixture()

    full = full_model_barriers(barriers).set_index(["aligned", "split", "round"])

    assert len(full) == 2 * 2 * 3
    assert full.loc[(False, "train", 2), "barrier_loss"] == pytest.approx(0.2)
    assert full.loc[(True, "test", 3), "barrier_error"] == pytest.approx(0.075)


@pytest.mark.parametrize(("modes", "aligned"), [(("random", "ends"), False), (ALL_MODES, True)])
def test_cumulation_and_aligned_heatmaps_draw_the_asked_rows(tmp_path, modes, aligned):
    from fedscape.analysis.barriers.figures import layer_heatmaps

    barriers, _ = layer_tables_fixture()
    barriers.to_csv(tmp_path / "layer_barriers.csv", index=False)

    layer_heatmaps(tmp_path / "layer_barriers.csv", "q", "train", outputs(tmp_path, "h"), modes=modes,
                   aligned=aligned)

    data = assert_figure_files(outputs(tmp_path, "h"))
    assert set(data["mode"]) == set(modes)
    assert set(data["aligned"]) == {aligned}
    assert len(data) == len(modes) * len(CNN_LAYERS) * 3


def test_layer_training_figure_draws_full_barrier_and_distances_over_rounds(tmp_path, monkeypatch):
    from fedscape.analysis.barriers import figures

    barriers, distances = layer_tables_fixture()
    barriers.to_csv(tmp_path / "b.csv", index=False)
    distances.to_csv(tmp_path / "d.csv", index=False)
    drawn = {}
    save = figures.save_figure_outputs

    def spy(fig, outs, data):
        drawn["axes"] = fig.axes
        return save(fig, outs, data)
    monkeypatch.setattr(figures, "save_figure_outputs", spy)

    figures.layer_training_figure_job(tmp_path / "b.csv", tmp_path / "d.csv", "q", outputs(tmp_path, "t"))

    data = assert_figure_files(outputs(tmp_path, "t"))
    assert (data["what"] == "full_barrier").sum() == 2 * 2 * 3  # aligned x split x round
    assert (data["what"] == "distance").sum() == len(distances)
    barrier_ax, error_ax, l2_ax, cos_ax = drawn["axes"]
    for ax in (barrier_ax, error_ax):  # the error barrier in a panel of its own: flat on the loss's scale
        curves = [line for line in ax.lines if len(line.get_xdata()) == 3]  # not the zero line
        assert len(curves) == 2 * 2  # split x aligned
    assert error_ax.get_ylabel() == "error barrier"
    assert len(l2_ax.lines) == len(cos_ax.lines) == (len(CNN_LAYERS) + 1) * 2
    whole = [line for line in l2_ax.lines if line.get_color() == "black" and line.get_linestyle() == "-"]
    assert len(whole) == 1 and list(whole[0].get_ydata()) == pytest.approx([1.0, 2.0, 3.0])


# -- the stage -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy and a diverged run (tests/helpers/diverged.py), trained once for this module."""
    from helpers.diverged import build_diverged_runs

    return build_diverged_runs(tmp_path_factory.mktemp("layer_runs"))


def test_stage_writes_every_mode_as_trained_and_aligned_and_nan_rows_for_a_diverged_run(runs, tmp_path):
    from fedscape.analysis.barriers.stage import layer_barriers_job
    from fedscape.plan.barriers import layer_pairs, layer_settings

    # Prepare: every mode and alignment on; the healthy client pair at round 1 and the diverged run's clients
    config = copy.deepcopy(runs.config)
    config["layer_barriers"].update(modes=list(ALL_MODES), order_seed=2, align=True)
    inputs_of = {"ok_clients": {"clients": runs.clients(runs.healthy)},
                 "boom_clients": {"clients": runs.clients(runs.diverged)}}
    pairs = {p.label: p for p in layer_pairs(config, [runs.healthy, runs.diverged]) if p.label in inputs_of}
    out = {}
    for label, pair in pairs.items():
        round_ = pair.rounds[-1]
        inputs = {"partition": runs.partition, "trajectory_a": runs.trajectory(pair.run_a), **inputs_of[label]}

        # Execute
        layer_barriers_job(layer_settings(config, pair, round_), inputs, tmp_path / f"{label}_b.csv",
                        tmp_path / f"{label}_d.csv")
        out[label] = (pd.read_csv(tmp_path / f"{label}_b.csv", dtype={"averaged": str}),
                      pd.read_csv(tmp_path / f"{label}_d.csv"))

    # Assert
    for barriers, distances in out.values():
        assert list(barriers.columns) == LAYER_BARRIER_COLUMNS and list(distances.columns) == LAYER_DISTANCE_COLUMNS
        assert barriers.groupby(["aligned", "mode"]).size().to_dict() == {
            (aligned, mode): len(CNN_LAYERS) * 2 for aligned in (False, True) for mode in ALL_MODES}
        assert len(distances) == (len(CNN_LAYERS) + 1) * 2
        random_rows = barriers[(barriers["mode"] == "random") & (barriers["split"] == "train") & ~barriers["aligned"]]
        assert random_rows["layer_index"].tolist() == cumulation_order(len(CNN_LAYERS), "random", seed=2)
    ok, boom = out["ok_clients"][0], out["boom_clients"][0]
    assert ok[["barrier_loss", "barrier_error"]].notna().all().all()
    assert boom[["barrier_loss", "barrier_error"]].isna().all().all()
    # a full-model barrier per (aligned, split); weight matching never moves b farther from a
    every = format_averaged(range(len(CNN_LAYERS)))
    assert len(ok[ok["averaged"] == every].drop_duplicates(["aligned", "split"])) == 4
    dist = out["ok_clients"][1].set_index(["aligned", "layer_index"])["distance"]
    assert dist.loc[(True, -1)] <= dist.loc[(False, -1)] + 1e-9


def test_a_killed_layer_barriers_job_keeps_its_finished_rows_and_resumes_with_the_same_tables(runs, tmp_path,
                                                                                                monkeypatch):
    from fedscape.analysis.barriers import stage as stage_mod
    from fedscape.plan.barriers import layer_pairs, layer_settings

    # Prepare: the healthy client pair with alignment, killed while computing the aligned rows
    config = copy.deepcopy(runs.config)
    config["layer_barriers"].update(modes=["single", "random"], order_seed=2, align=True)
    pair = next(p for p in layer_pairs(config, [runs.healthy, runs.diverged]) if p.label == "ok_clients")
    inputs = {"partition": runs.partition, "trajectory_a": runs.trajectory(pair.run_a),
              "clients": runs.clients(runs.healthy)}
    settings = layer_settings(config, pair, pair.rounds[-1])
    outputs = (tmp_path / "b.csv", tmp_path / "d.csv")
    calls = killed_at_call(monkeypatch, stage_mod, "layerwise_barriers", 2, lambda: stage_mod.layer_barriers_job(
        settings, inputs, *outputs, tmp_path / "_progress"))
    assert [p.name for p in (tmp_path / "_progress").iterdir()] == ["as_trained.pt"]

    # Execute
    stage_mod.layer_barriers_job(settings, inputs, *outputs, tmp_path / "_progress")

    # Assert: only the aligned rows computed again; the tables of an uninterrupted job; the parts removed
    assert len(calls) == 1 and not (tmp_path / "_progress").exists()
    stage_mod.layer_barriers_job(settings, inputs, tmp_path / "wb.csv", tmp_path / "wd.csv")
    for name, whole in (("b.csv", "wb.csv"), ("d.csv", "wd.csv")):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), pd.read_csv(tmp_path / whole))
