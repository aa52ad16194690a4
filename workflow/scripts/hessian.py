"""Snakemake script of rule hessian: one (run, round) of the Hessian analysis."""

from fedscape.analysis.hessian.stage import hessian_stage
from fedscape.core.logs import job_log
from fedscape.models.device import use_threads

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    use_threads(sm.threads)
    hessian_stage(sm.params.settings, sm.input.trajectory, sm.input.partition,
                  {key: sm.output[key] for key in ("table", "clients", "density", "plane", "details")})
