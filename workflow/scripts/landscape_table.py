"""Snakemake script of rule `surfaces_table`."""

from fedscape.landscape.stage import surfaces_table
from fedscape.pipeline import setup_logging

setup_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
surfaces_table(list(snakemake.input), snakemake.output[0])  # noqa: F821
