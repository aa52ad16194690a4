"""Snakemake script of rule `cost_table`: results/tables/cost.csv."""

from fedscape.fl.cost import cost_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
cost_stage(list(sm.input.metrics), list(sm.input.metas), sm.output.table)
