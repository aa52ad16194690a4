"""Snakemake script of rules partitions_table and rounds_table: concatenate per-job CSVs."""

from fedscape.core.logs import job_log
from fedscape.outputs.tables import concat_tables

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    concat_tables(list(sm.input), sm.output[0], sm.params.get("columns"), sm.params.get("optional", ()))
