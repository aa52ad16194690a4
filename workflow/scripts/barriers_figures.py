"""Snakemake script of the barrier and client-statistics figure rules."""

from fedscape.barrier_stages import client_stats_figure, interpolation_figure, layer_distance_figure, layer_heatmaps
from fedscape.pipeline import setup_logging

sm = snakemake  # noqa: F821
setup_logging(sm.log[0], sm.threads)
if sm.rule == "interpolation_figure":
    interpolation_figure(sm.input.table, {key: sm.output[key] for key in ("png", "pdf", "csv")})
elif sm.rule == "client_stats_figure":
    client_stats_figure(sm.input.table, {key: sm.output[key] for key in ("png", "pdf", "csv")})
elif sm.rule == "layer_distance_figure":
    layer_distance_figure(sm.input.table, sm.wildcards.pair, {key: sm.output[key] for key in ("png", "pdf", "csv")},
                          rounds=list(sm.params.rounds))
else:
    for split in ("train", "test"):
        layer_heatmaps(sm.input.table, sm.wildcards.pair, split,
                       {key: sm.output[f"{split}_{key}"] for key in ("png", "pdf", "csv")})
