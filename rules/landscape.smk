# Issue 4: loss landscapes (Li et al. 2018; Li et al. 2022, FL loss-landscape pilot study).
# Each `landscapes` entry of the config is one plane (rule landscape_plane) with one surface per data
# set; a surface's grid is split into chunks that run as separate, cached jobs (scatter) and are
# gathered into one .npz (gather), then drawn. fedscape.landscape_plan resolves the entries (and
# plan.check_config has already checked them).


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
