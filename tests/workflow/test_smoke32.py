"""The 32x32 smoke run (`make smoke32`) up to its first jobs: benchmarks/smoke32.py writes the synthetic data set
once, config/smoke32.yaml plans every rule the default workflow plans, its partition jobs read the data through the
config's data_dir, and moving the data reruns nothing. (The whole run takes minutes: it is `make smoke32`, not a
test.)"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from helpers.imagenet import write_imagenet32
from helpers.workflow import ROOT, copy_workflow, planned_jobs, snakemake

from fedscape.core.manifest import output_records
from fedscape.core.paths import Results

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
    # Prepare: the smoke run's partitions, and its pretrained init on down-sampled ImageNet, made; then both data
    # sets moved to other folders (the old ones gone), and the config with them
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((workdir / SMOKE).read_text())
    write_data(workdir)
    write_imagenet32(workdir / "data" / "imagenet32", sizes=(16,))
    config["inits"]["pretrained"] = {"kind": "pretrained", "proxy_dir": "data/imagenet32", "epochs": 1,
                                     "batch_size": 8, "lr": 0.05}
    (workdir / "here.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    targets = ("partitions_table", Results.of(config).init_file(dataset="cifar10", model="resnet20", init="pretrained"))
    snakemake(workdir, *targets, "--configfile", "here.yaml", timeout=300)
    moved = {"cifar10": tmp_path / "scratch" / "cifar10", "imagenet32": tmp_path / "scratch" / "imagenet32"}
    (tmp_path / "scratch").mkdir()
    (workdir / config["datasets"]["cifar10"]["data_dir"]).rename(moved["cifar10"])
    (workdir / "data" / "imagenet32").rename(moved["imagenet32"])
    config["datasets"]["cifar10"]["data_dir"] = str(moved["cifar10"])
    config["inits"]["pretrained"]["proxy_dir"] = str(moved["imagenet32"])
    (workdir / "moved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # Execute: plan, then remake the partitions and the init, which read the data (the old folders are gone)
    planned = snakemake(workdir, *targets, "--configfile", "moved.yaml", "-n")
    snakemake(workdir, *targets, "--configfile", "moved.yaml", "--forcerun", "partition", "init", timeout=300)

    # Assert: nothing was planned, and the jobs' records say where they read
    assert "Nothing to be done" in planned.stdout + planned.stderr
    records = output_records(str(workdir / config["results_dir"]))
    read = [r["data_locations"] for out, r in records.items() if out.endswith("partition.npz")]
    assert read and all(r == {"cifar10": {"data_dir": str(moved["cifar10"]), "download": False}} for r in read)
    init = next(r for out, r in records.items() if out.endswith(targets[1]))
    assert init["data_locations"] == {"cifar10": {"data_dir": str(moved["cifar10"]), "download": False},
                                      "inits.pretrained": {"proxy_data_dir": None,
                                                           "proxy_dir": str(moved["imagenet32"])}}
