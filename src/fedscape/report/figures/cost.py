"""Cost per round: median seconds per round and peak memory per algorithm label and setting (FedAlign Table 5),
from cost.csv."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.fl.hparams.registry import display_name
from fedscape.outputs.labels import LABEL_SEP, label_run, refuse_alike
from fedscape.outputs.style import (
    PALETTE,
    empty_figure,
    pyplot,
    save_figure,
    varying_keys,
)
from fedscape.report.figures.common import select_model

COST_FIGURE_COLUMNS = ["dataset", "model", "algorithm", "algorithm_name", "device", "device_name",
                       "median_seconds_per_round", "peak_mem_mb", "seconds_vs_fedavg", "peak_mem_vs_fedavg",
                       "alpha", "num_clients", "participation", "local_epochs", "batch_size", "local_steps",
                       "local_work", "execution", "precision"]


def _cost_label(row: pd.Series, varying: list[str]) -> str:
    """An algorithm label and the setting fields that vary between the rows of a cost figure."""
    parts = [display_name(str(row["algorithm"]))]
    if varying:
        run_fields = [k for k in varying if k in ("alpha", "num_clients", "participation")]
        if run_fields:
            parts.append(label_run(row, run_fields))
        parts += [f"{k.replace('_', ' ')} {row[k]}" for k in varying if k in ("local_epochs", "batch_size")]
        parts += [str(row["local_work"]) for k in varying if k == "local_work"]
        parts += [str(row[k]) for k in varying if k in ("execution", "precision")]
    return LABEL_SEP.join(parts)


def cost_figure(cost: pd.DataFrame, dataset: str, model: str, base_path: str | Path) -> dict:
    """Median wall-clock seconds per round and peak memory per algorithm label and setting (FedAlign
    Table 5), annotated with the ratio to FedAvg in the same setting; one bar colour per device. Two bars labelled
    alike on one device (one would hide the other) are refused before anything is drawn."""
    df = select_model(cost, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in cost.csv"), base_path,
                           pd.DataFrame(columns=COST_FIGURE_COLUMNS))
    # local_work names epochs and steps, equal or not, in one text; cost.csv files made before it had local_epochs
    work = "local_work" if "local_work" in df.columns else "local_epochs"
    df = df.assign(**{k: pd.NA for k in ("local_steps", "local_work", "execution", "precision") if k not in df.columns})
    varying = varying_keys(df, ["alpha", "num_clients", "participation", work, "batch_size", "execution",
                                "precision"])
    df = df.assign(_label=[_cost_label(row, varying) for _, row in df.iterrows()])
    df = df.sort_values(["algorithm", *varying, "device"], kind="stable")
    shown = ["algorithm", *varying]
    refuse_alike(((row[shown].to_dict(), (row["_label"], str(row["device_name"]))) for _, row in df.iterrows()),
                 "the cost figure's bars")
    labels = list(dict.fromkeys(df["_label"]))
    devices = list(dict.fromkeys(df["device_name"].astype(str)))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 0.9 + 0.32 * len(labels) * len(devices)), sharey=True)
    height = 0.8 / len(devices)
    for k, device in enumerate(devices):
        sub = df[df["device_name"].astype(str) == device]
        y = np.array([labels.index(a) for a in sub["_label"]]) - 0.4 + height * (k + 0.5)
        for ax, value, ratio, unit in ((axes[0], "median_seconds_per_round", "seconds_vs_fedavg", "s"),
                                       (axes[1], "peak_mem_mb", "peak_mem_vs_fedavg", "MB")):
            ax.barh(y, sub[value], height * 0.9, color=PALETTE[k % len(PALETTE)], label=device)
            for yi, v, r in zip(y, sub[value], sub[ratio], strict=True):
                note = f" {v:.3g} {unit}" + (f" (×{r:.2f})" if math.isfinite(r) else "")
                ax.text(v, yi, note, va="center", fontsize=6)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("median seconds per round")
    axes[1].set_xlabel("peak memory (MB)")
    for ax in axes:
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.35)
    if len(devices) > 1:
        axes[1].legend(loc="lower right")
    fig.suptitle(f"{dataset} / {model}: cost per round (× = ratio to FedAvg in the same setting and device)"
                 + ("" if len(devices) > 1 else f"; {devices[0]}"), y=1.02)
    return save_figure(fig, base_path, df[COST_FIGURE_COLUMNS])
