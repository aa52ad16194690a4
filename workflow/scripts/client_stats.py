"""Snakemake script of rule `client_stats`: gather client_updates.csv of every run, add l2_to_final."""

from fedscape.barrier_stages import client_stats_table
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
client_stats_table(list(sm.params.run_ids), list(sm.input.updates), list(sm.input.trajectories), sm.output.table)
