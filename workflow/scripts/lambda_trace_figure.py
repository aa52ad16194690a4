"""Snakemake script of rules hessian_by_algorithm_figure and hessian_by_init_figure (params.by)."""

from fedscape.analysis.hessian.figures import lambda_trace_figure
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    lambda_trace_figure(sm.input.table, {key: sm.output[key] for key in ("png", "pdf", "csv")}, by=sm.params.by)
