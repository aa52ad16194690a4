"""Snakemake script of rule interpolation: the loss along the segment between two checkpoints."""

from pathlib import Path

from fedscape.analysis.barriers.stage import interpolation_job
from fedscape.core.logs import job_log
from fedscape.core.paths import PROGRESS
from fedscape.data.locations import with_data_locations
from fedscape.models.device import use_threads
from fedscape.plan.resources import memory_hint

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"],
             memory_hint("interpolation", sm.config, dict(sm.wildcards.items())),
             settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    use_threads(sm.threads)
    # trained bends kept beside the output (not a param: adding one would rerun every finished job)
    interpolation_job(settings, sm.input.trajectory_a, sm.input.trajectory_b, sm.input.partition,
                      sm.output.curve, Path(sm.output.curve).parent / PROGRESS)
