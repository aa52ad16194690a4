"""Snakemake script of rule `train`."""

from fedscape.pipeline import setup_logging, train_stage

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
train_stage(
    sm.params.settings,
    sm.input.partition,
    sm.input.init,
    {key: sm.output[key] for key in ("trajectory", "clients", "metrics", "meta", "client_updates")},
    sm.params.progress_dir,
)
