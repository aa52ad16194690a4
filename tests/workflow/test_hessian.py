"""Hessian analysis: exact checks on a tiny model, HN / HD, eval mode, the eigenvector plane, config, e2e."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.configs import tiny_config
from helpers.tables import assert_hd_bounded_or_unresolved
from helpers.workflow import ROOT

from fedscape.analysis.hessian.definitions import CLIENT_COLUMNS, hessian_columns
from fedscape.analysis.landscape.planes import load_plane
from fedscape.core.config import load_schema
from fedscape.core.runs import build_runs
from fedscape.plan.hessian import hessian_jobs
from fedscape.plan.workflow import check_config

SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


# -- end to end (tests/data/tiny_config.yaml) ------------------------------------------------------
def _job_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "results/hessian").rglob("eigen_plane.npz"))


def test_tiny_run_hessian_tables(tiny_run):
    config = check_config(tiny_config(), SCHEMA)
    jobs = hessian_jobs(config, build_runs(config))
    top_k = config["hessian"]["top_k"]
    num_clients = config["num_clients"][0]

    table = pd.read_csv(tiny_run / "results/tables/hessian.csv")
    clients = pd.read_csv(tiny_run / "results/tables/hessian_clients.csv")

    assert list(table.columns) == hessian_columns(top_k)
    assert list(table.columns)[:5] == ["run_id", "round", "data", "lambda_1", "lambda_2"]
    assert list(clients.columns) == CLIENT_COLUMNS == ["run_id", "round", "hn", "hd", "status"]  # contract + status
    assert (clients["status"] == "ok").all()
    expected = {(run.run_id, r) for run, r in jobs}
    assert set(zip(table["run_id"], table["round"], strict=True)) == expected
    assert set(zip(clients["run_id"], clients["round"], strict=True)) == expected and len(clients) == len(expected)
    for _, group in table.groupby(["run_id", "round"]):
        assert sorted(group["data"]) == sorted(["all", *[f"client_{k}" for k in range(num_clients)]])
    assert (table["lambda_1"] >= table["lambda_2"]).all()
    assert (table["trace_stderr"] > 0).all() and (table["iterations"] > 2).all()
    assert (table["n_eval"] <= config["hessian"]["eval_samples"]).all()
    assert table[table["data"] == "all"]["n_eval"].eq(config["hessian"]["eval_samples"]).all()
    assert_hd_bounded_or_unresolved(tiny_run / "results", clients)


def test_tiny_run_eigen_planes_and_figures(tiny_run):
    dirs = _job_dirs(tiny_run)
    table = pd.read_csv(tiny_run / "results/tables/hessian.csv").set_index(["run_id", "round", "data"])

    assert len(dirs) == 2
    for job in dirs:
        plane = np.load(job / "eigen_plane.npz", allow_pickle=False)
        meta = json.loads(str(plane["meta"]))
        assert load_plane(job / "eigen_plane.npz").kind == "hessian"
        d1, d2 = plane["d1"].astype(np.float64), plane["d2"].astype(np.float64)
        assert meta["kind"] == "hessian" and meta["round"] == int(job.name.split("~")[1])
        assert meta["runs"] == [str(job.parent.relative_to(tiny_run / "results/hessian"))]
        assert {"explained_variance", "axis_labels", "model_meta", "seed"} <= set(meta)
        assert plane["center"].shape == d1.shape == d2.shape
        assert abs(d1 @ d2) < 1e-5 and abs(np.linalg.norm(d1) - 1) < 1e-5 and abs(np.linalg.norm(d2) - 1) < 1e-5
        # the plane job's eigenpairs are its Hessian job's (kept for it, or computed as it computes them)
        row = table.loc[(meta["runs"][0], meta["round"], "all")]
        assert meta["eigenvalues"] == pytest.approx([row["lambda_1"], row["lambda_2"]], rel=1e-12)
        assert meta["device"] == "cpu" and meta["precision_used"] == "fp32"
        details = json.loads((job / "hessian.json").read_text())
        assert all(d["converged"] == [True, True] for d in details["data"].values())
    for name in ("lambda_trace_by_algorithm", "lambda_trace_by_init", "spectral_density"):
        for ext in ("png", "pdf", "csv"):
            assert (tiny_run / f"results/figures/hessian/{name}.{ext}").stat().st_size > 0
    density = pd.read_csv(tiny_run / "results/figures/hessian/spectral_density.csv")
    assert list(density.columns) == ["run_id", "round", "eigenvalue", "density"] and (density["density"] >= 0).all()


# -- a round-0 job shared by runs with one initial model and one partition ---------------------------------
def test_shared_round_zero_job_equals_its_own_computation(tmp_path):
    # Prepare: FedAvg and FedProx from one init on one partition; the Hessian of both at round 0
    import torch
    from helpers.workflow import copy_workflow, snakemake

    from fedscape.analysis.hessian.definitions import JOB_FILES
    from fedscape.analysis.hessian.stage import hessian_stage
    from fedscape.plan.hessian import hessian_job_settings, shared_source

    config = tiny_config(runs={"alpha": 0.5}, rounds=[0], trace_probes=4, eval_samples=64)
    config["experiments"] = [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": "fedavg"},
                             {"alpha": 0.5, "algorithm": "fedprox"}]
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "pair.yaml").write_text(yaml.safe_dump(config))
    checked = check_config(copy.deepcopy(config), SCHEMA)
    runs = build_runs(checked)
    fedavg, fedprox = sorted((r for r in runs if r.setting == "0.5"), key=lambda r: r.algorithm)

    # Execute: the workflow up to the Hessian table; then FedProx's round 0 computed directly
    fedprox_trajectory = f"results/train/{fedprox.run_id}/trajectory.pt"  # not an input of the copying job
    fedprox_plane = f"results/hessian/{fedprox.run_id}/round~0/eigen_plane.npz"
    snakemake(workdir, "results/tables/hessian.csv", fedprox_trajectory, fedprox_plane, "--configfile", "pair.yaml")
    job = {run.algorithm: workdir / "results/hessian" / run.run_id / "round~0" for run in (fedavg, fedprox)}
    settings = hessian_job_settings(checked, runs, fedprox, 0)
    own = {key: tmp_path / name for key, name in JOB_FILES.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job ran: the float sums in the same order
    try:
        hessian_stage({k: v for k, v in settings.items() if k != "shared_from"},
                      workdir / fedprox_trajectory,
                      workdir / "results/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz", own)
    finally:
        torch.set_num_threads(threads)

    # Assert: FedProx's job copied FedAvg's and says so; its numbers are what FedProx's model gives
    assert shared_source(checked, runs, fedprox, 0) == fedavg
    details = json.loads((job["fedprox"] / "hessian.json").read_text())
    assert details["shared_from"] == fedavg.run_id and details["run_id"] == fedprox.run_id
    assert "copied" in (workdir / "logs/hessian" / fedprox.run_id / "round~0/hessian.log").read_text()
    copied = pd.read_csv(job["fedprox"] / "hessian.csv")
    computed = pd.read_csv(own["table"])
    assert (copied["run_id"] == fedprox.run_id).all()
    pd.testing.assert_frame_equal(copied, computed, check_exact=True)
    density = pd.read_csv(job["fedprox"] / "density.csv")
    pd.testing.assert_frame_equal(density, pd.read_csv(own["density"]), check_exact=True)
    assert load_plane(job["fedprox"] / "eigen_plane.npz").runs == (fedprox.run_id,)
    assert "copied" in (workdir / "logs/hessian" / fedprox.run_id / "round~0/eigen_plane.log").read_text()
    table = pd.read_csv(workdir / "results/tables/hessian.csv")
    assert set(table["run_id"]) == {fedavg.run_id, fedprox.run_id}


def test_adding_and_dropping_a_run_of_a_group_reruns_none_of_its_finished_round_zero_jobs(tmp_path):
    # Prepare: FedAvg's round-0 Hessian job and plane computed; then a FedProx run whose label sorts before fedavg
    from helpers.workflow import copy_workflow, planned_jobs, snakemake

    base = tiny_config(runs={"alpha": 0.5}, rounds=[0], trace_probes=4, eval_samples=64)
    base["experiments"] = [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": "fedavg"}]
    added = copy.deepcopy(base)
    added["algorithms"]["afedprox"] = {"name": "fedprox"}
    added["experiments"].append({"alpha": 0.5, "algorithm": "afedprox"})
    workdir = copy_workflow(tmp_path / "wf")
    targets = {}
    for name, config in (("base", base), ("added", added)):
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(config))
        runs = build_runs(check_config(copy.deepcopy(config), SCHEMA))
        targets[name] = [f"--configfile={name}.yaml", "results/tables/hessian.csv",
                         *(f"results/hessian/{run.run_id}/round~0/eigen_plane.npz" for run in runs
                           if run.setting == "0.5")]
    (fedavg,) = (run for run in runs if run.setting == "0.5" and run.algorithm == "fedavg")
    snakemake(workdir, *targets["base"])

    # Execute: plan with the run added, run it, and plan without it again
    on_adding = planned_jobs(workdir, *targets["added"])
    snakemake(workdir, *targets["added"])
    on_dropping = planned_jobs(workdir, *targets["base"])

    # Assert: the added run's round-0 jobs copy FedAvg's, and none of FedAvg's reruns either way
    assert on_adding.get("hessian") == on_adding.get("hessian_plane") == 1
    details = json.loads(next((workdir / "results/hessian").glob("*/*/*/algo~afedprox/*/*/*/*/round~0/hessian.json"))
                         .read_text())
    assert details["shared_from"] == fedavg.run_id
    assert "hessian" not in on_dropping and "hessian_plane" not in on_dropping
