"""Snakemake script of rule layer_barrier_tables: layer_barriers.csv and layer_distances.csv."""

from fedscape.analysis.barriers.definitions import LAYER_BARRIER_COLUMNS, LAYER_DISTANCE_COLUMNS
from fedscape.core.logs import job_log
from fedscape.outputs.tables import concat_tables

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    concat_tables(list(sm.input.barriers), sm.output.barriers, LAYER_BARRIER_COLUMNS)
    concat_tables(list(sm.input.distances), sm.output.distances, LAYER_DISTANCE_COLUMNS)
