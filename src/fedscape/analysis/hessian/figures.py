"""Figures of the Hessian analysis: lambda_max and trace per algorithm or per init, and the spectral density
(torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.hessian.definitions import AGGREGATE, DENSITY_COLUMNS, TRACE_ESTIMATORS
from fedscape.core.runs import RUN_FIELDS, parse_run_id
from fedscape.core.setting import format_setting, setting_label
from fedscape.outputs.labels import LABEL_SEP, format_field, label_run, refuse_alike
from fedscape.outputs.style import (
    ONE_SEED,
    PALETTE,
    bounded_log_ticks,
    category_ticks,
    facet_grid,
    fits_width,
    pyplot,
    seeds_range,
    setting_colors,
    setting_order,
    split_evenly,
    widened,
    wrap_to_fit,
)
from fedscape.outputs.style import save_figure_outputs as save
from fedscape.outputs.tables import read_table


def _with_fields(df: pd.DataFrame) -> pd.DataFrame:
    fields_df = pd.DataFrame([parse_run_id(r) for r in df["run_id"]], index=df.index)
    return pd.concat([df, fields_df[[c for c in RUN_FIELDS if c not in df.columns]]], axis=1)


def kernel_sigma2(node_range: float, grid_step: float = 0.0) -> float:
    """The variance of the Gaussian kernel smoothing an SLQ density whose nodes span `node_range` (PyHessian:
    sigma^2 = 1e-5 * max(1, lambda range)), at least one `grid_step` squared: PyHessian draws on 10,000 points, and
    on fewer a spectrum wider than ~10 would have kernels narrower than the step, whose peaks fall between grid
    points (the curve would miss eigenvalues and no longer integrate to 1)."""
    return max(1e-5 * max(1.0, node_range), grid_step**2)


def density_on_grid(nodes: Sequence[np.ndarray], weights: Sequence[np.ndarray], grid: np.ndarray,
                    sigma2: float | None = None) -> np.ndarray:
    """The SLQ density smoothed with a Gaussian kernel, by default of variance `kernel_sigma2` (the nodes' range,
    at least one step of `grid`)."""
    all_nodes = np.concatenate([np.asarray(n) for n in nodes])
    if sigma2 is None:
        step = float(grid[-1] - grid[0]) / (len(grid) - 1) if len(grid) > 1 else 0.0
        sigma2 = kernel_sigma2(float(all_nodes.max() - all_nodes.min()), step)
    out = np.zeros_like(grid, dtype=float)
    for n, w in zip(nodes, weights, strict=True):
        diff = grid[:, None] - np.asarray(n)[None, :]
        out += (np.exp(-(diff**2) / (2 * sigma2)) / math.sqrt(2 * math.pi * sigma2)) @ np.asarray(w)
    return out / len(nodes)


# The run fields besides alpha and seed that set a run group apart within a dataset/model (the x categories).
_GROUP_FIELDS = ("init", "algorithm", "participation", "num_clients")
# the axis text of each of TRACE_ESTIMATORS
TRACE_LABELS = {"hutchinson": "Hutchinson", "hutchpp": "Hutch++", "exact": "exact"}


def run_groups(df: pd.DataFrame, by: str) -> pd.Series:
    """Each row's x category: its `by` value, then every other field of `_GROUP_FIELDS` in which its run differs
    from the dataset/model's most common value (e.g. 'random init · 50% sampled'), so that a category holds one
    run group's seeds and never pools algorithms, inits or participation."""
    out = pd.Series("", index=df.index, dtype=object)
    for _, sub in df.groupby("setting"):
        common = {f: sub[f].astype(str).mode().iloc[0] for f in _GROUP_FIELDS if f != by}
        for i, row in sub.iterrows():
            parts = [format_field(by, row[by])]
            parts += [format_field(f, row[f]) for f, value in common.items() if str(row[f]) != value]
            out[i] = LABEL_SEP.join(parts)
    return out


def lambda_trace_figure(table: str | Path, outputs: dict, by: str, trace_estimator: str = "hutchinson") -> None:
    """lambda_max and trace of the global model on the aggregate data, per `by` (algorithm or init); the trace axis
    names `trace_estimator`, the estimator the Hessian jobs computed it with (one of TRACE_ESTIMATORS).

    One panel per (metric, dataset/model, round); x = the run groups by `by` (`run_groups`: runs that differ in
    another field too, say FedProx at a random init in the per-init figure, are a category of their own), colour =
    alpha (fedscape.outputs.style), one point per seed (trace with its standard error) and a bar at the mean:
    FedAlign Table 1 (per algorithm) and the Meta poster's top eigenvalue at init (per init). Panels wrap into
    rows to fit a screen (`wrap_to_fit`); a panel whose categories alone are wider (32 run groups of long labels:
    40 inches) is split into pieces of consecutive categories, titled k/n, each metric's pieces on one y scale: at
    most as many categories a piece as let the figure fit, the most that do, and panels of no more stay whole. Two run
    groups of a place or two partitions labelled alike (a category or a legend entry for both) are refused before
    anything is drawn.
    """
    if by not in ("algorithm", "init"):
        raise ValueError(f"by must be 'algorithm' or 'init', got {by!r}")
    if trace_estimator not in TRACE_ESTIMATORS:
        raise ValueError(f"trace_estimator must be one of {list(TRACE_ESTIMATORS)}, got {trace_estimator!r}")
    df = _with_fields(read_table(table, ["run_id", "round", "data", "lambda_1", "trace", "trace_stderr"]))
    df = df[df["data"] == AGGREGATE]
    long = pd.concat([
        df.assign(metric="lambda_max", value=df["lambda_1"], stderr=math.nan),
        df.assign(metric="trace", value=df["trace"], stderr=df["trace_stderr"]),
    ], ignore_index=True)
    long["setting"] = long["dataset"] + "/" + long["model"]
    long["group"] = run_groups(long, by)
    shown = long.drop_duplicates(["setting", "group", *_GROUP_FIELDS]).sort_values(["setting", "group", by])
    refuse_alike(((row[list(_GROUP_FIELDS)].to_dict(), (row["setting"], row["group"])) for _, row in shown.iterrows()),
                 f"the categories of the Hessian figure per {by}")
    data_cols = ["metric", "setting", "round", by, "group", "alpha", "seed", "run_id", "value", "stderr"]
    data = long[data_cols].sort_values(data_cols[:7]).reset_index(drop=True)

    metrics = ["lambda_max", "trace"]
    alphas = setting_order(long["alpha"].astype(str).unique())
    refuse_alike((({"alpha": alpha}, setting_label(alpha)) for alpha in alphas),
                 f"the legend of the Hessian figure per {by}")
    colors = setting_colors(alphas)
    places = sorted({(s, int(r)) for s, r in zip(long["setting"], long["round"], strict=True)})

    def categories(setting: str, round_: int) -> list[str]:
        """A place's run groups, the groups of each `by` value together, the value's own group (nothing else
        differs) first."""
        sub = long[(long["setting"] == setting) & (long["round"] == round_)]
        first = sub.groupby("group")[by].first().astype(str)
        return sorted(first.index, key=lambda g: (first[g], LABEL_SEP in g, g))

    cats_of = {place: categories(*place) for place in places}
    # with one seed in every category and alpha, a point is one run's value, not one of several seeds around the bar
    seeds = seeds_range(long.dropna(subset=["value"]).groupby(["metric", "setting", "round", "group", "alpha"])["seed"]
                        .nunique())
    points = ONE_SEED if seeds == ONE_SEED else "points: seeds"

    def pieces(per_piece: int):
        """`wrap_to_fit`'s (draw, panels) of the figure with each place's run groups in panels of at most `per_piece`
        (a place with no more: one)."""
        splits = {place: split_evenly(cats, math.ceil(len(cats) / per_piece)) for place, cats in cats_of.items()}
        panels = [(place, part, split, len(splits[place])) for place in places
                  for part, split in enumerate(splits[place])]

        def draw(ncols: int):
            """The figure with its panels in at most `ncols` columns, each panel a metric above the other."""
            fig, facets = facet_grid(max(1, len(panels)), ncols=ncols, rows_per_facet=len(metrics), size=(3.2, 2.5),
                                     sharey=False, sharex=False)
            legend, needs, first_piece = {}, {}, {}
            for ((setting, round_), part, cats, parts), facet in zip(panels, facets, strict=False):
                for ax, metric in zip(facet, metrics, strict=True):
                    sub = long[(long["setting"] == setting) & (long["round"] == round_) & (long["metric"] == metric)]
                    # the pieces of one place share the metric's scale: their points compare as in one panel
                    shared = first_piece.setdefault((setting, round_, metric), ax)
                    if shared is not ax:
                        ax.sharey(shared)
                    width = 0.8 / max(1, len(alphas))
                    for i, cat in enumerate(cats):
                        for j, alpha in enumerate(alphas):
                            pts = sub[(sub["group"] == cat) & (sub["alpha"].astype(str) == alpha)]
                            if pts.empty:
                                continue
                            color = colors[format_setting(alpha)]
                            xpos = i - 0.4 + width * (j + 0.5)
                            jitter = (np.linspace(-width * 0.25, width * 0.25, len(pts)) if len(pts) > 1
                                      else np.zeros(1))
                            stderr = pts["stderr"].fillna(0)  # none for lambda_max, 0 for an exact trace: no bars
                            handle = ax.errorbar(xpos + jitter, pts["value"], yerr=stderr if stderr.any() else None,
                                                 fmt="o", ms=4, color=color, capsize=2)
                            ax.hlines(pts["value"].mean(), xpos - width * 0.4, xpos + width * 0.4, color=color)
                            legend.setdefault(setting_label(alpha), handle)
                    needs[ax] = category_ticks(ax, cats)  # a run group's fields one a line, as wide as they need
                    ax.grid(axis="x", visible=False)
                    ax.set_title(f"{setting}, round {round_}" + (f" ({part + 1}/{parts})" if parts > 1 else ""))
                    ax.set_ylabel("λmax" if metric == "lambda_max" else f"trace ({TRACE_LABELS[trace_estimator]})")
            if not panels:
                facets[0][0].text(0.5, 0.5, "no Hessian rows of the aggregate data", ha="center", va="center")
            fig.suptitle(f"Hessian of the global model on the aggregate data, per {by} ({points})")
            if legend:
                fig.legend(legend.values(), legend.keys(), loc="outside right center", title="partition")
            return fig, needs

        return draw, max(1, len(panels))

    # One row of panels while it fits a screen, else wrapped into rows (panels still as wide as their labels). A place
    # whose run groups alone are wider than a screen is split into pieces of at most as many groups as fit (the most
    # that do, so the fewest pieces); a place of no more groups stays whole. A piece size fits where its figure in one
    # column does, the narrowest it draws: only that figure is drawn of a size that does not.
    most = max((len(cats) for cats in cats_of.values()), default=1)
    sizes = sorted({math.ceil(most / count) for count in range(1, most + 1)}, reverse=True)
    fig = wrap_to_fit(*pieces(sizes[0]))
    for size in sizes[1:]:
        if fits_width(fig):
            break
        pyplot().close(fig)
        draw, n = pieces(size)
        fig = widened(draw, 1)
        if fits_width(fig):
            fig = wrap_to_fit(draw, n, one_column=fig)
    save(fig, outputs, data)


def hessian_by_algorithm_figure_job(table: str | Path, outputs: dict, trace_estimator: str = "hutchinson") -> None:
    """lambda_max and trace per algorithm (FedAlign Table 1): `lambda_trace_figure` by algorithm."""
    lambda_trace_figure(table, outputs, by="algorithm", trace_estimator=trace_estimator)


def hessian_by_init_figure_job(table: str | Path, outputs: dict, trace_estimator: str = "hutchinson") -> None:
    """lambda_max and trace per init (the Meta poster's top eigenvalue at init): `lambda_trace_figure` by init."""
    lambda_trace_figure(table, outputs, by="init", trace_estimator=trace_estimator)


# The smallest density the density figure's CSV writes: a smoothed curve's far tails underflow through the
# subnormal floats (1.6e-310, 2e-320: digits lost, and text that some CSV readers refuse), written as 0 below this
# floor, far below anything drawn (the axis starts at 1e-6).
DENSITY_FLOOR = 1e-300


def hessian_density_figure_job(inputs: list[str | Path], outputs: dict, grid_points: int = 1000) -> None:
    """Spectral density of the aggregate-data Hessian by SLQ (Ghorbani et al. 2019): one panel per run, one line
    per round, Gaussian-smoothed as in PyHessian, log scale; the panels of a dataset / model on one eigenvalue range,
    so that their spectra compare at a glance; densities below DENSITY_FLOOR written as 0. Two runs labelled alike
    (one title for both panels) are refused before anything is drawn."""
    # a diverged run's job has no density rows
    frames = [f for f in (read_table(p, DENSITY_COLUMNS) for p in inputs) if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DENSITY_COLUMNS)
    df = df[df["data"] == AGGREGATE]
    runs = sorted(df["run_id"].unique())
    curves = []
    for run_id in runs:
        for round_, sub in df[df["run_id"] == run_id].groupby("round"):
            groups = [g for _, g in sub.groupby("probe")]
            nodes = [g["node"].to_numpy() for g in groups]
            weights = [g["weight"].to_numpy() for g in groups]
            lo, hi = float(sub["node"].min()), float(sub["node"].max())
            # 5% of the range, and at least 5 kernel standard deviations: a spectrum narrower than its kernel (nodes
            # within 1e-4, sigma ~3e-3) would be cut off by the 5% alone (its curve integrating to ~0.03, not 1).
            # Where one grid step is the wider kernel (a spectrum wider than ~8 on 1000 points), 5 steps are
            # 5 (1.1 range) / (grid_points - 1): within the 5% from grid_points 111 on.
            pad = max(0.05 * max(hi - lo, 1e-3), 5 * math.sqrt(kernel_sigma2(hi - lo)))
            grid = np.linspace(lo - pad, hi + pad, grid_points)
            density = density_on_grid(nodes, weights, grid)
            curves.append(pd.DataFrame({"run_id": run_id, "round": int(round_), "eigenvalue": grid,
                                        "density": np.where(density < DENSITY_FLOOR, 0.0, density)}))
    data = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["run_id", "round", "eigenvalue", "density"])

    varying = [f for f in RUN_FIELDS if len({parse_run_id(r)[f] for r in runs}) > 1] or ["algorithm"]
    titles = [label_run(parse_run_id(run_id), varying) for run_id in runs]
    refuse_alike(zip(map(parse_run_id, runs), titles, strict=True), "the Hessian density figure's panels")
    plt = pyplot()
    round_colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(data["round"].unique()))}
    ncols = min(3, max(1, len(runs)))
    nrows = max(1, math.ceil(len(runs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    if not runs:
        axes[0, 0].text(0.5, 0.5, "no spectral densities (density disabled or no Hessian job)", ha="center")
    # one eigenvalue range per dataset / model, of every curve of its runs: each panel on its own range drew a
    # pretrained model's spectrum (-1..6) as wide as a random init's (-5..16)
    model_of = {run_id: "{dataset}/{model}".format(**parse_run_id(run_id)) for run_id in runs}
    spans = data.groupby(data["run_id"].map(model_of))["eigenvalue"].agg(["min", "max"])
    for ax, run_id, title in zip(axes.flat, runs, titles, strict=False):
        ax.set_xlim(spans.loc[model_of[run_id], "min"], spans.loc[model_of[run_id], "max"])
        for round_, sub in data[data["run_id"] == run_id].groupby("round"):
            ax.semilogy(sub["eigenvalue"], np.maximum(sub["density"], 1e-12), label=f"round {round_}", lw=1,
                        color=round_colors[round_])
        ax.set_ylim(bottom=1e-6)
        bounded_log_ticks(ax.yaxis)  # ~8 decades: no comb of 70 minor ticks per panel
        ax.set_title(title)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (SLQ)")
        ax.legend()
    fig.suptitle("Hessian eigenvalue density of the global model on the aggregate data")
    save(fig, outputs, data)
