"""Snakemake script of rule `landscape_figure`."""

from fedscape.landscape.stage import figure_stage
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
figure_stage(
    sm.params.settings,
    sm.input.surface,
    sm.input.get("overlay"),
    {key: sm.output[key] for key in ("pdf", "png", "grid_csv", "points_csv")},
)
