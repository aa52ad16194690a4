"""Config validation: every bad config fails before any job runs, naming the offending key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PLANNING_SCRIPT = r"""
import glob, importlib, json, os, re, sys

root = sys.argv[1]
os.chdir(root)
for rule_file in sorted(glob.glob("rules/*.smk")):
    for module in re.findall(r"^\s*from (fedscape[.\w]*) import", open(rule_file).read(), re.M):
        importlib.import_module(module)

from fedscape.analysis.hessian.definitions import CLIENT_COLUMNS, hessian_columns
from fedscape.core.paths import Results
from fedscape.core.runs import Run, build_runs
from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
from fedscape.plan.hessian import hessian_job_settings, hessian_jobs
from fedscape.plan.init import init_input_paths, init_settings
from fedscape.plan.landscape import (chunk_settings, figure_settings, hessian_plane_path, landscape_plans,
                                     overlay_data, plane_settings, surface_settings)
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import all_targets, load_config

jobs = 0
for path in ["config/config.yaml", *sorted(glob.glob("config/papers/*.yaml"))]:
    config = load_config(path, "workflow/schemas/config.schema.yaml")
    runs = build_runs(config)
    settings = []
    for run in runs:
        wildcards = {k: str(v) for k, v in run.fields().items()}
        settings.append(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed))
        settings.append(init_settings(config, runs, run.dataset, run.model, run.init))
        settings.append(init_input_paths(config, runs, run.dataset, run.model, run.init))
        settings.append(train_settings(config, Run.from_wildcards(wildcards)))
    settings += [interpolation_settings(config, p) for p in interpolation_pairs(config, runs)]
    settings += [layer_settings(config, p, r) for p in layer_pairs(config, runs) for r in p.rounds]
    settings += [hessian_job_settings(config, runs, run, r) for run, r in hessian_jobs(config, runs)]
    settings += [hessian_columns(config["hessian"]["top_k"]), CLIENT_COLUMNS]
    for plan in landscape_plans(config, runs):
        settings += [plane_settings(config, plan), hessian_plane_path(plan, Results.of(config))]
        for data in plan.data:
            settings += [surface_settings(config, plan, data), figure_settings(config, plan, data),
                         overlay_data(plan, data)]
            settings += [chunk_settings(config, plan, data, i) for i in range(plan.spec["chunks"])]
    settings += all_targets(config, runs)
    json.dumps(settings)
    jobs += len(settings)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "matplotlib"})
print(json.dumps({"settings": jobs, "heavy": heavy}))
"""


def test_planning_is_torch_free():
    """Validating every shipped config and building every job's settings imports no torch (nor matplotlib):
    `snakemake -n` would otherwise pay ~1.5-2.5 s for `import torch` on every dry run."""
    proc = subprocess.run([sys.executable, "-c", PLANNING_SCRIPT, str(ROOT)], capture_output=True, text=True,
                          timeout=300)

    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["settings"] > 0
    assert result["heavy"] == [], f"planning imported {result['heavy']}"


def test_a_yaml_syntax_error_in_the_default_config_names_its_line(tmp_path):
    """The Snakefile reads config/config.yaml itself before Snakemake does (whose message has no place)."""
    from helpers.workflow import copy_workflow, snakemake

    # Prepare: a key indented one space too far in the default config
    workdir = copy_workflow(tmp_path / "wf")
    config = workdir / "config" / "config.yaml"
    lines = config.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("  local_epochs:"))
    lines[index] = " " + lines[index]
    config.write_text("\n".join(lines) + "\n")

    # Execute
    proc = snakemake(workdir, "-n", check=False, timeout=300)

    # Assert
    assert proc.returncode != 0
    assert f"config/config.yaml: line {index + 1}, column 16: YAML syntax error: mapping values are not allowed " \
           "here" in proc.stdout + proc.stderr


def test_a_missing_data_dir_stops_a_run_before_any_job_but_not_a_dry_run(tmp_path):
    import yaml
    from helpers.workflow import copy_workflow, snakemake

    # Prepare: CIFAR-10 without a data_dir (a laptop that only plans, or a forgotten key)
    workdir = copy_workflow(tmp_path / "wf")
    config = {"datasets": {"cifar10": {}}, "models": ["cnn_small"], "alphas": ["iid"], "num_clients": [2],
              "training": {"rounds": 1, "local_epochs": 1, "save_clients_at": []}}
    (workdir / "cifar.yaml").write_text(yaml.safe_dump(config))

    # Execute
    dry = snakemake(workdir, "--configfile", "cifar.yaml", "-n", check=False, timeout=300)
    run = snakemake(workdir, "--configfile", "cifar.yaml", check=False, timeout=300)

    # Assert
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "partition" in dry.stdout and "train" in dry.stdout
    assert run.returncode != 0
    assert "datasets.cifar10.data_dir: cifar10 (CIFAR-10 (Krizhevsky 2009), python version from data_dir) is " \
           "read from a data_dir, and none is set" in run.stdout + run.stderr
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()
