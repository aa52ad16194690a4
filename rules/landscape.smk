# Loss landscapes (Li et al. 2018; Li et al. 2022, FL loss-landscape pilot study). Each `landscapes` entry of
# the config is one plane (rule landscape_plane) with one surface per data set; a surface's grid is split into
# chunks that run as separate, cached jobs and are gathered into one .npz, then drawn.

from fedscape.analysis.landscape.definitions import (
    CHUNK_FILE,
    FIGURE_FILES,
    PLANE_FILES,
    SURFACE_FILE,
)
from fedscape.core.config import result_version_params
from fedscape.core.paths import LANDSCAPE_DIR, SURFACE_DIR
from fedscape.plan import landscape as landscape_plan
from fedscape.plan.resources import data_job_mem_mb

# Every `landscapes` entry resolved once (the config is checked before the rule files are read).
LANDSCAPES = {plan.label: plan for plan in landscape_plan.landscape_plans(config, RUNS)}

LANDSCAPE_WILDCARDS = {
    "surface": r"[A-Za-z0-9_.-]+",
    "data": r"train|test|client~[0-9]+",
    "chunk": r"[0-9]+",
}


rule landscape_plane:
    input:
        unpack(
            lambda wildcards: landscape_plan.plane_inputs(
                config,
                LANDSCAPES[wildcards.surface],
            )
        ),
    output:
        **{key: f"{RESULTS(LANDSCAPE_DIR)}/{name}" for key, name in PLANE_FILES.items()},
    log:
        RESULTS.job_log("landscape_plane"),
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/light.yaml"
    params:
        settings=lambda wildcards: landscape_plan.plane_settings(
            config,
            LANDSCAPES[wildcards.surface],
            recorded_params(READ_PARAMS, rules.landscape_plane.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/landscape_plane.py"


rule landscape_chunk:
    input:
        unpack(
            lambda wildcards: landscape_plan.chunk_inputs(
                config,
                LANDSCAPES[wildcards.surface],
                wildcards.data,
            )
        ),
    output:
        chunk=f"{RESULTS(SURFACE_DIR)}/{CHUNK_FILE.format(chunk='{chunk}')}",
    log:
        RESULTS.job_log("landscape_chunk"),
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/torch.yaml"
    resources:
        **GPU_JOB,
        # host memory: the surface's data set, decoded whole on the CPU, and the rows it evaluates
        mem_mb=lambda wildcards, attempt: data_job_mem_mb(
            "landscape_chunk", config, wildcards.dataset, attempt
        ),
    params:
        settings=lambda wildcards: landscape_plan.chunk_settings(
            config,
            LANDSCAPES[wildcards.surface],
            wildcards.data,
            int(wildcards.chunk),
            recorded_params(READ_PARAMS, rules.landscape_chunk.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/landscape_chunk.py"


rule landscape_gather:
    input:
        **{key: f"{RESULTS(LANDSCAPE_DIR)}/{name}" for key, name in PLANE_FILES.items()},
        chunks=lambda wildcards: landscape_plan.chunk_files(
            config,
            LANDSCAPES[wildcards.surface],
            wildcards.data,
        ),
    output:
        surface=f"{RESULTS(SURFACE_DIR)}/{SURFACE_FILE}",
    log:
        RESULTS.job_log("landscape_gather"),
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        settings=lambda wildcards: landscape_plan.surface_settings(
            config,
            LANDSCAPES[wildcards.surface],
            wildcards.data,
        ),
    script:
        "../workflow/scripts/landscape_gather.py"


rule landscape_figure:
    input:
        unpack(
            lambda wildcards: landscape_plan.figure_inputs(
                config,
                LANDSCAPES[wildcards.surface],
                wildcards.data,
            )
        ),
    output:
        pdf=f"{RESULTS(SURFACE_DIR)}/{FIGURE_FILES['pdf']}",
        png=report(
            f"{RESULTS(SURFACE_DIR)}/{FIGURE_FILES['png']}",
            caption="../workflow/report/landscape_surface.rst",
            category="Loss landscapes",
            subcategory="{dataset} / {model}",
            labels={"surface": "{surface}", "data": "{data}"},
        ),
        grid_csv=f"{RESULTS(SURFACE_DIR)}/{FIGURE_FILES['grid_csv']}",
        points_csv=f"{RESULTS(SURFACE_DIR)}/{FIGURE_FILES['points_csv']}",
    log:
        RESULTS.job_log("landscape_figure"),
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(landscape_plan.RESULT_VERSIONS["landscape_figure"]),
        settings=lambda wildcards: landscape_plan.figure_settings(
            config,
            LANDSCAPES[wildcards.surface],
            wildcards.data,
        ),
    script:
        "../workflow/scripts/landscape_figure.py"


rule surfaces_table:
    input:
        lambda wildcards: landscape_plan.surface_files(config, RUNS, SURFACE_FILE),
    output:
        RESULTS.table("surfaces"),
    log:
        RESULTS.job_log("surfaces_table"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(landscape_plan.RESULT_VERSIONS["surfaces_table"]),
    script:
        "../workflow/scripts/surfaces_table.py"
