"""Snakemake script of rule paired_differences_table: results/tables/paired_differences.csv."""

from fedscape.core.logs import job_log
from fedscape.report.paired import paired_differences_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    paired_differences_table_job(sm.input.final, sm.output.table)
