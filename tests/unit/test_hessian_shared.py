"""Round-0 Hessian jobs that share one result: which jobs share (planning), and the copy with the run id
replaced (the numbers kept byte for byte)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import DEFAULT, SCHEMA, tiny_config

from fedscape.analysis.hessian.definitions import JOB_FILES, PLANE_FILE
from fedscape.analysis.hessian.shared import copy_shared_job, copy_shared_plane
from fedscape.analysis.landscape.definitions import read_plane_file, write_plane_file
from fedscape.core.paths import HESSIAN_DIR, Results
from fedscape.core.runs import build_runs
from fedscape.plan.hessian import (
    hessian_inputs,
    hessian_job_settings,
    hessian_jobs,
    plane_inputs,
    plane_job_settings,
    plane_path,
    shared_source,
    use_records,
)
from fedscape.plan.resources import computes_on_device
from fedscape.plan.workflow import check_config


def _checked(config: dict) -> tuple[dict, list]:
    config = check_config(copy.deepcopy(config), SCHEMA)
    return config, build_runs(config)


# -- planning ----------------------------------------------------------------------------------------------
def test_default_config_shares_round_zero_of_runs_differing_in_algorithm_or_participation():
    # Prepare
    config, runs = _checked(DEFAULT)

    # Execute
    sources = {(run.run_id, r): shared_source(config, runs, run, r) for run, r in hessian_jobs(config, runs)}

    # Assert: the four random-init alpha=0.1 runs (fedavg, fedprox, fedsam, half participation) share one
    # round-0 job; every final round and every other init or partition computes its own
    shared = {job: src for job, src in sources.items() if src is not None}
    assert len(shared) == 3 and {r for _, r in shared} == {0}
    assert len({src.run_id for src in shared.values()}) == 1
    source = next(iter(shared.values()))
    assert sources[(source.run_id, 0)] is None  # the source computes
    group = [run for run, r in hessian_jobs(config, runs) if r == 0 and run.init == "random" and run.setting == "0.1"]
    assert len(group) == 4 and {run.run_id for run in group} == {source.run_id, *(job for job, _ in shared)}


@pytest.mark.parametrize(("change", "shares"), [
    ({}, True),                                         # fedavg and fedprox from one init on one partition
    ({"seed": 1}, False),                               # another seed: another partition
    ({"hessian_runs": {"algorithm": "fedprox"}}, False),  # the would-be source is not analysed
    ({"inits": True}, False),                           # another init: another model at round 0
    ({"moon_projection": True}, False),                 # MOON's projection head: another network at round 0
])
def test_sharing_needs_the_same_model_and_data_among_analysed_runs(change, shares):
    # Prepare: two runs differing only in the algorithm (or, with `inits`, also in the init)
    config = tiny_config(runs="all", rounds=[0, "final"])
    second_init = "pre" if change.get("inits") else "random"
    config["experiments"] = [{"alpha": "iid"}, {"alpha": 0.5, "init": "random", "algorithm": "fedavg"},
                             {"alpha": 0.5, "init": second_init, "algorithm": "fedprox", "seed": change.get("seed", 0)}]
    config["seeds"] = [0, 1]
    if "hessian_runs" in change:
        config["hessian"]["runs"] = change["hessian_runs"]
    if change.get("moon_projection"):  # the second run's algorithm puts a projection head into the model
        config["algorithms"]["fedprox"] = {"name": "moon", "head": "projection"}
    config, runs = _checked(config)

    # Execute
    sources = {(run, r): shared_source(config, runs, run, r) for run, r in hessian_jobs(config, runs)}

    # Assert
    shared = {job: src for job, src in sources.items() if src is not None}
    assert bool(shared) == shares
    for (run, r), src in shared.items():
        assert r == 0 and src.seed == run.seed and src.algorithm == "fedavg" and run.algorithm == "fedprox"


def test_a_round_zero_job_a_landscape_asks_for_outside_the_analysed_runs_computes_itself():
    # Prepare: the Hessian stage analyses the IID run only; a Hessian landscape asks for the other run's round 0
    config = tiny_config(runs={"alpha": "iid"}, rounds=[0, "final"])
    config["landscapes"] = {"eigen0": {"kind": "hessian", "runs": [{"alpha": 0.5, "algorithm": "fedavg"}], "round": 0,
                                       "resolution": 3}}
    config, runs = _checked(config)
    (run,) = [r for r in runs if r.setting == "0.5" and r.algorithm == "fedavg"]

    # Execute
    source = shared_source(config, runs, run, 0)
    settings = hessian_job_settings(config, runs, run, 0)

    # Assert: no analysed run of its group to copy from
    assert source is None and "shared_from" not in settings


def test_a_sharing_job_reads_its_sources_outputs_and_says_so_in_its_settings():
    # Prepare
    config = tiny_config(runs="all", rounds=[0, "final"])
    config["experiments"] = [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": "fedavg"},
                             {"alpha": 0.5, "algorithm": "fedprox"}]
    config, runs = _checked(config)
    fedavg, fedprox = sorted((r for r in runs if r.setting == "0.5"), key=lambda r: r.algorithm)

    # Execute
    own, copied, final = (hessian_inputs(config, runs, fedavg, 0), hessian_inputs(config, runs, fedprox, 0),
                          hessian_inputs(config, runs, fedprox, 3))
    own_plane, copied_plane, final_plane = (plane_inputs(config, runs, fedavg, 0),
                                            plane_inputs(config, runs, fedprox, 0),
                                            plane_inputs(config, runs, fedprox, 3))
    settings = hessian_job_settings(config, runs, fedprox, 0)
    plane_settings = plane_job_settings(config, runs, fedprox, 0)

    # Assert: the Hessian job copies its source's outputs, the plane job its source's plane
    assert set(own) == set(final) == {"trajectory", "partition"} and "fedprox" in final["trajectory"]
    assert own_plane == own and final_plane == final
    assert set(copied) == {f"source_{key}" for key in JOB_FILES} and set(copied_plane) == {"source_plane"}
    assert all(path.endswith(f"{fedavg.run_id}/round~0/{JOB_FILES[key]}") for key, path in
               ((k, copied[f"source_{k}"]) for k in JOB_FILES))
    assert copied_plane["source_plane"].endswith(f"{fedavg.run_id}/round~0/{PLANE_FILE}")
    for job in (settings, plane_settings):
        assert job["shared_from"] == fedavg.run_id and job["run_id"] == fedprox.run_id
    assert "shared_from" not in hessian_job_settings(config, runs, fedavg, 0)  # finished jobs keep their params


@pytest.mark.parametrize("record", ["none", "without", "with"])
def test_a_copying_job_keeps_the_unread_inputs_its_record_lists_and_reads_only_what_it_reads_otherwise(record):
    # Snakemake's `input` trigger reruns a job whose set of input paths changed: a plane written by a Hessian job
    # (before the plane had a rule of its own) recorded that job's inputs, the five outputs of the job it copied, and a
    # copying Hessian job its source's plane. Elsewhere an unread input is an ancient-only edge, which hides a
    # downstream job's own changes from Snakemake when the job upstream reruns
    config = tiny_config(runs="all", rounds=[0, "final"])
    config["experiments"] = [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": "fedavg"},
                             {"alpha": 0.5, "algorithm": "fedprox"}]
    config, runs = _checked(config)
    fedavg, fedprox = sorted((r for r in runs if r.setting == "0.5"), key=lambda r: r.algorithm)
    results = Results.of(config)
    source = {key: f"{results(HESSIAN_DIR, **fedavg.fields(), round=0)}/{name}" for key, name in JOB_FILES.items()}
    source_plane = plane_path(results, fedavg, 0)
    asked = []

    def unread(path):
        return ("unread", path)

    def recorded(path):  # the old input set: the source's five files
        asked.append(path)
        return {"none": None, "without": [source_plane] if path.endswith(PLANE_FILE) else list(source.values()),
                "with": [*source.values(), source_plane]}[record]

    old = record == "with"
    for round_ in (0, 3):
        # Execute
        hessian, plane = (f(config, runs, fedprox, round_, unread, recorded) for f in (hessian_inputs, plane_inputs))

        # Assert: the old input set, its unread paths marked, where the record lists it
        if round_ == 3:  # a job that computes reads the trajectory and partition, whatever its record
            assert hessian == plane and set(plane) == {"trajectory", "partition"}
            continue
        copied = {f"source_{k}": v for k, v in source.items()}
        assert {k: v for k, v in hessian.items() if k != "source_plane"} == copied
        assert hessian.get("source_plane") == (("unread", source_plane) if old else None)
        assert plane["source_plane"] == source_plane
        assert {k: v for k, v in plane.items() if k != "source_plane"} == (
            {f"source_{k}": ("unread", v) for k, v in source.items()} if old else {})
    # each asks about its own output: the Hessian job's table, the plane job's plane
    assert {Path(p).name for p in asked} == {JOB_FILES["table"], PLANE_FILE}
    assert all("algo~fedprox" in p for p in asked)


# A group's source by Snakemake's records: fedavg's round-0 job computed (afedprox, new to the group, sorts first)
COMPUTED = "{'run_id': 'fedavg'}"
COPIED = "{'run_id': 'fedavg', 'shared_from': 'gone'}"


@pytest.fixture
def records():
    """Snakemake's record of each run's round-0 Hessian job, by algorithm (params texts; absent: no record), as the
    rule file gives them to the planner (`use_records`); no records again after the test."""
    texts: dict[str, list[str]] = {}

    def recorded(wildcards):
        assert wildcards["round"] == 0  # the record of the group's round-0 job
        return texts.get(wildcards["algorithm"])

    use_records(recorded)
    yield texts
    use_records(None)


def _group(algorithms: list[str]) -> tuple[dict, list, dict]:
    config = tiny_config(runs={"alpha": 0.5}, rounds=[0, "final"])
    config["algorithms"]["afedprox"] = {"name": "fedprox"}
    config["experiments"] = [{"alpha": "iid"}, *({"alpha": 0.5, "algorithm": a} for a in algorithms)]
    config, runs = _checked(config)
    return config, runs, {run.algorithm: run for run in runs if run.setting == "0.5"}


@pytest.mark.parametrize(("group", "recorded", "source"), [
    (["afedprox", "fedavg"], {"fedavg": [COMPUTED]}, "fedavg"),          # the finished source keeps computing
    (["afedprox", "fedavg"], {}, "afedprox"),                            # no record: the first, as always
    (["afedprox", "fedavg"], {"afedprox": [COPIED], "fedavg": [COPIED]}, "afedprox"),  # the source dropped: first
    (["afedprox", "fedavg"], {"fedavg": ["<not a literal>"]}, "afedprox"),  # no settings recorded
    (["afedprox", "fedavg", "fedprox"], {"fedavg": [COMPUTED], "fedprox": [COMPUTED]}, "fedavg"),  # first computing
    (["fedavg", "fedprox"], {"afedprox": [COMPUTED], "fedprox": [COPIED]}, "fedavg"),  # a record outside the group
])
def test_a_groups_source_is_the_run_whose_record_says_it_computed_else_the_first(records, group, recorded, source):
    # Prepare
    config, runs, by_algorithm = _group(group)
    records.update(recorded)

    # Execute
    sources = {a: shared_source(config, runs, run, 0) for a, run in by_algorithm.items()}

    # Assert: the source computes, every other run of the group copies it; later rounds compute
    assert sources == {a: None if a == source else by_algorithm[source] for a in group}
    assert all(shared_source(config, runs, run, 3) is None for run in by_algorithm.values())


def test_every_planner_of_a_job_sees_the_source_chosen_first_while_records_change(records):
    # Prepare: fedavg's record says it computed
    config, runs, by_algorithm = _group(["afedprox", "fedavg"])
    afedprox, fedavg = by_algorithm["afedprox"], by_algorithm["fedavg"]
    records["fedavg"] = [COMPUTED]
    chosen = shared_source(config, runs, afedprox, 0)

    # Execute: afedprox's job writes a record of computing in the same Snakemake call
    records["afedprox"] = [COMPUTED]
    wildcards = {**{k: str(v) for k, v in afedprox.fields().items()}, "round": "0"}
    settings = hessian_job_settings(config, runs, afedprox, 0), plane_job_settings(config, runs, afedprox, 0)
    inputs = hessian_inputs(config, runs, afedprox, 0), plane_inputs(config, runs, afedprox, 0)
    on_device = {rule: computes_on_device(config, runs, rule, wildcards) for rule in ("hessian", "hessian_plane")}

    # Assert: afedprox copies fedavg for each of them
    assert chosen == fedavg and shared_source(config, runs, fedavg, 0) is None
    assert all(job["shared_from"] == fedavg.run_id for job in settings)
    job_dir = Results.of(config)(HESSIAN_DIR, **fedavg.fields(), round=0)
    assert inputs[0]["source_table"] == f"{job_dir}/{JOB_FILES['table']}"
    assert inputs[1] == {"source_plane": plane_path(Results.of(config), fedavg, 0)}
    assert on_device == {"hessian": False, "hessian_plane": False}


# -- the copy ----------------------------------------------------------------------------------------------
SOURCE = "digits/cnn_small/init~random/algo~fedavg/alpha~0.5"
TARGET = "digits/cnn_small/init~random/algo~fedprox/alpha~0.5"


def _source_job(tmp_path, rows_of: str = SOURCE) -> dict:
    src = tmp_path / "source"
    src.mkdir()
    paths = {key: src / name for key, name in JOB_FILES.items()}
    paths["table"].write_text("run_id,round,data,lambda_1,trace\n"
                              f"{SOURCE},0,all,0.30000000000000004,12.5\n{rows_of},0,client_0,1e-07,nan\n")
    paths["clients"].write_text(f"run_id,round,hn,hd,status\n{SOURCE},0,3.25,0.5,ok\n")
    paths["density"].write_text(f"run_id,round,data,probe,node,weight\n{SOURCE},0,all,0,-0.125,0.75\n")
    rng = np.random.default_rng(0)
    arrays = {"center": rng.normal(size=7), "center_buffers": np.zeros(0), "d1": rng.normal(size=7),
              "d2": rng.normal(size=7)}
    meta = {"kind": "hessian", "runs": [SOURCE], "round": 0, "explained_variance": None, "axis_labels": ["e1", "e2"],
            "model_meta": {"model": "cnn_small"}, "seed": 0, "eigenvalues": [2.5, 1.5]}
    paths["plane"] = src / PLANE_FILE
    write_plane_file(paths["plane"], arrays, json.dumps(meta))
    paths["details"].write_text(json.dumps({"run_id": SOURCE, "round": 0, "hn": 3.25}))
    return paths


def test_copy_replaces_only_the_run_id(tmp_path):
    # Prepare
    source = _source_job(tmp_path)
    out = {key: tmp_path / f"out_{name}" for key, name in JOB_FILES.items()}

    # Execute
    copy_shared_job(TARGET, 0, SOURCE, source, out)
    copy_shared_plane(TARGET, 0, SOURCE, source["plane"], tmp_path / f"out_{PLANE_FILE}")

    # Assert: every CSV is the source's text with the run id replaced (numbers byte for byte)
    for key in ("table", "clients", "density"):
        assert out[key].read_text() == source[key].read_text().replace(SOURCE, TARGET)
    arrays, meta = read_plane_file(tmp_path / f"out_{PLANE_FILE}")
    src_arrays, src_meta = read_plane_file(source["plane"])
    assert meta == {**src_meta, "runs": [TARGET]}
    assert all(np.array_equal(arrays[k], src_arrays[k]) for k in src_arrays)
    details = json.loads(out["details"].read_text())
    assert details == {"run_id": TARGET, "round": 0, "hn": 3.25, "shared_from": SOURCE}


def test_copy_refuses_a_source_of_another_run(tmp_path):
    # Prepare: a source table holding a row of a third run
    source = _source_job(tmp_path, rows_of="digits/other")
    out = {key: tmp_path / f"out_{name}" for key, name in JOB_FILES.items()}

    # Execute / Assert: nothing written
    with pytest.raises(ValueError, match="digits/other"):
        copy_shared_job(TARGET, 0, SOURCE, source, out)
    assert not any(p.exists() for p in out.values())


def test_a_plane_copy_refuses_the_plane_of_another_run(tmp_path):
    # Prepare: the source's plane names a third run
    source = _source_job(tmp_path)
    arrays, meta = read_plane_file(source["plane"])
    write_plane_file(source["plane"], arrays, json.dumps({**meta, "runs": ["digits/other"]}))
    out = tmp_path / f"out_{PLANE_FILE}"

    # Execute / Assert: nothing written
    with pytest.raises(ValueError, match="digits/other"):
        copy_shared_plane(TARGET, 0, SOURCE, source["plane"], out)
    assert not out.exists()
