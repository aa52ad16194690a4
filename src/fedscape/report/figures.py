"""Cross-cutting figures from the aggregated tables: curves over rounds, final accuracy by init and alpha,
and accuracy tables as figures. Every function draws one figure with fedscape.outputs.style and writes
PDF, PNG and the plotted data as CSV.

- curves_figure: train and test accuracy or loss of the global model per round, one line per run group
  (mean over seeds, 95% t-interval band when there are several seeds); as in the top row of the poster of
  Nguyen et al. 2022 (*Where to Begin?*).
- accuracy_by_init_figure: final test accuracy per initialisation and alpha (IID vs non-IID, random vs
  pretrained: Nguyen et al. 2022, "pre-training closes the accuracy gap between non-IID and IID").
- accuracy_table_figure: final test accuracy as a table of algorithm x (alpha, clients, participation)
  cells, mean +- std over seeds (Mendieta et al. 2022, FedAlign Tables 1-4 and 7).
- headline_table_figure: accuracy with the analyses' headline numbers per run group (barrier to IID,
  lambda_max, trace, HN, HD: FedAlign Table 1).
- ranking_figure: the algorithms' rank by final accuracy under each initialisation, as a slope chart (Nguyen
  et al. 2022: pre-training changes which algorithm wins), with the rank range over seeds.
- local_work_figure: final accuracy against the clients' local epochs per round, one line per algorithm and
  init (Nguyen et al. 2022: more local updates help more from a pretrained init).
- cost_figure: seconds per round and peak memory per algorithm (FedAlign Table 5).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.core.alpha import format_setting, setting_label, setting_order_key
from fedscape.fl.hparams.registry import display_name
from fedscape.fl.settings import ROUNDS_COLUMNS
from fedscape.outputs.labels import label_run
from fedscape.outputs.stats import did_not_diverge, t_interval
from fedscape.outputs.style import (
    PALETTE,
    RunStyle,
    alpha_order,
    bounded_log_ticks,
    empty_figure,
    facet_grid,
    pyplot,
    save_figure,
    varying_keys,
)
from fedscape.outputs.tables import read_table
from fedscape.report.cost import COST_COLUMNS
from fedscape.report.summary import FINAL_COLUMNS

log = logging.getLogger("fedscape.figures")

METRICS = {"accuracy": ("train_acc", "test_acc"), "loss": ("train_loss", "test_loss")}
SPLIT_NAMES = {"train": "aggregate training data", "test": "test set"}
# Facets (panels) of a figure: one per combination of these fields; lines within a panel by alpha and init.
FACET_KEYS = ("algorithm", "num_clients", "participation")
CURVE_GROUP = ["dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation"]
CURVE_COLUMNS = [*CURVE_GROUP, "split", "round", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]
POINT_COLUMNS = [*CURVE_GROUP, "n_seeds", "mean", "std", "ci95_low", "ci95_high", "seeds", "values"]
TABLE_COLUMNS = [*CURVE_GROUP, "row", "column", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]
# Algorithms are ranked against each other within one setting and init: the run fields other than these two.
RANKING_SETTING = ["dataset", "model", "alpha", "num_clients", "participation"]
LOCAL_WORK_COLUMNS = [*RANKING_SETTING, "init", "algorithm_name", "local_epochs", "algorithm", "n_seeds", "mean",
                      "std", "ci95_low", "ci95_high", "local_steps"]
RANKING_COLUMNS = [*RANKING_SETTING, "init", "algorithm", "n_seeds", "mean", "ci95_low", "ci95_high", "rank",
                   "rank_seed_min", "rank_seed_max", "n_algorithms"]


def _select(df: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    return df[(df["dataset"].astype(str) == dataset) & (df["model"].astype(str) == model)]


def _facets(df: pd.DataFrame) -> list[dict]:
    """The distinct facet field values of `df`, in a stable order (algorithm by name, then clients, part.)."""
    keys = list(FACET_KEYS)
    combos = df[keys].drop_duplicates().sort_values(keys, kind="stable")
    return [dict(zip(keys, row, strict=True)) for row in combos.itertuples(index=False)]


def _facet_title(facet: dict, df: pd.DataFrame) -> str:
    shown = ["algorithm", *[k for k in ("num_clients", "participation") if df[k].nunique() > 1]]
    return label_run(facet, shown)


def _in_facet(df: pd.DataFrame, facet: dict) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k, v in facet.items():
        mask &= (df[k] == v).to_numpy()
    return df[mask]


def _cell(df: pd.DataFrame, init: str, alpha) -> pd.DataFrame:
    """Rows of one init and setting (compared in canonical text: 'iid' == inf)."""
    return df[(df["init"].astype(str) == init) & (df["alpha"].map(format_setting) == format_setting(alpha))]


def _line_groups(sub: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(alpha, init) groups of one facet, alpha from IID to severe skew."""
    groups = []
    for init in sorted(sub["init"].astype(str).unique()):
        part = sub[sub["init"].astype(str) == init]
        for alpha in alpha_order(part["alpha"].unique()):
            groups.append(({"init": init, "alpha": alpha}, _cell(part, init, alpha)))
    return sorted(groups, key=lambda g: (setting_order_key(g[0]["alpha"]), g[0]["init"]))


def curve_statistics(rounds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run group, split and round: mean, std and 95% t-interval over seeds of the metric, over the runs
    whose round is not diverged (the one rule of `outputs.stats.did_not_diverge`)."""
    rows = []
    for split, column in zip(("train", "test"), METRICS[metric], strict=True):
        for keys, sub in did_not_diverge(rounds).groupby([*CURVE_GROUP, "round"], sort=False):
            mean, std, lo, hi, n = t_interval(sub[column].tolist())
            rows.append({**dict(zip([*CURVE_GROUP, "round"], keys, strict=True)), "split": split, "n_seeds": n,
                         "mean": mean, "std": std, "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def curves_figure(rounds: pd.DataFrame, dataset: str, model: str, metric: str, base_path: str | Path) -> dict:
    """Train (top) and test (bottom) accuracy or loss of the global model over rounds; one panel per
    algorithm (x clients x participation), colour = alpha, line style = init; band = 95% interval over seeds."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    df = _select(rounds, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in rounds.csv"), base_path,
                           pd.DataFrame(columns=CURVE_COLUMNS))
    stats = curve_statistics(df, metric)
    style = RunStyle(df)
    facets = _facets(df)
    fig, axes = facet_grid(len(facets), ncols=4, rows_per_facet=2, sharey="row")
    legend = {}
    for facet, (ax_train, ax_test) in zip(facets, axes, strict=True):
        sub = _in_facet(stats, facet)
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
            keys = ["alpha"] + (["init"] if df["init"].nunique() > 1 else [])
            legend.setdefault(label_run(fields, keys), handle)
        ax_train.set_title(_facet_title(facet, df))
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
    seeds = int(stats["n_seeds"].max()) if len(stats) else 0
    band = "mean and 95% t-interval over seeds" if seeds > 1 else "one seed"
    fig.suptitle(f"{dataset} / {model}: global model {metric} per round ({band})")
    fig.legend(legend.values(), legend.keys(), loc="outside right center")
    return save_figure(fig, base_path, stats)


def _final_points(final: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (facet, init, alpha): mean, std and 95% t-interval over the seeds that did not diverge of `column`."""
    rows = []
    for keys, sub in final.groupby(CURVE_GROUP, sort=False):
        mean, std, lo, hi, n = t_interval(did_not_diverge(sub)[column].tolist())
        rows.append({**dict(zip(CURVE_GROUP, keys, strict=True)), "n_seeds": n, "mean": mean, "std": std,
                     "ci95_low": lo, "ci95_high": hi, "seeds": " ".join(str(s) for s in sorted(sub["seed"])),
                     "values": " ".join(f"{v:.6g}" for v in sub.sort_values("seed")[column])})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def accuracy_by_init_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                            column: str = "test_acc") -> dict:
    """Final test accuracy per init (x) and alpha (colour): bar = mean over seeds, dots = seeds,
    error bar = 95% interval; one panel per algorithm (x clients x participation)."""
    df = _select(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=POINT_COLUMNS))
    points = _final_points(df, column)
    style = RunStyle(df)
    facets = _facets(df)
    is_acc = column.endswith("_acc")
    most = max(_in_facet(df, f)["init"].nunique() for f in facets)
    alphas = alpha_order(df["alpha"].unique())
    width = 0.8 / len(alphas)
    fig, axes = facet_grid(len(facets), ncols=4, rows_per_facet=1, size=(max(2.4, 1.1 * most + 1.4), 2.6),
                           sharey=True, sharex=False)
    legend = {}
    for facet, (ax,) in zip(facets, axes, strict=True):
        sub = _in_facet(points, facet)
        runs = _in_facet(df, facet)
        inits = sorted(runs["init"].astype(str).unique())  # the inits of this panel only
        for i, init in enumerate(inits):
            for j, alpha in enumerate(alphas):
                x = i - 0.4 + width * (j + 0.5)
                cell = _cell(sub, init, alpha)
                if cell.empty:
                    continue
                c = cell.iloc[0]
                color = style.color(alpha)
                handle = ax.bar(x, c["mean"], width * 0.9, color=color, alpha=0.75, edgecolor="none")
                if not math.isnan(c["ci95_low"]):
                    lo, hi = c["ci95_low"], c["ci95_high"]
                    if is_acc:  # the interval of the mean, drawn within [0, 1] (the CSV keeps it whole)
                        lo, hi = max(lo, 0.0), min(hi, 1.0)
                    ax.errorbar(x, c["mean"], yerr=[[c["mean"] - lo], [hi - c["mean"]]], color="black", lw=0.8,
                                capsize=2)
                seeds = _cell(runs, init, alpha)
                ax.plot(np.full(len(seeds), x), seeds[column], "o", ms=2.5, color="black", alpha=0.7)
                legend.setdefault(setting_label(alpha), handle)
        ax.set_xticks(range(len(inits)), [f"{i} init" for i in inits])
        if is_acc:
            ax.set_ylim(0.0, 1.02)
        ax.set_title(_facet_title(facet, df))
        ax.set_ylabel("final test accuracy" if column == "test_acc" else column)
        ax.grid(axis="x", visible=False)
    fig.suptitle(f"{dataset} / {model}: final accuracy by initialisation and alpha")
    fig.legend(legend.values(), legend.keys(), loc="outside right center", title="partition")
    return save_figure(fig, base_path, points)


def _panels(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """((alpha, num_clients, participation), rows) per panel: by clients, all clients first, IID first."""
    settings = list(table.groupby(["alpha", "num_clients", "participation"], sort=False))
    return sorted(settings, key=lambda item: (item[0][1], -item[0][2], setting_order_key(item[0][0])))


def _init_order(inits) -> list[str]:
    """Inits left to right: `random` first (the reference the papers compare against), then by name."""
    return sorted({str(i) for i in inits}, key=lambda i: (i != "random", i))


def ranking_table(final: pd.DataFrame, column: str = "test_acc") -> pd.DataFrame:
    """Rank of every algorithm by mean final `column` over seeds (1 = best), per setting and init.

    Only runs that did not diverge count. `rank_seed_min` / `rank_seed_max`: the best and worst rank the
    algorithm takes when the algorithms are ranked seed by seed (same seed = same partition and sampling),
    the seed interval of the rank; NaN with one seed.
    """
    ok = did_not_diverge(final)
    rows = []
    for setting, sub in ok.groupby(RANKING_SETTING, sort=False):
        for init, per_init in sub.groupby("init", sort=False):
            stats = {algorithm: t_interval(runs[column].tolist())
                     for algorithm, runs in per_init.groupby("algorithm", sort=True)}
            stats = {algorithm: st for algorithm, st in stats.items() if st[4] > 0}  # no finite value: no rank
            means = pd.Series({a: st[0] for a, st in stats.items()})
            ranks = means.rank(ascending=False, method="min")
            per_seed = per_init.pivot_table(index="seed", columns="algorithm", values=column, aggfunc="first")
            seed_ranks = per_seed.rank(axis=1, ascending=False, method="min")
            several = per_seed.shape[0] > 1
            for algorithm, (mean, _std, lo, hi, n) in stats.items():
                seed_rank = seed_ranks[algorithm].dropna() if several else pd.Series(dtype=float)
                rows.append({**dict(zip(RANKING_SETTING, setting, strict=True)), "init": init,
                             "algorithm": algorithm, "n_seeds": n, "mean": mean, "ci95_low": lo, "ci95_high": hi,
                             "rank": int(ranks[algorithm]),
                             "rank_seed_min": float(seed_rank.min()) if len(seed_rank) else math.nan,
                             "rank_seed_max": float(seed_rank.max()) if len(seed_rank) else math.nan,
                             "n_algorithms": len(stats)})
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def ranking_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                   column: str = "test_acc") -> dict:
    """Slope chart of the algorithms' rank by final accuracy under each init (x), one line per algorithm,
    with the rank range over seeds as a bar and the mean accuracy beside each point; one panel per setting."""
    df = _select(final, dataset, model)
    table = ranking_table(df, column) if not df.empty else pd.DataFrame(columns=RANKING_COLUMNS)
    if table.empty:
        return save_figure(empty_figure(f"no finished runs of {dataset} / {model} in final.csv"), base_path, table)
    settings = _panels(table)
    algorithms = sorted(table["algorithm"].astype(str).unique())
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(algorithms)}
    shown = varying_keys(table, ["num_clients", "participation"])
    most = int(table["n_algorithms"].max())
    fig, axes = facet_grid(len(settings), ncols=3, size=(3.4, 0.9 + 0.45 * most), sharey=False, sharex=False)
    legend = {}
    for ((alpha, clients, part), sub), (ax,) in zip(settings, axes, strict=True):
        inits = _init_order(sub["init"])
        for algorithm, line in sub.groupby("algorithm", sort=True):
            line = line.set_index("init").reindex([i for i in inits if i in set(line["init"])])
            x = [inits.index(i) for i in line.index]
            color = colors[str(algorithm)]
            (handle,) = ax.plot(x, line["rank"], "-o", color=color, lw=1.5, ms=5)
            legend.setdefault(display_name(str(algorithm)), handle)
            for xi, (_, row) in zip(x, line.iterrows(), strict=True):
                if not math.isnan(row["rank_seed_min"]):
                    ax.vlines(xi, row["rank_seed_min"], row["rank_seed_max"], color=color, lw=4, alpha=0.25)
                ax.annotate(f"{100 * row['mean']:.1f}%", (xi, row["rank"]), textcoords="offset points",
                            xytext=(6 if xi == len(inits) - 1 else -6, 0), fontsize=6, va="center",
                            ha="left" if xi == len(inits) - 1 else "right", color=color)
        ax.set_xticks(range(len(inits)), [f"{i} init" for i in inits])
        ax.set_xlim(-0.6, len(inits) - 0.4)
        n = int(sub["n_algorithms"].max())
        ax.set_ylim(n + 0.5, 0.5)  # rank 1 at the top
        ax.set_yticks(range(1, n + 1))
        ax.set_ylabel("rank by final test accuracy" if column == "test_acc" else f"rank by {column}")
        setting = {"alpha": alpha, "num_clients": clients, "participation": part}
        ax.set_title(label_run(setting, ["alpha", *shown]) + ("" if len(inits) > 1 else "\n(one init: no change)"))
        ax.grid(axis="x", visible=False)
    seeds = int(table["n_seeds"].max())
    band = f"bars: rank range over {seeds} seeds" if seeds > 1 else "one seed"
    fig.suptitle(f"{dataset} / {model}: rank of each algorithm by final accuracy per initialisation ({band})")
    fig.legend(legend.values(), legend.keys(), loc="outside right center", title="algorithm")
    return save_figure(fig, base_path, table)


def local_work_table(final: pd.DataFrame, work: dict[str, dict], column: str = "test_acc") -> pd.DataFrame:
    """Mean and 95% t-interval over the seeds that did not diverge of `column`, per setting, init and algorithm
    label, with the label's algorithm name and local epochs or steps (`work`: label -> {name, local_epochs and
    optionally local_steps}; empty where the work differs between clients)."""
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
                     "local_steps": None if steps is None else int(steps)})
    table = pd.DataFrame(rows, columns=LOCAL_WORK_COLUMNS)
    return table.sort_values([*RANKING_SETTING, "init", "algorithm_name", "local_epochs", "local_steps"],
                             kind="stable")


def local_work_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                      work: dict[str, dict], column: str = "test_acc") -> dict:
    """Final accuracy (mean, 95% interval over seeds) against local epochs per round, and against local steps
    per round for the labels that count their work in steps (labels whose work differs between clients are
    left out): colour = algorithm, line style = init; one panel per unit and setting (alpha, clients,
    participation)."""
    df = _select(final, dataset, model)
    table = local_work_table(df, work, column) if not df.empty else pd.DataFrame(columns=LOCAL_WORK_COLUMNS)
    table = table[table["local_epochs"].notna() | table["local_steps"].notna()]
    if table.empty:
        return save_figure(empty_figure(f"no finished runs of {dataset} / {model} in final.csv"), base_path, table)
    panels = [(unit, setting, sub) for unit in ("local_epochs", "local_steps")
              for setting, sub in _panels(table[table[unit].notna()])]
    names = sorted(table["algorithm_name"].astype(str).unique())
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(names)}
    style = RunStyle(df)
    shown = varying_keys(table, ["num_clients", "participation"])
    fig, axes = facet_grid(len(panels), ncols=3, size=(3.4, 2.6), sharey=True, sharex=False)
    legend = {}
    for (unit, (alpha, clients, part), sub), (ax,) in zip(panels, axes, strict=True):
        for (name, init), line in sub.groupby(["algorithm_name", "init"], sort=True):
            line = line.groupby(unit, as_index=False).first()  # labels with the same work: the first
            color = colors[str(name)]
            (handle,) = ax.plot(line[unit], line["mean"], marker="o", ms=4, color=color,
                                linestyle=style.linestyle(init), lw=1.4)
            if line["ci95_low"].notna().any():
                ax.fill_between(line[unit], line["ci95_low"].clip(lower=0), line["ci95_high"].clip(upper=1),
                                color=color, alpha=0.15, lw=0)
            legend.setdefault(f"{display_name(str(name))} · {init} init", handle)
        amounts = sorted({int(e) for e in sub[unit]})
        ax.set_xticks(amounts)
        if unit == "local_steps" and amounts[-1] > 10 * max(amounts[0], 1):
            ax.set_xscale("log")
            ax.set_xticks(amounts, [str(a) for a in amounts])
            ax.minorticks_off()
        ax.set_xlabel(f"{unit.replace('_', ' ')} per round")
        ax.set_ylabel("final test accuracy" if column == "test_acc" else column)
        setting = {"alpha": alpha, "num_clients": clients, "participation": part}
        ax.set_title(label_run(setting, ["alpha", *shown]) + ("" if len(amounts) > 1 else "\n(one local work setting)"))
    seeds = int(table["n_seeds"].max())
    band = "mean and 95% t-interval over seeds" if seeds > 1 else "one seed"
    fig.suptitle(f"{dataset} / {model}: final accuracy against local work ({band})")
    fig.legend(legend.values(), legend.keys(), loc="outside right center")
    return save_figure(fig, base_path, table)


def _seeds_note(n_seeds: pd.Series) -> str:
    """Title suffix saying over how many seeds the cells are aggregated."""
    lo, hi = (int(n_seeds.min()), int(n_seeds.max())) if len(n_seeds) else (0, 0)
    if hi <= 1:
        return ", one seed"
    return f", mean ± std over {hi} seeds" if lo == hi else f", mean ± std over {lo}-{hi} seeds (± where 2 or more)"


def accuracy_table(final: pd.DataFrame, column: str = "test_acc", scale: float = 100.0) -> pd.DataFrame:
    """Long table of the accuracy-table figure: row label, column label, mean, std, n (values x scale)."""
    inits = final["init"].nunique() > 1
    cols = ["alpha"] + varying_keys(final, ["num_clients", "participation"])
    rows = []
    for keys, sub in did_not_diverge(final).groupby(CURVE_GROUP, sort=False):
        fields = dict(zip(CURVE_GROUP, keys, strict=True))
        mean, std, lo, hi, n = t_interval((sub[column] * scale).tolist())
        rows.append({**fields, "row": label_run(fields, ["algorithm", "init"] if inits else ["algorithm"]),
                     "column": label_run(fields, cols, sep="\n"), "n_seeds": n, "mean": mean, "std": std,
                     "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _column_order(table: pd.DataFrame) -> list[str]:
    keyed = table.drop_duplicates("column").copy()
    keyed["_a"] = keyed["alpha"].map(setting_order_key)
    return keyed.sort_values(["num_clients", "participation", "_a"], kind="stable")["column"].tolist()


def accuracy_table_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path,
                          column: str = "test_acc") -> dict:
    """Final test accuracy (%) as a table: rows = algorithm (x init), columns = alpha (x clients x
    participation), cell = mean +- std over seeds, shaded by the mean (FedAlign Tables 1-4 and 7)."""
    df = _select(final, dataset, model)
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
    best = {c: grid[c].max() if grid[c].notna().sum() > 1 else math.nan for c in col_order}  # bold needs a rival
    for i, r in enumerate(row_order):
        for j, c in enumerate(col_order):
            if (r, c) not in lookup.index:
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
                continue
            cell = lookup.loc[(r, c)]
            text = f"{cell['mean']:.1f}" if math.isnan(cell["std"]) else f"{cell['mean']:.1f} ± {cell['std']:.1f}"
            weight = "bold" if cell["mean"] == best[c] else "normal"
            dark = (cell["mean"] - lo) / (vmax - lo + 1e-12) > 0.6  # white text on the darker cells
            ax.text(j, i, text, ha="center", va="center", fontsize=7, fontweight=weight,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(col_order)), col_order)
    ax.set_yticks(range(len(row_order)), row_order)
    ax.xaxis.tick_top()
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{dataset} / {model}: final test accuracy (%){_seeds_note(table['n_seeds'])}",
                 pad=24 + 8 * col_order[0].count("\n"))
    return save_figure(fig, base_path, table)


# FedAlign Table 1 columns (direction of "better" in brackets) and the other headline numbers of final.csv.
HEADLINE_METRICS = {
    "test_acc": ("Acc. (%) ↑", 100.0, True), "barrier_to_iid_loss": ("barrier to IID ↓", 1.0, False),
    "lambda_max": ("λmax ↓", 1.0, False), "trace": ("trace ↓", 1.0, False), "hn": ("HN ↓", 1.0, False),
    "hd": ("HD ↑", 1.0, True), "lambda_max_init": ("λmax at init ↓", 1.0, False),
}
HEADLINE_COLUMNS = [*CURVE_GROUP, "row", "metric", "n_seeds", "mean", "std", "ci95_low", "ci95_high"]


def _fmt(value: float) -> str:
    """Compact number: 3 significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def headline_table(final: pd.DataFrame) -> pd.DataFrame:
    """Long table of the headline figure: per run group and metric with values, mean / std / interval.

    When the config computes any analysis, only the run groups with an analysis value are kept (the
    rows of FedAlign Table 1); otherwise every group, with its accuracy.
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
            mean, std, lo, hi, n = t_interval((did_not_diverge(sub)[metric] * scale).tolist())
            rows.append({**fields, "row": label_run(fields, keys), "metric": metric, "n_seeds": n, "mean": mean,
                         "std": std, "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def headline_table_figure(final: pd.DataFrame, dataset: str, model: str, base_path: str | Path) -> dict:
    """FedAlign Table 1 as a figure: one row per run group, one column per headline number of final.csv
    that the config computes (accuracy, barrier to IID, lambda_max, trace, HN, HD); mean +- std over
    seeds; each column shaded by rank from worst (light) to best (dark) and its best value bold."""
    df = _select(final, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in final.csv"), base_path,
                           pd.DataFrame(columns=HEADLINE_COLUMNS))
    table = headline_table(df)
    order = table.drop_duplicates("row").copy()
    order["_a"] = order["alpha"].map(setting_order_key)
    order = order.sort_values(["algorithm", "init", "num_clients", "participation", "_a"], kind="stable")
    row_order = order["row"].tolist()
    metrics = [m for m in HEADLINE_METRICS if m in set(table["metric"])]
    lookup = table.set_index(["row", "metric"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 + 1.25 * len(metrics), 0.8 + 0.34 * len(row_order)))
    shade = np.full((len(row_order), len(metrics)), np.nan)
    for j, metric in enumerate(metrics):
        higher = HEADLINE_METRICS[metric][2]
        col = np.array([lookup.loc[(r, metric), "mean"] if (r, metric) in lookup.index else np.nan
                        for r in row_order], dtype=float)
        finite = col[np.isfinite(col)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            # shade by rank, not by value: HN and the trace span orders of magnitude across methods
            ranks = pd.Series(col).rank(method="average").to_numpy()
            rank = (ranks - 1) / (finite.size - 1) if hi > lo else np.where(np.isfinite(col), 0.5, np.nan)
            shade[:, j] = rank if higher else 1 - rank
        best = (np.nanmax(col) if higher else np.nanmin(col)) if finite.size > 1 and hi > lo else np.nan
        for i, r in enumerate(row_order):
            if not np.isfinite(col[i]):
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
                continue
            std = lookup.loc[(r, metric), "std"]
            text = _fmt(col[i]) if not math.isfinite(std) else f"{_fmt(col[i])} ± {_fmt(std)}"
            bold = col[i] == best and len(row_order) > 1
            ax.text(j, i, text, ha="center", va="center", fontsize=7, fontweight="bold" if bold else "normal",
                    color="white" if shade[i, j] > 0.75 else "black")
    ax.imshow(np.ma.masked_invalid(0.15 + 0.7 * shade), cmap="Greens", vmin=0, vmax=1.1, aspect="auto")
    ax.set_xticks(range(len(metrics)), [HEADLINE_METRICS[m][0] for m in metrics])
    ax.set_yticks(range(len(row_order)), row_order)
    ax.xaxis.tick_top()
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{dataset} / {model}: final accuracy and headline numbers{_seeds_note(table['n_seeds'])}", pad=22)
    return save_figure(fig, base_path, table)


COST_FIGURE_COLUMNS = ["dataset", "model", "algorithm", "algorithm_name", "device", "device_name",
                       "median_seconds_per_round", "peak_mem_mb", "seconds_vs_fedavg", "peak_mem_vs_fedavg",
                       "alpha", "num_clients", "participation", "local_epochs", "batch_size", "local_steps",
                       "local_work"]


def _cost_label(row: pd.Series, varying: list[str]) -> str:
    """An algorithm label and the setting fields that vary between the rows of a cost figure."""
    parts = [display_name(str(row["algorithm"]))]
    if varying:
        run_fields = [k for k in varying if k in ("alpha", "num_clients", "participation")]
        if run_fields:
            parts.append(label_run(row, run_fields))
        parts += [f"{k.replace('_', ' ')} {row[k]}" for k in varying if k in ("local_epochs", "batch_size")]
        parts += [str(row["local_work"]) for k in varying if k == "local_work"]
    return " · ".join(parts)


def cost_figure(cost: pd.DataFrame, dataset: str, model: str, base_path: str | Path) -> dict:
    """Median wall-clock seconds per round and peak memory per algorithm label and setting (FedAlign
    Table 5), annotated with the ratio to FedAvg in the same setting; one bar colour per device."""
    df = _select(cost, dataset, model)
    if df.empty:
        return save_figure(empty_figure(f"no runs of {dataset} / {model} in cost.csv"), base_path,
                           pd.DataFrame(columns=COST_FIGURE_COLUMNS))
    # local_work names epochs and steps, equal or not, in one text; cost.csv files made before it had local_epochs
    work = "local_work" if "local_work" in df.columns else "local_epochs"
    df = df.assign(**{k: pd.NA for k in ("local_steps", "local_work") if k not in df.columns})
    varying = varying_keys(df, ["alpha", "num_clients", "participation", work, "batch_size"])
    df = df.assign(_label=[_cost_label(row, varying) for _, row in df.iterrows()])
    df = df.sort_values(["algorithm", *varying, "device"], kind="stable")
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


# -- thin entry points of the Snakemake scripts -----------------------------------------------------
def curves_stage(rounds: str | Path, dataset: str, model: str, metric: str, base_path: str | Path) -> None:
    curves_figure(read_table(rounds, ROUNDS_COLUMNS), dataset, model, metric, base_path)
    log.info("curves %s / %s (%s) -> %s", dataset, model, metric, base_path)


def final_figure_stage(final: str | Path, kind: str, dataset: str, model: str, base_path: str | Path,
                       work: dict[str, dict] | None = None) -> None:
    df = read_table(final, FINAL_COLUMNS)
    if kind == "by_init":
        accuracy_by_init_figure(df, dataset, model, base_path)
    elif kind == "table":
        accuracy_table_figure(df, dataset, model, base_path)
    elif kind == "headline":
        headline_table_figure(df, dataset, model, base_path)
    elif kind == "ranking":
        ranking_figure(df, dataset, model, base_path)
    elif kind == "local_work":
        local_work_figure(df, dataset, model, base_path, work or {})
    else:
        raise ValueError(f"unknown final-accuracy figure {kind!r}; valid: by_init, table, headline, ranking, "
                         "local_work")
    log.info("final accuracy %s %s / %s -> %s", kind, dataset, model, base_path)


def cost_figure_stage(cost: str | Path, dataset: str, model: str, base_path: str | Path) -> None:
    cost_figure(read_table(cost, COST_COLUMNS), dataset, model, base_path)
    log.info("cost %s / %s -> %s", dataset, model, base_path)
