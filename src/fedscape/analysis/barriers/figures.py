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
from matplotlib.ticker import MaxNLocator

from fedscape.analysis.barriers.definitions import (
    BEZIER,
    BN_STATS_COLUMN,
    CONTROL_MODES,
    CUMULATION_MODES,
    END_COLUMNS,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    LINEAR,
    MODES,
    RATIO_COLUMNS,
    SPLITS,
    parse_averaged,
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

# The columns a layer-barrier figure reads (bn_stats, the ratios and the ends' values are not drawn).
_REQUIRED_LAYER_COLUMNS = [c for c in LAYER_BARRIER_COLUMNS
                           if c not in (BN_STATS_COLUMN, *RATIO_COLUMNS, *END_COLUMNS)]
MODE_TITLES = {"single": "one layer averaged", "shallow": "layers 0..i averaged (from input)",
               "deep": "layers i..L-1 averaged (from output)", "random": "layers added in a random order",
               "ends": "shallowest and deepest layers together",
               "random_direction": "one layer moved along a random direction (control)"}
FULL_MODEL_LABEL = "full model"
# A +inf value (a loss that overflowed at a divergent model between two usable ends: `linear_barrier`) has no place
# on an axis, and matplotlib leaves it out unseen: a line marks it with INFINITE_MARKER at the top edge of its panel
# (`_mark_infinite`), a heatmap cell takes INFINITE_COLOR (the colour bar's extension), distinct from the grey of a
# cell not computed (NaN).
INFINITE_MARKER = "^"
INFINITE_COLOR = "black"
INFINITE_NOTE = "triangle at the top edge = +inf"


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


def _aligned(df: pd.DataFrame) -> pd.Series:
    """The `aligned` flag of every row; tables from before the column are unaligned."""
    if "aligned" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["aligned"].map(lambda v: str(v).strip().lower() == "true")


def _mark_infinite(ax, x, y, **style) -> bool:
    """Draw the +inf values of the line (x, y) as INFINITE_MARKER at the top edge of `ax` (x in data, y in axes
    coordinates, unclipped: the axis limits stay those of the finite values); whether there was any."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    up = np.isposinf(y)
    if up.any():
        ax.plot(x[up], np.ones(int(up.sum())), transform=ax.get_xaxis_transform(), marker=INFINITE_MARKER,
                linestyle="none", clip_on=False, **style)
    return bool(up.any())


def _heatmap_axes(ax, rounds: list, row_labels: list[str]) -> None:
    """Round ticks (at most ~8) on x, layer names on y, no grid: the layout of every layer heatmap."""
    tick_every = max(1, math.ceil(len(rounds) / 8))
    ax.set_xticks(range(0, len(rounds), tick_every), [str(r) for r in rounds[::tick_every]])
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7 if len(row_labels) <= 40 else 4)
    ax.set_xlabel("round")
    ax.grid(False)


# Heatmaps of at most this many rows x columns print each cell's value in it (`_print_values`): beyond, the text
# outgrows the cells, and the colour alone tells the values.
PRINTED_GRID = (16, 12)
PRINTED_CELL_WIDTH = 0.45  # inches: a printed value ('-0.00123') fits its cell


def _prints_values(rows: int, columns: int) -> bool:
    """Whether a heatmap of `rows` x `columns` cells prints their values (PRINTED_GRID)."""
    return rows <= PRINTED_GRID[0] and columns <= PRINTED_GRID[1]


def _print_values(ax, arr: np.ndarray, dark: np.ndarray) -> None:
    """Each finite cell's value printed in it, white where `dark` (the cell's colour too dark for black text), on a
    grid of at most PRINTED_GRID: a value the colour scale shows near its centre (a late round's barrier beside round
    1's, a small distance) can be read all the same."""
    if not _prints_values(*arr.shape):
        return
    for i, j in zip(*np.nonzero(np.isfinite(arr)), strict=True):
        ax.text(j, i, f"{arr[i, j]:.3g}", ha="center", va="center", fontsize=6,
                color="white" if dark[i, j] else "black")


def _log_heatmap(fig, ax, arr: np.ndarray, columns: list, labels: list[str], label: str) -> None:
    """One layers x rounds heatmap on a log colour scale; zeros (identical layers) white, NaN (skipped) grey."""
    is_positive = np.isfinite(arr) & (arr > 0)
    positive = arr[is_positive]
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
    dark = np.zeros(arr.shape, dtype=bool)  # zeros are white
    dark[is_positive] = norm(positive) < 0.55  # the dark (purple to teal) end of viridis
    _print_values(ax, arr, dark)
    cbar = fig.colorbar(im, ax=ax, extend="min" if zero.any() else "neither")
    cbar.set_label(label + " (log scale" + ("; white = 0)" if zero.any() else ")"))


LINESTYLES = {(LINEAR, False): "-", (LINEAR, True): "--", (BEZIER, False): ":", (BEZIER, True): "-."}


def interpolation_figure_job(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Loss and error along the interpolation, one labelled curve per pair (Li et al. 2022, Figs 3c/5c); dashed:
    to model b aligned to a by weight matching (Ainsworth et al. 2023); dotted (dash-dotted when aligned): along
    the trained quadratic Bezier curve (Garipov et al. 2018). A +inf value (a loss that overflowed) is a marker at
    the top edge of its panel (`_mark_infinite`), and its curve's legend says so."""
    df = read_table(table, [c for c in INTERPOLATION_COLUMNS if c not in ("aligned", "path", BN_STATS_COLUMN)])
    if df.empty:
        save_figure_outputs(empty_figure("no interpolation pairs with rows (every pair was skipped)"), outputs, df)
        return
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 5.0), squeeze=False, sharex=True, layout="constrained")
    pairs = list(dict.fromkeys(df["pair_id"]))
    aligned_rows = df["aligned"].astype(bool) if "aligned" in df.columns else pd.Series(False, index=df.index)
    path_rows = df["path"].astype(str) if "path" in df.columns else pd.Series(LINEAR, index=df.index)
    # a pair whose rows are all NaN was not computed (a run diverged: the job writes NaN rows); its legend says so
    not_computed = df[["loss", "error"]].isna().all(axis=1).groupby(df["pair_id"]).all()
    # the curves with a +inf value (a loss that overflowed), whose legend says where it is drawn
    infinite = np.isposinf(df[["loss", "error"]].to_numpy(dtype=float)).any(axis=1)
    overflowed = set(zip(df["pair_id"][infinite], path_rows[infinite], aligned_rows[infinite], strict=True))
    legend = {}
    for j, split in enumerate(SPLITS):
        for i, value in enumerate(("loss", "error")):
            ax = axes[i, j]
            for k, pair in enumerate(pairs):
                for (path, aligned), linestyle in LINESTYLES.items():
                    sub = df[(df["split"] == split) & (df["pair_id"] == pair) & (aligned_rows == aligned)
                             & (path_rows == path)]
                    if sub.empty:
                        continue
                    sub = sub.sort_values("t")
                    color = PALETTE[k % len(PALETTE)]
                    (handle,) = ax.plot(sub["t"], sub[value], color=color, marker=MARKERS[k % len(MARKERS)],
                                        markersize=3, lw=1.2, linestyle=linestyle)
                    _mark_infinite(ax, sub["t"], sub[value], color=color, markersize=5)
                    first = sub.iloc[0]
                    rounds = "" if first["round_a"] == first["round_b"] else \
                        f" (round {first['round_a']} vs {first['round_b']})"
                    note = (" · Bezier curve" if path == BEZIER else "") + (" · b aligned to a" if aligned else "")
                    if not_computed[pair]:
                        note += " (not computed: a run diverged)"
                    elif (pair, path, aligned) in overflowed:
                        note += f" (+inf at some t: {INFINITE_NOTE})"
                    elif aligned and _on_the_unaligned_curve(df, aligned_rows, path_rows, pair, path):
                        note += " (alignment changed nothing: on the unaligned line)"
                    legend.setdefault(f"{pair}: {pair_label(first['run_a'], first['run_b'])}{rounds}{note}", handle)
            if i == 1:
                ax.set_xlabel("t  (0 = model a, 1 = model b)")
            ax.set_ylabel(f"{split} {value}")
            ax.set_title(f"{value} on the {'aggregate training data' if split == 'train' else 'test set'}")
    fig.suptitle("Linear interpolation between checkpoints"
                 + (" and trained Bezier curves" if (path_rows == BEZIER).any() else ""))
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(2, len(legend)))
    save_figure_outputs(fig, outputs, df)


def _on_the_unaligned_curve(df: pd.DataFrame, aligned_rows: pd.Series, path_rows: pd.Series, pair: str,
                            path: str) -> bool:
    """Whether a pair's aligned curve along `path` has the values of its unaligned one at every t and split (to 1e-6
    relative: a GPU's evaluations may differ in the last bits): weight matching found the identity permutation (models
    of one init keep their hidden units matched), so the dashed line hides under the solid one and the legend says
    why. NaN matches NaN (a point not evaluated in both), but an all-NaN comparison (a pair not computed) says
    nothing about the alignment: False."""
    of_pair = (df["pair_id"] == pair) & (path_rows == path)
    key = ["split", "t"]
    aligned = df[of_pair & aligned_rows].sort_values(key)
    unaligned = df[of_pair & ~aligned_rows].sort_values(key)
    if aligned.empty or aligned[key].values.tolist() != unaligned[key].values.tolist():
        return False
    values = ["loss", "error"]
    aligned_values, unaligned_values = aligned[values].to_numpy(float), unaligned[values].to_numpy(float)
    if not np.isfinite(aligned_values).any():
        return False
    return bool(np.allclose(aligned_values, unaligned_values, rtol=1e-6, atol=0.0, equal_nan=True))


def _entry_rows(sub: pd.DataFrame, mode: str) -> tuple[pd.Series, list[str]]:
    """The heatmap row of each entry of one mode and the row labels: the layer index for single/shallow/deep
    (the layer averaged alone, the last added from the input, the first of the group from the output), the
    cumulation step for random and ends (row k averages k+1 layers; the label names the layer added)."""
    if mode in CUMULATION_MODES and "averaged" in sub.columns:
        step = sub["averaged"].map(lambda cell: len(parse_averaged(cell)) - 1)
        added = sub.assign(_row=step).drop_duplicates("_row").sort_values("_row")
        return step, [f"{k}: + {i}: {n}" for k, i, n in zip(added["_row"], added["layer_index"], added["layer"],
                                                                 strict=True)]
    names = sub.drop_duplicates("layer_index").sort_values("layer_index")
    return sub["layer_index"], [f"{k}: {n}" for k, n in zip(names["layer_index"], names["layer"], strict=True)]


def _pair_who(run_a: str, run_b: str | None) -> str:
    """Who a layer-wise pair compares: two runs, or two models of one run (two of its clients, or its global models
    at rounds t and t + 1 for a consecutive pair: the table does not tell them apart)."""
    return pair_label(run_a, run_b) if run_b else f"two models of {pair_label(run_a)}"


def layer_heatmaps(table: str | Path, pair: str, split: str, outputs: dict[str, str | Path],
                   modes: tuple[str, ...] = MODES + CONTROL_MODES, aligned: bool = False) -> None:
    """Heatmaps layers x rounds of the layer-wise barriers, one column per mode x loss/error (Adilova et al.
    2023; Figs 1-3 for single/shallow/deep, Fig. 4 for random and ends); `aligned`: of the pair with b aligned to
    a by weight matching (Ainsworth et al. 2023).

    Diverging colour-blind-safe map centred at 0 (plotting.diverging_cmap: vermillion = barrier, blue = the
    mixed model is better than the ends), one symmetric scale per row (loss, error) shared by its panels, so that the
    modes compare, with each cell's value printed on grids of at most PRINTED_GRID (`_print_values`): a late round's
    barrier is near white on round 1's scale. The barriers are absolute differences, as in the paper's heatmaps (the
    ratio of its footnote 2 is in the table: RATIO_COLUMNS). A +inf barrier (the mixed model's loss overflowed)
    is INFINITE_COLOR, the colour bar's extension beyond the largest finite value.
    """
    df = read_table(table, _REQUIRED_LAYER_COLUMNS)
    df = df[(df["pair"] == pair) & (df["split"] == split)]
    df = df[_aligned(df) == aligned]
    present = [m for m in modes if (df["mode"] == m).any()]
    df = df[df["mode"].isin(present)] if present else df
    if df.empty or not present:
        what = "rows" if df.empty else f"rows of the modes {', '.join(modes)}"
        save_figure_outputs(empty_figure(f"pair {pair}, {split} split: no {what}"
                                         + (" (every round was skipped)" if df.empty else "")), outputs, df)
        return
    plt = pyplot()
    rounds = sorted(df["round"].unique())
    num_layers = df["layer_index"].nunique()
    row_height = max(2.2, 0.13 * num_layers)  # readable labels from 5 layers (cnn_small) to >100 (resnet56)
    # printed values (`_print_values`) widen a panel of many rounds to PRINTED_CELL_WIDTH a round
    width = max(4.2, 1.7 + PRINTED_CELL_WIDTH * len(rounds)) if _prints_values(num_layers, len(rounds)) else 4.2
    fig, axes = plt.subplots(2, len(present), figsize=(width * len(present), 1.0 + 2 * row_height), squeeze=False,
                             layout="constrained")
    cmap = diverging_cmap().with_extremes(over=INFINITE_COLOR)
    for i, value in enumerate(("barrier_loss", "barrier_error")):
        grids = {}
        for mode in present:
            sub = df[df["mode"] == mode]
            rows, labels = _entry_rows(sub, mode)
            grid = (sub.assign(_row=rows).pivot_table(index="_row", columns="round", values=value)
                    .reindex(index=range(len(labels)), columns=rounds))
            grids[mode] = (grid.to_numpy(dtype=float), labels)
        # one symmetric scale for the row, so that its panels (modes) compare: +-max |barrier| of all of them
        finite = np.abs(np.concatenate([arr[np.isfinite(arr)] for arr, _ in grids.values()]))
        lim = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
        norm = TwoSlopeNorm(0.0, -lim, lim)
        infinite = False
        for j, (mode, (arr, labels)) in enumerate(grids.items()):
            ax = axes[i, j]
            inf_cells = np.isposinf(arr)  # drawn beyond the norm's top: the map's `over` colour
            infinite |= bool(inf_cells.any())
            im = ax.imshow(np.ma.masked_invalid(np.where(inf_cells, 2 * lim, arr)), cmap=cmap, norm=norm,
                           aspect="auto", interpolation="nearest")
            _heatmap_axes(ax, rounds, labels)
            dark, shown = np.zeros(arr.shape, dtype=bool), np.isfinite(arr)
            dark[shown] = np.abs(norm(arr[shown]) - 0.5) > 0.35  # the blue and the vermillion ends of the map
            # a difference of means equal up to float rounding (an error barrier of -5.6e-17) is printed as the 0 it is
            _print_values(ax, np.where(np.abs(arr) < 1e-9 * lim, 0.0, arr), dark)
            ax.set_title(f"{value.split('_')[1]}: {MODE_TITLES[mode]}")
        # one colour bar for the row's one scale, beside its last panel
        cbar = fig.colorbar(im, ax=axes[i, :].tolist(), shrink=0.8, extend="max" if infinite else "neither")
        cbar.set_label(f"{value.split('_')[1]} barrier" + (f" ({INFINITE_COLOR} = +inf)" if infinite else ""))
    run_a, run_b = split_pair_run_id(df["run_id"].iloc[0])
    who = _pair_who(run_a, run_b)
    note = ", b aligned to a by weight matching" if aligned else ""
    fig.suptitle(f"Layer-wise barriers, pair {pair} ({who}{note}), {split} split: L(mixed) - mean(L(a), L(b))")
    save_figure_outputs(fig, outputs, df)


HEATMAP_SPLITS = ("train", "test")  # a heatmap rule draws both, in files of their own: outputs "<split>_<format>"


def _heatmaps_of_splits(table: str | Path, pair: str, outputs: dict[str, str | Path], **options) -> None:
    """`layer_heatmaps` of `pair` on each split, into the outputs keyed "<split>_<format>" (png, pdf, csv)."""
    for split in HEATMAP_SPLITS:
        layer_heatmaps(table, pair, split, {key: outputs[f"{split}_{key}"] for key in ("png", "pdf", "csv")},
                       **options)


def layer_barrier_figures_job(table: str | Path, pair: str, outputs: dict[str, str | Path]) -> None:
    """The layer-wise heatmaps of one pair on train and test (Adilova et al. 2023, Figs 1-3, with the controls)."""
    _heatmaps_of_splits(table, pair, outputs)


def layer_cumulation_figures_job(table: str | Path, pair: str, outputs: dict[str, str | Path]) -> None:
    """The heatmaps of modes random and ends of one pair on train and test (Adilova et al. 2023, Fig. 4)."""
    _heatmaps_of_splits(table, pair, outputs, modes=CUMULATION_MODES)


def layer_aligned_figures_job(table: str | Path, pair: str, outputs: dict[str, str | Path],
                              modes: tuple[str, ...]) -> None:
    """The heatmaps of one pair on train and test with b aligned to a by weight matching (Ainsworth et al. 2023),
    for the configured `modes`."""
    _heatmaps_of_splits(table, pair, outputs, modes=tuple(modes), aligned=True)


def layer_distance_figure_job(table: str | Path, pair: str, outputs: dict[str, str | Path],
                              rounds: list[int] | None = None) -> None:
    """Per-layer L2 and cosine distance between the two models of a pair over rounds (Adilova et al. 2023,
    Fig. 1b): two heatmaps of layers (input at the top) x rounds, the whole model in the bottom row, log scale.

    `rounds`: the pair's configured rounds (skipped ones show as grey columns). Without it a pair absent
    from the table is an error; with it the pair may have no rows (every round skipped): the figure says so.
    """
    df = read_table(table, LAYER_DISTANCE_COLUMNS)
    sub = df[(df["pair"].astype(str) == str(pair)) & ~_aligned(df)]  # as trained (the line plot has the aligned)
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
    who = _pair_who(run_a, run_b)
    fig.suptitle(f"Layer-wise distance between the two models over rounds, pair {pair}\n{who}"
                 + ("; grey = round skipped" if np.isnan(grids["distance"]).any() else ""))
    save_figure_outputs(fig, outputs, data)


def full_model_barriers(barriers: pd.DataFrame) -> pd.DataFrame:
    """The full-model barrier L((a + b) / 2) - mean(L(a), L(b)) per (pair, aligned, round, split): the entry of any
    cumulative mode that averages every layer (Adilova et al. 2023, Fig. 1b)."""
    columns = ["pair", "aligned", "round", "split", "barrier_loss", "barrier_error"]
    if barriers.empty:
        return pd.DataFrame(columns=columns)
    df = barriers.assign(aligned=_aligned(barriers))
    counts = df["averaged"].map(lambda cell: len(parse_averaged(cell)))
    layers = df.groupby("pair")["layer_index"].transform("nunique")
    full = df[counts == layers]
    return full.drop_duplicates(["pair", "aligned", "round", "split"])[columns].sort_values(
        ["pair", "aligned", "split", "round"], kind="stable").reset_index(drop=True)


def layer_training_figure_job(barriers_table: str | Path, distances_table: str | Path, pair: str,
                              outputs: dict[str, str | Path]) -> None:
    """The full-model barrier and the per-layer Euclidean distance and cosine similarity of a pair over training,
    as lines (Adilova et al. 2023, Fig. 1b): x = round; the loss barrier above the error barrier, in panels of
    their own; one line per layer, coloured from the input (dark) to the output (light), the whole model in black;
    solid as trained, dashed with b aligned to a. A +inf barrier is a marker at the top edge of its panel
    (`_mark_infinite`), and the barrier's title says so."""
    barriers, distances = pd.read_csv(barriers_table), pd.read_csv(distances_table)
    for table, df, columns in ((barriers_table, barriers, _REQUIRED_LAYER_COLUMNS),
                               (distances_table, distances, LAYER_DISTANCE_COLUMNS)):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"{table} lacks the columns {missing} of a layer-wise table")
    own = barriers[barriers["pair"].astype(str) == str(pair)]
    full = full_model_barriers(own)
    dist = distances[distances["pair"].astype(str) == str(pair)]
    dist = dist.assign(aligned=_aligned(dist))
    data = pd.concat([full.assign(what="full_barrier"), dist.assign(what="distance")], ignore_index=True)
    if full.empty and dist.empty:
        save_figure_outputs(empty_figure(f"pair {pair}: no rows (every round was skipped)"), outputs, data)
        return
    plt = pyplot()
    fig = plt.figure(figsize=(12.0, 4.6), layout="constrained")
    # the loss and the error barrier in two panels, one above the other on one round axis, each with its own zero (on
    # twin axes their zeros differed, and the lines crossed where nothing happened); the distances span both rows
    grid = fig.add_gridspec(2, 3)
    ax_barrier = fig.add_subplot(grid[0, 0])
    ax_error = fig.add_subplot(grid[1, 0], sharex=ax_barrier)
    ax_l2, ax_cos = fig.add_subplot(grid[:, 1]), fig.add_subplot(grid[:, 2])
    styles = {False: "-", True: "--"}
    infinite = False
    for (split, aligned), sub in full.groupby(["split", "aligned"], sort=False):
        for value, color, ax in (("barrier_loss", PALETTE[0], ax_barrier), ("barrier_error", PALETTE[1], ax_error)):
            ax.plot(sub["round"], sub[value], color=color, linestyle=styles[bool(aligned)],
                    marker="o" if split == "train" else "s", markersize=3, lw=1.2,
                    label=split + (", aligned" if aligned else ""))
            infinite |= _mark_infinite(ax, sub["round"], sub[value], color=color, markersize=5)
    if full.empty:
        for ax in (ax_barrier, ax_error):
            ax.text(0.5, 0.5, "no cumulative mode:\nno full-model barrier", ha="center", va="center",
                    transform=ax.transAxes)
    else:
        for ax, color in ((ax_barrier, PALETTE[0]), (ax_error, PALETTE[1])):
            ax.axhline(0.0, color=color, lw=0.6, alpha=0.5)
            ax.legend(fontsize=7)
    ax_barrier.set_title("full-model barrier" + (f"\n({INFINITE_NOTE})" if infinite else ""))
    ax_barrier.set_ylabel("loss barrier\nL(avg) - mean(L(a), L(b))")
    ax_error.set_ylabel("error barrier")
    ax_barrier.tick_params(labelbottom=False)  # the round axis is labelled once, below the error barrier
    layer_ids = sorted(i for i in dist["layer_index"].unique() if i >= 0)
    cmap = sequential_cmap()
    for ax, column, label in ((ax_l2, "distance", "Euclidean distance ||θa - θb||"),
                              (ax_cos, "cosine", "cosine similarity cos(θa, θb)")):
        for (index, aligned), sub in dist.groupby(["layer_index", "aligned"], sort=True):
            sub = sub.sort_values("round")
            whole = index < 0
            color = "black" if whole else cmap(0.9 * layer_ids.index(index) / max(len(layer_ids) - 1, 1))
            name = FULL_MODEL_LABEL if whole else f"{index}: {sub['layer'].iloc[0]}"
            ax.plot(sub["round"], sub[column], color=color, lw=2.0 if whole else 1.0, marker="o" if len(sub) == 1
                    else None, markersize=3, linestyle=styles[bool(aligned)], label=None if aligned else name)
        ax.set_title(label)
        ax.set_xlabel("round")
    ax_error.set_xlabel("round")
    for ax in (ax_barrier, ax_error, ax_l2, ax_cos):
        # rounds are integers; min_n_ticks=1: MaxNLocator keeps integers only where it finds min_n_ticks of them in
        # view, and a pair of one round (view 0.945..1.055) has one, which the default 2 turned into fractional ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(layer_ids) <= 12:
        ax_cos.legend(fontsize=6, loc="best")
    run_a, run_b = split_pair_run_id((dist if not dist.empty else own)["run_id"].iloc[0])
    who = _pair_who(run_a, run_b)
    fig.suptitle(f"Full-model barrier and layer distances over training, pair {pair} ({who})")
    save_figure_outputs(fig, outputs, data)
