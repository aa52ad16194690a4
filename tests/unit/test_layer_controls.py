"""The remaining checks of Adilova, Fischer & Jaggi, "Layerwise Linear Mode Connectivity" (2023): the barrier as a
ratio to the ends' mean (footnote 2), the sweep over consecutive rounds of one run (Sec. 2.1) and the control of
their public code along random directions at the layer's distance (LLMC/layerwise_robustness_eval.py)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.synthetic import digits_like

from fedscape.analysis.barriers.definitions import (
    ALL_MODES,
    BARRIER_COLUMNS,
    CONSECUTIVE_COLUMNS,
    END_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_MODES,
    RATIO_COLUMNS,
    LayerBarriersJob,
    barrier_ratio,
    format_averaged,
    random_direction,
)
from fedscape.analysis.barriers.maths import (
    Point,
    evaluate_point,
    layer_random_direction,
    layerwise_barriers,
    midpoint_barrier,
    model_layers,
)
from fedscape.analysis.barriers.tables import barriers_from_curves, consecutive_table, layer_barrier_tables_job
from fedscape.core.config import ConfigError
from fedscape.core.jobs import declared_defaults
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.barriers import layer_pair, layer_settings, layerwise_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn_point(seed: int):
    torch.manual_seed(seed)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    return model, Point(flatten_params(model), flatten_buffers(model))


# -- the ratio ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("barrier", "mean", "expected"), [
    (0.5, 2.0, 0.25),         # difference / ends' mean
    (-0.3, 1.5, -0.2),        # a mixed model better than the ends
    (0.0, 0.0, 0.0),          # a model with itself at zero error
    (0.0, 3.0, 0.0),
    (0.2, 0.0, math.nan),     # no scale to be relative to
    (math.nan, 1.0, math.nan),
])
def test_barrier_ratio_by_hand(barrier, mean, expected):
    got = barrier_ratio(barrier, mean)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-15)


def test_a_pair_with_itself_has_zero_barrier_and_zero_ratio_in_every_mode():
    # Prepare
    model, a = cnn_point(0)
    splits = digits_like(seed=0)

    # Execute
    df = pd.DataFrame(layerwise_barriers(model, a, a, splits, modes=LAYER_MODES, direction_samples=2))

    # Assert: exactly zero (the average of a point with itself is the point; its distance is 0, so is the direction)
    assert set(df["mode"]) == set(LAYER_MODES)
    assert (df[["barrier_loss", "barrier_error", *RATIO_COLUMNS]] == 0.0).all().all()
    assert (df["end_loss_a"] == df["end_loss_b"]).all() and (df["end_loss_a"] > 0).all()


@pytest.mark.usefixtures("float64_default")
def test_ratio_is_the_difference_over_the_ends_mean_and_the_ends_are_the_models_own_values():
    # Prepare
    model, a = cnn_point(1)
    _, b = cnn_point(2)
    splits = digits_like(seed=1)

    # Execute
    df = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("single", "shallow")))

    # Assert
    for split, (x, y) in splits.items():
        rows = df[df["split"] == split]
        ends = [evaluate_point(model, p, {split: (x, y)})[split] for p in (a, b)]
        assert rows["end_loss_a"].tolist() == pytest.approx([ends[0].loss] * len(rows), rel=1e-12)
        assert rows["end_error_b"].tolist() == pytest.approx([ends[1].error] * len(rows), rel=1e-12)
        mean_loss = 0.5 * (ends[0].loss + ends[1].loss)
        assert rows["barrier_loss_ratio"].tolist() == pytest.approx((rows["barrier_loss"] / mean_loss).tolist(),
                                                                    rel=1e-12)
        assert (rows["barrier_loss"] != 0).all()  # not vacuous


def test_interpolation_barriers_carry_the_ratio_to_the_ends_mean():
    # Prepare: loss 1, 3, 2 at t = 0, 0.5, 1: barrier 3 - 1.5 = 1.5, ends' mean 1.5; error 0.1, 0.3, 0.3: barrier
    # 0.3 - 0.2 = 0.1, ends' mean 0.2
    curves = pd.DataFrame({"pair_id": "p", "run_a": "a", "run_b": "b", "t": [0.0, 0.5, 1.0], "split": "train",
                           "loss": [1.0, 3.0, 2.0], "error": [0.1, 0.3, 0.3], "aligned": False, "path": "linear",
                           "bn_stats": "stored"})

    # Execute
    table = barriers_from_curves(curves)

    # Assert
    assert list(table.columns) == BARRIER_COLUMNS and BARRIER_COLUMNS[-2:] == RATIO_COLUMNS
    row = table.iloc[0]
    assert row["barrier_loss"] == pytest.approx(1.5) and row["barrier_loss_ratio"] == pytest.approx(1.0)
    assert row["barrier_error"] == pytest.approx(0.1) and row["barrier_error_ratio"] == pytest.approx(0.5)


def test_older_layer_tables_read_nan_in_the_new_columns(tmp_path):
    # Prepare: a per-job table as written before the ratios and the ends' values
    old_columns = [c for c in LAYER_BARRIER_COLUMNS if c not in (*RATIO_COLUMNS, *END_COLUMNS)]
    old = pd.DataFrame([{"run_id": "r", "round": 1, "pair": "q", "mode": "single", "layer_index": 0, "layer": "fc",
                         "split": "train", "barrier_loss": 0.25, "barrier_error": 0.5, "aligned": False,
                         "averaged": "0", "bn_stats": "stored"}], columns=old_columns)
    old.to_csv(tmp_path / "old.csv", index=False)
    pd.DataFrame(columns=["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine",
                          "aligned"]).to_csv(tmp_path / "d.csv", index=False)

    # Execute
    layer_barrier_tables_job([tmp_path / "old.csv"], [tmp_path / "d.csv"], tmp_path / "b.csv", tmp_path / "dd.csv")

    # Assert: the existing columns keep their names, order and numbers; the new ones follow, NaN
    table = pd.read_csv(tmp_path / "b.csv")
    assert list(table.columns) == LAYER_BARRIER_COLUMNS and LAYER_BARRIER_COLUMNS[: len(old_columns)] == old_columns
    assert table.loc[0, "barrier_loss"] == 0.25 and table[[*RATIO_COLUMNS, *END_COLUMNS]].isna().all().all()


# -- the random-direction control ----------------------------------------------------------------------
@pytest.mark.parametrize("numel", [1, 7, 1000])
@pytest.mark.parametrize("norm", [0.0, 0.3, 12.5])
def test_random_direction_has_the_asked_norm_and_is_seeded(numel, norm):
    d = random_direction(numel, norm, seed=4, layer_index=2)

    assert d.shape == (numel,) and float(np.linalg.norm(d)) == pytest.approx(norm, rel=1e-12, abs=1e-15)
    assert np.array_equal(d, random_direction(numel, norm, seed=4, layer_index=2))
    if numel > 1 and norm > 0:
        for other in (random_direction(numel, norm, 5, 2), random_direction(numel, norm, 4, 3),
                      random_direction(numel, norm, 4, 2, sample=1)):
            assert not np.allclose(d, other)


def test_random_direction_needs_a_parameter():
    with pytest.raises(ValueError, match="at least one parameter"):
        random_direction(0, 1.0, 0, 0)


def test_layer_random_direction_lies_in_the_layer_with_the_layers_distance():
    # Prepare
    model, a = cnn_point(3)
    _, b = cnn_point(4)
    layers = model_layers(model)

    for layer in layers:
        # Execute
        d = layer_random_direction(a, b, layer, seed=0)

        # Assert
        inside = torch.zeros_like(a.params, dtype=torch.bool)
        for s in layer.param_slices:
            inside[s] = True
        distance = float(torch.cat([(a.params[s] - b.params[s]).double() for s in layer.param_slices]).norm())
        assert float(d[inside].double().norm()) == pytest.approx(distance, rel=1e-5)
        assert (d[~inside] == 0).all()
        assert torch.equal(d, layer_random_direction(a, b, layer, seed=0))


def _control_by_hand(model, a, b, layer, splits, moves: str) -> dict[str, float]:
    """The random-direction barrier of `layer` per split, written out: a moved by d/2 (and b by -d/2 where `moves`
    is both) along each of 2 directions of seed 7, the moved models' mean loss less the ends' mean."""
    moved = []
    for sample in (0, 1):
        d = layer_random_direction(a, b, layer, 7, sample)
        moved.append(evaluate_point(model, Point(a.params + 0.5 * d, a.buffers), splits))
        if moves == "both":
            moved.append(evaluate_point(model, Point(b.params - 0.5 * d, b.buffers), splits))
    ends = [evaluate_point(model, p, splits) for p in (a, b)]
    return {split: sum(m[split].loss for m in moved) / len(moved) - (ends[0][split].loss + ends[1][split].loss) / 2
            for split in splits}


@pytest.mark.usefixtures("float64_default")
def test_random_direction_mode_by_hand():
    # Prepare: the control of layer i moves a by d/2 and b by -d/2 (d of norm ||a_i - b_i||), 2 directions averaged
    model, a = cnn_point(5)
    _, b = cnn_point(6)
    splits = digits_like(seed=2)
    layers = model_layers(model)

    # Execute
    df = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("random_direction",), direction_seed=7,
                                         direction_samples=2))

    # Assert
    assert len(df) == len(layers) * len(splits)
    assert df["averaged"].tolist() == [format_averaged([i]) for i in range(len(layers)) for _ in splits]
    for i in (0, len(layers) - 1):
        expected = _control_by_hand(model, a, b, layers[i], splits, "both")
        for split in splits:
            row = df[(df["layer_index"] == i) & (df["split"] == split)].iloc[0]
            assert row["barrier_loss"] == pytest.approx(expected[split], rel=1e-10, abs=1e-12)
    single = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("single",)))
    assert not np.allclose(single["barrier_loss"], df["barrier_loss"])  # another perturbation than the average


@pytest.mark.usefixtures("float64_default")
def test_random_direction_moving_the_first_model_alone_by_hand():
    # Prepare: direction_moves first (the authors' script): a alone moved by d/2 along each of 2 directions
    model, a = cnn_point(5)
    _, b = cnn_point(6)
    splits = digits_like(seed=2)
    layers = model_layers(model)

    # Execute
    first = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("random_direction",), direction_seed=7,
                                            direction_samples=2, direction_moves="first"))
    both = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("random_direction",), direction_seed=7,
                                           direction_samples=2))

    # Assert
    for i in (0, len(layers) - 1):
        expected = _control_by_hand(model, a, b, layers[i], splits, "first")
        for split in splits:
            row = first[(first["layer_index"] == i) & (first["split"] == split)].iloc[0]
            assert row["barrier_loss"] == pytest.approx(expected[split], rel=1e-10, abs=1e-12)
    assert not np.allclose(first["barrier_loss"], both["barrier_loss"])  # b's move counts in `both` only


def test_random_direction_refuses_an_unknown_choice_of_moved_models():
    model, a = cnn_point(0)
    _, b = cnn_point(1)

    with pytest.raises(ValueError, match="direction_moves must be one of both, first, got 'second'"):
        layerwise_barriers(model, a, b, digits_like(seed=0), modes=("random_direction",), direction_moves="second")


def test_random_direction_mode_keeps_the_other_modes_rows():
    model, a = cnn_point(0)
    _, b = cnn_point(1)
    splits = digits_like(seed=0)

    both = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("single", "random_direction")))
    alone = pd.DataFrame(layerwise_barriers(model, a, b, splits, modes=("single",)))

    kept = both[both["mode"] == "single"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, alone)


# -- planning ------------------------------------------------------------------------------------------
@pytest.fixture
def config():
    from helpers.diverged import diverged_config

    return diverged_config()


def runs_of(config):
    from fedscape.core.runs import build_runs

    return build_runs(config)


@pytest.mark.parametrize(("every", "rounds"), [(1, "all"), (2, "all"), (1, [2, 0])])
def test_consecutive_sweep_plans_rounds_t_of_the_pairs_t_and_t_plus_one(config, every, rounds):
    # Prepare: the healthy run trains 3 rounds (0 = init): pairs (0, 1), (1, 2), (2, 3)
    config["layer_barriers"]["every"] = every
    config["layer_barriers"]["pairs"] = {"sweep": {"run": {"algorithm": "fedavg"}, "consecutive": True,
                                                   "rounds": rounds, "clients": None, "a": None, "b": None}}

    # Execute
    pair = layer_pair(config, runs_of(config), "sweep")

    # Assert
    expected = {(1, "all"): (0, 1, 2), (2, "all"): (0, 2), (1, (2, 0)): (0, 2)}[(every, tuple(rounds)
                                                                             if rounds != "all" else rounds)]
    assert pair.kind == "consecutive" and pair.rounds == expected and pair.run_b is None
    inputs = layerwise_inputs(config, pair)
    assert set(inputs) == {"trajectory_a", "partition"}
    settings = layer_settings(config, pair, pair.rounds[0])
    assert settings["kind"] == "consecutive" and settings["run_id"] == pair.run_a.run_id


@pytest.mark.parametrize(("spec", "modes", "message"), [
    ({"run": {"algorithm": "fedavg"}, "consecutive": True, "rounds": [3]}, None, r"rounds \[3\] are outside 0..2"),
    ({"a": {"algorithm": "fedavg"}, "b": {"algorithm": "boom"}, "consecutive": True}, None, "give `run` instead"),
    ({"run": {"algorithm": "fedavg"}, "consecutive": True}, ["single", "random_direction"],
     "add one of shallow, deep, random or ends"),
    # clients given to a pair of global models would be ignored
    ({"run": {"algorithm": "fedavg"}, "consecutive": True, "clients": [1, 2]}, None,
     r"sweep.clients: this pair compares global models at rounds t and t \+ 1, not clients"),
    ({"a": {"algorithm": "fedavg"}, "b": {"algorithm": "fedavg"}, "clients": [0, 1]}, None,
     "sweep.clients: this pair compares the global models of a and b, not clients"),
])
def test_bad_consecutive_pairs_are_refused_naming_the_key(config, spec, modes, message):
    config["layer_barriers"]["pairs"] = {"sweep": {"clients": None, "rounds": "all", "consecutive": False,
                                                   "run": None, "a": None, "b": None, **spec}}
    if modes:
        config["layer_barriers"]["modes"] = modes

    with pytest.raises(ConfigError, match=message) as info:
        layer_pair(config, runs_of(config), "sweep")
    assert "layer_barriers.pairs.sweep" in str(info.value)


def test_direction_settings_enter_only_the_jobs_of_the_control(config):
    # Prepare
    pair = layer_pair(config, runs_of(config), "ok_clients")

    # Execute
    before = layer_settings(config, pair, 1)
    config["layer_barriers"].update(direction_moves="first")
    moves_alone = layer_settings(config, pair, 1)
    config["layer_barriers"].update(modes=["single", "random_direction"], direction_seed=3)
    after = layer_settings(config, pair, 1)

    # Assert: the default modes' settings carry no new key (finished jobs keep their settings)
    assert not {"direction_seed", "direction_samples", "direction_moves", "consecutive"} & set(before)
    assert moves_alone == before  # no control mode: nothing moves, nothing changes
    assert after["direction_moves"] == "first"
    assert "modes" not in before and declared_defaults(LayerBarriersJob)["modes"] == ("single", "shallow", "deep")
    assert after["direction_seed"] == 3 and after["direction_samples"] == 5


def test_schema_defaults_of_the_new_keys():
    from helpers.diverged import SCHEMA

    from fedscape.core.config import load_schema

    section = load_schema(SCHEMA)["properties"]["layer_barriers"]["properties"]
    pair = section["pairs"]["additionalProperties"]["properties"]
    assert pair["consecutive"]["default"] is False and pair["consecutive"]["description"]
    assert section["direction_seed"]["default"] == 0 and section["direction_samples"]["default"] == 5
    assert section["direction_moves"]["default"] == "both"
    assert section["modes"]["items"]["enum"] == list(LAYER_MODES) and set(ALL_MODES) < set(LAYER_MODES)


# -- the consecutive sweep: the stage and its table ------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from helpers.diverged import build_diverged_runs

    return build_diverged_runs(tmp_path_factory.mktemp("consecutive_runs"))


def test_consecutive_stage_compares_the_global_models_of_rounds_t_and_t_plus_one(runs, tmp_path):
    from fedscape.analysis.barriers.stage import _splits_of, layer_barriers_job
    from fedscape.data.federated import load_federated_data
    from fedscape.models.checkpoint import load_trajectory

    # Prepare
    config = copy.deepcopy(runs.config)
    config["layer_barriers"]["pairs"] = {"sweep": {"run": {"algorithm": "fedavg"}, "consecutive": True,
                                                   "rounds": "all", "clients": None, "a": None, "b": None}}
    pair = layer_pair(config, [runs.healthy, runs.diverged], "sweep")
    assert pair.rounds == (0, 1, 2)
    traj = load_trajectory(runs.trajectory(runs.healthy))
    model = traj.model_meta.build().eval()
    data = LayerBarriersJob.from_settings(layer_settings(config, pair, 1)).data
    splits = _splits_of(load_federated_data(data.run, data.dataset_options, runs.partition, torch.device("cpu")))
    frames = []
    for t in pair.rounds:
        # Execute
        layer_barriers_job(layer_settings(config, pair, t), {"partition": runs.partition,
                                                          "trajectory_a": runs.trajectory(runs.healthy)},
                        tmp_path / f"b{t}.csv", tmp_path / f"d{t}.csv")
        frames.append(pd.read_csv(tmp_path / f"b{t}.csv", dtype={"averaged": str}))

        # Assert: the full average of the stage is the midpoint of the rounds t and t + 1
        df = frames[-1]
        every = format_averaged(range(int(df["layer_index"].max()) + 1))
        full = df[(df["mode"] == "shallow") & (df["averaged"] == every)].set_index("split")
        expected = midpoint_barrier(model, Point(*traj.point(t)), Point(*traj.point(t + 1)), splits)
        for split, (loss, _) in expected.items():
            assert full.loc[split, "barrier_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
        assert (df["round"] == t).all() and list(df.columns) == LAYER_BARRIER_COLUMNS

    table = consecutive_table(pd.concat(frames, ignore_index=True), ["sweep"])
    assert list(table.columns) == CONSECUTIVE_COLUMNS
    assert table["rounds"].tolist() == [3, 3] and table["midpoint_better_loss"].between(0, 1).all()


def test_consecutive_table_by_hand():
    # Prepare: 2 layers; rounds 0..2; midpoint loss = barrier + ends' mean:
    #   round 0: ends 1.0, 2.0, barrier -0.6 -> midpoint 0.9 < 1.0: better
    #   round 1: ends 1.0, 1.2, barrier -0.05 -> midpoint 1.05 > 1.0: not better
    #   round 2: not computed (NaN): left out
    rows = []
    for t, (la, lb, barrier) in enumerate([(1.0, 2.0, -0.6), (1.0, 1.2, -0.05), (math.nan, math.nan, math.nan)]):
        for mode, i, averaged in [("shallow", 0, "0"), ("shallow", 1, "0 1"), ("single", 1, "1")]:
            value = barrier if averaged == "0 1" else 5.0
            rows.append({"run_id": "r", "round": t, "pair": "sweep", "mode": mode, "layer_index": i, "layer": "x",
                         "split": "train", "barrier_loss": value, "barrier_error": 0.0, "aligned": False,
                         "averaged": averaged, "end_loss_a": la, "end_loss_b": lb, "end_error_a": 0.5,
                         "end_error_b": 0.5})
    barriers = pd.DataFrame(rows)

    # Execute
    table = consecutive_table(barriers, ["sweep"])

    # Assert
    assert len(table) == 1
    row = table.iloc[0]
    assert row["rounds"] == 2 and row["midpoint_better_loss"] == 0.5 and row["midpoint_better_error"] == 0.0
    assert row["mean_barrier_loss"] == pytest.approx(-0.325)


def test_a_consecutive_pair_none_of_whose_rounds_was_computed_keeps_its_run_id():
    # Prepare: pair "ok" of run "r_ok" computed at round 0; pair "boom" of run "r_boom" (diverged) NaN at rounds 0, 1
    rows = []
    for pair, run_id, rounds, barrier, end in [("ok", "r_ok", (0,), -0.6, 1.0),
                                               ("boom", "r_boom", (0, 1), math.nan, math.nan)]:
        for t in rounds:
            for i, averaged in [(0, "0"), (1, "0 1")]:
                rows.append({"run_id": run_id, "round": t, "pair": pair, "mode": "shallow", "layer_index": i,
                             "layer": "x", "split": "train", "barrier_loss": barrier, "barrier_error": barrier,
                             "aligned": False, "averaged": averaged, "end_loss_a": end, "end_loss_b": end,
                             "end_error_a": end, "end_error_b": end})
    barriers = pd.DataFrame(rows)

    # Execute
    table = consecutive_table(barriers, ["ok", "boom"]).set_index("pair")

    # Assert
    assert table["run_id"].to_dict() == {"ok": "r_ok", "boom": "r_boom"}
    assert table.loc["boom", "rounds"] == 0 and math.isnan(table.loc["boom", "mean_barrier_loss"])
    assert table.loc["ok", "rounds"] == 1


def test_consecutive_table_of_no_rows_is_empty_with_its_columns():
    barriers = pd.DataFrame(columns=LAYER_BARRIER_COLUMNS)

    table = consecutive_table(barriers, ["sweep"])

    assert list(table.columns) == CONSECUTIVE_COLUMNS and table.empty


@pytest.mark.parametrize(("ends", "barrier", "ratio", "expected"), [
    ((math.inf, 1.0), -math.inf, math.nan, (math.nan, math.nan)),  # an end overflowed: nothing to measure from
    ((math.inf, 1.0), math.nan, math.nan, (math.nan, math.nan)),
    ((1.0, 3.0), math.inf, math.nan, (math.inf, math.inf)),        # a mixed model overflowed: the worst barrier
    ((math.nan, math.nan), -math.inf, math.nan, (math.nan, math.nan)),  # before the ends were recorded: -inf says it
    ((1.0, 3.0), 0.1, 0.05, (0.1, 0.05)),                         # the rule's numbers: kept as written
    ((math.nan, math.nan), 0.1, math.nan, (0.1, math.nan)),
], ids=["inf_end", "inf_end_nan", "inf_barrier", "inf_end_unrecorded", "finite", "finite_unrecorded"])
def test_older_layer_rows_over_an_end_that_overflowed_are_gathered_by_the_rule_of_now(tmp_path, ends, barrier, ratio,
                                                                                     expected):
    # Prepare: a per-job row as a layer_barriers job of result version 1 wrote it (value - mean of the ends); the
    # error's finite ends and barrier beside it
    row = {"run_id": "r", "round": 1, "pair": "q", "mode": "single", "layer_index": 0, "layer": "fc",
           "split": "train", "barrier_loss": barrier, "barrier_error": 0.25, "aligned": False, "averaged": "0",
           "bn_stats": "stored", "barrier_loss_ratio": ratio, "barrier_error_ratio": 0.5,
           "end_loss_a": ends[0], "end_loss_b": ends[1], "end_error_a": 0.5, "end_error_b": 0.5}
    pd.DataFrame([row], columns=LAYER_BARRIER_COLUMNS).to_csv(tmp_path / "job.csv", index=False)
    pd.DataFrame(columns=["run_id", "round", "pair", "layer_index", "layer", "distance", "cosine",
                          "aligned"]).to_csv(tmp_path / "d.csv", index=False)

    # Execute
    layer_barrier_tables_job([tmp_path / "job.csv"], [tmp_path / "d.csv"], tmp_path / "b.csv", tmp_path / "dd.csv")

    # Assert: the loss barrier and its ratio as `barrier_over_ends` and `barrier_ratio` give them; the error's kept
    table = pd.read_csv(tmp_path / "b.csv")
    got = (table.loc[0, "barrier_loss"], table.loc[0, "barrier_loss_ratio"])
    assert got == pytest.approx(expected, nan_ok=True)
    assert (table.loc[0, "barrier_error"], table.loc[0, "barrier_error_ratio"]) == (0.25, 0.5)
    assert table.loc[0, "end_loss_a"] == pytest.approx(ends[0], nan_ok=True)
