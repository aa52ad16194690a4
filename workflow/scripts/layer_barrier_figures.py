"""Snakemake script of rule layer_barrier_figures: the heatmaps of one pair on train and test."""

from fedscape.analysis.barriers.figures import layer_heatmaps
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    for split in ("train", "test"):
        layer_heatmaps(sm.input.table, sm.wildcards.pair, split,
                       {key: sm.output[f"{split}_{key}"] for key in ("png", "pdf", "csv")})
