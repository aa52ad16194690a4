"""The papers as configs (config/papers/): each passes the schema and cross-key checks, carries the
paper's settings, documents its cost, has a digits variant, and dry-runs without its data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.papers import CONFIGS, runs_of
from helpers.workflow import copy_workflow, planned_jobs


def dry_run_jobs(workdir: Path, name: str) -> dict[str, int]:
    return planned_jobs(workdir, "--configfile", f"config/papers/{name}.yaml")


def test_every_paper_config_dry_runs_without_its_data(tmp_path):
    workdir = copy_workflow(tmp_path)
    assert not (workdir / "data").exists()  # no CIFAR, no ImageNet32: the DAG must not load datasets

    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = dict(zip(CONFIGS, pool.map(lambda n: dry_run_jobs(workdir, n), CONFIGS), strict=True))

    for name in CONFIGS:
        assert jobs[name].get("train") == len(runs_of(name)), name
        for rule in ("final_table", "summary_table", "curves_figure", "accuracy_figure"):
            assert jobs[name].get(rule, 0) >= 1, (name, rule)
        assert jobs[name]["total"] > jobs[name]["train"]
    assert not (workdir / "results").exists()
