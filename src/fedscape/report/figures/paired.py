"""The paired differences over seeds as a forest plot: each headline row minus its setting's baseline, seed by seed
(report.paired, results/tables/paired_differences.csv), the companion of the headline table (FedAlign Table 1),
whose cells are each row's mean over its own seeds: is FedSAM flatter than FedAvg on the same partitions?"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from fedscape.core.setting import format_setting
from fedscape.outputs.labels import LABEL_SEP, format_field, label_run
from fedscape.outputs.style import (
    OKABE_ITO,
    agg_canvas,
    empty_figure,
    pyplot,
    save_figure,
    varying_keys,
    widen_to_fit,
)
from fedscape.report.figures.accuracy import HEADLINE_METRICS, HEADLINE_SETTING, headline_table
from fedscape.report.figures.common import CURVE_GROUP, interval_seeds, select_model, setting_panels
from fedscape.report.paired import PAIRED_COLUMNS, model_paired_differences

# An interval that excludes 0 in the direction the metric's header arrow calls better, or worse (HEADLINE_METRICS);
# every other point black: the colour says where the pairing settles the comparison.
BETTER_COLOR, WORSE_COLOR, OPEN_COLOR = OKABE_ITO["blue"], OKABE_ITO["vermillion"], "black"
# An infinite mean difference (a barrier whose loss overflowed on one side of a pair) has no place on the axis: a
# triangle at the panel's edge it lies beyond, as the barrier figures mark a +inf barrier at their top edge.
INFINITE_MARKERS = {1: ">", -1: "<"}
NO_PAIR = "no paired seed"
NO_INTERVAL = ", none where a difference is infinite"  # the title's, after its seeds (`interval_seeds`)
# The legend's entries, in its order: better and worse by the panel header's arrow
BETTER, WORSE, INCLUDES_0 = "excludes 0: better", "excludes 0: worse", "includes 0"
ONE_PAIR = "one pair: no interval"
INFINITE = {1: "+inf: at the right edge", -1: "−inf: at the left edge"}  # by the sign of the mean
LEGEND_ORDER = (BETTER, WORSE, INCLUDES_0, ONE_PAIR, *INFINITE.values())
SETTING_GAP = 1.5  # lines from a setting's last row to the next setting's heading
PANEL_WIDTH_IN = 1.2  # a metric's panel (its axes alone)
START_IN = 0.9  # per panel (and once for the y axis's label) of the width the layout starts from: less than needed


def _setting_key(setting) -> tuple:
    """A setting (alpha, num_clients, participation) compared as text: alpha 'iid' == inf."""
    alpha, clients, participation = setting
    return format_setting(alpha), int(clients), float(participation)


def _within_setting(row: str, setting: dict) -> str:
    """The headline row label `row` without the fields of its setting (the setting's heading names them): the
    label's fields are joined by LABEL_SEP (outputs.labels.label_run)."""
    shared = {format_field(k, v) for k, v in setting.items()}
    return LABEL_SEP.join(part for part in row.split(LABEL_SEP) if part not in shared) or row


def _x_limits(table: pd.DataFrame) -> tuple[float, float]:
    """The x range of a metric's panel: 0 and every finite mean and interval bound, with a margin."""
    values = table[["mean_diff", "ci95_low", "ci95_high"]].to_numpy(dtype=float).ravel()
    values = np.append(values[np.isfinite(values)], 0.0)
    lo, hi = float(values.min()), float(values.max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def paired_differences_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path) -> dict:
    """Forest plot of `report.paired.paired_differences` of the dataset and model: one panel per headline metric
    compared (in HEADLINE_METRICS order, its header's label and arrow), one line per setting (HEADLINE_SETTING, in the
    headline's order, each under a heading that names it) and row other than the setting's baseline; point = the mean
    of row - baseline over the paired seeds, bar = its 95% t-interval, coloured where it excludes 0 (by the header's
    arrow: better or worse than the baseline), "n=" its pairs; one pair a hollow point without a bar, none a text
    (NO_PAIR); an infinite mean a triangle at the panel's edge it lies beyond, without an interval (the title says
    so: NO_INTERVAL). The CSV is the plotted rows of paired_differences.csv. Settings with nothing to compare (one
    row) are named in the title; a dataset and model without any comparison is a figure that says so."""
    df = select_model(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=PAIRED_COLUMNS))
    headline = headline_table(df)
    table = model_paired_differences(dataset, model, df, headline)
    if table.empty:
        return save_figure(empty_figure(f"{dataset} / {model}: one row in every setting, nothing to compare",
                                        size=(5.0, 2.0)), base_path, table)
    shown = ["alpha", *varying_keys(df, ["num_clients", "participation"])]
    settings = {}  # setting key -> (its heading, its baseline, its rows in order, its fields)
    for setting, rows in table.groupby(HEADLINE_SETTING, sort=False):
        fields = dict(zip(HEADLINE_SETTING, setting, strict=True))
        settings[_setting_key(setting)] = (label_run(fields, shown), str(rows["baseline"].iloc[0]),
                                           list(dict.fromkeys(rows["row"].astype(str))), fields)
    # Settings not drawn: the headline's of one row, and those it leaves out (where an analysis is computed it keeps
    # only the groups with its values: a setting of several algorithms none of them analysed has no row there)
    in_headline = {_setting_key(setting) for setting, _ in
                   setting_panels(headline.drop_duplicates(CURVE_GROUP))}
    not_drawn = {"one row each": [], "no analysis value": []}
    for setting, _ in setting_panels(df):
        if _setting_key(setting) not in settings:
            why = "one row each" if _setting_key(setting) in in_headline else "no analysis value"
            not_drawn[why].append(label_run(dict(zip(HEADLINE_SETTING, setting, strict=True)), shown))
    baselines = list(dict.fromkeys(_within_setting(baseline, fields)
                                   for _, baseline, _, fields in settings.values()))
    one_baseline = len(baselines) == 1
    # the y positions: each setting's heading, then its rows; half a line more between settings, for a rule
    y_of, ticks, labels, headings = {}, [], [], []
    y = 0.0
    for key, (heading, baseline, rows, fields) in settings.items():
        if ticks:
            y += SETTING_GAP
        headings.append(y)
        ticks.append(y)
        labels.append(heading if one_baseline else f"{heading}: − {_within_setting(baseline, fields)}")
        for row in rows:
            y += 1
            y_of[(key, row)] = y
            ticks.append(y)
            labels.append(_within_setting(row, fields))
    metrics = [m for m in HEADLINE_METRICS if m in set(table["metric"])]

    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False, layout="constrained",
                             figsize=(PANEL_WIDTH_IN * len(metrics), 1.0 + 0.26 * (ticks[-1] + 1)))
    legend = {}
    for metric, ax in zip(metrics, axes[0], strict=True):
        title, scale, higher = HEADLINE_METRICS[metric]
        these = table[table["metric"] == metric]
        ax.set_xlim(*_x_limits(these))
        edge = blended_transform_factory(ax.transAxes, ax.transData)  # x in axes, y in data coordinates
        for row in these.itertuples(index=False):
            yy = y_of[(_setting_key((row.alpha, row.num_clients, row.participation)), str(row.row))]
            mean, lo, hi, n = float(row.mean_diff), float(row.ci95_low), float(row.ci95_high), int(row.n_pairs)
            if n == 0 or math.isnan(mean):  # no pair; or +inf and -inf among the pairs: no mean
                text = NO_PAIR if n == 0 else f"±inf, no mean (n={n})"
                ax.text(0.5, yy, text, transform=edge, ha="center", va="center", fontsize=6, color="0.4",
                        style="italic", bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
                continue
            if math.isinf(mean):
                sign = int(np.sign(mean))
                ax.plot(1.0 if mean > 0 else 0.0, yy, transform=edge, marker=INFINITE_MARKERS[sign],
                        ms=6, ls="none", color=OPEN_COLOR, clip_on=False)
                legend.setdefault(INFINITE[sign], Line2D([], [], marker=INFINITE_MARKERS[sign], ls="none", ms=6,
                                                         color=OPEN_COLOR))
            elif math.isnan(lo):  # one pair: a mean without an interval
                ax.plot(mean, yy, "o", ms=4, mfc="white", mec=OPEN_COLOR, mew=1.0)
                legend.setdefault(ONE_PAIR, Line2D([], [], marker="o", ls="none", ms=4, mfc="white", mec=OPEN_COLOR,
                                                   mew=1.0))
            else:
                excludes = lo > 0 or hi < 0
                better = (lo > 0) == higher
                color = (BETTER_COLOR if better else WORSE_COLOR) if excludes else OPEN_COLOR
                ax.errorbar(mean, yy, xerr=[[mean - lo], [hi - mean]], fmt="o", ms=4, color=color, lw=1.2, capsize=2)
                what = (BETTER if better else WORSE) if excludes else INCLUDES_0
                legend.setdefault(what, Line2D([], [], marker="o", ms=4, color=color, lw=1.2))
            # the pairs behind the point, beyond the panel's right edge (clear of the points and of the triangles)
            ax.annotate(f"n={n}", (1.0, yy), xycoords=edge, xytext=(8, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=6, color="0.3", annotation_clip=False)
        ax.axvline(0.0, color="0.3", lw=0.8, zorder=0)
        for y_heading in headings[1:]:  # the settings apart: each row is against its own setting's baseline
            ax.axhline(y_heading - SETTING_GAP / 2, color="0.6", lw=0.6)
        ax.set_title(title)
        ax.set_xlabel("difference" + (" (% points)" if scale == 100.0 else ""))
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
    first = axes[0][0]
    first.set_ylim(ticks[-1] + 0.7, -0.7)  # the first setting at the top
    first.set_yticks(ticks, labels)
    for tick, y_tick in zip(first.get_yticklabels(), ticks, strict=True):
        if y_tick in headings:
            tick.set_fontweight("bold")
    first.set_ylabel("row − baseline" + (f" ({baselines[0]})" if one_baseline else " (named in each heading)"))
    entries = [(label, legend[label]) for label in LEGEND_ORDER if label in legend]
    key = fig.legend([h for _, h in entries], [label for label, _ in entries], loc="outside right center",
                     title="95% interval of\nrow − baseline")
    left_out = "; ".join(f"{why}: {', '.join(names)}" for why, names in not_drawn.items() if names)
    left_out = f"\nnot drawn, {left_out}" if left_out else ""
    # an infinite difference (or +inf and -inf among the pairs) has no interval, whatever its pairs
    no_interval = (~np.isfinite(table["mean_diff"].astype(float)) & (table["n_pairs"] >= 2)).any()
    fig.suptitle(f"{dataset} / {model}: each row minus its setting's baseline, paired by seed\n"
                 f"({interval_seeds(table['n_pairs'])}{NO_INTERVAL if no_interval else ''}){left_out}")
    # as wide as the row labels, the legend and the panels need (the headline table's width grows with its columns
    # too): narrow enough to start from, the labels and legend measured (at a fixed width, long row labels squeezed
    # the panels to nothing), then widened until every panel is PANEL_WIDTH_IN wide
    renderer = agg_canvas(fig).get_renderer()
    labels_in = max(t.get_window_extent(renderer).width for t in first.get_yticklabels()) / fig.dpi
    fig.set_figwidth(labels_in + key.get_window_extent(renderer).width / fig.dpi + START_IN * (len(metrics) + 1))
    widen_to_fit(fig, dict.fromkeys(axes[0], PANEL_WIDTH_IN))
    return save_figure(fig, base_path, table)
