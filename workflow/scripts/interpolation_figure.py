"""Snakemake script of rule interpolation_figure."""

from fedscape.analysis.barriers.figures import interpolation_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    interpolation_figure_job(sm.input.table, {key: sm.output[key] for key in ("png", "pdf", "csv")})
