"""Snakemake script of rule init: make the initial model of an init label."""

from fedscape.core.logs import job_log
from fedscape.data.locations import with_data_locations
from fedscape.models.device import use_threads
from fedscape.plan.resources import memory_hint
from fedscape.stages.init import init_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("init", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    use_threads(sm.threads)
    init_job(settings, sm.output.model, dict(sm.input.items()), sm.params.progress_dir)
