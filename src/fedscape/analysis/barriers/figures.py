"""Figures of the barrier analyses: interpolation curves, layer-wise barrier heatmaps and layer distances.

Every figure follows fedscape.outputs.style: Okabe-Ito colours, label_run legends, colour-blind-safe
heatmaps, PDF + PNG + the plotted data as CSV (save_figure_outputs writes the rule's named outputs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, TwoSlopeNorm

from fedscape.analysis.barriers.definitions import (
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    MODES,
    SPLITS,
    split_pair_run_id,
)
from fedscape.core.runs import parse_run_id
from fedscape.outputs.labels import LABEL_ORDER, label_run
from fedscape.outputs.style import (
    MARKERS,
    PALETTE,
    diverging_cmap,
    empty_figure,
    pyplot,
    save_figure_outputs,
    sequential_cmap,
)
from fedscape.outputs.tables import read_table

MODE_TITLES = {"single": "one layer averaged", "shallow": "layers 0..i averaged (from input)",
               "deep": "layers i..L-1 averaged (from output)"}
FULL_MODEL_LABEL = "full model"
def _run_fields(run_id: str) -> dict | None:
    """The run fields of a run_id, or None when it is not one (e.g. a hand-written label)."""
    return parse_run_id(run_id) if "/" in str(run_id) else None


def pair_label(run_a: str, run_b: str | None = None) -> str:
    """Two runs named by the fields in which they differ ('IID vs α=0.1'), with plotting.label_run; one run
    (two of its clients) by its algorithm, init and alpha."""
    a = _run_fields(run_a)
    b = None if run_b is None or run_b == run_a else _run_fields(run_b)
    if a is None or (b is None and run_b not in (None, run_a)):
        return str(run_a) if run_b in (None, run_a) else f"{run_a} vs {run_b}"
    if b is None:
        return label_run(a, ("algorithm", "init", "alpha"))
    differ = [k for k in LABEL_ORDER if a.get(k) != b.get(k)]
    return f"{label_run(a, differ)} vs {label_run(b, differ)}"


def _heatmap_axes(ax, rounds: list, row_labels: list[str]) -> None:
    """Round ticks (at most ~8) on x, layer names on y, no grid: the layout of every layer heatmap."""
    tick_every = max(1, math.ceil(len(rounds) / 8))
    ax.set_xticks(range(0, len(rounds), tick_every), [str(r) for r in rounds[::tick_every]])
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7 if len(row_labels) <= 40 else 4)
    ax.set_xlabel("round")
    ax.grid(False)


def _log_heatmap(fig, ax, arr: np.ndarray, columns: list, labels: list[str], label: str) -> None:
    """One layers x rounds heatmap on a log colour scale; zeros (identical layers) white, NaN (skipped) grey."""
    positive = arr[np.isfinite(arr) & (arr > 0)]
    vmin, vmax = (float(positive.min()), float(positive.max())) if positive.size else (1e-12, 1.0)
    if vmax <= vmin:
        vmax = vmin * 10
    zero = np.isfinite(arr) & (arr <= 0)  # identical layers (e.g. the shared init at round 0): the 'under' colour
    norm = LogNorm(vmin, vmax)
    im = ax.imshow(np.ma.masked_invalid(np.where(zero, vmin / 10, arr)), cmap=sequential_cmap().with_extremes(
        under="white"), norm=norm, aspect="auto", interpolation="nearest")
    _heatmap_axes(ax, columns, labels)
    if labels and labels[-1] == FULL_MODEL_LABEL and len(labels) > 1:
        ax.axhline(len(labels) - 1.5, color="white", lw=2)
    if len(labels) <= 16 and len(columns) <= 12:  # small grids: the numbers themselves
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if np.isfinite(arr[i, j]):
                    dark = not zero[i, j] and norm(arr[i, j]) < 0.55
                    ax.text(j, i, f"{arr[i, j]:.3g}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
    cbar = fig.colorbar(im, ax=ax, extend="min" if zero.any() else "neither")
    cbar.set_label(label + " (log scale" + ("; white = 0)" if zero.any() else ")"))


def interpolation_figure(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Loss and error along the interpolation, one labelled curve per pair (Li et al. 2022, Figs 3c/5c); dashed:
    to model b aligned to a by weight matching (Ainsworth et al. 2023)."""
    df = read_table(table, [c for c in INTERPOLATION_COLUMNS if c != "aligned"])
    if df.empty:
        save_figure_outputs(empty_figure("no interpolation pairs with rows (every pair was skipped)"), outputs, df)
        return
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 5.0), squeeze=False, sharex=True, layout="constrained")
    pairs = list(dict.fromkeys(df["pair_id"]))
    aligned_rows = df["aligned"].astype(bool) if "aligned" in df.columns else pd.Series(False, index=df.index)
    legend = {}
    for j, split in enumerate(SPLITS):
        for i, value in enumerate(("loss", "error")):
            ax = axes[i, j]
            for k, pair in enumerate(pairs):
                for aligned in (False, True):
                    sub = df[(df["split"] == split) & (df["pair_id"] == pair) & (aligned_rows == aligned)]
                    if sub.empty:
                        continue
                    sub = sub.sort_values("t")
                    (handle,) = ax.plot(sub["t"], sub[value], color=PALETTE[k % len(PALETTE)],
                                        marker=MARKERS[k % len(MARKERS)], markersize=3, lw=1.2,
                                        linestyle="--" if aligned else "-")
                    first = sub.iloc[0]
                    rounds = "" if first["round_a"] == first["round_b"] else \
                        f" (round {first['round_a']} vs {first['round_b']})"
                    note = " · b aligned to a" if aligned else ""
                    legend.setdefault(f"{pair}: {pair_label(first['run_a'], first['run_b'])}{rounds}{note}", handle)
            if i == 1:
                ax.set_xlabel("t  (0 = model a, 1 = model b)")
            ax.set_ylabel(f"{split} {value}")
            ax.set_title(f"{value} on the {'aggregate training data' if split == 'train' else 'test set'}")
    fig.suptitle("Linear interpolation between checkpoints")
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(2, len(legend)))
    save_figure_outputs(fig, outputs, df)


def layer_heatmaps(table: str | Path, pair: str, split: str, outputs: dict[str, str | Path]) -> None:
    """Heatmaps layers x rounds of the layer-wise barriers, single/shallow/deep x loss/error (Adilova et al. 2023).

    Diverging colour-blind-safe map centred at 0 (plotting.diverging_cmap: vermillion = barrier, blue = the
    mixed model is better than the ends).
    """
    df = read_table(table, LAYER_BARRIER_COLUMNS)
    df = df[(df["pair"] == pair) & (df["split"] == split)]
    if df.empty:
        save_figure_outputs(empty_figure(f"pair {pair}, {split} split: no rows (every round was skipped)"),
                            outputs, df)
        return
    plt = pyplot()
    rounds = sorted(df["round"].unique())
    layers = df.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    row_height = max(2.2, 0.13 * len(layers))  # readable labels from 5 layers (cnn_small) to >100 (resnet56)
    fig, axes = plt.subplots(2, len(MODES), figsize=(4.2 * len(MODES), 1.0 + 2 * row_height), squeeze=False,
                             layout="constrained")
    cmap = diverging_cmap()
    for i, value in enumerate(("barrier_loss", "barrier_error")):
        for j, mode in enumerate(MODES):
            ax = axes[i, j]
            grid = (df[df["mode"] == mode].pivot_table(index="layer_index", columns="round", values=value)
                    .reindex(index=range(len(layers)), columns=rounds))
            arr = grid.to_numpy(dtype=float)
            finite = np.abs(arr[np.isfinite(arr)])
            lim = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
            im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto",
                           interpolation="nearest")
            _heatmap_axes(ax, rounds, [f"{k}: {n}" for k, n in enumerate(layers)])
            ax.set_title(f"{value.split('_')[1]}: {MODE_TITLES[mode]}")
            fig.colorbar(im, ax=ax, shrink=0.8)
    run_a, run_b = split_pair_run_id(df["run_id"].iloc[0])
    who = pair_label(run_a, run_b) if run_b else f"two clients of {pair_label(run_a)}"
    fig.suptitle(f"Layer-wise barriers, pair {pair} ({who}), {split} split: L(mixed) - mean(L(a), L(b))")
    save_figure_outputs(fig, outputs, df)


def layer_distance_figure(table: str | Path, pair: str, outputs: dict[str, str | Path],
                          rounds: list[int] | None = None) -> None:
    """Per-layer L2 and cosine distance between the two models of a pair over rounds (Adilova et al. 2023,
    Fig. 1b): two heatmaps of layers (input at the top) x rounds, the whole model in the bottom row, log scale.

    `rounds`: the pair's configured rounds (skipped ones show as grey columns). Without it a pair absent
    from the table is an error; with it the pair may have no rows (every round skipped): the figure says so.
    """
    df = read_table(table, LAYER_DISTANCE_COLUMNS)
    sub = df[df["pair"].astype(str) == str(pair)]
    if sub.empty:
        if rounds is None:
            known = sorted(df["pair"].astype(str).unique())
            raise ValueError(f"pair {pair!r} has no rows in {table}; its pairs: "
                             f"{', '.join(known) if known else 'none (the table is empty)'}")
        message = f"pair {pair}: no layer distances (every round was skipped; see the layer_barriers logs)"
        save_figure_outputs(empty_figure(message), outputs, sub[LAYER_DISTANCE_COLUMNS])
        return
    order = sub["layer_index"].where(sub["layer_index"] >= 0, np.iinfo(np.int64).max)  # the full model last
    data = sub.assign(_order=order).sort_values(["round", "_order"], kind="stable")[LAYER_DISTANCE_COLUMNS]
    columns = sorted({int(r) for r in data["round"]} | {int(r) for r in rounds or []})
    names = data[data["layer_index"] >= 0].drop_duplicates("layer_index").sort_values("layer_index")
    index = [*names["layer_index"].tolist(), *([-1] if (data["layer_index"] < 0).any() else [])]
    labels = [*[f"{k}: {n}" for k, n in zip(names["layer_index"], names["layer"], strict=True)],
              *([FULL_MODEL_LABEL] if index and index[-1] == -1 else [])]
    plt = pyplot()
    width = min(10.0, 3.0 + 0.45 * len(columns))
    fig, (ax_l2, ax_cos) = plt.subplots(1, 2, figsize=(2 * width, 1.2 + max(2.0, 0.16 * len(index))),
                                        layout="constrained")
    grids = {}
    for ax, column, label in ((ax_l2, "distance", "L2 distance ||θa - θb||"),
                              (ax_cos, "cosine", "cosine distance 1 - cos(θa, θb)")):
        grid = (data.pivot_table(index="layer_index", columns="round", values=column, aggfunc="first")
                .reindex(index=index, columns=columns))
        arr = grid.to_numpy(dtype=float)
        grids[column] = arr if column == "distance" else 1.0 - arr
        _log_heatmap(fig, ax, grids[column], columns, labels, label)
    run_a, run_b = split_pair_run_id(data["run_id"].iloc[0])
    who = pair_label(run_a, run_b) if run_b else f"two clients of {pair_label(run_a)}"
    fig.suptitle(f"Layer-wise distance between the two models over rounds, pair {pair}\n{who}"
                 + ("; grey = round skipped" if np.isnan(grids["distance"]).any() else ""))
    save_figure_outputs(fig, outputs, data)


