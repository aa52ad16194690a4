"""Snakemake script of rule hessian_density_figure."""

from fedscape.analysis.hessian.figures import hessian_density_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    hessian_density_figure_job(list(sm.input.densities), {key: sm.output[key] for key in ("png", "pdf", "csv")})
