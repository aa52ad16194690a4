"""Snakemake script of rule layer_distance_figure."""

from fedscape.analysis.barriers.figures import layer_distance_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    layer_distance_figure_job(sm.input.table, sm.wildcards.pair, {key: sm.output[key] for key in ("png", "pdf", "csv")},
                              rounds=list(sm.params.rounds))
