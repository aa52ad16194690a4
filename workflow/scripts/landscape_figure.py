"""Snakemake script of rule landscape_figure."""

from fedscape.analysis.landscape.figures import landscape_figure_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"], settings=sm.params.settings):
    landscape_figure_job(sm.params.settings, sm.input.surface, sm.input.get("overlay"),
                         {key: sm.output[key] for key in ("pdf", "png", "grid_csv", "points_csv")})
