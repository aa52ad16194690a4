"""Snakemake script of rule partitions_table: results/tables/partitions.csv."""

from fedscape.core.logs import job_log
from fedscape.outputs.tables import partitions_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    partitions_table_job(list(sm.input), sm.output[0])
