# The run tables: every client split (partitions.csv) and every run's rounds (rounds.csv).

from fedscape.core.config import result_version_params
from fedscape.plan import tables as tables_plan
from fedscape.plan.tables import (
    partition_counts,
    rounds_columns,
    rounds_optional,
    swa_bn_models,
)
from fedscape.plan.train import run_files


rule partitions_table:
    input:
        lambda wildcards: partition_counts(config, RUNS),
    output:
        RESULTS.table("partitions"),
    log:
        RESULTS.job_log("partitions_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(tables_plan.RESULT_VERSIONS["partitions_table"]),
    script:
        "../workflow/scripts/partitions_table.py"


rule rounds_table:
    input:
        lambda wildcards: run_files(config, RUNS, "metrics"),
    output:
        RESULTS.table("rounds"),
    log:
        RESULTS.job_log("rounds_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(tables_plan.RESULT_VERSIONS["rounds_table"]),
        columns=rounds_columns(config, RUNS),
        optional=rounds_optional(config, RUNS),
        bn_models=swa_bn_models(config, RUNS),
    script:
        "../workflow/scripts/rounds_table.py"
