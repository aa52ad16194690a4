"""Snakemake script of the final_table and summary_table rules."""

from fedscape.pipeline import setup_logging
from fedscape.summary import final_stage, summary_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
if sm.rule == "final_table":
    final_stage(sm.input.rounds, sm.output.table, barriers=sm.input.get("barriers"),
                interpolation=sm.input.get("interpolation"), hessian=sm.input.get("hessian"),
                hessian_clients=sm.input.get("hessian_clients"))
else:
    summary_stage(sm.input.final, sm.output.table)
