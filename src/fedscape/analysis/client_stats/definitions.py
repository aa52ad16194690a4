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
# The seeds each row of the figure's CSV is over: `n_seeds` the runs that had not diverged by that round, and
# `n_seeds_<panel>` those of them with a finite value of the panel, which its mean is over. Every panel's value can
# be missing in a row of a run counted: l2_to_final where the run has no final model (a diverged run: in no round of
# that panel) or did not keep the round's weights (training.save_every); the update statistics at round 0 (no update)
# and, in a run trained before they were recorded every round, outside its save_clients_at rounds (backfilled from
# clients.pt); the gradient diversity where every update is 0 (inf, left out, where they sum to 0 exactly), the update
# cosine with one client per round or fewer than two nonzero updates. n_seeds_l2_to_final comes first, as the one
# count the CSV had before the others (the panels' order after it).
SEED_COUNT_COLUMNS = ["n_seeds", "n_seeds_l2_to_final", *(f"n_seeds_{column}" for column, _ in CLIENT_STATS_PANELS
                                                          if column != "l2_to_final")]
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
