"""Snakemake script of rule client_stats: every run's client statistics with l2_to_final."""

from pathlib import Path

from fedscape.analysis.client_stats.stage import client_stats_job
from fedscape.core.logs import job_log
from fedscape.core.paths import PROGRESS
from fedscape.models.device import use_threads

sm = snakemake  # noqa: F821
# the rule's params are the job's settings (run_ids and a result version), each a param of its own
settings = dict(sm.params.items())
with job_log(sm.log[0], sm.output, sm.config["results_dir"], settings=settings):
    use_threads(sm.threads)
    table = Path(sm.output.table)
    # each run's finished rows are kept beside the table, in a folder of its own among the tables' (not a param:
    # adding one would rerun every finished job)
    client_stats_job(settings, list(sm.input.updates), list(sm.input.trajectories), table,
                     table.parent / PROGRESS / table.stem)
