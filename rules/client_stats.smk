# Client-update statistics per round (Yin et al. 2018; Nguyen et al. 2022): drift, gradient diversity,
# update cosine and the L2 distance of the server weights to their final values.

from fedscape.core.config import result_version_params
from fedscape.core.paths import CLIENT_STATS_FIGURE
from fedscape.plan import client_stats as client_stats_plan
from fedscape.plan.train import run_files


rule client_stats:
    input:
        updates=lambda wildcards: run_files(config, RUNS, "client_updates"),
        trajectories=lambda wildcards: run_files(config, RUNS, "trajectory"),
    output:
        table=RESULTS.table("client_stats"),
    log:
        RESULTS.job_log("client_stats"),
    conda:
        "../envs/light.yaml"
    params:
        **client_stats_plan.client_stats_params(RUNS),
    script:
        "../workflow/scripts/client_stats.py"


rule client_stats_figure:
    input:
        table=RESULTS.table("client_stats"),
        rounds=RESULTS.table("rounds"),
    output:
        **RESULTS.figure_outputs(
            report,
            CLIENT_STATS_FIGURE,
            caption="../workflow/report/client_stats.rst",
            category="Client updates",
        ),
    log:
        RESULTS.job_log("client_stats_figure"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        **result_version_params(
            client_stats_plan.RESULT_VERSIONS["client_stats_figure"]
        ),
    script:
        "../workflow/scripts/client_stats_figure.py"
