"""Snakemake script of rule layer_barrier_tables: layer_barriers.csv and layer_distances.csv."""

from fedscape.analysis.barriers.tables import layer_barrier_tables_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_barrier_tables_job(list(sm.input.barriers), list(sm.input.distances), sm.output.barriers,
                             sm.output.distances)
