"""Snakemake script of the barrier table rules: interpolation + barriers, or the layer-wise tables."""

from fedscape.barrier_stages import interpolation_tables
from fedscape.barriers import LAYER_BARRIER_COLUMNS, LAYER_DISTANCE_COLUMNS
from fedscape.pipeline import concat_tables, setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
if sm.rule == "interpolation_tables":
    interpolation_tables(list(sm.input.curves), sm.output.interpolation, sm.output.barriers)
else:
    concat_tables(list(sm.input.barriers), sm.output.barriers, LAYER_BARRIER_COLUMNS)
    concat_tables(list(sm.input.distances), sm.output.distances, LAYER_DISTANCE_COLUMNS)
