"""Snakemake script of rule layer_barrier_figures: the heatmaps of one pair on train and test."""

from fedscape.analysis.barriers.figures import layer_barrier_figures_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_barrier_figures_job(sm.input.table, sm.wildcards.pair, dict(sm.output.items()))
