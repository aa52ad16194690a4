# Issue 7: cross-cutting tables and figures. final.csv (one row per run, with the analyses' headline
# numbers where the config computes them) and summary.csv (mean / std / 95% interval over seeds), curves
# over rounds, final accuracy by init and alpha (Nguyen et al. 2022), accuracy tables as figures (FedAlign
# Tables 1-4, 7). Included after the analysis rule files: it reads INTERPOLATION_PAIRS and HESSIAN_JOBS.

DATASET_MODELS = sorted({(run.dataset, run.model) for run in RUNS})
CURVES_FIGURE = results_path("figures/curves/{dataset}/{model}/{metric}")
ACCURACY_FIGURE = results_path("figures/accuracy/{dataset}/{model}/{kind}")
COST_FIGURE = results_path("figures/cost/{dataset}/{model}/cost")
HAS_COST_TABLE = "cost_table" in {r.name for r in workflow.rules}


def final_table_inputs(wildcards):
    inputs = {"rounds": results_path("tables/rounds.csv")}
    if globals().get("INTERPOLATION_PAIRS"):
        inputs["barriers"] = results_path("tables/barriers.csv")
        inputs["interpolation"] = results_path("tables/interpolation.csv")
    if globals().get("HESSIAN_JOBS"):
        inputs["hessian"] = results_path("tables/hessian.csv")
        inputs["hessian_clients"] = results_path("tables/hessian_clients.csv")
    return inputs


def figure_outputs(prefix, caption, category, subcategory=None, labels=None):
    """PNG (in the report), PDF and CSV outputs of a figure rule."""
    return {
        "png": report(
            f"{prefix}.png",
            caption=f"../workflow/report/{caption}",
            category=category,
            subcategory=subcategory,
            labels=labels,
        ),
        "pdf": f"{prefix}.pdf",
        "csv": f"{prefix}.csv",
    }


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
