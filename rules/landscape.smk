# Issue 4: loss landscapes (Li et al. 2018; Li et al. 2022, FL loss-landscape pilot study).
# Each `landscapes` entry of the config is one plane (rule landscape_plane) with one surface per data
# set; a surface's grid is split into chunks that run as separate, cached jobs (scatter) and are
# gathered into one .npz (gather), then drawn. fedscape.landscape.spec resolves the entries (and
# plan.check_config has already checked them).

from fedscape.landscape.spec import (
    chunk_settings,
    figure_settings,
    hessian_plane_path,
    landscape_plans,
    overlay_data,
    plane_settings,
    surface_settings,
)

LANDSCAPES = {plan.label: plan for plan in landscape_plans(config, RUNS)}
LANDSCAPE_DIR = results_path("landscape/{dataset}/{model}/{surface}")
SURFACE_DIR = f"{LANDSCAPE_DIR}/{{data}}"
LANDSCAPE_LOG = log_path(LANDSCAPE_DIR)
LANDSCAPE_WILDCARDS = {
    "surface": r"[A-Za-z0-9_.-]+",
    "data": r"train|test|client~[0-9]+",
    "chunk": r"[0-9]+",
}


def _landscape(wildcards):
    return LANDSCAPES[wildcards.surface]


def landscape_plane_inputs(wildcards):
    plan = _landscape(wildcards)
    runs = plan.runs
    inputs = {"trajectories": [f"{run_dir(run)}/trajectory.pt" for run in runs]}
    if plan.kind == "local":
        inputs["clients"] = f"{run_dir(runs[0])}/clients.pt"
    if plan.kind == "hessian":
        inputs["hessian_plane"] = hessian_plane_path(plan, RESULTS)
    return inputs


def landscape_plane_params(wildcards):
    return plane_settings(config, _landscape(wildcards))


def landscape_chunk_inputs(wildcards):
    plan = _landscape(wildcards)
    plane_dir = LANDSCAPE_DIR.format(**wildcards)
    inputs = {"plane": f"{plane_dir}/plane.npz", "grid": f"{plane_dir}/grid.json"}
    if wildcards.data != "test":
        inputs["partition"] = (
            f"{RESULTS}/partitions/{plan.data_run.partition_id}/partition.npz"
        )
    return inputs


def landscape_chunk_params(wildcards):
    return chunk_settings(
        config, _landscape(wildcards), wildcards.data, int(wildcards.chunk)
    )


def landscape_chunks(wildcards):
    plan = _landscape(wildcards)
    surface_dir = SURFACE_DIR.format(**wildcards)
    return [f"{surface_dir}/chunks/chunk~{i}.npz" for i in range(plan.spec["chunks"])]


def landscape_surface_params(wildcards):
    return surface_settings(config, _landscape(wildcards), wildcards.data)


def landscape_figure_inputs(wildcards):
    plan = _landscape(wildcards)
    inputs = {"surface": f"{SURFACE_DIR.format(**wildcards)}/surface.npz"}
    other = overlay_data(plan, wildcards.data)
    if other is not None:
        inputs["overlay"] = f"{LANDSCAPE_DIR.format(**wildcards)}/{other}/surface.npz"
    return inputs


def landscape_figure_params(wildcards):
    return figure_settings(config, _landscape(wildcards), wildcards.data)


def landscape_surface_files(name):
    def files(wildcards=None):
        return [
            f"{RESULTS}/{plan.directory}/{data}/{name}"
            for plan in LANDSCAPES.values()
            for data in plan.data
        ]

    return files


rule landscape_plane:
    input:
        unpack(landscape_plane_inputs),
    output:
        plane=f"{LANDSCAPE_DIR}/plane.npz",
        points=f"{LANDSCAPE_DIR}/points.csv",
        grid=f"{LANDSCAPE_DIR}/grid.json",
    log:
        f"{LANDSCAPE_LOG}/plane.log",
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/light.yaml"
    params:
        settings=landscape_plane_params,
    script:
        "../workflow/scripts/landscape_plane.py"


rule landscape_chunk:
    input:
        unpack(landscape_chunk_inputs),
    output:
        chunk=f"{SURFACE_DIR}/chunks/chunk~{{chunk}}.npz",
    log:
        f"{LANDSCAPE_LOG}/{{data}}/chunk~{{chunk}}.log",
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/torch.yaml"
    params:
        settings=landscape_chunk_params,
    script:
        "../workflow/scripts/landscape_chunk.py"


rule landscape_gather:
    input:
        chunks=landscape_chunks,
        plane=f"{LANDSCAPE_DIR}/plane.npz",
        grid=f"{LANDSCAPE_DIR}/grid.json",
        points=f"{LANDSCAPE_DIR}/points.csv",
    output:
        surface=f"{SURFACE_DIR}/surface.npz",
    log:
        f"{LANDSCAPE_LOG}/{{data}}/gather.log",
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/light.yaml"
    params:
        settings=landscape_surface_params,
    script:
        "../workflow/scripts/landscape_gather.py"


rule landscape_figure:
    input:
        unpack(landscape_figure_inputs),
    output:
        pdf=f"{SURFACE_DIR}/surface.pdf",
        png=report(
            f"{SURFACE_DIR}/surface.png",
            caption="../workflow/report/landscape_surface.rst",
            category="Loss landscapes",
            subcategory="{dataset} / {model}",
            labels={"surface": "{surface}", "data": "{data}"},
        ),
        grid_csv=f"{SURFACE_DIR}/surface_grid.csv",
        points_csv=f"{SURFACE_DIR}/surface_points.csv",
    log:
        f"{LANDSCAPE_LOG}/{{data}}/figure.log",
    wildcard_constraints:
        **LANDSCAPE_WILDCARDS,
    conda:
        "../envs/light.yaml"
    params:
        settings=landscape_figure_params,
    script:
        "../workflow/scripts/landscape_figure.py"


rule surfaces_table:
    input:
        landscape_surface_files("surface.npz"),
    output:
        results_path("tables/surfaces.csv"),
    log:
        "logs/tables/surfaces.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/landscape_table.py"


if LANDSCAPES:
    TARGETS.extend(
        [results_path("tables/surfaces.csv"), *landscape_surface_files("surface.png")()]
    )
    TARGETS.extend(landscape_surface_files("surface.pdf")())
