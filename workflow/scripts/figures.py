"""Snakemake script of the curves and final-accuracy figure rules."""

from fedscape.figures import cost_figure_stage, curves_stage, final_figure_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
base = sm.output.png
if sm.rule == "curves_figure":
    curves_stage(sm.input.rounds, sm.wildcards.dataset, sm.wildcards.model, sm.wildcards.metric, base)
elif sm.rule == "cost_figure":
    cost_figure_stage(sm.input.cost, sm.wildcards.dataset, sm.wildcards.model, base)
else:
    final_figure_stage(sm.input.final, sm.wildcards.kind, sm.wildcards.dataset, sm.wildcards.model, base)
