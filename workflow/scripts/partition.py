"""Snakemake script of rule partition: split a dataset's training pool among the clients."""

from fedscape.core.logs import job_log
from fedscape.stages.partition import partition_job

sm = snakemake  # noqa: F821
with job_log(sm.log[0], sm.output, sm.config["results_dir"]):
    partition_job(sm.params.settings, sm.output.partition, sm.output.counts)
