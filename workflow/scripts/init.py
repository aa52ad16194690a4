"""Snakemake script of rule `init`."""

from fedscape.pipeline import init_stage, setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
init_stage(sm.params.settings, sm.output.model, dict(sm.input.items()), sm.params.progress_dir)
