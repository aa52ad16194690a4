"""The eigenvector plane's own job (rule hessian_plane): the aggregate's top-2 eigenvectors as the Hessian job computes
them, taken from the Hessian job where it kept them, and settings that change only with what the eigenpairs depend on,
so that a change of the trace, density, sharpness or client settings redraws no landscape."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.configs import SCHEMA, tiny_config
from helpers.stages import train_run

from fedscape.analysis.hessian import stage as stage_mod
from fedscape.analysis.hessian.definitions import (
    EIGEN_FIELDS,
    EIGENPAIRS_DIR,
    JOB_FILES,
    PLANE_FILE,
    EigenSettings,
    EigenStore,
    HessianPlaneJob,
    HessianSettings,
)
from fedscape.analysis.hessian.stage import hessian_stage, plane_stage
from fedscape.analysis.landscape.planes import load_plane
from fedscape.core.jobs import RecordedSettings, declared_defaults
from fedscape.core.runs import build_runs
from fedscape.plan.hessian import RESULT_VERSIONS, hessian_job_settings, plane_job_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.progress import input_digests

CHEAP = {"trace_probes": 4, "max_iter": 10, "tol": 0.5, "eval_samples": 64, "density": {"enabled": False}}


def _config(**hessian) -> dict:
    config = tiny_config(**{**CHEAP, **hessian})
    config.update(alphas=["iid"], experiments=[{"alpha": "iid"}], inits={"random": {"kind": "random", "seed": 0}})
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["training"].update(rounds=1, save_clients_at=[])
    return check_config(config, SCHEMA)


def _with_hessian(config: dict, **changes) -> dict:
    changed = copy.deepcopy(config)
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (changed["hessian"][section] if section else changed["hessian"])[field] = value
    return changed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One FedAvg run of the tiny config (4 clients), one round: its config, runs, trajectory and partition."""
    tmp = tmp_path_factory.mktemp("hessian_plane")
    config = _config()
    runs = build_runs(config)
    (run,) = runs
    partition, _, train = train_run(config, runs, run, tmp)
    return {"config": config, "runs": runs, "run": run, "trajectory": train["trajectory"], "partition": partition}


def _hessian(trained, out, config=None, store=None) -> pd.DataFrame:
    config = trained["config"] if config is None else config
    out.mkdir(parents=True, exist_ok=True)
    outputs = {key: out / name for key, name in JOB_FILES.items()}
    hessian_stage(hessian_job_settings(config, trained["runs"], trained["run"], 1), trained["trajectory"],
                  trained["partition"], outputs, eigen_store=store)
    return pd.read_csv(outputs["table"])


def _plane(trained, path, config=None, store=None):
    config = trained["config"] if config is None else config
    plane_stage(plane_job_settings(config, trained["runs"], trained["run"], 1), trained["trajectory"],
                trained["partition"], path, eigen_store=store)
    return load_plane(path)


def _arrays_equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, k).numpy(), getattr(b, k).numpy()) for k in ("center", "d1", "d2"))


# -- settings ------------------------------------------------------------------------------------------
def test_eigen_settings_are_the_hessian_settings_fields_in_their_order_with_their_baselines():
    hessian_fields = list(HessianSettings.__dataclass_fields__)

    assert [f for f in hessian_fields if f in EIGEN_FIELDS] == list(EIGEN_FIELDS)
    assert declared_defaults(EigenSettings) == {k: v for k, v in declared_defaults(HessianSettings).items()
                                                if k in EIGEN_FIELDS}


@pytest.mark.parametrize(("change", "same_plane"), [
    ({"trace_probes": 8}, True),
    ({"trace_estimator": "hutchpp"}, True),
    ({"density.enabled": True}, True),
    ({"sharpness.enabled": True}, True),
    ({"clients": 2}, True),
    ({"batch_size": 16}, True),       # how it computes, not what (neutral): kept at the record
    ({"seed": 1}, False),
    ({"top_k": 3}, False),
    ({"tol": 0.25}, False),
    ({"max_iter": 11}, False),
    ({"eval_samples": 32}, False),
    ({"method": "power"}, False),     # the default: lanczos
])
def test_a_plane_job_keeps_its_record_exactly_when_its_eigenpairs_would_not_change(trained, change, same_plane):
    # Prepare: Snakemake's record of a finished plane job, and the settings after a change of the config
    config, runs, run = trained["config"], trained["runs"], trained["run"]
    recorded = repr(plane_job_settings(config, runs, run, 1))
    changed = _with_hessian(config, **change)

    # Execute
    now = plane_job_settings(changed, runs, run, 1, [recorded])

    # Assert: the recorded text where the eigenpairs are those of the record, else the settings of now
    assert (repr(now) == recorded) == same_plane
    if not same_plane:
        assert not isinstance(now, RecordedSettings)
    assert HessianPlaneJob.from_settings(now).hessian == HessianSettings.from_settings(
        hessian_job_settings(changed, runs, run, 1)["hessian"]).eigen()


@pytest.mark.parametrize(("change", "kept"), [({}, True), ({"trace_probes": 8}, True), ({"seed": 1}, False),
                                              ({"precision": "tf32"}, False)])
def test_a_plane_a_hessian_job_wrote_keeps_its_record(trained, change, kept):
    # Prepare: the record of an eigen_plane.npz written by a Hessian job before the plane had its own rule (that
    # job's settings, at a later Hessian result version)
    config, runs, run = trained["config"], trained["runs"], trained["run"]
    recorded = repr({**hessian_job_settings(config, runs, run, 1), "result_version": 4})

    # Execute
    now = plane_job_settings(_with_hessian(config, **change), runs, run, 1, [recorded])

    # Assert
    assert (repr(now) == recorded) == kept


def test_a_plane_job_record_of_another_plane_version_is_not_kept(trained):
    config, runs, run = trained["config"], trained["runs"], trained["run"]
    recorded = repr({**plane_job_settings(config, runs, run, 1), "result_version": 2})

    assert repr(plane_job_settings(config, runs, run, 1, [recorded])) != recorded


# -- the stage -----------------------------------------------------------------------------------------
def test_the_plane_s_eigenvalues_are_the_hessian_job_s_and_its_vectors_orthonormal(trained, tmp_path):
    # Execute: each job alone (nothing kept between them)
    table = _hessian(trained, tmp_path / "hessian").set_index("data")
    plane = _plane(trained, tmp_path / PLANE_FILE)

    # Assert: computed as the Hessian job computes them, bit for bit on a CPU
    assert plane.extra["eigenvalues"] == [table.loc["all", "lambda_1"], table.loc["all", "lambda_2"]]
    assert plane.kind == "hessian" and plane.runs == (trained["run"].run_id,) and plane.round == 1
    assert plane.extra["device"] == "cpu" and plane.extra["precision_used"] == "fp32"
    d1, d2 = plane.d1.double(), plane.d2.double()
    assert abs(float(d1 @ d1) - 1) < 1e-6 and abs(float(d2 @ d2) - 1) < 1e-6 and abs(float(d1 @ d2)) < 1e-6


def test_a_plane_job_takes_the_eigenpairs_its_hessian_job_kept(trained, tmp_path, monkeypatch):
    # Prepare: the plane computed alone; then a Hessian job of other trace settings keeps its eigenpairs
    alone = _plane(trained, tmp_path / "alone.npz")
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"])
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], trace_probes=6), store=store)

    def no_products(*args, **kwargs):
        raise AssertionError("the plane job computed eigenpairs its Hessian job kept")

    monkeypatch.setattr(stage_mod, "top_eigenpairs", no_products)

    # Execute
    taken = _plane(trained, tmp_path / PLANE_FILE, store=store)

    # Assert: the same plane, bit for bit
    assert _arrays_equal(taken, alone) and taken.extra["eigenvalues"] == alone.extra["eigenvalues"]
    assert taken.axis_labels == alone.axis_labels


@pytest.mark.parametrize("change", [{"seed": 1}, {"eval_samples": 32}])
def test_eigenpairs_kept_for_other_eigen_settings_are_not_taken(trained, tmp_path, change):
    # Prepare: a Hessian job of other eigen settings keeps its eigenpairs
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"])
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], **change), store=store)
    alone = _plane(trained, tmp_path / "alone.npz")

    # Execute
    plane = _plane(trained, tmp_path / PLANE_FILE, store=store)

    # Assert: the plane job computed its own
    assert _arrays_equal(plane, alone) and plane.extra["eigenvalues"] == alone.extra["eigenvalues"]


def test_the_key_of_kept_eigenpairs_is_the_plane_s_meaning_its_inputs_contents_and_device_type(trained, tmp_path):
    # Prepare: a trajectory of other contents (one weight moved), the job's partition copied elsewhere
    from fedscape.models.checkpoint import load_trajectory, save_trajectory

    config, runs, run = trained["config"], trained["runs"], trained["run"]
    job = HessianPlaneJob.from_settings(plane_job_settings(config, runs, run, 1))
    traj = load_trajectory(trained["trajectory"])
    moved = traj.params.clone()
    moved[-1, 0] += 1e-3
    other = tmp_path / "other.pt"
    save_trajectory(other, moved, traj.buffers, traj.rounds, traj.model_meta, traj.meta)
    partition_copy = tmp_path / "partition.npz"
    partition_copy.write_bytes(Path(trained["partition"]).read_bytes())
    inputs = (trained["trajectory"], trained["partition"])

    def key_of(paths, device="cpu", version=1):
        return stage_mod.eigen_key(job, version, input_digests(paths), device)

    # Execute
    key = key_of(inputs)

    # Assert: the contents count, not where they are
    assert key_of((trained["trajectory"], partition_copy)) == key
    assert key_of((other, trained["partition"])) != key
    assert key_of(inputs, device="cuda") != key
    assert key_of(inputs, version=2) != key


def test_a_plane_from_kept_eigenpairs_records_where_they_were_computed_and_removes_them(trained, tmp_path,
                                                                                      monkeypatch):
    # Prepare: the Hessian job's record of its compute, as if on a card
    from fedscape.core import manifest

    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"])
    card = {"device": "cuda:0", "device_name": "a card", "precision": "fp32", "precision_used": "fp32"}
    real = stage_mod.describe_compute
    monkeypatch.setattr(stage_mod, "describe_compute", lambda *a: card)
    _hessian(trained, tmp_path / "hessian", store=store)
    monkeypatch.setattr(stage_mod, "describe_compute", real)
    monkeypatch.setattr(manifest, "_NOTES", {})  # the plane job's notes, gone with the test

    # Execute
    plane = _plane(trained, tmp_path / PLANE_FILE, store=store)

    # Assert: the card that computed them, not the plane job's CPU, in its plane file and in its job's record (which
    # names its own CPU beside it); the kept eigenpairs gone once taken
    assert {k: plane.extra[k] for k in card} == card
    assert manifest.noted("compute") == card and manifest.noted("plane_compute")["device"] == "cpu"
    assert not (tmp_path / EIGENPAIRS_DIR).exists()


A, B = "a" * 40, "b" * 40  # two commits of the checkout: a `git pull` between the Hessian job and its plane job


@pytest.mark.parametrize(("kept_by", "change", "codes"), [
    (B, {}, None),  # kept by the plane job's own code
    (A, {}, [A, B]),  # by other code: the plane's directions are not its code's
    (None, {}, ["unrecorded", B]),  # kept before parts recorded their code
    (A, {"seed": 1}, None),  # kept for other eigen settings: the plane job computes its own
], ids=["same code", "other code", "unrecorded", "not taken"])
def test_a_plane_from_kept_eigenpairs_records_the_code_that_computed_them(trained, tmp_path, monkeypatch, kept_by,
                                                                        change, codes):
    # Prepare: a Hessian job run by code `kept_by` keeps its eigenpairs; its plane job runs by code B
    from fedscape.core import manifest
    from fedscape.stages import progress as progress_mod

    monkeypatch.setattr(manifest, "_NOTES", {})  # the jobs' notes, gone with the test
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"])
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: kept_by)
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], **change), store=store)
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: B)
    manifest.start_notes()

    # Execute
    _plane(trained, tmp_path / PLANE_FILE, store=store)

    # Assert: the job's record lists both codes where the eigenpairs it took are of another (`note_codes`)
    assert manifest.noted("codes") == codes


def test_eigenpairs_kept_under_another_key_are_not_taken(trained, tmp_path, monkeypatch):
    # Prepare: the store written under another key (of other inputs: progress_key)
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"])
    real_key = stage_mod.eigen_key
    monkeypatch.setattr(stage_mod, "eigen_key", lambda *a: "the key of another trajectory")
    _hessian(trained, tmp_path / "hessian", store=store)
    monkeypatch.setattr(stage_mod, "eigen_key", real_key)
    computed = []
    real = stage_mod.top_eigenpairs
    monkeypatch.setattr(stage_mod, "top_eigenpairs", lambda *a: computed.append(1) or real(*a))

    # Execute
    _plane(trained, tmp_path / PLANE_FILE, store=store)

    # Assert
    assert computed == [1]


def test_eigenpairs_kept_for_another_plane_version_are_not_taken(trained, tmp_path, monkeypatch):
    # Prepare: eigenpairs kept by a Hessian job for plane jobs of the current version
    directory = tmp_path / EIGENPAIRS_DIR
    _hessian(trained, tmp_path / "hessian", store=EigenStore(directory, 1))
    computed = []
    real = stage_mod.top_eigenpairs
    monkeypatch.setattr(stage_mod, "top_eigenpairs", lambda *a: computed.append(1) or real(*a))

    # Execute: a plane job of the next version; then, the Hessian job run again, one of the same
    _plane(trained, tmp_path / "next.npz", store=EigenStore(directory, 2))
    _hessian(trained, tmp_path / "hessian", store=EigenStore(directory, 1))
    _plane(trained, tmp_path / "same.npz", store=EigenStore(directory, 1))

    # Assert: only the first computed
    assert computed == [1]


def test_through_the_jobs_entry_points_the_plane_job_takes_what_the_hessian_job_kept(trained, tmp_path, monkeypatch):
    # Prepare: the Hessian job as its rule runs it (the plane jobs' result version given), in the job's directory
    from fedscape.analysis.hessian.shared import hessian_job, hessian_plane_job

    config, runs, run = trained["config"], trained["runs"], trained["run"]
    inputs = {"trajectory": trained["trajectory"], "partition": trained["partition"]}
    outputs = {key: tmp_path / name for key, name in JOB_FILES.items()}
    hessian_job(hessian_job_settings(config, runs, run, 1), inputs, outputs, 1, tmp_path / "_progress",
                RESULT_VERSIONS["hessian_plane"])
    monkeypatch.setattr(stage_mod, "top_eigenpairs", lambda *a: pytest.fail("computed what the Hessian job kept"))

    # Execute
    hessian_plane_job(plane_job_settings(config, runs, run, 1), inputs, tmp_path / PLANE_FILE, 1)

    # Assert: the eigenpairs kept beside the outputs, taken and removed; the progress removed; the plane's
    # eigenvalues the table's
    assert not (tmp_path / EIGENPAIRS_DIR).exists() and not (tmp_path / "_progress").exists()
    table = pd.read_csv(outputs["table"]).set_index("data")
    assert load_plane(tmp_path / PLANE_FILE).extra["eigenvalues"] == [table.loc["all", "lambda_1"],
                                                                     table.loc["all", "lambda_2"]]


def test_a_hessian_job_keeps_no_eigenpairs_for_a_plane_already_made_of_them(trained, tmp_path):
    # Prepare: the job's plane path, not made yet
    plane = tmp_path / PLANE_FILE
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"], plane)
    kept = tmp_path / EIGENPAIRS_DIR / "all.pt"

    # Execute / Assert: kept for the plane job, which takes them and records their key
    _hessian(trained, tmp_path / "hessian", store=store)
    assert kept.exists()
    _plane(trained, plane, store=store)
    assert not kept.exists()
    # a rerun for other trace settings keeps none: the plane is made of them
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], trace_probes=6), store=store)
    assert not kept.exists()
    # one of other eigen settings does, for the plane job that will run
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], seed=2), store=store)
    assert kept.exists()


@pytest.mark.parametrize(("change", "keeps"), [({"trace_probes": 6}, False), ({"seed": 2}, True)])
def test_a_plane_the_hessian_job_wrote_before_planes_recorded_their_key_counts_as_made_of_its_eigenpairs(
        trained, tmp_path, change, keeps):
    # Prepare: a plane as the Hessian job wrote it before the plane rule (its meta without the key, nor the compute
    # of kept eigenpairs); its plane job keeps that record (HessianPlaneJob.meaning), so it would never take any
    from fedscape.analysis.landscape.definitions import read_plane_file, write_plane_file

    plane = tmp_path / PLANE_FILE
    _plane(trained, plane)
    arrays, meta = read_plane_file(plane)
    write_plane_file(plane, arrays, json.dumps({k: v for k, v in meta.items() if k != "eigen_key"}))
    store = EigenStore(tmp_path / EIGENPAIRS_DIR, RESULT_VERSIONS["hessian_plane"], plane)

    # Execute: a Hessian job rerun for trace settings alone, or for eigen settings (its plane job reruns too)
    _hessian(trained, tmp_path / "hessian", _with_hessian(trained["config"], **change), store=store)

    # Assert: none kept for a plane that holds the same eigenvalues (no plane job would take them), kept otherwise
    assert (tmp_path / EIGENPAIRS_DIR / "all.pt").exists() == keeps
