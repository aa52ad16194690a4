"""Curves over rounds: train and test accuracy or loss of the global model per round, one line per run group
(mean over seeds, 95% t-interval band when there are several seeds); as in the top row of the poster of
Nguyen et al. 2022 (*Where to Begin?*)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedscape.core.setting import setting_order_key
from fedscape.outputs.labels import label_run, refuse_alike
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.style import (
    NO_SEED,
    ONE_SEED,
    RunStyle,
    bounded_log_ticks,
    empty_figure,
    facet_grid,
    legend_key,
    save_figure,
    seeds_range,
    setting_order,
)
from fedscape.report.figure_kinds import CURVE_METRICS
from fedscape.report.figures.common import (
    CURVE_GROUP,
    cell_rows,
    facet_title,
    facets_of,
    in_facet,
    select_model,
)

CURVE_COLUMNS = [*CURVE_GROUP, "split", "round", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]


def _line_groups(sub: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(alpha, init) groups of one facet, alpha from IID to severe skew."""
    groups = []
    for init in sorted(sub["init"].astype(str).unique()):
        part = sub[sub["init"].astype(str) == init]
        for alpha in setting_order(part["alpha"].unique()):
            groups.append(({"init": init, "alpha": alpha}, cell_rows(part, init, alpha)))
    return sorted(groups, key=lambda g: (setting_order_key(g[0]["alpha"]), g[0]["init"]))


def curve_statistics(rounds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run group, split and round: mean, std and 95% t-interval over seeds of the metric, over the runs
    whose round is not diverged (the one rule of `outputs.stats.did_not_diverge`)."""
    rows = []
    for split, column in zip(("train", "test"), CURVE_METRICS[metric], strict=True):
        for keys, sub in did_not_diverge(rounds).groupby([*CURVE_GROUP, "round"], sort=False):
            mean, std, lo, hi, n = t_interval(sub[column].tolist())
            rows.append({**dict(zip([*CURVE_GROUP, "round"], keys, strict=True)), "split": split, "n_seeds": n,
                         "mean": mean, "std": std, "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def curves_figure(rounds: pd.DataFrame, dataset: str, model: str, metric: str, base_path: str | Path) -> dict:
    """Train (top) and test (bottom) accuracy or loss of the global model over rounds; one panel per
    algorithm (x clients x participation), colour = alpha, line style = init; band = 95% interval over seeds. Two
    panels or two lines labelled alike are refused before anything is drawn."""
    if metric not in CURVE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(CURVE_METRICS)}")
    df = select_model(rounds, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in rounds.csv"), base_path,
                           pd.DataFrame(columns=CURVE_COLUMNS))
    stats = curve_statistics(df, metric)
    style = RunStyle(df)
    facets = facets_of(df)
    titles = [facet_title(facet, df) for facet in facets]
    keys = ["alpha"] + (["init"] if df["init"].nunique() > 1 else [])
    refuse_alike(zip(facets, titles, strict=True), "the curves figure's panels")
    refuse_alike(((fields, label_run(fields, keys)) for fields, _ in _line_groups(stats)), "the curves figure's legend")
    fig, axes = facet_grid(len(facets), ncols=4, rows_per_facet=2, sharey="row")
    legend = {}
    for facet, title, (ax_train, ax_test) in zip(facets, titles, axes, strict=True):
        sub = in_facet(stats, facet)
        for fields, group in _line_groups(sub):
            kw = {"color": style.color(fields["alpha"]), "linestyle": style.linestyle(fields["init"])}
            for split, ax in (("train", ax_train), ("test", ax_test)):
                line = group[group["split"] == split].sort_values("round")
                (handle,) = ax.plot(line["round"], line["mean"], lw=1.3, **kw)
                band = line.dropna(subset=["ci95_low", "ci95_high"])
                if not band.empty:
                    lo, hi = band["ci95_low"], band["ci95_high"]
                    if metric == "accuracy":  # the interval of the mean, drawn within the metric's range
                        lo, hi = lo.clip(0.0, 1.0), hi.clip(0.0, 1.0)
                    else:
                        lo = lo.clip(lower=0.0)
                    ax.fill_between(band["round"], lo, hi, color=kw["color"],
                                    alpha=0.2, lw=0)
            legend.setdefault(label_run(fields, keys), (legend_key(fields), handle))
        ax_train.set_title(title)
        ax_test.set_xlabel("round")
        ax_test.tick_params(labelbottom=True)  # wrapped facets: every panel pair keeps its round axis
    ylabel = "accuracy" if metric == "accuracy" else "cross-entropy loss"
    for facet_axes in axes:
        facet_axes[0].set_ylabel(f"train {ylabel}")
        facet_axes[1].set_ylabel(f"test {ylabel}")
        if metric == "loss":
            for ax in facet_axes:
                if (stats["mean"] > 0).all():
                    ax.set_yscale("log")
                    bounded_log_ticks(ax.yaxis)  # a diverging run's loss spans many decades
    over = seeds_range(stats["n_seeds"])
    band = over if over in (ONE_SEED, NO_SEED) else "mean and 95% t-interval over seeds"
    fig.suptitle(f"{dataset} / {model}: global model {metric} per round ({band})")
    entries = sorted(legend.items(), key=lambda item: item[1][0])
    fig.legend([handle for _, (_, handle) in entries], [label for label, _ in entries], loc="outside right center")
    return save_figure(fig, base_path, stats)
