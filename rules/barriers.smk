# Linear-interpolation barriers (Li et al. 2022) and layer-wise linear mode connectivity (Adilova et al.
# 2023) between pairs of checkpoints named in the config (`interpolation.pairs`, `layer_barriers.pairs`).

from fedscape.analysis.barriers.definitions import INTERPOLATION_FILES, LAYER_FILES
from fedscape.core.config import result_version_params
from fedscape.core.paths import (
    INTERPOLATION_DIR,
    INTERPOLATION_FIGURE,
    LAYER_ALIGNED_FIGURE,
    LAYER_CUMULATION_FIGURE,
    LAYER_DISTANCE_FIGURE,
    LAYER_FIGURE,
    LAYER_TRAINING_FIGURE,
    LAYERWISE_DIR,
)
from fedscape.plan import barriers as barrier_plan
from fedscape.plan.resources import data_job_mem_mb

BARRIER_PAIR = r"[A-Za-z0-9_.-]+"
# Every pair resolved once (the config is checked before the rule files are read).
INTERPOLATION_PAIRS = {
    p.label: p for p in barrier_plan.interpolation_pairs(config, RUNS)
}
LAYER_PAIRS = {p.label: p for p in barrier_plan.layer_pairs(config, RUNS)}


rule interpolation:
    input:
        unpack(
            lambda wildcards: barrier_plan.interpolation_inputs(
                config, INTERPOLATION_PAIRS[wildcards.pair]
            )
        ),
    output:
        **{
            k: f"{RESULTS(INTERPOLATION_DIR)}/{n}"
            for k, n in INTERPOLATION_FILES.items()
        },
    log:
        RESULTS.job_log("interpolation"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    conda:
        "../envs/torch.yaml"
    resources:
        **GPU_JOB,
        # host memory: the data set of the pair's runs (they share it) is decoded whole before it is copied to the card
        mem_mb=lambda wildcards, attempt: data_job_mem_mb(
            "interpolation",
            config,
            INTERPOLATION_PAIRS[wildcards.pair].run_a.dataset,
            attempt,
        ),
    params:
        settings=lambda wildcards: barrier_plan.interpolation_settings(
            config,
            INTERPOLATION_PAIRS[wildcards.pair],
            recorded_params(READ_PARAMS, rules.interpolation.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/interpolation.py"


rule interpolation_tables:
    input:
        curves=lambda wildcards: barrier_plan.interpolation_curves(config, RUNS),
    output:
        interpolation=RESULTS.table("interpolation"),
        barriers=RESULTS.table("barriers"),
    log:
        RESULTS.job_log("interpolation_tables"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["interpolation_tables"]),
    script:
        "../workflow/scripts/interpolation_tables.py"


rule interpolation_figure:
    input:
        table=RESULTS.table("interpolation"),
    output:
        **RESULTS.figure_outputs(
            report,
            INTERPOLATION_FIGURE,
            caption="../workflow/report/barriers_interpolation.rst",
            category="Barriers",
            subcategory="Linear interpolation",
        ),
    log:
        RESULTS.job_log("interpolation_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["interpolation_figure"]),
    script:
        "../workflow/scripts/interpolation_figure.py"


rule layer_barriers:
    input:
        unpack(
            lambda wildcards: barrier_plan.layerwise_inputs(
                config, LAYER_PAIRS[wildcards.pair]
            )
        ),
    output:
        **{k: f"{RESULTS(LAYERWISE_DIR)}/{n}" for k, n in LAYER_FILES.items()},
    log:
        RESULTS.job_log("layer_barriers"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
        round=r"[0-9]+",
    conda:
        "../envs/torch.yaml"
    resources:
        **GPU_JOB,
        # host memory: the data set of the pair's runs (they share it) is decoded whole before it is copied to the card
        mem_mb=lambda wildcards, attempt: data_job_mem_mb(
            "layer_barriers",
            config,
            LAYER_PAIRS[wildcards.pair].run_a.dataset,
            attempt,
        ),
    params:
        settings=lambda wildcards: barrier_plan.layer_settings(
            config,
            LAYER_PAIRS[wildcards.pair],
            int(wildcards.round),
            recorded_params(READ_PARAMS, rules.layer_barriers.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/layer_barriers.py"


rule layer_barrier_tables:
    input:
        barriers=lambda wildcards: barrier_plan.layerwise_outputs(
            config, RUNS, "barriers"
        ),
        distances=lambda wildcards: barrier_plan.layerwise_outputs(
            config, RUNS, "distances"
        ),
    output:
        barriers=RESULTS.table("layer_barriers"),
        distances=RESULTS.table("layer_distances"),
    log:
        RESULTS.job_log("layer_barrier_tables"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_barrier_tables"]),
    script:
        "../workflow/scripts/layer_barrier_tables.py"


rule layer_consecutive_table:
    input:
        table=RESULTS.table("layer_barriers"),
    output:
        table=RESULTS.table("layer_consecutive"),
    log:
        RESULTS.job_log("layer_consecutive_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_consecutive_table"]),
        pairs=barrier_plan.consecutive_pairs(config, RUNS),
    script:
        "../workflow/scripts/layer_consecutive_table.py"


rule layer_barrier_figures:
    input:
        table=RESULTS.table("layer_barriers"),
    output:
        **{
            f"{split}_{ext}": (
                report(
                    path,
                    caption="../workflow/report/barriers_layerwise.rst",
                    category="Barriers",
                    subcategory="Layer-wise",
                )
                if ext == "png"
                else path
            )
            for split in ("train", "test")
            for ext, path in RESULTS.figure(LAYER_FIGURE, split=split).items()
        },
    log:
        RESULTS.job_log("layer_barrier_figures"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_barrier_figures"]),
    script:
        "../workflow/scripts/layer_barrier_figures.py"


rule layer_distance_figure:
    input:
        table=RESULTS.table("layer_distances"),
    output:
        **RESULTS.figure_outputs(
            report,
            LAYER_DISTANCE_FIGURE,
            caption="../workflow/report/barriers_layer_distances.rst",
            category="Barriers",
            subcategory="Layer-wise",
        ),
    log:
        RESULTS.job_log("layer_distance_figure"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_distance_figure"]),
        rounds=lambda wildcards: list(LAYER_PAIRS[wildcards.pair].rounds),
    script:
        "../workflow/scripts/layer_distance_figure.py"


rule layer_cumulation_figures:
    input:
        table=RESULTS.table("layer_barriers"),
    output:
        **{
            f"{split}_{ext}": (
                report(
                    path,
                    caption="../workflow/report/barriers_layer_cumulation.rst",
                    category="Barriers",
                    subcategory="Layer-wise",
                )
                if ext == "png"
                else path
            )
            for split in ("train", "test")
            for ext, path in RESULTS.figure(
                LAYER_CUMULATION_FIGURE, split=split
            ).items()
        },
    log:
        RESULTS.job_log("layer_cumulation_figures"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(
            barrier_plan.RESULT_VERSIONS["layer_cumulation_figures"]
        ),
    script:
        "../workflow/scripts/layer_cumulation_figures.py"


rule layer_aligned_figures:
    input:
        table=RESULTS.table("layer_barriers"),
    output:
        **{
            f"{split}_{ext}": (
                report(
                    path,
                    caption="../workflow/report/barriers_layer_aligned.rst",
                    category="Barriers",
                    subcategory="Layer-wise",
                )
                if ext == "png"
                else path
            )
            for split in ("train", "test")
            for ext, path in RESULTS.figure(LAYER_ALIGNED_FIGURE, split=split).items()
        },
    log:
        RESULTS.job_log("layer_aligned_figures"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_aligned_figures"]),
        modes=lambda wildcards: list(config["layer_barriers"]["modes"]),
    script:
        "../workflow/scripts/layer_aligned_figures.py"


rule layer_training_figure:
    input:
        barriers=RESULTS.table("layer_barriers"),
        distances=RESULTS.table("layer_distances"),
    output:
        **RESULTS.figure_outputs(
            report,
            LAYER_TRAINING_FIGURE,
            caption="../workflow/report/barriers_layer_training.rst",
            category="Barriers",
            subcategory="Layer-wise",
        ),
    log:
        RESULTS.job_log("layer_training_figure"),
    wildcard_constraints:
        pair=BARRIER_PAIR,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(barrier_plan.RESULT_VERSIONS["layer_training_figure"]),
    script:
        "../workflow/scripts/layer_training_figure.py"
