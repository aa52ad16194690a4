"""Numerical trouble: every analysis stage skips a diverged run with a warning and writes NaN.

One healthy and one diverged run (tests/diverged_fixture.py; huge learning rate: the loss is NaN after
round 1, so rounds 2..final are missing and round 1's model is NaN) go through the Hessian, barrier,
client-statistics, landscape and summary stages at library level, and once through the workflow.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA
from helpers.diverged import BOOM, ROUNDS, build_diverged_runs

from fedscape.analysis.barriers.definitions import (
    BARRIER_COLUMNS,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    MODES,
)
from fedscape.analysis.barriers.stage import interpolation_job, layer_barriers_job
from fedscape.analysis.barriers.tables import interpolation_tables_job
from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS
from fedscape.analysis.client_stats.stage import client_stats_job
from fedscape.analysis.hessian.definitions import CLIENT_COLUMNS, DENSITY_COLUMNS, hessian_columns
from fedscape.analysis.hessian.stage import hessian_stage, plane_stage
from fedscape.analysis.hessian.tables import gather_tables
from fedscape.analysis.landscape.figures import landscape_figure_job
from fedscape.analysis.landscape.gather import landscape_gather_job, load_surface
from fedscape.analysis.landscape.planes import load_plane
from fedscape.analysis.landscape.stage import landscape_chunk_job, landscape_plane_job
from fedscape.core.config import validate_config
from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
from fedscape.plan.hessian import hessian_job_settings, plane_job_settings
from fedscape.plan.landscape import chunk_settings, landscape_plans, plane_settings, surface_settings
from fedscape.report.summary import final_table, summary_table

CNN_LAYERS = 5  # cnn_small: features.0, features.2, last_block.0, fc, classifier
NUM_CLIENTS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The healthy and the diverged run, trained once for this module."""
    return build_diverged_runs(tmp_path_factory.mktemp("diverged"))


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_fixture_has_one_healthy_and_one_diverged_run(runs):
    from fedscape.models.checkpoint import load_trajectory

    ok, boom = load_trajectory(runs.trajectory(runs.healthy)), load_trajectory(runs.trajectory(runs.diverged))
    assert ok.status == "ok" and ok.rounds.tolist() == list(range(ROUNDS + 1))
    assert boom.status == "diverged" and boom.final_round < ROUNDS
    assert ok.unusable(ROUNDS) is None and boom.unusable(0) is None
    assert "not in the trajectory" in boom.unusable(ROUNDS)
    assert boom.unusable(boom.final_round) is not None
    with pytest.raises(KeyError, match="did not diverge"):  # a missing round of a healthy run is an error
        ok.unusable(ROUNDS + 1)


# -- Hessian -----------------------------------------------------------------------------------------
HESSIAN_OUTPUTS = (("table", "hessian.csv"), ("clients", "hessian_clients.csv"), ("density", "density.csv"),
                   ("details", "hessian.json"))



@pytest.mark.parametrize("swa_finite", [True, False])
def test_the_global_model_of_an_swa_run_s_final_round_is_usable_whatever_its_swa_model(runs, tmp_path, swa_finite):
    # Prepare: the healthy run's trajectory with an SWA model (finite, or overflowed) beside its global models
    from fedscape.models.checkpoint import CheckpointError, load_trajectory, save_trajectory

    ok = load_trajectory(runs.trajectory(runs.healthy))
    swa_params = ok.params[-2:].mean(0) if swa_finite else torch.full_like(ok.params[0], float("inf"))
    save_trajectory(tmp_path / "t.pt", ok.params, ok.buffers, ok.rounds, ok.model_meta, ok.meta,
                    swa={"params": swa_params, "buffers": ok.buffers[-1], "rounds": (ROUNDS - 1, ROUNDS)})

    # Execute
    traj = load_trajectory(tmp_path / "t.pt")

    # Assert: the global model (a consecutive layer pair's) is judged by its own values; the reported final model
    # (the SWA model) by its own
    assert traj.unusable(ROUNDS, global_model=True) is None
    if swa_finite:
        assert traj.unusable(ROUNDS) is None
    else:
        with pytest.raises(CheckpointError, match="damaged"):
            traj.unusable(ROUNDS)

def _hessian_job(runs, run, round_, out_dir, trajectory=None, progress_dir=None):
    """The Hessian job and the plane job of (run, round_): their outputs (the plane's under `plane`)."""
    trajectory = runs.trajectory(run) if trajectory is None else trajectory
    outputs = {key: out_dir / name for key, name in HESSIAN_OUTPUTS}
    hessian_stage(hessian_job_settings(runs.config, [run], run, round_), trajectory, runs.partition, outputs,
                  progress_dir=progress_dir)
    plane_stage(plane_job_settings(runs.config, [run], run, round_), trajectory, runs.partition,
                out_dir / "eigen_plane.npz")
    return {**outputs, "plane": out_dir / "eigen_plane.npz"}


@pytest.fixture(scope="module")
def hessian_jobs(runs, tmp_path_factory):
    """Hessian jobs: the healthy run's final round, the diverged run's final (missing) and round-1 (NaN) models."""
    root = tmp_path_factory.mktemp("hessian")
    jobs = {}
    for name, run, round_ in (("ok", runs.healthy, ROUNDS), ("boom_final", runs.diverged, ROUNDS),
                              ("boom_nan", runs.diverged, 1)):
        (root / name).mkdir()
        jobs[name] = _hessian_job(runs, run, round_, root / name)
    return jobs


def test_hessian_job_of_a_diverged_run_writes_nan_rows_with_status(runs, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    for round_, why in ((ROUNDS, "not in the trajectory"), (1, "NaN/inf parameters")):
        out_dir = tmp_path / f"round~{round_}"
        out_dir.mkdir()
        caplog.clear()
        out = _hessian_job(runs, runs.diverged, round_, out_dir)  # no exception

        assert why in warnings_of(caplog) and "not computed" in warnings_of(caplog)
        table = pd.read_csv(out["table"])
        assert list(table.columns) == hessian_columns(2)
        assert sorted(table["data"]) == sorted(["all", *[f"client_{k}" for k in range(NUM_CLIENTS)]])
        assert (table["status"] == "diverged").all() and (table["round"] == round_).all()
        assert table.drop(columns=["run_id", "round", "data", "status"]).isna().all().all()  # NaN, never -1
        clients = pd.read_csv(out["clients"])
        assert list(clients.columns) == CLIENT_COLUMNS and clients[["hn", "hd"]].isna().all().all()
        assert (clients["status"] == "diverged").all()
        assert list(pd.read_csv(out["density"]).columns) == DENSITY_COLUMNS
        plane = load_plane(out["plane"])
        assert plane.kind == "hessian" and plane.extra["status"] == "diverged" and plane.round == round_
        assert torch.isnan(plane.d1).all() and plane.num_params == plane.d2.numel()
        details = json.loads(out["details"].read_text())
        assert details["status"] == "diverged" and why in details["reason"]


def test_hessian_job_of_finite_weights_with_an_infinite_loss_writes_diverged_outputs(runs, tmp_path, caplog):
    # Prepare: the healthy run's final model with its classifier scaled to 1e38 per weight (finite weights whose
    # float32 logits overflow), saved as that run's trajectory; a progress directory, as the rule gives
    from fedscape.models.checkpoint import load_trajectory, save_trajectory
    from fedscape.models.params import flatten_params

    healthy = load_trajectory(runs.trajectory(runs.healthy))
    model = healthy.model_at(ROUNDS)
    classifier = list(model.parameters())[-2]  # the last layer's weight (its bias is last)
    with torch.no_grad():
        classifier.copy_(torch.sign(classifier) * 1e38)
    params = healthy.params.clone()
    params[healthy.row(ROUNDS)] = flatten_params(model)
    assert torch.isfinite(params).all()
    trajectory = tmp_path / "trajectory.pt"
    save_trajectory(trajectory, params, healthy.buffers, healthy.rounds, healthy.model_meta, healthy.meta)
    progress = tmp_path / "progress"
    progress.mkdir()
    (progress / "all.pt").write_bytes(b"an earlier attempt's part")  # cleared with the job's parts
    caplog.set_level(logging.WARNING)

    # Execute: no exception (the eigensolver's "did not converge" before NonFiniteLoss existed)
    outputs = _hessian_job(runs, runs.healthy, ROUNDS, tmp_path, trajectory=trajectory, progress_dir=progress)

    # Assert: every output written as diverged, with the reason, the plane job's too; no part kept for a resume
    why = "finite weights but its loss on the"
    assert warnings_of(caplog).count(why) == 2
    table = pd.read_csv(outputs["table"])
    assert (table["status"] == "diverged").all() and len(table) == 1 + NUM_CLIENTS
    assert table.drop(columns=["run_id", "round", "data", "status"]).isna().all().all()
    assert (pd.read_csv(outputs["clients"])["status"] == "diverged").all()
    assert torch.isnan(load_plane(outputs["plane"]).d1).all()
    details = json.loads(outputs["details"].read_text())
    assert details["status"] == "diverged" and why in details["reason"]
    assert not progress.exists()


def test_healthy_hessian_job_and_gathered_tables_beside_a_diverged_one(hessian_jobs, tmp_path, caplog):
    ok = pd.read_csv(hessian_jobs["ok"]["table"])
    assert (ok["status"] == "ok").all() and ok[["lambda_1", "lambda_2", "trace"]].notna().all().all()
    assert load_plane(hessian_jobs["ok"]["plane"]).extra.get("status", "ok") == "ok"

    caplog.set_level(logging.WARNING)
    columns = hessian_columns(2)
    gather_tables([j["table"] for j in hessian_jobs.values()], tmp_path / "hessian.csv", columns)
    gather_tables([j["clients"] for j in hessian_jobs.values()], tmp_path / "hessian_clients.csv", CLIENT_COLUMNS)

    assert "not computed" in warnings_of(caplog)
    table = pd.read_csv(tmp_path / "hessian.csv")
    assert list(table.columns) == columns
    healthy = table[table["status"] == "ok"]
    assert len(healthy) == 1 + NUM_CLIENTS and healthy["iterations"].gt(0).all()
    assert len(table[table["status"] == "diverged"]) == 2 * (1 + NUM_CLIENTS)
    assert table.loc[table["status"] == "diverged", ["lambda_1", "trace", "n_eval", "iterations"]].isna().all().all()
    raw = pd.read_csv(tmp_path / "hessian.csv", dtype=str, keep_default_na=False)  # integers stay integers
    assert raw.loc[raw["status"] == "ok", ["round", "n_eval", "iterations"]].map(str.isdigit).all().all()
    assert (raw.loc[raw["status"] == "diverged", "n_eval"] == "").all()


def test_old_per_job_tables_without_status_are_gathered_as_ok(hessian_jobs, tmp_path):
    old = pd.read_csv(hessian_jobs["ok"]["table"]).drop(columns="status")
    old.to_csv(tmp_path / "old.csv", index=False)
    gather_tables([tmp_path / "old.csv"], tmp_path / "hessian.csv", hessian_columns(2))
    assert (pd.read_csv(tmp_path / "hessian.csv")["status"] == "ok").all()


def test_final_and_summary_tables_mark_the_diverged_run(runs, hessian_jobs, tmp_path):
    rounds = pd.concat([pd.read_csv(runs.run_dir(r) / "metrics.csv") for r in (runs.healthy, runs.diverged)])
    gather_tables([j["table"] for j in hessian_jobs.values()], tmp_path / "hessian.csv", hessian_columns(2))
    gather_tables([j["clients"] for j in hessian_jobs.values()], tmp_path / "clients.csv", CLIENT_COLUMNS)

    final = final_table(rounds, hessian=pd.read_csv(tmp_path / "hessian.csv"),
                        hessian_clients=pd.read_csv(tmp_path / "clients.csv")).set_index("algorithm")
    summary = summary_table(final.reset_index()).set_index("algorithm")

    assert final.loc["boom", "status"] == "diverged" and final.loc["boom", "final_round"] < ROUNDS
    assert np.isnan(final.loc["boom", "lambda_max"]) and np.isnan(final.loc["boom", "hn"])
    assert final.loc["fedavg", "status"] == "ok" and np.isfinite(final.loc["fedavg", "lambda_max"])
    assert summary.loc["boom", "n_ok"] == 0 and summary.loc["fedavg", "n_ok"] == 1
    assert np.isnan(summary.loc["boom", "lambda_max_mean"]) and np.isfinite(summary.loc["fedavg", "lambda_max_mean"])


# -- barriers ----------------------------------------------------------------------------------------
def test_interpolation_with_a_diverged_end_writes_nan_rows(runs, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    pairs = {p.label: p for p in interpolation_pairs(runs.config, [runs.healthy, runs.diverged])}
    curves = []
    for label, pair in pairs.items():
        curves.append(tmp_path / f"{label}.csv")
        interpolation_job(interpolation_settings(runs.config, pair), runs.trajectory(pair.run_a),
                            runs.trajectory(pair.run_b), runs.partition, curves[-1])
    interpolation_tables_job(curves, tmp_path / "interpolation.csv", tmp_path / "barriers.csv")

    assert "ok_vs_boom" in warnings_of(caplog) and "NaN rows" in warnings_of(caplog)
    df = pd.read_csv(tmp_path / "interpolation.csv")
    assert list(df.columns) == INTERPOLATION_COLUMNS
    boom, ok = df[df["pair_id"] == "ok_vs_boom"], df[df["pair_id"] == "ok_r1_vs_final"]
    assert len(boom) == len(ok) == 3 * 2  # every t and split
    assert boom[["loss", "error"]].isna().all().all() and ok[["loss", "error"]].notna().all().all()
    assert (boom["round_a"] == ROUNDS).all()
    barriers = pd.read_csv(tmp_path / "barriers.csv")
    assert list(barriers.columns) == BARRIER_COLUMNS
    barriers = barriers.set_index(["pair_id", "split"])
    assert barriers.loc["ok_vs_boom", "barrier_loss"].isna().all()
    assert barriers.loc["ok_r1_vs_final", "barrier_loss"].notna().all()


def test_layerwise_barriers_of_a_diverged_run_write_nan_rows(runs, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    inputs_of = {"ok_clients": {"clients": runs.clients(runs.healthy)},
                 "boom_clients": {"clients": runs.clients(runs.diverged)},
                 "ok_vs_boom": {"trajectory_b": runs.trajectory(runs.diverged)}}
    frames = {}
    for pair in layer_pairs(runs.config, [runs.healthy, runs.diverged]):
        for round_ in pair.rounds:
            b, d = tmp_path / f"{pair.label}_{round_}_b.csv", tmp_path / f"{pair.label}_{round_}_d.csv"
            inputs = {"partition": runs.partition, "trajectory_a": runs.trajectory(pair.run_a), **inputs_of[pair.label]}
            layer_barriers_job(layer_settings(runs.config, pair, round_), inputs, b, d)
            frames[pair.label, round_] = (pd.read_csv(b), pd.read_csv(d))

    assert set(frames) == {("ok_clients", 1), ("boom_clients", 1), ("boom_clients", ROUNDS), ("ok_vs_boom", 1)}
    log = warnings_of(caplog)
    assert "boom_clients" in log and "ok_vs_boom" in log and "ok_clients" not in log
    for (label, round_), (barriers, distances) in frames.items():
        assert list(barriers.columns) == LAYER_BARRIER_COLUMNS and list(distances.columns) == LAYER_DISTANCE_COLUMNS
        assert len(barriers) == len(MODES) * CNN_LAYERS * 2 and len(distances) == CNN_LAYERS + 1
        assert (barriers["round"] == round_).all() and (barriers["pair"] == label).all()
        values = barriers[["barrier_loss", "barrier_error"]]
        assert values.isna().all().all() if label != "ok_clients" else values.notna().all().all()
        assert distances["distance"].isna().all() if label != "ok_clients" else (distances["distance"] > 0).all()


def test_the_client_pair_of_the_round_where_a_run_diverged_by_a_finite_loss_is_not_computed(runs, tmp_path, caplog):
    # Prepare: the healthy run's trajectory cut at round 1 and marked diverged there, as a run whose aggregate's loss
    # went above the bound while every weight, its clients' too, stayed finite
    from fedscape.models.checkpoint import load_trajectory, save_trajectory

    healthy = load_trajectory(runs.trajectory(runs.healthy))
    keep = healthy.rounds <= 1
    trajectory = tmp_path / "trajectory.pt"
    save_trajectory(trajectory, healthy.params[keep], healthy.buffers[keep], healthy.rounds[keep],
                    healthy.model_meta, {**healthy.meta, "status": "diverged"})
    pair = next(p for p in layer_pairs(runs.config, [runs.healthy, runs.diverged]) if p.label == "ok_clients")
    inputs = {"partition": runs.partition, "trajectory_a": str(trajectory), "clients": runs.clients(runs.healthy)}
    caplog.set_level(logging.WARNING)

    # Execute
    b, d = tmp_path / "b.csv", tmp_path / "d.csv"
    layer_barriers_job(layer_settings(runs.config, pair, 1), inputs, b, d)

    # Assert: NaN rows, with the reason in the log, as for the round's global models
    assert pd.read_csv(b)[["barrier_loss", "barrier_error"]].isna().all().all()
    assert pd.read_csv(d)["distance"].isna().all()
    assert "round 1 is where the run diverged" in warnings_of(caplog)


# -- client statistics -------------------------------------------------------------------------------
def test_client_stats_of_a_diverged_run_have_nan_l2_to_final(runs, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    both = (runs.healthy, runs.diverged)
    client_stats_job({"run_ids": [r.run_id for r in both]}, [runs.run_dir(r) / "client_updates.csv" for r in both],
                     [runs.trajectory(r) for r in both], tmp_path / "client_stats.csv")

    assert "l2_to_final is NaN" in warnings_of(caplog)
    df = pd.read_csv(tmp_path / "client_stats.csv")
    assert list(df.columns) == CLIENT_STATS_COLUMNS
    boom, ok = df[df["run_id"] == runs.diverged.run_id], df[df["run_id"] == runs.healthy.run_id]
    assert boom["round"].tolist() == list(range(len(boom))) and len(boom) < ROUNDS + 1
    assert boom["l2_to_final"].isna().all()
    assert ok["round"].tolist() == list(range(ROUNDS + 1)) and ok["l2_to_final"].iloc[-1] == 0
    assert ok["l2_to_final"].notna().all() and ok["gradient_diversity"].iloc[1:].notna().all()


# -- landscapes --------------------------------------------------------------------------------------
def _surface(runs, plan_spec: dict, label: str, tmp_path, hessian_plane=None, model_options: dict | None = None):
    """Plane, chunks, gather and figure of one landscape entry (data: train) on the two runs; `model_options`: what
    planning takes the runs' model for (the diverged plane builds none)."""
    config = {**runs.config, "landscapes": {label: dict(plan_spec)}}
    if model_options is not None:
        config["model_options"] = model_options
    config = validate_config(config, SCHEMA)  # defaults filled
    (plan,) = landscape_plans(config, [runs.healthy, runs.diverged])
    d = tmp_path / label
    d.mkdir()
    outputs = {"plane": d / "plane.npz", "points": d / "points.csv", "grid": d / "grid.json"}
    trajs = [runs.trajectory(r) for r in plan.runs]
    clients = runs.clients(plan.runs[0]) if plan.kind == "local" else None
    landscape_plane_job(plane_settings(config, plan), trajs, clients, hessian_plane, outputs)
    chunks = []
    for i in range(plan.spec.get("chunks", 1)):
        chunks.append(d / f"chunk~{i}.npz")
        landscape_chunk_job(chunk_settings(config, plan, "train", i), outputs["plane"], outputs["grid"], runs.partition,
                    chunks[-1])
    landscape_gather_job(surface_settings(config, plan, "train"), chunks, outputs["plane"], outputs["grid"],
                         outputs["points"], d / "surface.npz")
    figure = {"pdf": d / "surface.pdf", "png": d / "surface.png", "grid_csv": d / "grid.csv",
              "points_csv": d / "points_fig.csv"}
    landscape_figure_job({"surface_id": f"{label}/train", "levels": 10, "clip_loss": None}, d / "surface.npz", None,
                         figure)
    assert figure["png"].stat().st_size > 0 and figure["pdf"].stat().st_size > 0
    return load_surface(d / "surface.npz"), load_plane(outputs["plane"])


@pytest.mark.parametrize(("spec", "why"), [
    ({"kind": "hessian", "runs": [BOOM]}, "was not computed"),
    ({"kind": "trajectory", "runs": [BOOM], "round": ROUNDS}, "not in the trajectory"),
    ({"kind": "trajectory", "runs": [BOOM]}, "a PCA plane needs 2"),  # final: only round 0 is finite
    ({"kind": "local", "runs": [BOOM], "round": 1}, "NaN/inf parameters"),
    ({"kind": "random", "runs": [BOOM], "round": 1}, "NaN/inf parameters"),
    # planned as a batch-norm model's surface with recomputed statistics: its NaN chunks say so to the gather
    ({"kind": "random", "runs": [BOOM], "round": 1, "bn_stats": "recomputed"}, "NaN/inf parameters"),
])
def test_a_surface_needing_a_diverged_checkpoint_is_all_nan_and_drawn(runs, hessian_jobs, tmp_path, caplog, spec,
                                                                        why):
    caplog.set_level(logging.WARNING)
    hessian = hessian_jobs["boom_final"]["plane"] if spec["kind"] == "hessian" else None
    model_options = {runs.diverged.model: {"norm": "batch"}} if "bn_stats" in spec else None

    surface, plane = _surface(runs, {**spec, "resolution": 3, "chunks": 2}, "boom", tmp_path, hessian, model_options)

    assert why in warnings_of(caplog) and "all-NaN plane" in warnings_of(caplog)
    assert plane.extra["status"] == "diverged" and torch.isnan(plane.center).all()
    assert surface["loss"].shape == (3, 3) and np.isnan(surface["loss"]).all() and np.isnan(surface["acc"]).all()
    assert surface["meta"]["status"] == "diverged" and surface["meta"]["nonfinite_points"] == 9
    assert len(surface["points_xy"]) == 0
    assert surface["meta"].get("bn_stats", "stored") == spec.get("bn_stats", "stored")
    assert surface["meta"]["device_name"] is None and surface["meta"]["precision"] is None  # nothing evaluated


def test_a_healthy_surface_beside_the_diverged_run_is_computed(runs, hessian_jobs, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    surface, plane = _surface(runs, {"kind": "hessian", "runs": [{"algorithm": "fedavg"}], "resolution": 3},
                              "ok", tmp_path, hessian_jobs["ok"]["plane"])
    assert plane.extra.get("status", "ok") == "ok" and surface["meta"]["status"] == "ok"
    assert np.isfinite(surface["loss"]).all() and len(surface["points_xy"]) == 1
    assert not warnings_of(caplog)


@pytest.mark.parametrize(("span", "outside"), [(None, 0), (1.0e-6, 3)])  # rounds 0..2 (3, the centre, is in)
def test_checkpoints_outside_an_explicit_span_are_named_in_a_warning(runs, tmp_path, caplog, span, outside):
    caplog.set_level(logging.WARNING)
    spec = {"kind": "trajectory", "runs": [{"algorithm": "fedavg"}], "resolution": 3, "span": span}

    _surface(runs, spec, "span", tmp_path)

    warned = [r.getMessage() for r in caplog.records if "outside span" in r.getMessage()]
    assert len(warned) == (1 if outside else 0)
    if outside:
        assert f"{outside} checkpoint(s) lie outside span [-0.0, 0.0, -0.0, 0.0]" in warned[0]
        assert "(round 0, round 1, round 2)" in warned[0] and "round 3" not in warned[0]


def test_gathering_chunks_of_another_plane_is_refused_and_chunks_without_a_plane_digest_are_accepted(
        runs, hessian_jobs, tmp_path):
    """A plane made again with other directions over the same grid (e.g. a rerun by --rerun-triggers params only)
    must not be assembled with chunks evaluated on the old one."""
    import fedscape.analysis.landscape.definitions as definitions

    spec = {"kind": "hessian", "runs": [{"algorithm": "fedavg"}], "resolution": 3}
    _surface(runs, spec, "ok", tmp_path, hessian_jobs["ok"]["plane"])
    d = tmp_path / "ok"
    config = validate_config({**runs.config, "landscapes": {"ok": spec}}, SCHEMA)
    (plan,) = landscape_plans(config, [runs.healthy, runs.diverged])
    gather = (surface_settings(config, plan, "train"), [d / "chunk~0.npz"], d / "plane.npz", d / "grid.json",
              d / "points.csv")
    arrays, meta = definitions.read_plane_file(d / "plane.npz")
    definitions.write_plane_file(d / "plane.npz", {**arrays, "d1": -arrays["d1"]}, json.dumps(meta))

    with pytest.raises(RuntimeError, match=r"chunk~0\.npz was computed on another plane than .*plane\.npz holds now"):
        landscape_gather_job(*gather, tmp_path / "surface.npz")

    with np.load(d / "chunk~0.npz") as npz:  # a chunk from before the digest: the grid check alone
        chunk = {k: npz[k] for k in npz.files}
    old_meta = {k: v for k, v in json.loads(str(chunk["meta"])).items() if k != "plane_digest"}
    np.savez(d / "chunk~0.npz", **{**chunk, "meta": np.array(json.dumps(old_meta))})
    landscape_gather_job(*gather, tmp_path / "surface.npz")
    assert load_surface(tmp_path / "surface.npz")["loss"].shape == (3, 3)


def test_a_plane_file_of_another_run_evaluates_the_planned_runs_data_and_records_where_it_came_from(
        runs, hessian_jobs, tmp_path, caplog):
    """The healthy run's eigenvector plane through the diverged run's (finite) initial model: the surface is the
    diverged run's, so its chunks read that run's partition; the file's run is kept as `direction_runs`."""
    source = str(hessian_jobs["ok"]["plane"])
    spec = {"kind": "hessian", "runs": [BOOM], "round": 0, "resolution": 3, "plane_file": source}

    surface, plane = _surface(runs, spec, "borrowed", tmp_path, source)

    assert plane.runs == (runs.diverged.run_id,)
    assert plane.extra["direction_runs"] == [runs.healthy.run_id]
    assert np.isfinite(surface["loss"]).all() and surface["meta"]["status"] == "ok"


def test_final_trajectory_surface_of_a_run_that_diverged_late_uses_its_last_finite_model(runs, tmp_path, caplog):
    """A run diverged at round 3 of 3 keeps rounds 0..2: `final` stops at round 2, with a warning."""
    from fedscape.models.checkpoint import load_trajectory, save_trajectory

    ok = load_trajectory(runs.trajectory(runs.healthy))
    params = ok.params.clone()
    params[-1] = float("nan")
    late = tmp_path / "late.pt"
    # the diverged run's file (it records its own run id: the plane job checks it)
    save_trajectory(late, params, ok.buffers, ok.rounds, ok.model_meta,
                    {**ok.meta, "run_id": runs.diverged.run_id, "status": "diverged"})
    outputs = {"plane": tmp_path / "plane.npz", "points": tmp_path / "points.csv", "grid": tmp_path / "grid.json"}
    config = validate_config({**runs.config, "landscapes": {"late": {"kind": "trajectory", "runs": [BOOM],
                                                                "resolution": 3}}}, SCHEMA)
    (plan,) = landscape_plans(config, [runs.healthy, runs.diverged])
    caplog.set_level(logging.WARNING)

    landscape_plane_job(plane_settings(config, plan), [late], None, None, outputs)

    assert "using its last finite model (round 2)" in warnings_of(caplog)
    points = pd.read_csv(outputs["points"])
    assert points["round"].tolist() == [0, 1, 2] and points["role"].iloc[-1] == "final"
    assert load_plane(outputs["plane"]).extra.get("status", "ok") == "ok"
    # the surface (its figure's title, surfaces.csv) is at round 2, not at the planned 3
    landscape_chunk_job(chunk_settings(config, plan, "train", 0), outputs["plane"], outputs["grid"], runs.partition,
                        tmp_path / "chunk.npz")
    landscape_gather_job(surface_settings(config, plan, "train"), [tmp_path / "chunk.npz"], outputs["plane"],
                         outputs["grid"], outputs["points"], tmp_path / "surface.npz")
    assert surface_settings(config, plan, "train")["round"] == ROUNDS
    assert load_surface(tmp_path / "surface.npz")["meta"]["round"] == 2


def test_a_surface_records_the_card_and_precision_of_its_chunks_and_warns_when_they_differ(runs, tmp_path, caplog):
    from fedscape.analysis.landscape.gather import surfaces_table_job

    # Prepare: a surface of two chunks evaluated here, then one of its chunks as a bf16 chunk of another card
    spec = {"kind": "trajectory", "runs": [{"algorithm": "fedavg"}], "resolution": 3, "chunks": 2}
    surface, _ = _surface(runs, spec, "mix", tmp_path)
    d = tmp_path / "mix"
    here = json.loads(str(np.load(d / "chunk~0.npz")["meta"]))
    with np.load(d / "chunk~1.npz") as npz:
        chunk = {k: npz[k] for k in npz.files}
    meta = {**json.loads(str(chunk["meta"])), "device": "cuda:0", "device_name": "NVIDIA A100",
            "precision_used": "bf16"}
    np.savez(d / "chunk~1.npz", **{**chunk, "meta": np.array(json.dumps(meta))})
    config = validate_config({**runs.config, "landscapes": {"mix": spec}}, SCHEMA)
    (plan,) = landscape_plans(config, [runs.healthy, runs.diverged])
    caplog.set_level(logging.WARNING)

    # Execute
    landscape_gather_job(surface_settings(config, plan, "train"), [d / "chunk~0.npz", d / "chunk~1.npz"],
                         d / "plane.npz", d / "grid.json", d / "points.csv", tmp_path / "mixed.npz")
    surfaces_table_job([str(d / "surface.npz"), str(tmp_path / "mixed.npz")], tmp_path / "surfaces.csv")

    # Assert: the surface made here says where and how it was evaluated; the mixed one names both and is warned of
    assert (surface["meta"]["device_name"], surface["meta"]["precision"]) == (here["device_name"], "fp32")
    mixed = load_surface(tmp_path / "mixed.npz")["meta"]
    assert mixed["device_name"] == f"{here['device_name']}; NVIDIA A100" and mixed["precision"] == "fp32; bf16"
    assert "evaluated in fp32 and bf16" in warnings_of(caplog)
    table = pd.read_csv(tmp_path / "surfaces.csv")
    assert table["precision"].tolist() == ["fp32", "fp32; bf16"]
