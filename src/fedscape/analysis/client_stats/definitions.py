"""Torch-free definitions of the client-statistics table and figure."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.core.jobs import JobSettings
from fedscape.fl.settings import STAT_KEYS

CLIENT_STATS_COLUMNS = ["run_id", "round", *STAT_KEYS, "l2_to_final"]
# The figure's panels, left to right: (column, title). Client drift first: it is what the local updates do
# to the model before aggregation (the client-drift explainer, a 2025 blog post; the drift that SCAFFOLD corrects,
# Karimireddy et al. 2020; Li et al. 2022's local scope).
CLIENT_STATS_PANELS = (
    ("drift_from_start", "client drift from the round start"),
    ("drift_from_aggregate", "client drift from the aggregate"),
    ("gradient_diversity", "gradient diversity"),
    ("update_cosine_mean", "cosine similarity of updates"),
    ("l2_to_final", "L2 distance to final weights"),
)
# The seeds each row of the figure's CSV is over: `n_seeds` the runs that had not diverged by that round (the panels'
# means are over their finite values), `n_seeds_l2_to_final` those of them with an L2 distance to final weights (a
# diverged run has no final model: it counts in no round of that panel).
SEED_COUNT_COLUMNS = ["n_seeds", "n_seeds_l2_to_final"]
CLIENT_STATS_FIGURE_COLUMNS = ["alpha", "init", "round", *(column for column, _ in CLIENT_STATS_PANELS),
                               "dataset", "model", "algorithm", "num_clients", "participation", *SEED_COUNT_COLUMNS]


@dataclass(frozen=True, kw_only=True)
class ClientStatsJob(JobSettings):
    """The client-statistics table's job: the runs it reads, in order (the rule's inputs follow the same order).

    Its settings are the rule's params themselves (`params: **client_stats_params(...)`), as they were before the
    contract: `run_ids` and the result version beside it.
    """

    rule = "client_stats"
    run_ids: tuple[str, ...]
