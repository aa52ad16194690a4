"""Snakemake script of rule rounds_table: results/tables/rounds.csv."""

from fedscape.core.logs import job_log
from fedscape.outputs.tables import rounds_table_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    rounds_table_job(list(sm.input), sm.output[0], list(sm.params.columns), list(sm.params.optional),
                     list(sm.params.bn_models))
