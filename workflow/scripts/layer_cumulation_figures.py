"""Snakemake script of rule layer_cumulation_figures: the heatmaps of modes random and ends of one pair (Fig. 4)."""

from fedscape.analysis.barriers.definitions import CUMULATION_MODES
from fedscape.analysis.barriers.figures import layer_heatmaps
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    for split in ("train", "test"):
        layer_heatmaps(sm.input.table, sm.wildcards.pair, split,
                       {key: sm.output[f"{split}_{key}"] for key in ("png", "pdf", "csv")}, modes=CUMULATION_MODES)
