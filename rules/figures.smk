# Issue 7: cross-cutting tables and figures. final.csv (one row per run, with the analyses' headline
# numbers where the config computes them) and summary.csv (mean / std / 95% interval over seeds), curves
# over rounds, final accuracy by init and alpha (Nguyen et al. 2022), accuracy tables as figures (FedAlign
# Tables 1-4, 7). Included after the analysis rule files: it reads INTERPOLATION_PAIRS and HESSIAN_JOBS.

HAS_COST_TABLE = "cost_table" in {r.name for r in workflow.rules}


rule final_table:
    input:
        unpack(final_table_inputs),
    output:
        table=report(
            results_path("tables/final.csv"),
            caption="../workflow/report/final_table.rst",
            category="Tables",
        ),
    log:
        "logs/tables/final.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/summary_tables.py"


rule summary_table:
    input:
        final=results_path("tables/final.csv"),
    output:
        table=report(
            results_path("tables/summary.csv"),
            caption="../workflow/report/summary_table.rst",
            category="Tables",
        ),
    log:
        "logs/tables/summary.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/summary_tables.py"


rule curves_figure:
    input:
        rounds=results_path("tables/rounds.csv"),
    output:
        **figure_outputs(
            CURVES_FIGURE,
            "curves.rst",
            "Training curves",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}", "metric": "{metric}"},
        ),
    log:
        "logs/figures/curves/{dataset}/{model}/{metric}.log",
    wildcard_constraints:
        metric="accuracy|loss",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/figures.py"


rule accuracy_figure:
    input:
        final=results_path("tables/final.csv"),
    output:
        **figure_outputs(
            ACCURACY_FIGURE,
            "accuracy.rst",
            "Final accuracy",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}", "figure": "{kind}"},
        ),
    log:
        "logs/figures/accuracy/{dataset}/{model}/{kind}.log",
    wildcard_constraints:
        kind="by_init|table|headline",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/figures.py"


rule cost_figure:
    input:
        cost=results_path("tables/cost.csv"),
    output:
        **figure_outputs(
            COST_FIGURE,
            "cost.rst",
            "Cost",
            subcategory="{dataset} / {model}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    log:
        "logs/figures/cost/{dataset}/{model}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/figures.py"


TARGETS.extend([results_path("tables/final.csv"), results_path("tables/summary.csv")])
TARGETS.extend(
    f"{CURVES_FIGURE.format(dataset=d, model=m, metric=metric)}.{ext}"
    for d, m in DATASET_MODELS
    for metric in ("accuracy", "loss")
    for ext in ("png", "pdf", "csv")
)
TARGETS.extend(
    f"{ACCURACY_FIGURE.format(dataset=d, model=m, kind=kind)}.{ext}"
    for d, m in DATASET_MODELS
    for kind in ("by_init", "table", "headline")
    for ext in ("png", "pdf", "csv")
)
if HAS_COST_TABLE:
    TARGETS.extend(
        f"{COST_FIGURE.format(dataset=d, model=m)}.{ext}"
        for d, m in DATASET_MODELS
        for ext in ("png", "pdf", "csv")
    )
