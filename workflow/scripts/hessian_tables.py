"""Snakemake script of rule `hessian_tables`: gather the per-job Hessian tables."""

from fedscape.hessian_stage import gather_tables
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
gather_tables(list(sm.input.tables), sm.output.table, list(sm.params.columns))
gather_tables(list(sm.input.clients), sm.output.clients, list(sm.params.client_columns))
