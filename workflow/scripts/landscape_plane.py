"""Snakemake script of rule landscape_plane: one plane, its projected checkpoints and its grid."""

from fedscape.analysis.landscape.definitions import PLANE_FILES
from fedscape.analysis.landscape.stage import landscape_plane_job
from fedscape.core.logs import job_log
from fedscape.models.device import use_threads

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"], settings=sm.params.settings):
    use_threads(sm.threads)
    landscape_plane_job(sm.params.settings, list(sm.input.trajectories), sm.input.get("clients"),
                        sm.input.get("hessian_plane"), {key: sm.output[key] for key in PLANE_FILES})
