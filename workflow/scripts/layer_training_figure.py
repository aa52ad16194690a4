"""Snakemake script of rule layer_training_figure: full-model barrier and layer distances over training (Fig. 1b)."""

from fedscape.analysis.barriers.figures import layer_training_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_training_figure_job(sm.input.barriers, sm.input.distances, sm.wildcards.pair,
                              {key: sm.output[key] for key in ("png", "pdf", "csv")})
