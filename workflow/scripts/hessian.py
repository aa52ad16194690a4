"""Snakemake script of rule `hessian`: one (run, round) of the Hessian analysis."""

from fedscape.hessian_stage import hessian_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
hessian_stage(
    sm.params.settings,
    sm.input.trajectory,
    sm.input.partition,
    {key: sm.output[key] for key in ("table", "clients", "density", "plane", "details")},
)
