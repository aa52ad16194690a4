"""Snakemake script of rule hessian_tables: gather the per-job Hessian tables."""

from fedscape.analysis.hessian.tables import hessian_tables_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    hessian_tables_job(list(sm.input.tables), list(sm.input.clients), sm.output.table, sm.output.clients,
                       list(sm.params.columns), list(sm.params.client_columns))
