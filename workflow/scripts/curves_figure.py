"""Snakemake script of rule curves_figure."""

from fedscape.core.logs import job_log
from fedscape.report.figures import curves_figure_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    curves_figure_job(sm.input.rounds, sm.wildcards.dataset, sm.wildcards.model, sm.wildcards.metric, sm.output.png)
