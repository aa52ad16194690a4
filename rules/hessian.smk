# Issue 6: Hessian analysis (PyHessian recipe, Yao et al. 2020) of the global model at chosen rounds:
# top-k eigenvalues, Hutchinson trace, SLQ spectral density (Ghorbani et al. 2019), per-client HN / HD
# (FedAlign, Mendieta et al. 2022, Table 1) and the top-2 eigenvector plane (FedAlign Fig. 1) that the
# landscape stage reads from results/hessian/<run_id>/round~{round}/eigen_plane.npz.
# fedscape.hessian_plan plans the (run, round) jobs; plan.check_config has already checked the section.

import os

from fedscape.hessian_plan import (
    CLIENT_COLUMNS as HESSIAN_CLIENT_COLUMNS,
    hessian_columns,
    hessian_job_settings,
    hessian_jobs,
)

HESSIAN_JOBS = hessian_jobs(config, RUNS)
HESSIAN_DIR = os.path.join(
    TRAIN_DIR.replace(results_path("train"), results_path("hessian")), "round~{round}"
)
HESSIAN_LOG = log_path(HESSIAN_DIR)
HESSIAN_FIGURES = results_path("figures/hessian")
HESSIAN_JOB_DIRS = [
    f"{RESULTS}/hessian/{run.run_id}/round~{r}" for run, r in HESSIAN_JOBS
]


rule hessian:
    input:
        trajectory=f"{TRAIN_DIR}/trajectory.pt",
        partition=f"{PARTITION_DIR}/partition.npz",
    output:
        table=f"{HESSIAN_DIR}/hessian.csv",
        clients=f"{HESSIAN_DIR}/hessian_clients.csv",
        density=f"{HESSIAN_DIR}/density.csv",
        plane=f"{HESSIAN_DIR}/eigen_plane.npz",
        details=f"{HESSIAN_DIR}/hessian.json",
    log:
        f"{HESSIAN_LOG}/hessian.log",
    wildcard_constraints:
        round=r"[0-9]+",
    conda:
        "../envs/torch.yaml"
    params:
        settings=lambda wildcards: hessian_job_settings(
            config, Run.from_wildcards(wildcards), int(wildcards.round)
        ),
    script:
        "../workflow/scripts/hessian.py"


rule hessian_tables:
    input:
        tables=[f"{d}/hessian.csv" for d in HESSIAN_JOB_DIRS],
        clients=[f"{d}/hessian_clients.csv" for d in HESSIAN_JOB_DIRS],
    output:
        table=results_path("tables/hessian.csv"),
        clients=results_path("tables/hessian_clients.csv"),
    log:
        "logs/tables/hessian.log",
    conda:
        "../envs/light.yaml"
    params:
        columns=hessian_columns(config["hessian"]["top_k"]),
        client_columns=HESSIAN_CLIENT_COLUMNS,
    script:
        "../workflow/scripts/hessian_tables.py"


rule hessian_by_algorithm_figure:
    input:
        table=results_path("tables/hessian.csv"),
    output:
        png=report(
            f"{HESSIAN_FIGURES}/lambda_trace_by_algorithm.png",
            caption="../workflow/report/hessian_by_algorithm.rst",
            category="Hessian",
        ),
        pdf=f"{HESSIAN_FIGURES}/lambda_trace_by_algorithm.pdf",
        csv=f"{HESSIAN_FIGURES}/lambda_trace_by_algorithm.csv",
    log:
        "logs/figures/hessian/lambda_trace_by_algorithm.log",
    conda:
        "../envs/light.yaml"
    params:
        by="algorithm",
    script:
        "../workflow/scripts/hessian_figures.py"


rule hessian_by_init_figure:
    input:
        table=results_path("tables/hessian.csv"),
    output:
        png=report(
            f"{HESSIAN_FIGURES}/lambda_trace_by_init.png",
            caption="../workflow/report/hessian_by_init.rst",
            category="Hessian",
        ),
        pdf=f"{HESSIAN_FIGURES}/lambda_trace_by_init.pdf",
        csv=f"{HESSIAN_FIGURES}/lambda_trace_by_init.csv",
    log:
        "logs/figures/hessian/lambda_trace_by_init.log",
    conda:
        "../envs/light.yaml"
    params:
        by="init",
    script:
        "../workflow/scripts/hessian_figures.py"


rule hessian_density_figure:
    input:
        densities=[f"{d}/density.csv" for d in HESSIAN_JOB_DIRS],
    output:
        png=report(
            f"{HESSIAN_FIGURES}/spectral_density.png",
            caption="../workflow/report/hessian_density.rst",
            category="Hessian",
        ),
        pdf=f"{HESSIAN_FIGURES}/spectral_density.pdf",
        csv=f"{HESSIAN_FIGURES}/spectral_density.csv",
    log:
        "logs/figures/hessian/spectral_density.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/hessian_figures.py"


if HESSIAN_JOBS:
    TARGETS.extend(
        [results_path("tables/hessian.csv"), results_path("tables/hessian_clients.csv")]
    )
    TARGETS.extend(f"{d}/eigen_plane.npz" for d in HESSIAN_JOB_DIRS)
    TARGETS.extend(
        f"{HESSIAN_FIGURES}/{name}.{ext}"
        for name in ("lambda_trace_by_algorithm", "lambda_trace_by_init")
        for ext in ("png", "pdf", "csv")
    )
    if config["hessian"]["density"]["enabled"]:
        TARGETS.extend(
            f"{HESSIAN_FIGURES}/spectral_density.{ext}" for ext in ("png", "pdf", "csv")
        )
