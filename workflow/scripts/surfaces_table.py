"""Snakemake script of rule surfaces_table: results/tables/surfaces.csv."""

from fedscape.analysis.landscape.gather import surfaces_table_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    surfaces_table_job(list(sm.input), sm.output[0])
