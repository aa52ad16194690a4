"""Snakemake script of rule layer_consecutive_table: layer_consecutive.csv, whether the midpoint of consecutive rounds
beats both of them."""

from fedscape.analysis.barriers.tables import layer_consecutive_table_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_consecutive_table_job(sm.input.table, list(sm.params.pairs), sm.output.table)
