# Cost accounting (issue 3; FedAlign paper Table 5): median seconds per round and peak memory per
# algorithm, model and device, from every train job's metrics.csv and meta.json.


rule cost_table:
    input:
        metrics=cost_metrics_of_runs,
        metas=cost_metas_of_runs,
    output:
        table=results_path("tables/cost.csv"),
    log:
        "logs/tables/cost.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/cost.py"


TARGETS.extend([results_path("tables/cost.csv")])
