# The report across runs: final.csv (one row per run, with the analyses' headline numbers where the config
# computes them), summary.csv (mean / std / 95% interval over seeds), paired_differences.csv (each headline row
# against its setting's baseline, seed by seed), curves over rounds, final accuracy by init and alpha (Nguyen et al.
# 2022), accuracy tables (FedAlign Tables 1-4, 7) and cost (Table 5).

from fedscape.core.config import result_version_params
from fedscape.core.paths import ACCURACY_FIGURE, COST_FIGURE, CURVES_FIGURE
from fedscape.plan import report as report_plan


rule final_table:
    input:
        unpack(lambda wildcards: report_plan.final_table_inputs(config, RUNS)),
    output:
        table=report(
            RESULTS.table("final"),
            caption="../workflow/report/final_table.rst",
            category="Tables",
        ),
    log:
        RESULTS.job_log("final_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["final_table"]),
    script:
        "../workflow/scripts/final_table.py"


rule summary_table:
    input:
        final=RESULTS.table("final"),
    output:
        table=report(
            RESULTS.table("summary"),
            caption="../workflow/report/summary_table.rst",
            category="Tables",
        ),
    log:
        RESULTS.job_log("summary_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["summary_table"]),
    script:
        "../workflow/scripts/summary_table.py"


rule paired_differences_table:
    input:
        final=RESULTS.table("final"),
    output:
        table=RESULTS.table("paired_differences"),
    log:
        RESULTS.job_log("paired_differences_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["paired_differences_table"]),
    script:
        "../workflow/scripts/paired_differences_table.py"


rule curves_figure:
    input:
        rounds=RESULTS.table("rounds"),
    output:
        **RESULTS.figure_outputs(
            report,
            CURVES_FIGURE,
            caption="../workflow/report/curves.rst",
            category="Training curves",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}", "metric": "{metric}"},
        ),
    log:
        RESULTS.job_log("curves_figure"),
    wildcard_constraints:
        metric="|".join(report_plan.CURVE_METRICS),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["curves_figure"]),
    script:
        "../workflow/scripts/curves_figure.py"


rule accuracy_figure:
    input:
        final=RESULTS.table("final"),
    output:
        **RESULTS.figure_outputs(
            report,
            ACCURACY_FIGURE,
            caption="../workflow/report/accuracy.rst",
            category="Final accuracy",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}", "figure": "{kind}"},
        ),
    log:
        RESULTS.job_log("accuracy_figure"),
    wildcard_constraints:
        kind="|".join(report_plan.ACCURACY_KINDS),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["accuracy_figure"]),
        work=lambda wildcards: report_plan.local_work(config, RUNS),
    script:
        "../workflow/scripts/accuracy_figure.py"


rule cost_figure:
    input:
        cost=RESULTS.table("cost"),
    output:
        **RESULTS.figure_outputs(
            report,
            COST_FIGURE,
            caption="../workflow/report/cost.rst",
            category="Cost",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    log:
        RESULTS.job_log("cost_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(report_plan.RESULT_VERSIONS["cost_figure"]),
    script:
        "../workflow/scripts/cost_figure.py"
