"""Cost accounting (FedAlign paper, Table 5): wall-clock seconds per round and peak memory per algorithm."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedscape.core.io import remake_hint, write_csv
from fedscape.core.paths import run_of_path
from fedscape.fl.schedule import parse_work, work_text
from fedscape.outputs.tables import UNRECORDED, read_table

# What a run's cost per round depends on besides the algorithm: runs are compared only within one setting.
# local_epochs and local_steps hold a work that every client does (empty otherwise); local_work names the work as
# text ('5 epochs', 'steps uniform in 1..5, drawn every round'), so that unequal work is a setting of its own too.
# execution is how the clients trained (fedscape.fl.engine.execution_of; `unrecorded` for runs trained before it was
# recorded): on a GPU, FedAvg's clients train all at once where a label with client_parallel: sequential (Table 5's
# GradAug runs) trains one after another, and a ratio across the two would be the path's speed-up, not the
# algorithm's overhead.
# precision is the precision the rounds computed in (a label may set its own training.precision, and tf32 computes
# fp32 on a CPU or a card before Ampere: `models.device.precision_used`). device is the kind of device (cpu, cuda),
# not the job's index of its card: a workflow spreads its jobs over a machine's cards (`models.device.resolve_device`),
# and a FedAvg run on cuda:0 is the baseline of a GradAug run on cuda:1 of the same model (device_name).
COST_SETTING = ["dataset", "model", "device", "device_name", "alpha", "num_clients", "participation", "local_epochs",
                "batch_size", "local_steps", "local_work", "execution", "precision"]
COST_COLUMNS = ["dataset", "model", "algorithm", "algorithm_name", "device", "device_name", "num_runs", "num_rounds",
                "median_seconds_per_round", "peak_mem_mb", "seconds_vs_fedavg", "peak_mem_vs_fedavg",
                "alpha", "num_clients", "participation", "local_epochs", "batch_size", "local_steps", "local_work",
                "execution", "precision"]
# meta.json's key -> the column: where and how a run trained (its top level: its last call's), which each attempt of
# a resumed run overrides for the rounds from its first on
ATTEMPT_COLUMNS = {"execution": "execution", "device": "device", "device_name": "device_name",
                   "precision_used": "precision"}
# The columns of a run's metrics.csv that the cost table reads.
METRICS_COLUMNS = ["run_id", "dataset", "model", "algorithm", "alpha", "num_clients", "participation", "round",
                   "seconds", "peak_mem_mb"]


def _run_rounds(metrics: str | Path, meta_path: str | Path) -> pd.DataFrame:
    """A run's rounds 1.. with its device, algorithm name, local work and batch size from meta.json."""
    df = read_table(metrics, METRICS_COLUMNS, expect=run_of_path(metrics))  # another run's metrics.csv is refused
    meta = json.loads(Path(meta_path).read_text())
    run_id = df["run_id"].iloc[0] if len(df) else run_of_path(metrics).get("run_id")
    if "run_id" in meta and run_id is not None and meta["run_id"] != run_id:  # its device, work, algorithm name
        raise ValueError(f"{meta_path} is the meta.json of run {meta['run_id']}, not of {run_id} (the run of "
                         f"{metrics}); {remake_hint(meta_path)}")
    settings = meta.get("settings", {})
    training = settings.get("training", {})
    missing = [k for k in ("batch_size",) if k not in training]
    if training.get("local_epochs") is None and training.get("local_steps") is None:
        missing.insert(0, "local_epochs")
    if missing:
        raise ValueError(f"{meta_path} has no training.{missing[0]} in its settings: cannot tell which runs "
                         f"do the same work per round; {remake_hint(meta_path)}")
    df = df[df["round"] > 0].copy()
    # a key that the run's meta.json predates is `unrecorded`, as an attempt's below
    for key, column in ATTEMPT_COLUMNS.items():
        df[column] = _recorded(meta, key)
    attempts = meta.get("attempts", [])
    if attempts:  # a run resumed after a kill: each attempt's rounds as it trained them
        # the run's own values are those of its last call: a round of an attempt that did not record a key (older
        # attempts recorded less), or of a call before the first recorded one, is `unrecorded`, not timed under
        # another attempt's device or precision
        for key, column in ATTEMPT_COLUMNS.items():
            df[column] = UNRECORDED
            for attempt in attempts:
                df.loc[df["round"] >= attempt["from_round"], column] = _recorded(attempt, key)
    df["algorithm_name"] = settings.get("algorithm", df["algorithm"].iloc[0] if len(df) else "")
    unit = "steps" if training.get("local_steps") is not None else "epochs"
    work = parse_work(f"local_{unit}", training[f"local_{unit}"])
    df["local_epochs"] = work if unit == "epochs" and isinstance(work, int) else pd.NA
    df["local_steps"] = work if unit == "steps" and isinstance(work, int) else pd.NA
    df["local_work"] = work_text(unit, work)
    df["batch_size"] = int(training["batch_size"])
    return df


def _recorded(record: dict, key: str) -> str:
    """The cost table's value of meta.json's `key` (ATTEMPT_COLUMNS) in `record` (the run's meta.json or one of its
    attempts): `unrecorded` where the record predates the key, a device as its type (`_device_kind`)."""
    value = record.get(key, UNRECORDED)
    return _device_kind(value) if key == "device" else value


def _device_kind(device: str) -> str:
    """A recorded device as the cost table compares it: its type (`cuda:1` -> `cuda`), the card's model being in
    device_name; anything else (`cpu`, `unrecorded`) as it is."""
    return str(device).split(":", 1)[0]


def cost_table(runs: list[tuple[str | Path, str | Path]]) -> pd.DataFrame:
    """Per algorithm label and setting: median seconds per round and peak memory (FedAlign Table 5).

    `runs` are (metrics.csv, meta.json) pairs of train jobs. Round 0 (evaluation of the init only) is
    left out. Peak memory is the largest per-round peak: CUDA max allocated on GPU, the process's peak
    RSS on CPU (which includes the data and the interpreter). A setting (COST_SETTING) is everything
    besides the algorithm that sets the work of a round: dataset, model, device, partition, client
    count, participation, local work (epochs or steps, equal or not), batch size, how the clients trained
    (`execution`: vectorised, sequential, captured) and the precision they computed in. `seconds_vs_fedavg` and
    `peak_mem_vs_fedavg` divide by the algorithm name `fedavg` in the same setting (the median over its labels
    there; empty when there is none), so that the overheads of GradAug, FedAlign, MOON ... read off directly.
    """
    frames = [_run_rounds(metrics, meta) for metrics, meta in runs]
    if not frames or all(f.empty for f in frames):
        return pd.DataFrame(columns=COST_COLUMNS)
    rounds = pd.concat(frames, ignore_index=True)
    keys = [*COST_SETTING, "algorithm", "algorithm_name"]
    table = rounds.groupby(keys, sort=True, dropna=False).agg(
        num_runs=("run_id", "nunique"), num_rounds=("round", "size"),
        median_seconds_per_round=("seconds", "median"), peak_mem_mb=("peak_mem_mb", "max"),
    ).reset_index()
    base = table[table["algorithm_name"] == "fedavg"].groupby(COST_SETTING, dropna=False).agg(
        base_seconds=("median_seconds_per_round", "median"), base_mem=("peak_mem_mb", "median")).reset_index()
    table = table.merge(base, on=COST_SETTING, how="left")
    table["seconds_vs_fedavg"] = table["median_seconds_per_round"] / table["base_seconds"]
    table["peak_mem_vs_fedavg"] = table["peak_mem_mb"] / table["base_mem"]
    return table[COST_COLUMNS]


def cost_table_job(metrics: list[str | Path], metas: list[str | Path], output: str | Path) -> None:
    """Write results/tables/cost.csv from the train jobs' metrics.csv and meta.json."""
    if len(metrics) != len(metas):
        raise ValueError(f"{len(metrics)} metrics files but {len(metas)} meta files")
    write_csv(cost_table(list(zip(metrics, metas, strict=True))), output)
