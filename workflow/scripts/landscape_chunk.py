"""Snakemake script of rule landscape_chunk: one chunk of a surface's grid."""

from fedscape.analysis.landscape.stage import landscape_chunk_job
from fedscape.core.logs import job_log
from fedscape.data.locations import with_data_locations
from fedscape.models.device import use_threads
from fedscape.plan.resources import memory_hint

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("landscape_chunk", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    use_threads(sm.threads)
    landscape_chunk_job(settings, sm.input.plane, sm.input.grid, sm.input.get("partition"), sm.output.chunk)
