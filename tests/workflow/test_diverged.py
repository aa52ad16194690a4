"""Numerical trouble: every analysis stage skips a diverged run with a warning and writes NaN.
One healthy and one diverged run (tests/diverged_fixture.py; huge learning rate: the loss is NaN after
round 1, so rounds 2..final are missing and round 1's model is NaN) go through the Hessian, barrier,
client-statistics, landscape and summary stages at library level, and once through the workflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.diverged import raw_config
from helpers.workflow import copy_workflow, snakemake

from fedscape.analysis.landscape.planes import load_plane

NUM_CLIENTS = 3


# -- the workflow ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_workflow_with_a_diverged_run_completes_and_marks_it(tmp_path):
    """`snakemake` with the Hessian and barrier stages completes, and the tables mark the diverged run (~20 jobs)."""
    workdir = copy_workflow(tmp_path / "wf")
    cfg = raw_config()
    cfg["training"].update(rounds=2, save_clients_at=[1])
    cfg["interpolation"]["pairs"] = {"ok_vs_boom": cfg["interpolation"]["pairs"]["ok_vs_boom"]}
    cfg["layer_barriers"]["pairs"] = {"boom_clients": {**cfg["layer_barriers"]["pairs"]["boom_clients"],
                                                       "rounds": [1]}}
    cfg["client_stats"]["enabled"] = False
    del cfg["landscapes"]  # library-level tests above cover these with the same runs
    (workdir / "boom.yaml").write_text(yaml.safe_dump(cfg))

    tables = ["final", "summary", "hessian", "hessian_clients", "barriers", "layer_barriers"]
    figures = ["hessian/lambda_trace_by_algorithm", "hessian/spectral_density", "barriers/interpolation",
               "barriers/layerwise/boom_clients/train"]
    targets = [*(f"results/tables/{t}.csv" for t in tables), *(f"results/figures/{f}.png" for f in figures)]
    snakemake(workdir, *targets, "--configfile", "boom.yaml")  # targets first: --configfile takes what follows

    for target in targets:
        assert (workdir / target).stat().st_size > 0
    final = pd.read_csv(workdir / "results/tables/final.csv").set_index("algorithm")
    assert final.loc["boom", "status"] == "diverged" and final.loc["fedavg", "status"] == "ok"
    assert np.isnan(final.loc["boom", "lambda_max"]) and np.isfinite(final.loc["fedavg", "lambda_max"])
    summary = pd.read_csv(workdir / "results/tables/summary.csv").set_index("algorithm")
    assert summary.loc["boom", "n_ok"] == 0 and summary.loc["fedavg", "n_ok"] == 1
    hessian = pd.read_csv(workdir / "results/tables/hessian.csv")
    assert set(hessian.loc[hessian["run_id"].str.contains("algo~boom"), "status"]) == {"diverged"}
    assert set(hessian.loc[hessian["run_id"].str.contains("algo~fedavg"), "status"]) == {"ok"}
    assert pd.read_csv(workdir / "results/tables/barriers.csv")["barrier_loss"].isna().all()
    assert pd.read_csv(workdir / "results/tables/layer_barriers.csv")["barrier_loss"].isna().all()
    # the diverged run's eigenvector planes (their own jobs): all NaN, marked diverged
    boom = hessian.loc[hessian["run_id"].str.contains("algo~boom") & (hessian["data"] == "all")]
    planes = [f"results/hessian/{row.run_id}/round~{row.round}/eigen_plane.npz" for row in boom.itertuples()]
    snakemake(workdir, *planes, "--configfile", "boom.yaml")
    for plane in planes:
        assert load_plane(workdir / plane).extra["status"] == "diverged"
