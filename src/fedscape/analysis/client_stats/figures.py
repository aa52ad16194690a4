"""The client-statistics figure: client drift, gradient diversity, update cosine, L2 to final per round."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.client_stats.definitions import (
    CLIENT_STATS_COLUMNS,
    CLIENT_STATS_FIGURE_COLUMNS,
    CLIENT_STATS_PANELS,
)
from fedscape.core.runs import parse_run_id
from fedscape.core.setting import setting_order_key
from fedscape.fl.settings import clients_per_round
from fedscape.outputs.labels import label_run, refuse_alike
from fedscape.outputs.stats import did_not_diverge
from fedscape.outputs.style import (
    ONE_SEED,
    RunStyle,
    empty_figure,
    legend_key,
    pyplot,
    save_figure_outputs,
    seeds_range,
    varying_keys,
)
from fedscape.outputs.tables import read_table

log = logging.getLogger("fedscape.client_stats")

# A round whose aggregate is its one client's model (one client per round, no server step that moves it) has a drift
# from the aggregate of float rounding alone (~1e-8 of the drift from the round start in float32), which autoscaling
# would draw as a trend: below this fraction of the drift from the start it is drawn as 0.
ROUNDING_RTOL = 1e-4
_LINE = ["alpha", "init", "round"]


def before_divergence(stats: pd.DataFrame, rounds: pd.DataFrame, where: str = "client_stats.csv") -> pd.DataFrame:
    """The rows of client_stats.csv `stats` that statistics over seeds count: a run that diverged is kept up to its
    last round that rounds.csv `rounds` says was ok before its first diverged one (`fl.settings.DIVERGED_LOSS`; the
    rows that `outputs.stats.did_not_diverge` leaves out, as `report.figures.curves.curve_statistics` does for the
    curves); a run that did not diverge, whole.

    The engine records a round's client statistics before it stops on the divergence, so a diverged run's last row
    holds the exploding round's drift (1e6 where the others have 1): in a mean over seeds it would be the whole line.
    rounds.csv holds the evaluated rounds alone (training.eval_every): the engine evaluates a round between two
    evaluations where its model or its clients' loss shows an explosion, but one that shows in neither (or a run
    trained before it did so) can have the diverged round rounds.csv names come rounds after the explosion began.
    Cut at the last ok evaluation, no exploding round is counted; with eval_every 1 that is the round before the
    diverged one, otherwise the rounds since the last evaluation, exploding or not, are left out too.
    """
    missing = sorted(set(stats["run_id"]) - set(rounds["run_id"]))
    if missing:
        raise ValueError(f"{where}: {len(missing)} run(s) have no rows in rounds.csv (e.g. {missing[0]}), so whether "
                         "and where they diverged is unknown; the two tables must be of the same runs: make both "
                         "again (the rules rounds_table and client_stats)")
    ok = did_not_diverge(rounds)
    first = rounds.drop(index=ok.index).groupby("run_id")["round"].min()  # the diverged runs' first diverged round
    ok_before = ok[ok["round"] < ok["run_id"].map(first)]  # NaN for a run that did not diverge: compares False
    last_ok = ok_before.groupby("run_id")["round"].max().reindex(first.index)  # NaN: no ok round before (none kept)
    diverged = stats["run_id"].isin(first.index)
    return stats[~diverged | (stats["round"] <= stats["run_id"].map(last_ok))]


def seed_statistics(counted: pd.DataFrame) -> pd.DataFrame:
    """Per (alpha, init, round): the mean over seeds of each panel's statistic over the finite values of the rows
    `counted` (`before_divergence`), the seeds counted and those each mean is over (`SEED_COUNT_COLUMNS`)."""
    columns = [s for s, _ in CLIENT_STATS_PANELS]
    values = counted[columns]
    infinite = np.isinf(values.to_numpy(dtype=float))
    for i, j in zip(*np.nonzero(infinite), strict=True):  # e.g. a gradient diversity of updates summing to 0 exactly
        row = counted.iloc[i]
        log.warning("run %s, round %d: %s is %s, left out of the mean over seeds", row["run_id"], row["round"],
                    columns[j], values.iloc[i, j])
    finite = counted.assign(**{c: values[c].mask(infinite[:, j]) for j, c in enumerate(columns)})
    grouped = finite.groupby(_LINE)
    counts = grouped[columns].count().add_prefix("n_seeds_")  # the values each mean is over: one per seed and round
    return grouped[columns].mean().join(grouped["run_id"].nunique().rename("n_seeds")).join(counts).reset_index()


def client_stats_figure_job(table: str | Path, rounds: str | Path, outputs: dict[str, str | Path]) -> None:
    """Client drift, gradient diversity, update cosine and L2 to final per round; colour = alpha, style = init.

    Drift from the round start and from the aggregate (the client-drift explainer, a 2025 blog post; the drift that
    SCAFFOLD corrects, Karimireddy et al. 2020), then the bottom row of the figure of Nguyen et al. 2022 ("Where to
    begin?"); one row of panels per (dataset, model, algorithm, clients, participation), the mean over the seeds that
    had not diverged by the round (`rounds`: rounds.csv says which diverged where; a diverged run counts up to its
    last ok evaluation, `before_divergence`; `seed_statistics`; the CSV's `definitions.SEED_COUNT_COLUMNS` say how
    many). A drift from the aggregate below ROUNDING_RTOL of the drift from the start is drawn as 0; a panel of such
    values alone is drawn on a fixed range and says so (the CSV keeps the measured values). Two rows of panels or two
    lines labelled alike are refused before anything is drawn.
    """
    df = read_table(table, CLIENT_STATS_COLUMNS)
    df = before_divergence(df, read_table(rounds, ["run_id", "round", "status"]), where=str(table))
    if df.empty:
        save_figure_outputs(empty_figure("no client statistics (client_stats.csv has no rows of a run before it "
                                         "diverged)"), outputs, pd.DataFrame(columns=CLIENT_STATS_FIGURE_COLUMNS))
        return
    fields = pd.DataFrame([parse_run_id(r) for r in df["run_id"]], index=df.index)
    df = pd.concat([df, fields], axis=1)
    group_keys = ["dataset", "model", "algorithm", "num_clients", "participation"]
    shown = ["dataset", "model", "algorithm", *varying_keys(df, ["num_clients", "participation"])]
    stats = CLIENT_STATS_PANELS
    groups = list(df.groupby(group_keys, sort=True))
    style = RunStyle(df)
    line_keys = ["alpha", *(["init"] if df["init"].nunique() > 1 else [])]
    row_fields = [dict(zip(group_keys, key, strict=True)) for key, _ in groups]
    refuse_alike(((fields, label_run(fields, shown)) for fields in row_fields), "the client-statistics figure's rows")
    line_fields = sorted(({"alpha": alpha, "init": init} for alpha, init in
                          df[["alpha", "init"]].drop_duplicates().itertuples(index=False)), key=legend_key)
    refuse_alike(((fields, label_run(fields, line_keys)) for fields in line_fields),
                 "the client-statistics figure's legend")
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), len(stats), figsize=(15, 0.6 + 2.4 * len(groups)), squeeze=False,
                             sharex=True, layout="constrained")
    legend, plotted = {}, []
    for g, ((_, sub), fields) in enumerate(zip(groups, row_fields, strict=True)):
        mean = seed_statistics(sub).assign(**fields)
        plotted.append(mean[CLIENT_STATS_FIGURE_COLUMNS])
        lines = sorted(mean.groupby(["alpha", "init"]), key=lambda item: (setting_order_key(item[0][0]),
                                                                          item[0][1] != "random", item[0][1]))
        for j, (stat, title) in enumerate(stats):
            ax = axes[g, j]
            drawn = []
            for (alpha, init), line in lines:
                line = line.dropna(subset=[stat])  # l2_to_final exists at the kept rounds only (training.save_every)
                values = line[stat]
                if stat == "drift_from_aggregate":
                    values = values.mask(values <= ROUNDING_RTOL * line["drift_from_start"], 0.0)
                (handle,) = ax.plot(line["round"], values, color=style.color(alpha),
                                    linestyle=style.linestyle(init), lw=1.2)
                drawn.append(values)
                legend.setdefault(label_run({"alpha": alpha, "init": init}, line_keys),
                                  (legend_key({"alpha": alpha, "init": init}), handle))
            drawn = pd.concat(drawn) if drawn else pd.Series(dtype=float)
            if stat == "drift_from_aggregate" and len(drawn) and (drawn == 0.0).all():  # a fixed range, not noise
                one = clients_per_round(int(fields["num_clients"]), float(fields["participation"])) == 1
                ax.set_ylim(-1.0, 1.0)
                ax.set_yticks([0.0])
                ax.text(0.5, 0.75, ("one client per round: " if one else "") + "0 up to float rounding\n"
                        f"(below {ROUNDING_RTOL:g} × the drift from the start)", transform=ax.transAxes,
                        ha="center", va="center")
            ax.set_title(title if g == 0 else "")
            ax.set_ylabel(label_run(fields, shown, sep="\n") if j == 0 else "")
            if g == len(groups) - 1:
                ax.set_xlabel("round")
    plotted = pd.concat(plotted, ignore_index=True)
    one = seeds_range(plotted["n_seeds"]) == ONE_SEED  # no mean to speak of: said as the curves' title says it
    fig.suptitle("Client-update statistics per round, " + (ONE_SEED if one else "mean over the seeds not diverged "
                 "by then") + " (colour: alpha, line style: init)")
    entries = sorted(legend.items(), key=lambda item: item[1][0])
    fig.legend([handle for _, (_, handle) in entries], [label for label, _ in entries], loc="outside right center")
    save_figure_outputs(fig, outputs, plotted)
