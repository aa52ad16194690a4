# Shared set-up and input functions of the rule files.

import os

from fedscape.plan import (
    WILDCARD_CONSTRAINTS,
    Run,
    build_runs,
    check_config,
    init_settings,
    partition_settings,
    train_settings,
)
from fedscape.config import load_schema

check_config(config, load_schema(workflow.source_path("../workflow/schemas/config.schema.yaml")))
RUNS = build_runs(config)
# Every output goes below the configured results directory; logs mirror its layout under logs/.
RESULTS = os.path.normpath(config["results_dir"])
LOGS = "logs"


def results_path(path):
    """`path` (relative to the results directory) below the configured results directory."""
    return f"{RESULTS}/{path}"


def log_path(path):
    """The log path mirroring an output path: the results directory replaced by logs/."""
    return f"{LOGS}/{path[len(RESULTS) + 1:]}" if path.startswith(f"{RESULTS}/") else path


TRAIN_DIR = results_path(
    "train/{dataset}/{model}/init~{init}/algo~{algorithm}/alpha~{alpha}/"
    "clients~{num_clients}/part~{participation}/seed~{seed}"
)
TRAIN_LOG = log_path(TRAIN_DIR)
PARTITION_DIR = results_path("partitions/{dataset}/clients~{num_clients}/alpha~{alpha}/seed~{seed}")
INIT_FILE = results_path("init/{dataset}/{model}/init~{init}/init.pt")


wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


def run_dir(run):
    return f"{RESULTS}/train/{run.run_id}"


# Final targets of `rule all`; every stage's rule file extends this list.
TARGETS = [results_path("tables/partitions.csv"), results_path("tables/rounds.csv")]


def partition_params(wildcards):
    return partition_settings(
        config,
        wildcards.dataset,
        wildcards.alpha,
        int(wildcards.num_clients),
        int(wildcards.seed),
    )


def init_params(wildcards):
    return init_settings(config, wildcards.dataset, wildcards.model, wildcards.init)


def train_params(wildcards):
    return train_settings(config, Run.from_wildcards(wildcards))


def partition_counts_of_runs(wildcards):
    ids = sorted({run.partition_id for run in RUNS})
    return [f"{RESULTS}/partitions/{pid}/counts.csv" for pid in ids]


def metrics_of_runs(wildcards):
    return [f"{run_dir(run)}/metrics.csv" for run in RUNS]


# -- issue 3: inits (iid_warmup / continue inputs) and cost accounting ---------------------------
def init_inputs(wildcards):
    """The IID partition of an iid_warmup init, the source trajectory of a continue init."""
    from fedscape.inits import init_input_paths

    return init_input_paths(config, RUNS, wildcards.dataset, wildcards.model, wildcards.init)


def cost_metrics_of_runs(wildcards):
    return [f"{run_dir(run)}/metrics.csv" for run in RUNS]


def cost_metas_of_runs(wildcards):
    return [f"{run_dir(run)}/meta.json" for run in RUNS]
