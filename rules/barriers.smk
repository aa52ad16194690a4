# Issue 5: linear-interpolation barriers (Li et al. 2022), layer-wise linear mode connectivity
# (Adilova et al. 2023) and client-update statistics (Yin et al. 2018; Nguyen et al. 2022).
# Pairs are named in the config (`interpolation.pairs`, `layer_barriers.pairs`) by run selectors;
# fedscape.barrier_plan resolves them (and plan.check_config has already checked them).


rule interpolation:
    input:
        unpack(interpolation_inputs),
    output:
        curve=f"{INTERPOLATION_DIR}/curve.csv",
    log:
        "logs/barriers/interpolation/{pair}.log",
    wildcard_constraints:
        pair=BARRIER_LABEL,
    conda:
        "../envs/torch.yaml"
    params:
        settings=interpolation_params,
    script:
        "../workflow/scripts/barriers_interpolation.py"


rule interpolation_tables:
    input:
        curves=interpolation_curves,
    output:
        interpolation=results_path("tables/interpolation.csv"),
        barriers=results_path("tables/barriers.csv"),
    log:
        "logs/tables/interpolation.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/barriers_tables.py"


rule interpolation_figure:
    input:
        table=results_path("tables/interpolation.csv"),
    output:
        png=report(
            results_path("figures/barriers/interpolation.png"),
            caption="../workflow/report/barriers_interpolation.rst",
            category="Barriers",
            subcategory="Linear interpolation",
        ),
        pdf=results_path("figures/barriers/interpolation.pdf"),
        csv=results_path("figures/barriers/interpolation.csv"),
    log:
        "logs/figures/barriers/interpolation.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/barriers_figures.py"


rule layer_barriers:
    input:
        unpack(layerwise_inputs),
    output:
        barriers=f"{LAYERWISE_DIR}/barriers.csv",
        distances=f"{LAYERWISE_DIR}/distances.csv",
    log:
        "logs/barriers/layerwise/{pair}/round~{round}.log",
    wildcard_constraints:
        pair=BARRIER_LABEL,
        round=r"[0-9]+",
    conda:
        "../envs/torch.yaml"
    params:
        settings=layerwise_params,
    script:
        "../workflow/scripts/barriers_layerwise.py"


rule layer_barrier_tables:
    input:
        barriers=layerwise_outputs("barriers"),
        distances=layerwise_outputs("distances"),
    output:
        barriers=results_path("tables/layer_barriers.csv"),
        distances=results_path("tables/layer_distances.csv"),
    log:
        "logs/tables/layer_barriers.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/barriers_tables.py"


rule layer_barrier_figures:
    input:
        table=results_path("tables/layer_barriers.csv"),
    output:
        train_png=report(
            f"{LAYER_FIGURE.replace('{split}', 'train')}.png",
            caption="../workflow/report/barriers_layerwise.rst",
            category="Barriers",
            subcategory="Layer-wise",
        ),
        train_pdf=f"{LAYER_FIGURE.replace('{split}', 'train')}.pdf",
        train_csv=f"{LAYER_FIGURE.replace('{split}', 'train')}.csv",
        test_png=report(
            f"{LAYER_FIGURE.replace('{split}', 'test')}.png",
            caption="../workflow/report/barriers_layerwise.rst",
            category="Barriers",
            subcategory="Layer-wise",
        ),
        test_pdf=f"{LAYER_FIGURE.replace('{split}', 'test')}.pdf",
        test_csv=f"{LAYER_FIGURE.replace('{split}', 'test')}.csv",
    log:
        "logs/figures/barriers/layerwise/{pair}.log",
    wildcard_constraints:
        pair=BARRIER_LABEL,
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/barriers_figures.py"


rule layer_distance_figure:
    input:
        table=results_path("tables/layer_distances.csv"),
    output:
        png=report(
            f"{LAYER_DISTANCE_FIGURE}.png",
            caption="../workflow/report/barriers_layer_distances.rst",
            category="Barriers",
            subcategory="Layer-wise",
        ),
        pdf=f"{LAYER_DISTANCE_FIGURE}.pdf",
        csv=f"{LAYER_DISTANCE_FIGURE}.csv",
    log:
        "logs/figures/barriers/layerwise/{pair}_distances.log",
    wildcard_constraints:
        pair=BARRIER_LABEL,
    conda:
        "../envs/light.yaml"
    params:
        rounds=lambda wildcards: list(LAYER_PAIRS[wildcards.pair].rounds),
    script:
        "../workflow/scripts/barriers_figures.py"


rule client_stats:
    input:
        updates=client_updates_of_runs,
        trajectories=trajectories_of_runs,
    output:
        table=results_path("tables/client_stats.csv"),
    log:
        "logs/tables/client_stats.log",
    conda:
        "../envs/light.yaml"
    params:
        run_ids=[run.run_id for run in RUNS],
    script:
        "../workflow/scripts/client_stats.py"


rule client_stats_figure:
    input:
        table=results_path("tables/client_stats.csv"),
    output:
        png=report(
            results_path("figures/client_stats/client_stats.png"),
            caption="../workflow/report/client_stats.rst",
            category="Client updates",
        ),
        pdf=results_path("figures/client_stats/client_stats.pdf"),
        csv=results_path("figures/client_stats/client_stats.csv"),
    log:
        "logs/figures/client_stats.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/barriers_figures.py"


if INTERPOLATION_PAIRS:
    TARGETS.extend(
        [
            results_path("tables/interpolation.csv"),
            results_path("tables/barriers.csv"),
            *figure_files(results_path("figures/barriers/interpolation")).values(),
        ]
    )
if LAYER_PAIRS:
    TARGETS.extend(
        [
            results_path("tables/layer_barriers.csv"),
            results_path("tables/layer_distances.csv"),
        ]
    )
    TARGETS.extend(
        f"{LAYER_FIGURE.format(pair=label, split=split)}.{ext}"
        for label in LAYER_PAIRS
        for split in ("train", "test")
        for ext in ("png", "pdf", "csv")
    )
    TARGETS.extend(
        f"{LAYER_DISTANCE_FIGURE.format(pair=label)}.{ext}"
        for label in LAYER_PAIRS
        for ext in ("png", "pdf", "csv")
    )
if config["client_stats"]["enabled"]:
    TARGETS.extend(
        [
            results_path("tables/client_stats.csv"),
            *figure_files(results_path("figures/client_stats/client_stats")).values(),
        ]
    )
