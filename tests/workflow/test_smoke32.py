"""The 32x32 smoke run (`make smoke32`) up to its first jobs: benchmarks/smoke32.py writes the synthetic data set
once, config/smoke32.yaml plans every rule the default workflow plans, and its partition jobs read the data through
the config's data_dir. (The whole run takes minutes: it is `make smoke32`, not a test.)"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from helpers.workflow import ROOT, copy_workflow, planned_jobs, snakemake

from fedscape.core.manifest import output_records

SMOKE = "config/smoke32.yaml"


def write_data(workdir: Path) -> str:
    """Run benchmarks/smoke32.py (as `make smoke32` does) in `workdir`; its output."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "smoke32.py"), "--configfile", SMOKE],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_smoke32_plans_every_rule_of_the_default_workflow_and_reads_the_synthetic_data(tmp_path):
    # Prepare: the workflow, and the synthetic data set where the config reads it (the second call finds it there)
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((workdir / SMOKE).read_text())
    written, again = write_data(workdir), write_data(workdir)

    # Execute
    with ThreadPoolExecutor(max_workers=2) as pool:
        smoke, default = pool.map(lambda args: planned_jobs(workdir, *args), [("--configfile", SMOKE), ()])
    planned_only = not (workdir / config["results_dir"]).exists()
    snakemake(workdir, "--configfile", SMOKE, "--until", "partitions_table", timeout=300)

    # Assert
    data_dir = workdir / config["datasets"]["cifar10"]["data_dir"]
    assert written.startswith("wrote") and again.startswith("synthetic CIFAR-10") and "already in" in again
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert set(smoke) == set(default)
    assert smoke["train"] == default["train"]
    assert planned_only
    rows = (workdir / config["results_dir"] / "tables" / "partitions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(config["alphas"]) * config["num_clients"][0]  # a row per client of each split


def test_moved_data_reruns_nothing_and_is_read_where_it_is_now(tmp_path):
    # Prepare: the smoke run's partitions made, then its data set moved to another folder, and the config with it
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((workdir / SMOKE).read_text())
    write_data(workdir)
    snakemake(workdir, "--configfile", SMOKE, "--until", "partitions_table", timeout=300)
    old = workdir / config["datasets"]["cifar10"]["data_dir"]
    new = tmp_path / "scratch" / "cifar10"
    new.parent.mkdir()
    old.rename(new)
    config["datasets"]["cifar10"]["data_dir"] = str(new)
    (workdir / "moved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # Execute: plan, then remake the partitions, which read the data (the old folder is gone)
    planned = planned_jobs(workdir, "--configfile", "moved.yaml", "--until", "partitions_table")
    snakemake(workdir, "--configfile", "moved.yaml", "--until", "partitions_table", "--forcerun", "partition",
              timeout=300)

    # Assert: nothing was planned, and the partition jobs' records say where they read
    assert planned == {"total": 0}
    records = output_records(str(workdir / config["results_dir"]))
    read = [r["data_locations"] for out, r in records.items() if out.endswith("partition.npz")]
    assert read and all(r == {"cifar10": {"data_dir": str(new), "download": False}} for r in read)
