"""Snakemake script of rule `landscape_chunk`."""

from fedscape.landscape.stage import chunk_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
chunk_stage(sm.params.settings, sm.input.plane, sm.input.grid, sm.input.get("partition"), sm.output.chunk)
