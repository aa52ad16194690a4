"""Snakemake script of rule accuracy_figure."""

from fedscape.core.logs import job_log
from fedscape.report.figures import accuracy_figure_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    accuracy_figure_job(sm.input.final, sm.wildcards.kind, sm.wildcards.dataset, sm.wildcards.model, sm.output.png,
                        dict(sm.params.work))
