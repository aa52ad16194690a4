"""Snakemake script of rule layer_barriers: layer-wise barriers and distances of one pair at one round."""

from pathlib import Path

from fedscape.analysis.barriers.stage import layer_barriers_job
from fedscape.core.logs import job_log
from fedscape.core.paths import PROGRESS
from fedscape.data.locations import with_data_locations
from fedscape.models.device import use_threads
from fedscape.plan.resources import memory_hint

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("layer_barriers", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    use_threads(sm.threads)
    # finished rows kept beside the outputs (not a param: adding one would rerun every finished job)
    layer_barriers_job(settings, dict(sm.input.items()), sm.output.barriers, sm.output.distances,
                       Path(sm.output.barriers).parent / PROGRESS)
