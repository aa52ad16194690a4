"""Cost accounting (FedAlign paper, Table 5): wall-clock seconds per round and peak memory per algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedscape.core.io import write_csv

COST_COLUMNS = ["dataset", "model", "algorithm", "algorithm_name", "device", "device_name", "num_runs", "num_rounds",
                "median_seconds_per_round", "peak_mem_mb", "seconds_vs_fedavg", "peak_mem_vs_fedavg"]


def cost_table(runs: list[tuple[str | Path, str | Path]]) -> pd.DataFrame:
    """Per dataset, model, algorithm label and device: median seconds per round and peak memory.

    `runs` are (metrics.csv, meta.json) pairs of train jobs. Round 0 (evaluation of the init only)
    is left out. Peak memory is the largest per-round peak: CUDA max allocated on GPU, the process's
    peak RSS on CPU (which includes the data and the interpreter). `seconds_vs_fedavg` and
    `peak_mem_vs_fedavg` divide by the row of algorithm name `fedavg` on the same dataset, model and
    device (empty when there is none), so the overheads of GradAug, FedAlign, MOON ... read off directly.
    """
    frames = []
    for metrics, meta_path in runs:
        df = pd.read_csv(metrics)
        meta = json.loads(Path(meta_path).read_text())
        df = df[df["round"] > 0].copy()
        df["device"] = meta.get("device", "unknown")
        df["device_name"] = meta.get("device_name", meta.get("device", "unknown"))
        df["algorithm_name"] = meta.get("settings", {}).get("algorithm", df["algorithm"].iloc[0] if len(df) else "")
        frames.append(df)
    if not frames or all(f.empty for f in frames):
        return pd.DataFrame(columns=COST_COLUMNS)
    rounds = pd.concat(frames, ignore_index=True)
    keys = ["dataset", "model", "algorithm", "algorithm_name", "device", "device_name"]
    table = rounds.groupby(keys, sort=True).agg(
        num_runs=("run_id", "nunique"), num_rounds=("round", "size"),
        median_seconds_per_round=("seconds", "median"), peak_mem_mb=("peak_mem_mb", "max"),
    ).reset_index()
    base = table[table["algorithm_name"] == "fedavg"].groupby(["dataset", "model", "device"]).agg(
        base_seconds=("median_seconds_per_round", "min"), base_mem=("peak_mem_mb", "min")).reset_index()
    table = table.merge(base, on=["dataset", "model", "device"], how="left")
    table["seconds_vs_fedavg"] = table["median_seconds_per_round"] / table["base_seconds"]
    table["peak_mem_vs_fedavg"] = table["peak_mem_mb"] / table["base_mem"]
    return table[COST_COLUMNS]


def cost_stage(metrics: list[str | Path], metas: list[str | Path], output: str | Path) -> None:
    """Write results/tables/cost.csv from the train jobs' metrics.csv and meta.json."""
    if len(metrics) != len(metas):
        raise ValueError(f"{len(metrics)} metrics files but {len(metas)} meta files")
    write_csv(cost_table(list(zip(metrics, metas, strict=True))), output)
