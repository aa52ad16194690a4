"""Snakemake script of rule `partition`."""

from fedscape.pipeline import partition_stage, setup_logging

setup_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
partition_stage(snakemake.params.settings, snakemake.output.partition, snakemake.output.counts)  # noqa: F821
