"""Snakemake script of rule `init`."""

from fedscape.pipeline import init_stage, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
init_stage(snakemake.params.settings, snakemake.output.model)  # noqa: F821
