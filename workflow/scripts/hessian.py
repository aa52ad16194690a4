"""Snakemake script of rule hessian: one (run, round) of the Hessian analysis (computed, or copied from the
job it shares its result with)."""

from pathlib import Path

from fedscape.analysis.hessian.definitions import JOB_FILES
from fedscape.analysis.hessian.shared import hessian_job
from fedscape.core.logs import job_log
from fedscape.core.paths import PROGRESS
from fedscape.data.locations import with_data_locations
from fedscape.plan.hessian import RESULT_VERSIONS
from fedscape.plan.resources import memory_hint

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("hessian", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    job_dir = Path(sm.output["table"]).parent
    # finished parts kept beside the outputs (not a param: adding one would rerun every finished job), and the
    # aggregate's eigenpairs for the plane job
    hessian_job(settings, dict(sm.input.items()), {key: sm.output[key] for key in JOB_FILES},
                sm.threads, job_dir / PROGRESS, RESULT_VERSIONS["hessian_plane"])
