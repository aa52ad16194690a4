# fedscape: loss-landscape analyses of federated learning on non-IID data.
# Thin entry point: config, validation, the rule files (one per stage, in any order) and `rule all`.

from pathlib import Path

from snakemake.io import IOFile
from snakemake.utils import min_version

from fedscape.core.config import load_schema, read_config_file
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.plan.resources import (
    cpu_job_resources,
    export_local_card_limit,
    gpu_job_resources,
    local_gpu_slots,
)
from fedscape.plan.workflow import (
    all_targets,
    check_config,
    check_data,
    check_execution,
    check_failed_reruns,
    check_read_files,
    config_warnings,
    failed_rerun_warnings,
    recorded_params,
    recorded_inputs,
)

# (a line of its own: at the start of a line, Snakemake's parser takes the name for its keyword)
from fedscape.plan.workflow import wildcard_constraints

min_version("9.0")


report: "workflow/report/workflow.rst"


# A config given with --configfile replaces the default one rather than being merged into it. (Snakemake
# reads a --configfile before this file runs; the default one is read here first so that a YAML syntax
# error names its line.)
if not workflow.overwrite_configfiles:
    read_config_file("config/config.yaml")

    configfile: "config/config.yaml"


SCHEMA = load_schema(Path(workflow.basedir, "workflow/schemas/config.schema.yaml"))
check_config(config, SCHEMA, files=workflow.configfiles)
RUNS = build_runs(config)
RESULTS = Results.of(config)
if workflow.is_main_process:
    for line in config_warnings(config, RUNS, SCHEMA):
        logger.warning(f"fedscape: {line}")
    # a finished job run again that failed or was killed lost its outputs, which Snakemake does not make again while
    # files made from them exist: said on every run, a dry run too (`onstart` refuses to build on it)
    for line in failed_rerun_warnings(RESULTS.root):
        logger.warning(f"fedscape: {line}")
# The resources that say whether a GPU rule's job takes a card (fedscape.plan.resources): a local run (no --jobs to
# an executor: no `_nodes`) starts at most one GPU job per card at once unless `--resources gpu=N` says otherwise;
# a cluster places GPU jobs itself, each asking for a card unless training.device is cpu (the job step on the
# node is not the main process).
CLUSTER = workflow.global_resources["_nodes"].value is not None
GPU_JOB = gpu_job_resources(config, CLUSTER)
CPU_JOB = cpu_job_resources(CLUSTER)
# The local jobs (subprocesses of this process) learn how many GPU jobs of this run a card takes, and wait for a card
# below that where other workflows' jobs fill theirs (fedscape.core.gpus); a cluster's never wait. Told here as the
# run is planned, and again in `onstart`, once Snakemake knows whether it executes locally.
if workflow.is_main_process:
    if not CLUSTER and "gpu" not in workflow.global_resources:
        workflow.global_resources["gpu"] = local_gpu_slots(config)
    export_local_card_limit(
        config, not CLUSTER, workflow.global_resources.get("gpu").value
    )


# Snakemake's record of the params of the job that wrote a path (None: no records open). The GPU rules' settings keep
# a finished job's recorded text where they differ from it only in how the job computes (its memory settings:
# fedscape.plan.workflow.recorded_params, fedscape.core.jobs.kept_record), so lowering one reruns nothing finished.
READ_PARAMS = lambda path: (
    None if workflow.persistence is None else workflow.persistence.params(IOFile(path))
)
# and of its inputs: a job that copies keeps the unread inputs its record lists (fedscape.plan.hessian.plane_inputs)
READ_INPUTS = lambda path: recorded_inputs(
    lambda p: (
        None if workflow.persistence is None else workflow.persistence.input(IOFile(p))
    ),
    path,
)


wildcard_constraints:
    **wildcard_constraints(),


# The data directories and the results that the jobs about to run read (partitions, checkpoints, tables, .npz
# and JSON files: readable, and their job's) are checked when Snakemake starts executing, before the first job (and
# so before it deletes any job's outputs): Snakemake calls `onstart` only then (not for -n, --summary or --dag), so
# a dry run plans on a machine without the data. (`workflow.dryrun` is not yet known while this file is read.) So is
# a job run again that did not finish, where the targets are made from it and it does not run (`check_failed_reruns`).
onstart:
    jobs = list(workflow.dag.needrun_jobs())
    named = [(job.rule.name, job.wildcards_dict) for job in jobs]
    check_execution(
        config,
        RUNS,
        named,
        CLUSTER,
        workflow.local_exec,
        "gpu" in workflow.global_resources,
    )
    export_local_card_limit(
        config, workflow.local_exec, workflow.global_resources.get("gpu").value
    )
    check_data(config, RUNS, named)
    outputs = [f for job in jobs for f in job.output]
    check_read_files([f for job in jobs for f in job.input], outputs, RESULTS.root)
    check_failed_reruns(
        RESULTS.root, [f for job in workflow.dag.jobs for f in job.output], outputs
    )


for rule_file in sorted(Path(workflow.basedir, "rules").glob("*.smk")):

    include: rule_file


rule all:
    default_target: True
    input:
        all_targets(config, RUNS),
