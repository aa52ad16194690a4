"""Snakemake script of rule layer_aligned_figures: the heatmaps of one pair with b aligned to a by weight matching."""

from fedscape.analysis.barriers.figures import layer_aligned_figures_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_aligned_figures_job(sm.input.table, sm.wildcards.pair, dict(sm.output.items()), tuple(sm.params.modes))
