# Hessian analysis (PyHessian recipe, Yao et al. 2020) of the global model at chosen rounds: top-k
# eigenvalues, Hutchinson trace, SLQ spectral density (Ghorbani et al. 2019), per-client HN / HD (FedAlign,
# Mendieta et al. 2022, Table 1; over every client or the sample of hessian.clients), and in a rule of its own
# the top-2 eigenvector plane that hessian landscapes read (so that a change of the trace, density, sharpness or
# client settings redraws no landscape).

from fedscape.analysis.hessian.definitions import (
    JOB_FILES,
    PLANE_FILE,
    client_columns,
    hessian_columns,
)
from fedscape.core.config import result_version_params
from fedscape.core.paths import HESSIAN_DIR, HESSIAN_FIGURE
from fedscape.core.runs import Run
from fedscape.plan import hessian as hessian_plan
from fedscape.plan.resources import by_input, data_job_mem_mb

# A group of runs sharing one round-0 Hessian job keeps the source that Snakemake's record shows computing
# (hessian_plan.shared_source), so that adding or dropping a run of the group reruns none of its finished jobs
hessian_plan.use_records(
    lambda wildcards: recorded_params(READ_PARAMS, rules.hessian.output[0], wildcards)
)


rule hessian:
    input:
        unpack(
            lambda wildcards: hessian_plan.hessian_inputs(
                config,
                RUNS,
                Run.from_wildcards(wildcards),
                int(wildcards.round),
                ancient,
                READ_INPUTS,
            )
        ),
    output:
        **{key: f"{RESULTS(HESSIAN_DIR)}/{name}" for key, name in JOB_FILES.items()},
    log:
        RESULTS.job_log("hessian"),
    wildcard_constraints:
        round=r"[0-9]+",
    # before its plane job, which then takes the eigenpairs it keeps instead of computing them
    priority: 1
    conda:
        "../envs/torch.yaml"
    resources:
        # a job that copies another run's round-0 result computes nothing
        **{key: by_input(key, "source_details", GPU_JOB, CPU_JOB) for key in GPU_JOB},
        # host memory: the run's data set is decoded whole before it is copied to the card (a copy reads none)
        mem_mb=lambda wildcards, input, attempt: data_job_mem_mb(
            "hessian",
            config,
            wildcards.dataset,
            attempt,
            "source_details" in input.keys(),
        ),
    params:
        settings=lambda wildcards: hessian_plan.hessian_job_settings(
            config,
            RUNS,
            Run.from_wildcards(wildcards),
            int(wildcards.round),
            recorded_params(READ_PARAMS, rules.hessian.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/hessian.py"


rule hessian_plane:
    input:
        unpack(
            lambda wildcards: hessian_plan.plane_inputs(
                config,
                RUNS,
                Run.from_wildcards(wildcards),
                int(wildcards.round),
                ancient,
                READ_INPUTS,
            )
        ),
    output:
        plane=f"{RESULTS(HESSIAN_DIR)}/{PLANE_FILE}",
    log:
        RESULTS.job_log("hessian_plane"),
    wildcard_constraints:
        round=r"[0-9]+",
    conda:
        "../envs/torch.yaml"
    resources:
        # a job that copies another run's round-0 plane computes nothing
        **{key: by_input(key, "source_plane", GPU_JOB, CPU_JOB) for key in GPU_JOB},
        # host memory: the run's data set is decoded whole before it is copied to the card (a copy reads none)
        mem_mb=lambda wildcards, input, attempt: data_job_mem_mb(
            "hessian_plane",
            config,
            wildcards.dataset,
            attempt,
            "source_plane" in input.keys(),
        ),
    params:
        settings=lambda wildcards: hessian_plan.plane_job_settings(
            config,
            RUNS,
            Run.from_wildcards(wildcards),
            int(wildcards.round),
            recorded_params(READ_PARAMS, rules.hessian_plane.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/hessian_plane.py"


rule hessian_tables:
    input:
        tables=lambda wildcards: [
            f"{d}/{JOB_FILES['table']}" for d in hessian_plan.job_dirs(config, RUNS)
        ],
        clients=lambda wildcards: [
            f"{d}/{JOB_FILES['clients']}" for d in hessian_plan.job_dirs(config, RUNS)
        ],
    output:
        table=RESULTS.table("hessian"),
        clients=RESULTS.table("hessian_clients"),
    log:
        RESULTS.job_log("hessian_tables"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(hessian_plan.RESULT_VERSIONS["hessian_tables"]),
        columns=hessian_columns(config["hessian"]["top_k"]),
        client_columns=client_columns(config["hessian"]["clients"]),
    script:
        "../workflow/scripts/hessian_tables.py"


rule hessian_by_algorithm_figure:
    input:
        table=RESULTS.table("hessian"),
    output:
        **RESULTS.figure_outputs(
            report,
            HESSIAN_FIGURE,
            caption="../workflow/report/hessian_by_algorithm.rst",
            category="Hessian",
            fields={"name": "lambda_trace_by_algorithm"},
        ),
    log:
        RESULTS.job_log("hessian_by_algorithm_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(
            hessian_plan.RESULT_VERSIONS["hessian_by_algorithm_figure"]
        ),
        # the job draws by algorithm (its script's entry point); the param stays so that finished figures keep
        # their params and do not rerun
        by="algorithm",
        # the estimator the Hessian jobs computed the trace with, for the axis label
        trace_estimator=hessian_plan.settings_from_config(
            config["hessian"]
        ).trace_estimator,
    script:
        "../workflow/scripts/hessian_by_algorithm_figure.py"


rule hessian_by_init_figure:
    input:
        table=RESULTS.table("hessian"),
    output:
        **RESULTS.figure_outputs(
            report,
            HESSIAN_FIGURE,
            caption="../workflow/report/hessian_by_init.rst",
            category="Hessian",
            fields={"name": "lambda_trace_by_init"},
        ),
    log:
        RESULTS.job_log("hessian_by_init_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(hessian_plan.RESULT_VERSIONS["hessian_by_init_figure"]),
        # the job draws by init (its script's entry point); the param stays so that finished figures keep
        # their params and do not rerun
        by="init",
        # the estimator the Hessian jobs computed the trace with, for the axis label
        trace_estimator=hessian_plan.settings_from_config(
            config["hessian"]
        ).trace_estimator,
    script:
        "../workflow/scripts/hessian_by_init_figure.py"


rule hessian_density_figure:
    input:
        densities=lambda wildcards: [
            f"{d}/{JOB_FILES['density']}" for d in hessian_plan.job_dirs(config, RUNS)
        ],
    output:
        **RESULTS.figure_outputs(
            report,
            HESSIAN_FIGURE,
            caption="../workflow/report/hessian_density.rst",
            category="Hessian",
            fields={"name": "spectral_density"},
        ),
    log:
        RESULTS.job_log("hessian_density_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(hessian_plan.RESULT_VERSIONS["hessian_density_figure"]),
    script:
        "../workflow/scripts/hessian_density_figure.py"
