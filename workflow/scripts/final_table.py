"""Snakemake script of rule final_table: results/tables/final.csv."""

from fedscape.core.logs import job_log
from fedscape.report.summary import final_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    final_table_job(sm.input.rounds, sm.output.table,
                    **{name: path for name, path in sm.input.items() if name != "rounds"})
