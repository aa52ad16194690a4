"""Snakemake script of rule hessian_by_algorithm_figure."""

from fedscape.analysis.hessian.figures import hessian_by_algorithm_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    hessian_by_algorithm_figure_job(sm.input.table, {key: sm.output[key] for key in ("png", "pdf", "csv")},
                             trace_estimator=sm.params.trace_estimator)
