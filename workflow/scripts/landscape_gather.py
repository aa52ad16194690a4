"""Snakemake script of rule landscape_gather: a surface's chunks into surface.npz."""

from fedscape.analysis.landscape.gather import landscape_gather_job
from fedscape.core.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"], settings=sm.params.settings):
    landscape_gather_job(sm.params.settings, list(sm.input.chunks), sm.input.plane, sm.input.grid, sm.input.points,
                         sm.output.surface)
