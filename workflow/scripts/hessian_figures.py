"""Snakemake script of the Hessian figure rules."""

from fedscape.hessian_stage import density_figure, lambda_trace_figure
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
outputs = {key: sm.output[key] for key in ("png", "pdf", "csv")}
if sm.rule == "hessian_density_figure":
    density_figure(list(sm.input.densities), outputs)
else:
    lambda_trace_figure(sm.input.table, outputs, by=sm.params.by)
