"""Snakemake script of rule cost_table: results/tables/cost.csv."""

from fedscape.core.logs import job_log
from fedscape.report.cost import cost_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    cost_table_job(list(sm.input.metrics), list(sm.input.metas), sm.output.table)
