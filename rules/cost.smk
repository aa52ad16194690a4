# Cost accounting (FedAlign paper, Table 5): seconds per round and peak memory per algorithm and device.

from fedscape.core.config import result_version_params
from fedscape.plan import cost as cost_plan
from fedscape.plan.train import run_files


rule cost_table:
    input:
        metrics=lambda wildcards: run_files(config, RUNS, "metrics"),
        metas=lambda wildcards: run_files(config, RUNS, "meta"),
    output:
        table=RESULTS.table("cost"),
    log:
        RESULTS.job_log("cost_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(cost_plan.RESULT_VERSIONS["cost_table"]),
    script:
        "../workflow/scripts/cost_table.py"
