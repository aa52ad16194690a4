"""Snakemake script of rule `interpolation`: one interpolation curve between two checkpoints."""

from fedscape.barrier_stages import interpolation_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
interpolation_stage(sm.params.settings, sm.input.trajectory_a, sm.input.trajectory_b, sm.input.partition,
                    sm.output.curve)
