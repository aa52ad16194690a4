"""Snakemake script of rule partition: split a dataset's training pool among the clients."""

from fedscape.core.logs import job_log
from fedscape.data.locations import with_data_locations
from fedscape.stages.partition import partition_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"], settings=sm.params.settings):
    settings = with_data_locations(sm.params.settings, sm.config)  # where its data is now (not in its params)
    partition_job(settings, sm.output.partition, sm.output.counts)
