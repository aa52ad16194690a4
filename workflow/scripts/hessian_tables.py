"""Snakemake script of rule hessian_tables: gather the per-job Hessian tables."""

from fedscape.analysis.hessian.tables import gather_tables
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    gather_tables(list(sm.input.tables), sm.output.table, list(sm.params.columns))
    gather_tables(list(sm.input.clients), sm.output.clients, list(sm.params.client_columns))
