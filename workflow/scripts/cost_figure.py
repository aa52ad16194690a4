"""Snakemake script of rule cost_figure."""

from fedscape.core.logs import job_log
from fedscape.report.figures import cost_figure_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    cost_figure_job(sm.input.cost, sm.wildcards.dataset, sm.wildcards.model, sm.output.png)
