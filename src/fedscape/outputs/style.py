"""One plotting style for every fedscape figure: palette, legend labels, contour levels and saving.

Conventions used by all figures (so a reader learns them once):

- colour = partition (Dirichlet alpha or ``partitions`` label: IID first, then from mild to severe skew, then the
  other kinds by label), from the Okabe & Ito (2008) colour-blind-safe palette;
- line style = initialisation; marker = algorithm (a landscape plane, of a few runs, tells the runs of one partition
  apart by line style and marker together: `fedscape.analysis.landscape.figures.group_styles`);
- legends name runs with :func:`label_run` ("FedAvg · random init · α=0.1 · M=10 · 50% sampled");
- contour levels of losses are log-spaced (:func:`log_levels`, as in Li et al. 2018);
- heatmaps use :func:`sequential_cmap` (non-negative values, e.g. distances) or :func:`diverging_cmap`
  (signed values centred at 0, e.g. barriers), both colour-blind safe, missing cells light grey;
- every figure is written as PDF and PNG together with the data it draws as CSV
  (:func:`save_figure`), each file atomically, laid out and measured once for both formats
  (:func:`write_formats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.ticker import LogLocator

from fedscape.core.io import atomic_path
from fedscape.core.setting import format_setting, setting_order_key
from fedscape.outputs.labels import LABEL_ORDER, LABEL_SEP

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
# Same order as the landscape figures; yellow last (weak on white).
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "bluish_green": "#009E73",
    "reddish_purple": "#CC79A7",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "black": "#000000",
    "yellow": "#F0E442",
}
PALETTE: tuple[str, ...] = tuple(OKABE_ITO.values())
LINESTYLES: tuple = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DPI = 150  # PNG resolution: sharp on screen, small files (< 200 KB for the default figures)
# The widest figure that wrap_to_fit lays out in one row of panels (wider, it wraps them into rows): its PNG is
# then 1920 px at DPI, a full-HD screen's width (most laptops and monitors), which the report's browser window
# shows near its own size, its 7-8 pt text legible; a wider one is scaled down to fit the window. The saved PNG's
# tight crop adds at most savefig.pad_inches a side.
MAX_FIGURE_WIDTH_IN = 1920 / DPI

# -- values and labels -----------------------------------------------------------------------------
def setting_order(settings: Iterable) -> list:
    """Distinct settings from IID (inf) through mild to severe skew (decreasing alpha), then the other
    partition kinds by label."""
    unique: dict[str, object] = {}
    for s in settings:
        unique.setdefault(format_setting(s), s)
    return [unique[k] for k in sorted(unique, key=setting_order_key)]


def legend_key(fields: Mapping) -> tuple:
    """Sort key of a legend entry of run fields: IID first, then from mild to severe skew (the colour order), the
    random init before the others. Legends built panel by panel otherwise list the first panel's runs first."""
    alpha = fields.get("alpha")
    init = fields.get("init")
    return (() if alpha is None else setting_order_key(alpha), init is not None and str(init) != "random",
            "" if init is None else str(init))


def varying_keys(df: pd.DataFrame, keys: Sequence[str] = LABEL_ORDER) -> list[str]:
    """The run fields among `keys` that take more than one value in `df` (what a legend must show)."""
    return [k for k in keys if k in df.columns and df[k].nunique(dropna=False) > 1]


# What a title says of its values' seeds where only one is left, or none: every seed of every cell diverged. One
# wording for the figures across runs (report.figures) and the analyses' figures alike.
ONE_SEED = "one seed"
NO_SEED = "no seed that did not diverge"


def seeds_range(n_seeds: pd.Series) -> str:
    """Over how many seeds the cells with a value are: "3 seeds", "2-3 seeds" where cells lost seeds (diverged runs
    are in no statistic) or ran fewer, ONE_SEED, or NO_SEED where no cell has one. A cell whose seeds all diverged,
    n 0, is drawn as – and says nothing of the others."""
    n_seeds = n_seeds[n_seeds > 0]
    if not len(n_seeds):
        return NO_SEED
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    if hi <= 1:
        return ONE_SEED
    return f"{hi} seeds" if lo == hi else f"{lo}-{hi} seeds"


# -- style maps ------------------------------------------------------------------------------------
def setting_colors(settings: Iterable) -> dict[str, str]:
    """Colour per setting keyed by its canonical text ('iid', '0.1', 'c2'), assigned in setting_order (IID first)."""
    return {format_setting(s): PALETTE[i % len(PALETTE)] for i, s in enumerate(setting_order(settings))}


def category_styles(values: Iterable, styles: Sequence, first: Sequence[str] = ()) -> dict:
    """Style per distinct value: the values in `first` (when present) take the first styles, the others
    follow in sorted order (stable across the figures of one workflow run)."""
    distinct = sorted({str(v) for v in values}, key=lambda v: (v not in first, first.index(v) if v in first else 0, v))
    return {v: styles[i % len(styles)] for i, v in enumerate(distinct)}


class RunStyle:
    """Colour by setting (the `alpha` column), line style by init, marker by algorithm: one instance per figure."""

    def __init__(self, runs: pd.DataFrame):
        self.colors = setting_colors(runs["alpha"]) if "alpha" in runs else {}
        # the baselines take the plainest styles: random init solid, FedAvg circles
        self.linestyles = category_styles(runs["init"], LINESTYLES, first=("random",)) if "init" in runs else {}
        self.markers = category_styles(runs["algorithm"], MARKERS, first=("fedavg",)) if "algorithm" in runs else {}

    def color(self, setting) -> str:
        return self.colors.get(format_setting(setting), PALETTE[0])

    def linestyle(self, init) -> object:
        return self.linestyles.get(str(init), "-")

    def marker(self, algorithm) -> str:
        return self.markers.get(str(algorithm), "o")

    def kwargs(self, fields: Mapping) -> dict:
        """Matplotlib line keywords of a run or run group."""
        out = {}
        if "alpha" in fields:
            out["color"] = self.color(fields["alpha"])
        if "init" in fields:
            out["linestyle"] = self.linestyle(fields["init"])
        if "algorithm" in fields:
            out["marker"] = self.marker(fields["algorithm"])
        return out


# -- numbers ---------------------------------------------------------------------------------------
AUTO_CLIP_FACTOR = 20.0  # automatic clip: 20 x the median finite value (losses far above are divergent regions)


def log_levels(values: np.ndarray, n: int = 30, clip: float | None = None) -> np.ndarray:
    """n log-spaced contour levels from the smallest finite value (at least 1e-8) to `clip`, or without one to the
    largest finite value but at most AUTO_CLIP_FACTOR x the median. An explicit `clip` above the largest value is
    kept: several figures can then share one colour scale.

    Log levels are fedscape's choice: a plane's losses span decades (a trained model's near 0, its far edges' many
    times higher), and linear levels would spend most of their lines on the high ones. Li et al. 2018's code draws
    linear levels (plot_2D.plot_2d_contour: np.arange(0.1, 10, 0.5); its trajectory plot adds log-spaced ones from
    10 up)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.geomspace(1e-3, 1.0, n)
    lo = max(float(finite.min()), 1e-8)
    hi = float(finite.max()) if clip is None else float(clip)
    if clip is None:
        hi = min(hi, AUTO_CLIP_FACTOR * max(float(np.median(finite)), lo))
    if hi <= lo * (1 + 1e-9):
        hi = lo * 1.01 + 1e-8
    return np.geomspace(lo, hi, n)


# -- colour maps -----------------------------------------------------------------------------------
SEQUENTIAL_CMAP = "viridis"  # perceptually uniform, colour-blind safe; the loss-surface contours use it too
MISSING_COLOR = "#d9d9d9"  # heatmap cells without a value (as the landscape figures' diverged regions)


def sequential_cmap():
    """Colour map of non-negative heatmap values (distances): viridis, missing (NaN) cells light grey."""
    return matplotlib.colormaps[SEQUENTIAL_CMAP].with_extremes(bad=MISSING_COLOR)


def diverging_cmap():
    """Colour map of signed heatmap values centred at 0: Okabe-Ito blue (< 0), white (0), vermillion (> 0)."""
    colors = [OKABE_ITO["blue"], "#ffffff", OKABE_ITO["vermillion"]]
    return LinearSegmentedColormap.from_list("fedscape_diverging", colors).with_extremes(bad=MISSING_COLOR)


# -- matplotlib ------------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend with fedscape's rcParams."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: pyplot must load after the backend is chosen

    plt.rcParams.update({
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "legend.frameon": False,
        "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)), "figure.dpi": DPI,
        "pdf.fonttype": 42,  # TrueType in PDFs: text stays editable and searchable
    })
    return plt


# Minor ticks (2..9 x 10^k) of a log axis are drawn while its view spans at most this many decades (the
# loss curves: ~1-4): 8 per decade, so beyond it they are a dense unlabelled comb (matplotlib labels
# minor ticks below ~1 decade only), and every tick is a Tick with two labels, measured in the layout
# and in every draw (the spectral densities: 8 decades, 70 minor ticks on each of 9 panels).
LOG_MINOR_MAX_DECADES = 6.0


class BoundedLogMinorLocator(LogLocator):
    """Minor ticks of a log axis as matplotlib's LogLocator(subs="auto") places them, while the view spans
    at most `max_decades` decades; none on wider views (matplotlib itself drops them above 10 decades)."""

    def __init__(self, max_decades: float = LOG_MINOR_MAX_DECADES, base: float = 10.0):
        super().__init__(base=base, subs="auto")
        self.max_decades = float(max_decades)
        self.log_base = float(base)

    def tick_values(self, vmin, vmax):
        if vmin > 0 and vmax > 0 and abs(math.log(vmax / vmin, self.log_base)) > self.max_decades:
            return np.array([])
        return super().tick_values(vmin, vmax)


def bounded_log_ticks(axis, max_decades: float = LOG_MINOR_MAX_DECADES) -> None:
    """Give a log-scaled `axis` (e.g. ax.yaxis) a BoundedLogMinorLocator; its major ticks stay matplotlib's
    (one label per decade or every few decades, at most ~10). Call it after the axis's scale is set (setting
    a scale resets the locators); on shared axes it applies to the whole group."""
    if axis.get_scale() != "log":
        raise ValueError(f"bounded_log_ticks needs a log-scaled axis; this one is {axis.get_scale()!r}")
    axis.set_minor_locator(BoundedLogMinorLocator(max_decades))


CATEGORY_GAP_IN = 0.15  # inches between the labels of neighbouring categories


def category_ticks(ax, labels: Sequence[str], sep: str = LABEL_SEP) -> float:
    """Label the categories 0..n-1 of `ax`'s x axis horizontally, one part of each label (split at `sep`: the fields
    of a run group's label) per line, and return the width in inches that the axes need to show them side by side:
    n times the widest label plus CATEGORY_GAP_IN. Rotated labels overlap their neighbours once a panel holds a few
    long ones; `widen_to_fit` widens a figure whose axes are narrower than the returned width."""
    ax.set_xticks(range(len(labels)), [str(label).replace(sep, "\n") for label in labels])
    renderer = agg_canvas(ax.figure).get_renderer()
    widest = max((t.get_window_extent(renderer).width for t in ax.get_xticklabels()), default=0.0) / ax.figure.dpi
    return len(labels) * (widest + CATEGORY_GAP_IN)


WIDEN_TOLERANCE_IN = 1e-3  # widen_to_fit stops this close to every need


def widen_to_fit(fig, needs: Mapping) -> None:
    """Widen `fig` (laid out by its layout engine) until every axes in `needs` is at least as wide as its need in
    inches. The layout gives each column of the axes' grid an equal share of extra width, less the gaps between
    columns, which grow with it: the widest deficit times the columns is added until it is gone (a few rounds)."""
    engine = fig.get_layout_engine()
    if engine is None:
        raise ValueError("widen_to_fit needs a figure with a layout engine (e.g. layout='constrained')")
    columns = max((ax.get_subplotspec().get_gridspec().ncols for ax in needs), default=1)
    for _ in range(10):
        engine.execute(fig)
        width = fig.get_figwidth()
        deficit = max((need - ax.get_position().width * width for ax, need in needs.items()), default=0.0)
        if deficit <= WIDEN_TOLERANCE_IN:
            return
        fig.set_figwidth(width + deficit * columns)


def widened(draw: Callable, ncols: int):
    """The figure that `draw(ncols)` draws (returning (fig, needs), as for `wrap_to_fit`), widened to fit its needs
    (`widen_to_fit`)."""
    fig, needs = draw(ncols)
    widen_to_fit(fig, needs)
    return fig


def fits_width(fig, max_width: float = MAX_FIGURE_WIDTH_IN) -> bool:
    """Whether `fig` is at most `max_width` inches wide (within `widen_to_fit`'s tolerance)."""
    return fig.get_figwidth() <= max_width + WIDEN_TOLERANCE_IN


def wrap_to_fit(draw: Callable, n: int, max_width: float = MAX_FIGURE_WIDTH_IN, max_ncols: int | None = None,
                one_column=None):
    """The figure of n panels that `draw(ncols)` draws in a grid of at most `ncols` columns (e.g. with `facet_grid`),
    returning (fig, needs) for `widen_to_fit`, widened to fit: in one row where that figure is at most `max_width`
    inches wide, else in the fewest rows that keep it so, ceil(n / rows) columns each (8 panels: 2 rows of 4, or 3
    rows of 3, 3 and 2, ...), every panel still as wide as its labels need. Where even one column is too wide (a
    panel whose labels alone need more), the panels take a row each and the figure stays wider than `max_width`.
    `max_ncols`: no more columns than that, however narrow the panels. `one_column`: `widened(draw, 1)` where the
    caller has drawn it already (to learn whether any number of columns fits): used, not drawn again.

    A figure is narrower the fewer columns it has, so the rows are found by bisection: a few drawings, every figure
    but the one returned closed."""
    plt = pyplot()
    drawn = {} if one_column is None else {1: one_column}

    def figure(ncols: int):
        return drawn.pop(ncols) if ncols in drawn else widened(draw, ncols)

    def fits(fig) -> bool:
        return fits_width(fig, max_width)

    def search():
        first = n if max_ncols is None else min(n, max_ncols)
        fig = figure(first)
        if first <= 1 or fits(fig):
            return fig
        plt.close(fig)
        # the columns of 2..n rows, fewer than the first drawing's
        options = sorted({min(math.ceil(n / rows), first) for rows in range(2, n + 1)} - {first}, reverse=True)
        lo, hi, best = 0, len(options) - 1, None  # the answer is in options[lo..hi]; best: options[hi]'s figure
        while lo < hi:
            mid = (lo + hi) // 2
            fig = figure(options[mid])
            if fits(fig):
                if best is not None:
                    plt.close(best)
                hi, best = mid, fig
            else:
                plt.close(fig)
                lo = mid + 1
        return best if best is not None else figure(options[lo])

    result = search()
    for fig in drawn.values():  # a one-column figure the search did not need
        plt.close(fig)
    return result


def split_evenly(items: Sequence, pieces: int) -> list[list]:
    """`items` in order, in min(pieces, len(items)) consecutive pieces whose sizes differ by at most one (the
    larger first); [[]] for no items."""
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    items = list(items)
    count = max(1, min(pieces, len(items)))
    size, extra = divmod(len(items), count)
    bounds = [k * size + min(k, extra) for k in range(count + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def empty_figure(message: str, size: tuple[float, float] = (4.0, 2.0)):
    """A figure that says why there is nothing to draw (rules always produce their outputs)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def agg_canvas(fig):
    """`fig`'s Agg canvas (a closed figure's is attached again): what measures text and draws PNGs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: the backend loads with pyplot()

    return fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)


def write_formats(fig, paths: Mapping[str, str | Path], dpi: int = DPI, tight: bool = True) -> None:
    """Write `fig` to each {format: path} of `paths` (each atomically), laid out and measured once; close `fig`.

    Every `savefig` call runs the layout engine (constrained layout measures every tick label and title)
    and a measuring draw before its real draw; for bbox_inches="tight" it also measures the drawn
    artists. Both depend on text sizes in inches only, so they are done once here, with the Agg renderer
    at `dpi` (the PNG's own, so the PNG is pixel-identical to one written by savefig alone), and every
    format then costs one draw: the layout engine is removed, which keeps the positions and spares
    savefig its measuring draw. `tight`: crop to the artists plus rcParams["savefig.pad_inches"] (as
    savefig's bbox_inches="tight"), else write the whole figure.
    """
    plt = pyplot()
    try:
        canvas = agg_canvas(fig)
        fig.set_dpi(dpi)
        engine = fig.get_layout_engine()
        if fig.axes and engine is not None:
            engine.execute(fig)  # what Figure.draw does first; the axes keep these positions from here on
        bbox = None
        if tight:
            bbox = fig.get_tightbbox(canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
        # None, not "none": a placeholder engine would still make savefig run its measuring draw
        with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)
        for fmt, path in paths.items():
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches=bbox)
    finally:
        plt.close(fig)


def save_figure(fig, base_path: str | Path, data: pd.DataFrame, formats: Sequence[str] = ("pdf", "png"),
                dpi: int = DPI) -> dict[str, Path]:
    """Write `fig` as <base>.pdf and <base>.png and `data` as <base>.csv, each atomically; close `fig`.

    `base_path` may carry one of the suffixes (e.g. the rule's PNG output); it is dropped.
    """
    base = Path(base_path)
    if base.suffix.lstrip(".") in (*formats, "csv"):
        base = base.with_suffix("")
    paths = {fmt: base.with_name(f"{base.name}.{fmt}") for fmt in formats}
    write_formats(fig, paths, dpi=dpi, tight=True)
    path = base.with_name(f"{base.name}.csv")
    with atomic_path(path) as tmp:
        data.to_csv(tmp, index=False)
    paths["csv"] = path
    return paths


def save_figure_outputs(fig, outputs: Mapping[str, str | Path], data: pd.DataFrame) -> dict[str, Path]:
    """save_figure to a rule's named outputs {'png', 'pdf', 'csv'}, which must share one base name."""
    base = Path(outputs["png"]).with_suffix("")
    odd = {k: str(v) for k, v in outputs.items() if Path(v) != base.with_name(f"{base.name}.{k}")}
    if odd or not {"pdf", "csv"} <= set(outputs):
        pyplot().close(fig)
        raise ValueError(f"figure outputs must be <base>.png, <base>.pdf and <base>.csv of one base {base}; "
                         f"got {dict(outputs)}")
    return save_figure(fig, outputs["png"], data)


def facet_grid(n: int, ncols: int = 4, rows_per_facet: int = 1, size: tuple[float, float] = (3.0, 2.3),
               sharey: str | bool = "row", sharex: str | bool = True):
    """A figure with n facets wrapped into at most `ncols` columns, each `rows_per_facet` axes tall.

    Returns (fig, axes) where axes[f] is the list of the facet's axes (top to bottom); unused axes are hidden.
    """
    plt = pyplot()
    ncols = max(1, min(ncols, n))
    nblocks = math.ceil(n / ncols)
    nrows = nblocks * rows_per_facet
    fig, grid = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             sharex=sharex, sharey=sharey, layout="constrained")
    axes = []
    for f in range(nblocks * ncols):
        block, col = divmod(f, ncols)
        facet = [grid[block * rows_per_facet + r][col] for r in range(rows_per_facet)]
        if f < n:
            axes.append(facet)
        else:
            for ax in facet:
                ax.set_visible(False)
    return fig, axes
