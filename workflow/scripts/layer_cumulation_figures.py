"""Snakemake script of rule layer_cumulation_figures: the heatmaps of modes random and ends of one pair (Fig. 4)."""

from fedscape.analysis.barriers.figures import layer_cumulation_figures_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_cumulation_figures_job(sm.input.table, sm.wildcards.pair, dict(sm.output.items()))
