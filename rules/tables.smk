# The run tables: every client split (partitions.csv) and every run's rounds (rounds.csv).

from fedscape.plan.tables import partition_counts, rounds_columns, rounds_optional
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
        columns=rounds_columns(config, RUNS),
        optional=rounds_optional(config, RUNS),
    script:
        "../workflow/scripts/rounds_table.py"
