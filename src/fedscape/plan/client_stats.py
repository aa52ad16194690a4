"""Planning of the client-statistics table and figure: every run's client_updates.csv and trajectory."""

from __future__ import annotations

from fedscape.analysis.client_stats.definitions import ClientStatsJob
from fedscape.core.jobs import job_params
from fedscape.core.paths import CLIENT_STATS_FIGURE, Results
from fedscape.core.runs import Run

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# client_stats_figure 3: its CSV counts the seeds each panel's mean is over (`n_seeds_<panel>`).
# client_stats_figure 4: the title says "one seed" where every line is one, not a mean over seeds.
RESULT_VERSIONS = {"client_stats": 1, "client_stats_figure": 4}


def planned_client_stats(runs: list[Run]) -> ClientStatsJob:
    """The client-statistics job: every run, in run order (the order of the rule's inputs, `plan.train.run_files`)."""
    return ClientStatsJob(run_ids=tuple(run.run_id for run in runs))


def client_stats_params(runs: list[Run]) -> dict:
    """The rule's params: the settings of `planned_client_stats` with the result version, each a param of its own
    (`params: **client_stats_params(RUNS)`), as the rule has always had them."""
    return job_params(planned_client_stats(runs), RESULT_VERSIONS["client_stats"])


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """client_stats.csv and its figure, when the section is enabled."""
    if not config["client_stats"]["enabled"]:
        return []
    results = Results.of(config)
    return [results.table("client_stats"), *results.figure(CLIENT_STATS_FIGURE).values()]
