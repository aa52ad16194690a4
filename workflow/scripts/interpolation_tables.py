"""Snakemake script of rule interpolation_tables: interpolation.csv and barriers.csv."""

from fedscape.analysis.barriers.tables import interpolation_tables_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    interpolation_tables_job(list(sm.input.curves), sm.output.interpolation, sm.output.barriers)
