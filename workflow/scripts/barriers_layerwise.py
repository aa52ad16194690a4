"""Snakemake script of rule `layer_barriers`: layer-wise barriers and distances of one pair at one round."""

from fedscape.barrier_stages import layerwise_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
layerwise_stage(sm.params.settings, {key: sm.input[key] for key in sm.input.keys()}, sm.output.barriers,
                sm.output.distances)
