"""Snakemake script of rule hessian_plane: the top-2 eigenvector plane of one (run, round) (written from the
eigenpairs its Hessian job kept, computed, or copied from the job it shares its result with)."""

from fedscape.analysis.hessian.shared import hessian_plane_job
from fedscape.core.logs import job_log
from fedscape.data.locations import with_data_locations
from fedscape.plan.resources import memory_hint

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("hessian_plane", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    hessian_plane_job(settings, dict(sm.input.items()), sm.output["plane"], sm.threads)
