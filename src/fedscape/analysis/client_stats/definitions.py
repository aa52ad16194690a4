"""Torch-free definitions of the client-statistics table and figure."""

from __future__ import annotations

from fedscape.fl.settings import STAT_KEYS

CLIENT_STATS_COLUMNS = ["run_id", "round", *STAT_KEYS, "l2_to_final"]
CLIENT_STATS_FIGURE_COLUMNS = ["alpha", "init", "round", "gradient_diversity", "update_cosine_mean", "l2_to_final",
                               "dataset", "model", "algorithm", "num_clients", "participation"]
