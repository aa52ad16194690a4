"""Snakemake script of the table-gathering rules: concatenate per-job CSVs."""

from fedscape.pipeline import concat_tables, setup_logging

setup_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
concat_tables(list(snakemake.input), snakemake.output[0])  # noqa: F821
