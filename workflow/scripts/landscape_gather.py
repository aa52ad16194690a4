"""Snakemake script of rule `landscape_gather`."""

from fedscape.landscape.stage import gather_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
gather_stage(sm.params.settings, list(sm.input.chunks), sm.input.plane, sm.input.grid, sm.input.points,
             sm.output.surface)
