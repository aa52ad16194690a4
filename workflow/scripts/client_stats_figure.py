"""Snakemake script of rule client_stats_figure."""

from fedscape.analysis.client_stats.figures import client_stats_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    client_stats_figure_job(sm.input.table, sm.input.rounds, {key: sm.output[key] for key in ("png", "pdf", "csv")})
