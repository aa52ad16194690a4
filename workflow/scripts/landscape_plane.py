"""Snakemake script of rule `landscape_plane`."""

from fedscape.landscape.stage import plane_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
plane_stage(
    sm.params.settings,
    list(sm.input.trajectories),
    sm.input.get("clients"),
    sm.input.get("hessian_plane"),
    {key: sm.output[key] for key in ("plane", "points", "grid")},
)
