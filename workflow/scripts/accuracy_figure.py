"""Snakemake script of rule accuracy_figure."""

from fedscape.core.logs import job_log
from fedscape.report.figures import final_figure_stage

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    final_figure_stage(sm.input.final, sm.wildcards.kind, sm.wildcards.dataset, sm.wildcards.model, sm.output.png,
                       dict(sm.params.work))
