"""Final accuracy of each run group: by initialisation and alpha (Nguyen et al. 2022, *Where to Begin?*:
pre-training closes the accuracy gap between non-IID and IID), as a table of algorithm x (alpha, clients,
participation) cells (Mendieta et al. 2022, FedAlign Tables 1-4 and 7), and beside the analyses' headline numbers
of final.csv (barrier to IID, lambda_max, trace, HN, HD: FedAlign Table 1)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from fedscape.core.setting import format_setting, setting_label, setting_order_key
from fedscape.outputs.labels import label_run, refuse_alike
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.style import (
    RunStyle,
    category_ticks,
    empty_figure,
    facet_grid,
    legend_key,
    pyplot,
    save_figure,
    setting_order,
    varying_keys,
    wrap_to_fit,
)
from fedscape.report.figures.common import (
    CURVE_GROUP,
    cell_rows,
    common_seeds,
    compared_means,
    facet_title,
    facets_of,
    in_facet,
    interval_seeds,
    refuse_shared_labels,
    seeds_note,
    select_model,
)
from fedscape.report.summary import SHARED_METRICS, metric_values

# `diverged`: the seeds among `seeds` whose run diverged, drawn apart and in no statistic (appended: the columns before
# it keep their places).
POINT_COLUMNS = [*CURVE_GROUP, "n_seeds", "mean", "std", "ci95_low", "ci95_high", "seeds", "values", "diverged"]
DIVERGED_MARKER = {"marker": "x", "ls": "none", "ms": 4, "mew": 0.9, "color": "0.55"}  # a diverged seed's value
TABLE_COLUMNS = [*CURVE_GROUP, "row", "column", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]


def _final_points(final: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (facet, init, alpha): mean, std and 95% t-interval over the seeds that did not diverge of `column`."""
    rows = []
    for keys, sub in final.groupby(CURVE_GROUP, sort=False):
        ok = did_not_diverge(sub)
        mean, std, lo, hi, n = t_interval(ok[column].tolist())
        rows.append({**dict(zip(CURVE_GROUP, keys, strict=True)), "n_seeds": n, "mean": mean, "std": std,
                     "ci95_low": lo, "ci95_high": hi, "seeds": " ".join(str(s) for s in sorted(sub["seed"])),
                     "values": " ".join(f"{v:.6g}" for v in sub.sort_values("seed")[column]),
                     "diverged": " ".join(str(s) for s in sorted(sub.drop(index=ok.index)["seed"]))})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def accuracy_by_init_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                            column: str = "test_acc") -> dict:
    """Final test accuracy per init (x) and alpha (colour): thick line = mean over the seeds that did not diverge,
    dots = those seeds, grey crosses = diverged seeds (their last finite model: in no mean or interval, as in
    summary.csv), error bar = 95% interval; one panel per algorithm (x clients x participation), all clients first,
    wrapped into rows to fit a screen (`wrap_to_fit`); an accuracy is drawn in %, as the accuracy and headline tables
    show it (the CSV keeps fractions, as final.csv). No bars: a bar must start at 0, and from 0 the gaps of a point or
    two that the poster is about cannot be seen; the axis spans the values of the seeds that did not diverge (a
    diverged seed's chance accuracy or huge loss would squeeze them), and a cross beyond them is drawn at the edge it
    lies beyond. Where no seed that counts has a value, the crosses set the range. Two panels or two partitions
    labelled alike are refused before anything is drawn."""
    df = select_model(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=POINT_COLUMNS))
    points = _final_points(df, column)
    style = RunStyle(df)
    facets = facets_of(df)
    is_acc = column.endswith("_acc")
    scale = 100.0 if is_acc else 1.0  # the drawn values: an accuracy in %
    most = max(in_facet(df, f)["init"].nunique() for f in facets)
    alphas = setting_order(df["alpha"].unique())
    titles = [facet_title(facet, df) for facet in facets]
    refuse_alike(zip(facets, titles, strict=True), "the by-init accuracy figure's panels")
    refuse_alike((({"alpha": alpha}, setting_label(alpha)) for alpha in alphas), "the by-init accuracy figure's legend")

    def draw(ncols: int):
        """The figure with its panels in at most `ncols` columns, and the width each panel's init labels need."""
        fig, axes = facet_grid(len(facets), ncols=ncols, rows_per_facet=1, size=(max(2.4, 1.1 * most + 1.4), 2.6),
                               sharey=True, sharex=False)
        legend, needs = {}, {}
        crosses = []  # (axes, x, values) of the diverged seeds, drawn once the range of the others is known
        for facet, title, (ax,) in zip(facets, titles, axes, strict=True):
            sub = in_facet(points, facet)
            runs = in_facet(df, facet)
            inits = sorted(runs["init"].astype(str).unique())  # the inits of this panel only
            present = set(sub["alpha"].map(format_setting))
            here = [a for a in alphas if format_setting(a) in present]  # the alphas of this panel: centred on ticks
            width = 0.8 / len(here)
            for i, init in enumerate(inits):
                for j, alpha in enumerate(here):
                    x = i - 0.4 + width * (j + 0.5)
                    cell = cell_rows(sub, init, alpha)
                    if cell.empty:
                        continue
                    mean, lo, hi = (scale * cell.iloc[0][k] for k in ("mean", "ci95_low", "ci95_high"))
                    color = style.color(alpha)
                    ax.hlines(mean, x - width * 0.4, x + width * 0.4, color=color, lw=3)
                    handle = Line2D([], [], color=color, lw=3)
                    if not math.isnan(lo):
                        if is_acc:  # the interval of the mean, drawn within [0, 100]% (the CSV keeps it whole)
                            lo, hi = max(lo, 0.0), min(hi, scale)
                        ax.errorbar(x, mean, yerr=[[mean - lo], [hi - mean]], color="black", lw=0.8, capsize=2)
                    seeds = cell_rows(runs, init, alpha)
                    ok = did_not_diverge(seeds)
                    ax.plot(np.full(len(ok), x), scale * ok[column], "o", ms=2.5, color="black", alpha=0.7)
                    diverged = seeds.drop(index=ok.index)
                    if not diverged.empty:
                        crosses.append((ax, np.full(len(diverged), x),
                                        scale * diverged[column].to_numpy(dtype=float)))
                    legend.setdefault(setting_label(alpha), (legend_key({"alpha": alpha}), handle))
            needs[ax] = category_ticks(ax, [f"{i} init" for i in inits])
            ax.set_xlim(-0.6, len(inits) - 0.4)
            ax.set_title(title)
            ax.set_ylabel(("final test accuracy" if column == "test_acc" else column) + (" (%)" if is_acc else ""))
            ax.grid(axis="x", visible=False)
        if np.isfinite(did_not_diverge(df)[column]).any():  # the range of the seeds that count (shared by the
            axes[0][0].set_ylim(axes[0][0].get_ylim())  # panels), fixed: the crosses drawn next do not stretch it
        cross_lines = [line for ax, x, values in crosses
                       for line in ax.plot(x, values, clip_on=False, **DIVERGED_MARKER)]
        if is_acc:  # the values' range, within [0, 100]%
            low, high = axes[0][0].get_ylim()
            axes[0][0].set_ylim(max(low, 0.0), min(high, scale))
        low, high = axes[0][0].get_ylim()
        for line in cross_lines:  # at the edge a value lies beyond, the whole marker drawn (clip_on=False)
            line.set_ydata(np.clip(line.get_ydata(), low, high))
        fig.suptitle(f"{dataset} / {model}: final accuracy by initialisation and alpha "
                     f"({interval_seeds(points['n_seeds'])})")
        entries = sorted(legend.items(), key=lambda item: item[1][0])
        fig.legend([handle for _, (_, handle) in entries], [label for label, _ in entries],
                   loc="outside right center", title="partition")
        if crosses:  # the markers' meaning below the partitions
            seed = Line2D([], [], marker="o", ls="none", ms=2.5, color="black", alpha=0.7)
            fig.legend([seed, Line2D([], [], **DIVERGED_MARKER)], ["seed", "diverged seed\n(not in the mean)"],
                       loc="outside right lower")
        return fig, needs

    return save_figure(wrap_to_fit(draw, len(facets)), base_path, points)


def accuracy_table(final: pd.DataFrame, column: str = "test_acc", scale: float = 100.0) -> pd.DataFrame:
    """Long table of the accuracy-table figure: row label, column label, mean, std, n (values x scale) over the seeds
    that did not diverge. A group whose seeds all diverged keeps its row with n 0 and NaN statistics (its cell: –).
    Two groups labelled alike (one cell for both) are refused."""
    inits = final["init"].nunique() > 1
    cols = ["alpha"] + varying_keys(final, ["num_clients", "participation"])
    rows = []
    for keys, sub in final.groupby(CURVE_GROUP, sort=False):
        fields = dict(zip(CURVE_GROUP, keys, strict=True))
        mean, std, lo, hi, n = t_interval((did_not_diverge(sub)[column] * scale).tolist())
        rows.append({**fields, "row": label_run(fields, ["algorithm", "init"] if inits else ["algorithm"]),
                     "column": label_run(fields, cols, sep="\n"), "n_seeds": n, "mean": mean, "std": std,
                     "ci95_low": lo, "ci95_high": hi})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    refuse_shared_labels(table, ["row", "column"], "the accuracy table")
    return table


def _setting_sorted(table: pd.DataFrame, within: list[str]) -> pd.DataFrame:
    """`table` sorted as `common.setting_panels` orders settings (by clients, all clients first: participation
    descending, IID first), and within a setting by `within`."""
    keyed = table.assign(_p=-table["participation"].astype(float), _a=table["alpha"].map(setting_order_key))
    return keyed.sort_values(["num_clients", "_p", "_a", *within], kind="stable")


def _column_order(table: pd.DataFrame) -> list[str]:
    return _setting_sorted(table.drop_duplicates("column"), [])["column"].tolist()


def accuracy_table_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                          column: str = "test_acc") -> dict:
    """Final test accuracy (%) as a table: rows = algorithm (x init), columns = alpha (x clients x
    participation), cell = mean +- std over seeds, shaded by the mean, the best row of each column bold (by its mean
    over the seeds that the column's rows share: `_best_rows`) (FedAlign Tables 1-4 and 7)."""
    df = select_model(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=TABLE_COLUMNS))
    table = accuracy_table(df, column)
    row_order = sorted(table["row"].unique(), key=str.lower)
    col_order = _column_order(table)
    grid = table.pivot_table(index="row", columns="column", values="mean", aggfunc="first")
    grid = grid.reindex(index=row_order, columns=col_order)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 1.05 * len(col_order), 0.8 + 0.36 * len(row_order)))
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    lo = vmin - 0.15 * (vmax - vmin + 1e-9)
    ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=lo, vmax=vmax, aspect="auto")
    lookup = table.set_index(["row", "column"])
    best = _best_rows(table, df, column)
    for i, r in enumerate(row_order):
        for j, c in enumerate(col_order):
            if (r, c) not in lookup.index:
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
                continue
            cell = lookup.loc[(r, c)]
            if math.isnan(cell["mean"]):  # every seed of it diverged
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
                continue
            text = f"{cell['mean']:.1f}" if math.isnan(cell["std"]) else f"{cell['mean']:.1f} ± {cell['std']:.1f}"
            weight = "bold" if r in best.get(c, ()) else "normal"
            dark = (cell["mean"] - lo) / (vmax - lo + 1e-12) > 0.6  # white text on the darker cells
            ax.text(j, i, text, ha="center", va="center", fontsize=7, fontweight=weight,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(col_order)), col_order)
    ax.set_yticks(range(len(row_order)), row_order)
    ax.xaxis.tick_top()
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{dataset} / {model}: final test accuracy (%){seeds_note(table['n_seeds'])}",
                 pad=24 + 8 * max((c.count("\n") for c in col_order), default=0))
    return save_figure(fig, base_path, table)


def _best_rows(table: pd.DataFrame, final: pd.DataFrame, column: str) -> dict[str, set[str]]:
    """The bold rows of each column of the accuracy table `table` of `final`: those with the highest mean over the
    seeds where every row of the column with a value has one (`common.compared_means`, as the ranking ranks
    algorithms), so that a row whose hard seed diverged is not the best by having lost it; none in a column of fewer
    than two rows with a value (bold needs a rival)."""
    runs = did_not_diverge(final).merge(table[[*CURVE_GROUP, "row", "column"]], on=CURVE_GROUP)
    best = {}
    for c, cells in table[table["mean"].notna()].groupby("column", sort=False):
        if len(cells) < 2:
            continue
        own = cells.set_index("row")["mean"]
        per_seed = runs[runs["column"] == c].pivot_table(index="seed", columns="row", values=column, aggfunc="first")
        means = compared_means(common_seeds(per_seed.reindex(columns=own.index)), own)
        best[c] = set(means.index[means == means.max()])
    return best


# FedAlign Table 1 columns (direction of "better" in brackets) and the other headline numbers of final.csv; the barrier
# to IID is on the training loss (the global objective: the aggregate training data; the split its analysis's
# definitions name), which the header says since the test loss's barrier differs. The report names no analysis: it
# reads final.csv's columns (fedscape.analysis.contributions).
HEADLINE_METRICS = {
    "test_acc": ("Acc. (%) ↑", 100.0, True),
    "barrier_to_iid_loss": ("barrier to IID ↓\n(train loss)", 1.0, False),
    "lambda_max": ("λmax ↓", 1.0, False), "trace": ("trace ↓", 1.0, False), "hn": ("HN ↓", 1.0, False),
    "hd": ("HD ↑", 1.0, True), "lambda_max_init": ("λmax at init ↓", 1.0, False),
}
HEADLINE_COLUMNS = [*CURVE_GROUP, "row", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]
# The headline metrics written with fixed decimals: the accuracy (%) with one, as in the accuracy table.
HEADLINE_DECIMALS = {"test_acc": 1}
# A setting of the headline table: its rows are ranked against each other, not across settings (FedAlign's Table 1
# compares methods within one setting).
HEADLINE_SETTING = ["alpha", "num_clients", "participation"]


def _fmt(value: float, decimals: int | None = None) -> str:
    """Compact number: `decimals` fixed decimals where given, else 3 significant digits, no exponent for ordinary
    magnitudes; an infinite one (a barrier whose loss overflowed) as ±inf, apart from a missing one (NaN: –)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if not math.isfinite(value):
        return "–"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def headline_table(final: pd.DataFrame) -> pd.DataFrame:
    """Long table of the headline figure: per run group and metric with values, mean / std / interval.

    When the config computes any analysis, only the run groups with an analysis value are kept (the
    rows of FedAlign Table 1); otherwise every group, with its accuracy. Two groups labelled alike (one row for both)
    are refused.
    """
    analyses = [m for m in HEADLINE_METRICS if m != "test_acc" and m in final]
    analysed = final[analyses].notna().any(axis=1) if analyses else pd.Series(False, index=final.index)
    if analysed.any():
        groups = final.loc[analysed, CURVE_GROUP].drop_duplicates()
        final = final.merge(groups, on=CURVE_GROUP, how="inner")
    keys = varying_keys(final, ["algorithm", "init", "alpha", "num_clients", "participation"]) or ["algorithm"]
    rows = []
    for group, sub in final.groupby(CURVE_GROUP, sort=False):
        fields = dict(zip(CURVE_GROUP, group, strict=True))
        for metric, (_, scale, _) in HEADLINE_METRICS.items():
            if metric not in final or not final[metric].notna().any():
                continue
            # a metric the seeds share (the Hessian at init: one estimate) counts once: no spread of 0 (summary.csv)
            values = metric_values(did_not_diverge(sub), metric)
            mean, std, lo, hi, n = t_interval([v * scale for v in values])
            rows.append({**fields, "row": label_run(fields, keys), "metric": metric, "n_seeds": n, "mean": mean,
                         "std": std, "ci95_low": lo, "ci95_high": hi})
    table = pd.DataFrame(rows, columns=HEADLINE_COLUMNS)
    refuse_shared_labels(table, ["row", "metric"], "the headline table")
    return table


def headline_table_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path) -> dict:
    """FedAlign Table 1 as a figure: one row per run group, one column per headline number of final.csv
    that the config computes (accuracy, barrier to IID, lambda_max, trace, HN, HD); mean +- std over
    seeds. The rows are grouped by setting (alpha or partition, clients, participation; `HEADLINE_SETTING`), in the
    order of the other figures' panels, a line between settings; within its setting, each column is shaded by rank
    from worst (light) to best (dark) and its best value bold, as FedAlign ranks methods within one setting (a setting
    of one row is shaded midway, bold nowhere). Rank and best compare each row's mean over its own seeds."""
    df = select_model(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=HEADLINE_COLUMNS))
    table = headline_table(df)
    rows = _setting_sorted(table.drop_duplicates("row"), ["algorithm", "init"])
    row_order = rows["row"].tolist()
    settings = [(format_setting(a), c, p) for a, c, p in rows[HEADLINE_SETTING].itertuples(index=False)]
    groups = [np.flatnonzero([s == key for s in settings]) for key in dict.fromkeys(settings)]  # consecutive rows
    metrics = [m for m in HEADLINE_METRICS if m in set(table["metric"])]
    lookup = table.set_index(["row", "metric"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 + 1.25 * len(metrics), 0.8 + 0.34 * len(row_order)))
    shade = np.full((len(row_order), len(metrics)), np.nan)
    bold = np.zeros(shade.shape, dtype=bool)
    values = np.array([[lookup.loc[(r, m), "mean"] if (r, m) in lookup.index else np.nan for m in metrics]
                       for r in row_order], dtype=float)
    for j, metric in enumerate(metrics):
        higher = HEADLINE_METRICS[metric][2]
        for group in groups:
            col = values[group, j]
            known = col[~np.isnan(col)]  # an infinite mean (a barrier whose loss overflowed) ranks last, shown as inf
            if not known.size:
                continue
            lo, hi = known.min(), known.max()
            # shade by rank, not by value: HN and the trace span orders of magnitude across methods
            ranks = pd.Series(col).rank(method="average").to_numpy()
            rank = (ranks - 1) / (known.size - 1) if hi > lo else np.where(np.isnan(col), np.nan, 0.5)
            shade[group, j] = rank if higher else 1 - rank
            if known.size > 1 and hi > lo:
                bold[group, j] = col == (np.nanmax(col) if higher else np.nanmin(col))
    for j, metric in enumerate(metrics):
        decimals = HEADLINE_DECIMALS.get(metric)
        for i, r in enumerate(row_order):
            if np.isnan(values[i, j]):
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
                continue
            std = lookup.loc[(r, metric), "std"]
            text = _fmt(values[i, j], decimals)
            if math.isfinite(std):
                text += f" ± {_fmt(std, decimals)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, fontweight="bold" if bold[i, j] else "normal",
                    color="white" if shade[i, j] > 0.75 else "black")
    ax.imshow(np.ma.masked_invalid(0.15 + 0.7 * shade), cmap="Greens", vmin=0, vmax=1.1, aspect="auto")
    for group in groups[1:]:  # the settings apart: a rank holds within its own
        ax.axhline(group[0] - 0.5, color="0.35", lw=0.8)
    labels = [HEADLINE_METRICS[m][0] for m in metrics]
    ax.set_xticks(range(len(metrics)), labels)
    ax.set_yticks(range(len(row_order)), row_order)
    ax.xaxis.tick_top()
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    within = "\nshaded and bold within each setting" if len(groups) > 1 else ""
    ax.set_title(f"{dataset} / {model}: final accuracy and headline numbers{headline_seeds_note(table)}{within}",
                 pad=22 + 8 * max(label.count("\n") for label in labels))
    return save_figure(fig, base_path, table)


def headline_seeds_note(table: pd.DataFrame) -> str:
    """The headline figure's title suffix: over how many seeds its cells are, of the metrics the seeds do not share
    (one estimate of the Hessian at init counts n_seeds 1 whatever the seeds)."""
    own = table[~table["metric"].isin(SHARED_METRICS)]
    return seeds_note((own if len(own) else table)["n_seeds"])
