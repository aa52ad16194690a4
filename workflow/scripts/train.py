"""Snakemake script of rule train: one federated run."""

from fedscape.core.logs import job_log
from fedscape.core.paths import TRAIN_FILES
from fedscape.data.locations import with_data_locations
from fedscape.models.device import use_threads
from fedscape.plan.resources import memory_hint
from fedscape.stages.train import train_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("train", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    use_threads(sm.threads)
    train_job(settings, sm.input.partition, sm.input.init, {key: sm.output[key] for key in TRAIN_FILES},
              sm.params.progress_dir)
