"""Torch-free definitions of the client-statistics table and figure."""

from __future__ import annotations

from fedscape.fl.settings import STAT_KEYS

CLIENT_STATS_COLUMNS = ["run_id", "round", *STAT_KEYS, "l2_to_final"]
# The figure's panels, left to right: (column, title). Client drift first: it is what the local updates do
# to the model before aggregation (the client-drift explainer; Li et al. 2022's local scope).
CLIENT_STATS_PANELS = (
    ("drift_from_start", "client drift from the round start"),
    ("drift_from_aggregate", "client drift from the aggregate"),
    ("gradient_diversity", "gradient diversity"),
    ("update_cosine_mean", "cosine similarity of updates"),
    ("l2_to_final", "L2 distance to final weights"),
)
CLIENT_STATS_FIGURE_COLUMNS = ["alpha", "init", "round", *(column for column, _ in CLIENT_STATS_PANELS),
                               "dataset", "model", "algorithm", "num_clients", "participation"]
