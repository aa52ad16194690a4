"""How the algorithms compare (Nguyen et al. 2022, *Where to Begin?*): their rank by final accuracy under each
initialisation (pre-training changes which algorithm wins), with the rank range over seeds, and final accuracy
against the clients' local work per round (more local updates help more from a pretrained init)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedscape.fl.hparams.registry import display_name
from fedscape.outputs.labels import label_run, refuse_alike
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.style import (
    CATEGORY_GAP_IN,
    ONE_SEED,
    PALETTE,
    RunStyle,
    agg_canvas,
    category_ticks,
    empty_figure,
    facet_grid,
    save_figure,
    seeds_range,
    varying_keys,
    wrap_to_fit,
)
from fedscape.report.figures.common import (
    common_seeds,
    compared_means,
    init_order,
    interval_seeds,
    select_model,
    setting_panels,
)

# Algorithms are ranked against each other within one setting and init: the run fields other than these two.
RANKING_SETTING = ["dataset", "model", "alpha", "num_clients", "participation"]
LOCAL_WORK_COLUMNS = [*RANKING_SETTING, "init", "algorithm_name", "local_epochs", "algorithm", "n_seeds", "mean",
                      "std", "ci95_low", "ci95_high", "local_steps", "variant"]
VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P")
# `rank_mean`: the mean the rank is by (appended: the columns before it keep their places).
RANKING_COLUMNS = [*RANKING_SETTING, "init", "algorithm", "n_seeds", "mean", "ci95_low", "ci95_high", "rank",
                   "rank_seed_min", "rank_seed_max", "n_algorithms", "rank_seed_n", "rank_mean"]


def ranking_table(final: pd.DataFrame, column: str = "test_acc") -> pd.DataFrame:
    """Rank of every algorithm by mean final `column` over seeds (1 = best), per setting and init.

    Only runs that did not diverge count (`n_seeds`: those of the algorithm, which its `mean` and interval are over;
    an algorithm none of whose runs has a value is not ranked). The rank is by `rank_mean`, the mean over the
    `rank_seed_n` seeds where every ranked algorithm has a value (`common.compared_means`: paired, so that an
    algorithm that diverged on a hard seed does not win by that seed's loss; it can be fewer than `n_seeds`), or
    where there is no such seed (`rank_seed_n` 0), its `mean`. `rank_seed_min` / `rank_seed_max`: the best and worst
    rank the algorithm takes when the algorithms are ranked seed by seed over those seeds, the seed interval of the
    rank; NaN with fewer than two such seeds. (A rank can lie outside that interval: an algorithm second on every
    seed is first by the mean where the first place changes hands between rivals far behind it elsewhere.)
    """
    ok = did_not_diverge(final)
    rows = []
    for setting, sub in ok.groupby(RANKING_SETTING, sort=False):
        for init, per_init in sub.groupby("init", sort=False):
            stats = {algorithm: t_interval(runs[column].tolist())
                     for algorithm, runs in per_init.groupby("algorithm", sort=True)}
            stats = {algorithm: st for algorithm, st in stats.items() if st[4] > 0}  # no finite value: no rank
            per_seed = per_init.pivot_table(index="seed", columns="algorithm", values=column, aggfunc="first")
            common = common_seeds(per_seed.reindex(columns=list(stats)))
            means = compared_means(common, pd.Series({a: st[0] for a, st in stats.items()}))
            ranks = means.rank(ascending=False, method="min")
            seed_ranks = common.rank(axis=1, ascending=False, method="min")
            several = common.shape[0] > 1
            for algorithm, (mean, _std, lo, hi, n) in stats.items():
                seed_rank = seed_ranks[algorithm].dropna() if several else pd.Series(dtype=float)
                rows.append({**dict(zip(RANKING_SETTING, setting, strict=True)), "init": init,
                             "algorithm": algorithm, "n_seeds": n, "mean": mean, "ci95_low": lo, "ci95_high": hi,
                             "rank": int(ranks[algorithm]),
                             "rank_seed_min": float(seed_rank.min()) if len(seed_rank) else math.nan,
                             "rank_seed_max": float(seed_rank.max()) if len(seed_rank) else math.nan,
                             "n_algorithms": len(stats), "rank_seed_n": common.shape[0],
                             "rank_mean": float(means[algorithm])})
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def joined_groups(inits: list[str], ranked: dict[str, frozenset]) -> list[list[int]]:
    """One algorithm's points (its inits, in the panel's order) split into runs of consecutive inits that rank the
    same set of algorithms: only those are joined by a line, since a rank among other algorithms (e.g. the one
    algorithm run from a pretrained init) says nothing about a change of rank."""
    groups: list[list[int]] = []
    for k, init in enumerate(inits):
        if groups and ranked[inits[k - 1]] == ranked[init]:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def ranking_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                   column: str = "test_acc") -> dict:
    """Slope chart of the algorithms' rank by final accuracy under each init (x), one line per algorithm,
    with the rank range over seeds as a bar and the mean accuracy it is ranked by (`rank_mean`) above each point;
    one panel per setting that ranks two algorithms or more (a setting of one algorithm, rank 1 under every init, is
    named in the title and kept in the CSV), at most three a row and wrapped into rows to fit a screen (`wrap_to_fit`).
    Each panel is as wide as its labels need side by side, so that a label stays within its init's column, clear of
    its neighbours' and of the rank axis. Two panels or two algorithms labelled alike are refused before anything is
    drawn."""
    df = select_model(final, dataset, model)
    table = ranking_table(df, column) if not df.empty else pd.DataFrame(columns=RANKING_COLUMNS)
    if table.empty:
        return save_figure(empty_figure(f"no finished runs of {dataset} / {model} in final.csv"), base_path, table)
    settings = setting_panels(table)
    algorithms = sorted(table["algorithm"].astype(str).unique())
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(algorithms)}
    names = {a: display_name(a) for a in algorithms}
    shown = varying_keys(table, ["num_clients", "participation"])
    panels = [dict(zip(("alpha", "num_clients", "participation"), setting, strict=True)) for setting, _ in settings]
    titles = [label_run(panel, ["alpha", *shown]) for panel in panels]
    refuse_alike(zip(panels, titles, strict=True), "the ranking figure's panels")
    refuse_alike((({"algorithm": a}, name) for a, name in names.items()), "the ranking figure's legend")
    ranks_several = [sub["n_algorithms"].max() > 1 for _, sub in settings]
    alone = [title for title, several in zip(titles, ranks_several, strict=True) if not several]
    drawn = [(sub, title) for (_, sub), title, several in zip(settings, titles, ranks_several, strict=True) if several]
    if not drawn:
        return save_figure(empty_figure(f"{dataset} / {model}: one algorithm in every setting, nothing to rank",
                                        size=(5.0, 2.0)), base_path, table)
    most = max(int(sub["n_algorithms"].max()) for sub, _ in drawn)
    seeds = ranking_seeds(pd.concat([sub for sub, _ in drawn]))
    left_out = f"\nnot drawn, one algorithm each: {', '.join(alone)}" if alone else ""

    def draw(ncols: int):
        """The figure with its panels in at most `ncols` columns, and the width each panel needs."""
        fig, axes = facet_grid(len(drawn), ncols=ncols, size=(3.4, 0.9 + 0.45 * most), sharey=False,
                               sharex=False)
        renderer = agg_canvas(fig).get_renderer()
        legend, needs = {}, {}
        unjoined = False
        for (sub, title), (ax,) in zip(drawn, axes, strict=True):
            inits = init_order(sub["init"])
            ranked = {init: frozenset(per_init["algorithm"].astype(str)) for init, per_init in sub.groupby("init")}
            uneven = len(set(ranked.values())) > 1
            for algorithm, line in sub.groupby("algorithm", sort=True):
                line = line.set_index("init").reindex([i for i in inits if i in set(line["init"])])
                x = [inits.index(i) for i in line.index]
                color = colors[str(algorithm)]
                for group in joined_groups(list(line.index), ranked):
                    (handle,) = ax.plot([x[k] for k in group], line["rank"].iloc[group], "-o", color=color, lw=1.5,
                                        ms=5)
                    legend.setdefault(names[str(algorithm)], handle)
                unjoined |= len(joined_groups(list(line.index), ranked)) > 1
                for xi, (init, row) in zip(x, line.iterrows(), strict=True):
                    if not math.isnan(row["rank_seed_min"]):
                        ax.vlines(xi, row["rank_seed_min"], row["rank_seed_max"], color=color, lw=4, alpha=0.25)
                    # where the inits rank different sets of algorithms, a rank says of how many
                    of_n = f" ({int(row['rank'])} of {len(ranked[init])})" if uneven else ""
                    # above the point, centred on its init: beside it, the first init's label ran over the rank axis
                    ax.annotate(f"{100 * row['rank_mean']:.1f}%{of_n}", (xi, row["rank"]), textcoords="offset points",
                                xytext=(0, 4), fontsize=6, ha="center", va="bottom", color=color)
            ax.set_xlim(-0.6, len(inits) - 0.4)
            # an init's column (1 of the len(inits) + 0.2 units of the axis) at least as wide as its widest label and a
            # gap: a label centred on the first init then ends short of the axis (0.6 units away), as of its neighbours
            widest = max(t.get_window_extent(renderer).width for t in ax.texts) / fig.dpi
            needs[ax] = max(category_ticks(ax, [f"{i} init" for i in inits]), len(inits) * (widest + CATEGORY_GAP_IN))
            n = int(sub["n_algorithms"].max())
            ax.set_ylim(n + 0.5, 0.5)  # rank 1 at the top
            ax.set_yticks(range(1, n + 1))
            ax.set_ylabel("rank by final test accuracy" if column == "test_acc" else f"rank by {column}")
            ax.set_title(title + ("" if len(inits) > 1 else "\n(one init: no change)"))
            ax.grid(axis="x", visible=False)
        note = ("\nlines join only inits that rank the same algorithms (a rank among fewer algorithms is not "
                "comparable)" if unjoined else "")
        fig.suptitle(f"{dataset} / {model}: rank of each algorithm by final accuracy per initialisation "
                     f"({seeds}){note}{left_out}")
        fig.legend(legend.values(), legend.keys(), loc="outside right center", title="algorithm")
        return fig, needs

    # at most three panels a row, as many rows as keep the figure within a screen, each panel as wide as its labels
    return save_figure(wrap_to_fit(draw, len(drawn), max_ncols=3), base_path, table)


def ranking_seeds(table: pd.DataFrame) -> str:
    """Over how many seeds a ranking table's ranks, by their means beside the points (`rank_mean`), and rank ranges
    are: the `rank_seed_n` seeds where every ranked algorithm has a value (fewer than an algorithm's own where another
    diverged); in the panels without such a seed, the ranks are by each algorithm's mean over its own seeds."""
    paired, alone = table[table["rank_seed_n"] > 0], table[table["rank_seed_n"] == 0]
    parts = []
    if len(paired):
        over = seeds_range(paired["rank_seed_n"])
        shared = " where every algorithm has a value" if (paired["n_seeds"] > paired["rank_seed_n"]).any() else ""
        if over == ONE_SEED:
            parts.append(f"means over the one seed{shared}: no rank range" if shared else ONE_SEED)
        else:
            parts.append(f"means and bars (rank range) over {over}{shared}"
                         + (", no bar where one" if (paired["rank_seed_n"] == 1).any() else ""))
    if len(alone):
        parts.append(f"ranks by each algorithm's mean over its own seeds ({seeds_range(alone['n_seeds'])})"
                     + (" where no seed has every algorithm" if len(paired) else ": no seed has every algorithm"))
    return "; ".join(parts)


def local_work_table(final: pd.DataFrame, work: dict[str, dict], column: str = "test_acc") -> pd.DataFrame:
    """Mean and 95% t-interval over the seeds that did not diverge of `column`, per setting, init and algorithm
    label, with the label's algorithm name and local epochs or steps (`work`: label -> {name, local_epochs and
    optionally local_steps}; empty where the work differs between clients) and what else it sets (`variant`, empty
    for none)."""
    unknown = sorted(set(final["algorithm"].astype(str)) - set(work))
    if unknown:
        raise ValueError(f"algorithm labels {unknown} of final.csv have no local work; known: {sorted(work)}")
    rows = []
    for keys, sub in did_not_diverge(final).groupby([*RANKING_SETTING, "init", "algorithm"], sort=False):
        fields = dict(zip([*RANKING_SETTING, "init", "algorithm"], keys, strict=True))
        mean, std, lo, hi, n = t_interval(sub[column].tolist())
        label = work[str(fields["algorithm"])]
        epochs, steps = label.get("local_epochs"), label.get("local_steps")
        rows.append({**fields, "algorithm_name": label["name"], "local_epochs": None if epochs is None else int(epochs),
                     "n_seeds": n, "mean": mean, "std": std, "ci95_low": lo, "ci95_high": hi,
                     "local_steps": None if steps is None else int(steps), "variant": label.get("variant", "")})
    table = pd.DataFrame(rows, columns=LOCAL_WORK_COLUMNS)
    return table.sort_values([*RANKING_SETTING, "init", "algorithm_name", "local_epochs", "local_steps"],
                             kind="stable")


def local_work_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                      work: dict[str, dict], column: str = "test_acc") -> dict:
    """Final accuracy (mean, 95% interval over seeds) against local epochs per round, and against local steps
    per round for the labels that count their work in steps (labels whose work differs between clients are
    left out): colour = algorithm, line style = init, one line per algorithm and `variant` (labels that differ in
    their local work alone); one panel per unit and setting (alpha, clients, participation). Two settings labelled
    alike are refused before anything is drawn."""
    df = select_model(final, dataset, model)
    table = local_work_table(df, work, column) if not df.empty else pd.DataFrame(columns=LOCAL_WORK_COLUMNS)
    table = table[table["local_epochs"].notna() | table["local_steps"].notna()]
    if table.empty:
        return save_figure(empty_figure(f"no finished runs of {dataset} / {model} in final.csv"), base_path, table)
    panels = [(unit, setting, sub) for unit in ("local_epochs", "local_steps")
              for setting, sub in setting_panels(table[table[unit].notna()])]
    names = sorted(table["algorithm_name"].astype(str).unique())
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(names)}
    # an algorithm's labels that set more than their work: a marker each, beside its colour
    variants = {name: sorted(sub["variant"].astype(str).unique()) for name, sub in table.groupby("algorithm_name")}
    style = RunStyle(df)
    shown = varying_keys(table, ["num_clients", "participation"])
    settings = [dict(zip(("alpha", "num_clients", "participation"), setting, strict=True)) for _, setting, _ in panels]
    titles = [label_run(setting, ["alpha", *shown]) for setting in settings]
    refuse_alike(zip(settings, titles, strict=True), "the local-work figure's panels")
    fig, axes = facet_grid(len(panels), ncols=3, size=(3.4, 2.6), sharey=True, sharex=False)
    legend = {}
    for (unit, _, sub), title, (ax,) in zip(panels, titles, axes, strict=True):
        for (name, variant, init), line in sub.groupby(["algorithm_name", "variant", "init"], sort=True):
            line = line.sort_values(unit, kind="stable")
            color = colors[str(name)]
            marker = VARIANT_MARKERS[variants[name].index(str(variant)) % len(VARIANT_MARKERS)]
            (handle,) = ax.plot(line[unit], line["mean"], marker=marker, ms=4, color=color,
                                linestyle=style.linestyle(init), lw=1.4)
            if line["ci95_low"].notna().any():
                ax.fill_between(line[unit], line["ci95_low"].clip(lower=0), line["ci95_high"].clip(upper=1),
                                color=color, alpha=0.15, lw=0)
            shown_name = display_name(str(name)) + (f" ({variant})" if variant else "")
            legend.setdefault(f"{shown_name} · {init} init", handle)
        amounts = sorted({int(e) for e in sub[unit]})
        ax.set_xticks(amounts)
        if unit == "local_steps" and amounts[-1] > 10 * max(amounts[0], 1):
            ax.set_xscale("log")
            ax.set_xticks(amounts, [str(a) for a in amounts])
            ax.minorticks_off()
        ax.set_xlabel(f"{unit.replace('_', ' ')} per round")
        ax.set_ylabel("final test accuracy" if column == "test_acc" else column)
        ax.set_title(title + ("" if len(amounts) > 1 else "\n(one local work setting)"))
    fig.suptitle(f"{dataset} / {model}: final accuracy against local work ({interval_seeds(table['n_seeds'])})")
    fig.legend(legend.values(), legend.keys(), loc="outside right center")
    return save_figure(fig, base_path, table)
