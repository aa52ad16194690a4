"""Snakemake script of rule summary_table: results/tables/summary.csv."""

from fedscape.core.logs import job_log
from fedscape.report.summary import summary_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    summary_table_job(sm.input.final, sm.output.table)
