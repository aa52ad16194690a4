"""Figures and the shared plotting style: valid PDF/PNG/CSV from small fixture tables, the style's
helpers, and the figures, tables and HTML report of the tiny end-to-end run."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.configs import DEFAULT, SCHEMA, TINY
from helpers.figures import assert_figure_files
from helpers.tables import rounds_table, run_id

from fedscape.core.runs import build_runs, parse_run_id
from fedscape.core.setting import alpha_label
from fedscape.outputs.labels import label_run
from fedscape.outputs.style import (
    PALETTE,
    RunStyle,
    agg_canvas,
    empty_figure,
    log_levels,
    save_figure,
    setting_order,
    varying_keys,
)
from fedscape.plan import report as report_plan
from fedscape.plan.workflow import check_config
from fedscape.report.figure_kinds import ACCURACY_FIGURES, CURVE_METRICS, accuracy_figure
from fedscape.report.figures import accuracy_figure_job
from fedscape.report.figures import cost as cost_figures
from fedscape.report.figures.accuracy import (
    accuracy_by_init_figure,
    accuracy_table,
    accuracy_table_figure,
    headline_seeds_note,
    headline_table,
    headline_table_figure,
)
from fedscape.report.figures.algorithms import (
    LOCAL_WORK_COLUMNS,
    RANKING_COLUMNS,
    joined_groups,
    local_work_figure,
    local_work_table,
    ranking_figure,
    ranking_table,
)
from fedscape.report.figures.common import seeds_note
from fedscape.report.figures.cost import cost_figure
from fedscape.report.figures.curves import CURVE_COLUMNS, curve_statistics, curves_figure
from fedscape.report.summary import final_table, summary_table


def two_inits_two_algorithms() -> pd.DataFrame:
    frames = []
    for algorithm in ("fedavg", "fedprox"):
        df = rounds_table(inits=("random", "pretrained"))
        df["algorithm"] = algorithm
        df["run_id"] = df["run_id"].str.replace("algo~fedavg", f"algo~{algorithm}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# -- figures from fixture tables ---------------------------------------------------------------------
def test_legends_list_iid_first_whichever_panel_drew_a_run_first(tmp_path, monkeypatch):
    from fedscape.report.figures import curves as curve_figures

    # Prepare: the first panel (FedAvg) has alpha 0.1 runs only; IID appears in the second (FedProx)
    rounds = two_inits_two_algorithms()
    iid = rounds["alpha"].astype(str).isin(["iid", "inf"])
    rounds = rounds[~(iid & (rounds["algorithm"] == "fedavg"))]
    drawn = {}
    save = curve_figures.save_figure
    monkeypatch.setattr(curve_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    curves_figure(rounds, "digits", "cnn_small", "accuracy", tmp_path / "curves.png")

    # Assert
    (legend,) = drawn["fig"].legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "random init · IID", "pretrained init · IID", "random init · α=0.1", "pretrained init · α=0.1"]


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_curves_figure_files_and_data(tmp_path, metric):
    rounds = two_inits_two_algorithms()

    paths = curves_figure(rounds, "digits", "cnn_small", metric, tmp_path / "curves.png")

    data = assert_figure_files(paths)
    assert list(data.columns) == CURVE_COLUMNS
    # 2 algorithms x 2 inits x 2 alphas x 4 rounds x 2 splits, seeds aggregated
    assert len(data) == 2 * 2 * 2 * 4 * 2
    assert (data["n_seeds"] == 3).all()


def test_curve_band_is_the_t_interval_over_seeds():
    rounds = rounds_table()

    stats = curve_statistics(rounds, "accuracy")

    last = stats[(stats["round"] == 3) & (stats["split"] == "test") & (stats["alpha"] == 0.1)].iloc[0]
    values = [0.40, 0.52, 0.61]
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert last["mean"] == pytest.approx(mean)
    assert last["ci95_high"] - mean == pytest.approx(4.302652729749464 * std / math.sqrt(3))


def test_curves_with_one_seed_have_no_band():
    rounds = rounds_table(final_acc={("iid", 0): 0.9, ("0.1", 0): 0.5})

    stats = curve_statistics(rounds, "loss")

    assert (stats["n_seeds"] == 1).all()
    assert stats[["std", "ci95_low", "ci95_high"]].isna().all().all()
    assert stats["mean"].notna().all()


@pytest.mark.parametrize(("statuses", "title"), [
    (("ok", "ok", "ok"), "mean and 95% t-interval over seeds"),
    (("diverged", "diverged", "ok"), "one seed"),
    (("diverged", "diverged", "diverged"), "no seed that did not diverge"),
], ids=["three", "one-left", "none-left"])
def test_the_curves_title_says_whether_seeds_are_left(tmp_path, monkeypatch, statuses, title):
    # Prepare: the runs of the seeds marked diverged diverged at once (a start model above DIVERGED_LOSS)
    from fedscape.report.figures import curves as curve_figures

    rounds = rounds_table()
    rounds["status"] = rounds["seed"].map(dict(enumerate(statuses)))
    drawn = {}
    save = curve_figures.save_figure
    monkeypatch.setattr(curve_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute: a figure without a line where none is left
    assert_figure_files(curves_figure(rounds, "digits", "cnn_small", "accuracy", tmp_path / "curves"), min_rows=0)

    # Assert
    assert drawn["fig"].get_suptitle() == f"digits / cnn_small: global model accuracy per round ({title})"


def test_accuracy_by_init_spans_the_values_and_centres_a_panels_only_alpha_on_its_tick(tmp_path, monkeypatch):
    from fedscape.report.figures import accuracy as accuracy_figures

    # Prepare: accuracies of 96-98% (a gap of two points), FedProx at alpha 0.1 only
    final = final_table(two_inits_two_algorithms())
    iid = final["alpha"].astype(float) == float("inf")
    final["test_acc"] = 0.96 + 0.02 * iid + 0.001 * final["seed"]
    final = final[(final["algorithm"] == "fedavg") | ~iid]
    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    accuracy_by_init_figure(final, "digits", "cnn_small", tmp_path / "by_init")

    # Assert: no axis from 0 that flattens the gap (in %, as the tables); FedProx's one alpha sits on its init's tick
    panels = {ax.get_title(): ax for ax in drawn["fig"].axes if ax.collections}
    low, high = next(iter(panels.values())).get_ylim()
    assert 90 < low < 96 and 98 < high <= 100
    fedprox = next(ax for title, ax in panels.items() if "FedProx" in title)
    centres = sorted(float(np.mean(seg[:, 0])) for c in fedprox.collections if hasattr(c, "get_segments")
                     for seg in c.get_segments() if len(seg) == 2 and seg[0][1] == seg[1][1])
    assert centres == pytest.approx([0.0, 1.0])


def test_accuracy_by_init_figure(tmp_path):
    final = final_table(two_inits_two_algorithms())

    paths = accuracy_by_init_figure(final, "digits", "cnn_small", tmp_path / "by_init")

    data = assert_figure_files(paths)
    assert len(data) == 2 * 2 * 2  # algorithm x init x alpha
    cell = data[(data["algorithm"] == "fedavg") & (data["init"] == "random") & (data["alpha"] == 0.1)].iloc[0]
    assert cell["mean"] == pytest.approx(np.mean([0.40, 0.52, 0.61]))
    assert cell["seeds"] == "0 1 2"


def test_accuracy_table_figure(tmp_path):
    final = final_table(two_inits_two_algorithms())

    paths = accuracy_table_figure(final, "digits", "cnn_small", tmp_path / "table")

    data = assert_figure_files(paths)
    assert set(data["row"]) == {"FedAvg · random init", "FedAvg · pretrained init", "FedProx · random init",
                                "FedProx · pretrained init"}
    assert set(data["column"]) == {"IID", "α=0.1"}
    cell = data[(data["row"] == "FedProx · random init") & (data["column"] == "IID")].iloc[0]
    assert cell["mean"] == pytest.approx(100 * np.mean([0.91, 0.93, 0.95]))
    assert cell["std"] == pytest.approx(100 * np.std([0.91, 0.93, 0.95], ddof=1))


def test_accuracy_table_columns_name_clients_and_participation_when_they_vary():
    final = final_table(rounds_table())
    other = final.copy()
    other["num_clients"] = 50
    other["participation"] = 0.2
    other["run_id"] = other["run_id"] + "x"

    table = accuracy_table(pd.concat([final, other], ignore_index=True))

    assert set(table["column"]) == {"IID\nM=10\nall clients", "α=0.1\nM=10\nall clients",
                                    "IID\nM=50\n20% sampled", "α=0.1\nM=50\n20% sampled"}
    assert set(table["row"]) == {"FedAvg"}


@pytest.mark.parametrize("diverged", ["fedprox", "alpha", "all"])
def test_accuracy_table_figure_keeps_the_groups_whose_seeds_all_diverged_as_dashes(tmp_path, diverged):
    # Prepare: every seed of one algorithm, of one alpha, or of every run diverged
    final = final_table(two_inits_two_algorithms())
    hit = {"fedprox": final["algorithm"] == "fedprox", "alpha": final["alpha"] == 0.1,
           "all": pd.Series(True, index=final.index)}[diverged]
    final.loc[hit, "status"] = "diverged"

    # Execute
    data = assert_figure_files(accuracy_table_figure(final, "digits", "cnn_small", tmp_path / "table"))

    # Assert: every row and column stays; the diverged groups count no seed and have no mean
    assert set(data["row"]) == {"FedAvg · random init", "FedAvg · pretrained init", "FedProx · random init",
                                "FedProx · pretrained init"}
    assert set(data["column"]) == {"IID", "α=0.1"}
    gone = data["row"].str.startswith("FedProx") if diverged == "fedprox" else (
        data["column"] == "α=0.1" if diverged == "alpha" else pd.Series(True, index=data.index))
    assert (data.loc[gone, "n_seeds"] == 0).all() and data.loc[gone, "mean"].isna().all()
    assert (data.loc[~gone, "n_seeds"] == 3).all() and data.loc[~gone, "mean"].notna().all()


def test_accuracy_and_headline_tables_order_settings_iid_first_and_all_clients_first(tmp_path):
    # Prepare: IID, 0.1 and 1.0 with all clients, and 0.1 with half of them sampled
    final = final_table(rounds_table())
    frames = [final]
    for alpha, participation in ((1.0, 1.0), (0.1, 0.5)):
        other = final[final["alpha"] == 0.1].copy()
        other["alpha"], other["participation"] = alpha, participation
        other["run_id"] = other["run_id"] + f"-{alpha}-{participation}"
        frames.append(other)
    final = pd.concat(frames, ignore_index=True)

    # Execute
    table = assert_figure_files(accuracy_table_figure(final, "digits", "cnn_small", tmp_path / "table"))
    headline = assert_figure_files(headline_table_figure(final, "digits", "cnn_small", tmp_path / "headline"))

    # Assert: as the panels of the other figures (common.setting_panels) order them
    from fedscape.report.figures.accuracy import _column_order

    assert _column_order(table) == ["IID\nall clients", "α=1\nall clients", "α=0.1\nall clients",
                                    "α=0.1\n50% sampled"]
    rows = list(dict.fromkeys(headline["row"]))
    assert rows[0].startswith("IID") and rows[-1].endswith("50% sampled")


def test_participations_that_round_alike_keep_cells_of_their_own(tmp_path):
    # Prepare: the runs at 1.0, 0.125 (FedAlign's 1 of 8 clients) and 0.12 of the clients; 0.125 labelled 12% merged
    # with 0.12 in one cell
    final = final_table(rounds_table())
    others = [final.assign(participation=p, run_id=final["run_id"] + f"-{p}") for p in (0.125, 0.12)]
    final = pd.concat([final, *others], ignore_index=True)

    # Execute
    table = assert_figure_files(accuracy_table_figure(final, "digits", "cnn_small", tmp_path / "table"))
    headline = assert_figure_files(headline_table_figure(final, "digits", "cnn_small", tmp_path / "headline"))

    # Assert
    shares = ("all clients", "12.5% sampled", "12% sampled")
    assert sorted(table["column"]) == sorted(f"{a}\n{p}" for a in ("IID", "α=0.1") for p in shares)
    assert sorted(headline["row"]) == sorted(f"{a} · {p}" for a in ("IID", "α=0.1") for p in shares)


@pytest.mark.parametrize("draw", [accuracy_table_figure, headline_table_figure], ids=["table", "headline"])
def test_run_groups_labelled_alike_are_refused_naming_both(tmp_path, draw):
    # Prepare: algorithm labels `fedavg` and `FedAvg`, both shown as FedAvg
    final = final_table(rounds_table())
    final = pd.concat([final, final.assign(algorithm="FedAvg", run_id=final["run_id"] + "-b")], ignore_index=True)

    # Execute
    with pytest.raises(ValueError, match="the run groups algorithm 'fedavg' and algorithm 'FedAvg' have the same "
                                         "labels .*'FedAvg"):
        draw(final, "digits", "cnn_small", tmp_path / "table")

    # Assert: nothing drawn
    assert list(tmp_path.iterdir()) == []


def split_in_two(final: pd.DataFrame, field: str, first, second) -> pd.DataFrame:
    """`final` with its alpha=0.1 runs as two run groups: at `first` and a copy at `second` of `field`."""
    part = final[final["alpha"] == 0.1]
    return pd.concat([final.drop(index=part.index), part.assign(**{field: first}),
                      part.assign(**{field: second}, run_id=part["run_id"] + "-b")], ignore_index=True)


@pytest.mark.parametrize(("draw", "field", "values", "refused"), [
    (accuracy_by_init_figure, "algorithm", ("fedavg", "FedAvg"), "the by-init accuracy figure's panels: the run "
     "groups algorithm 'FedAvg' and algorithm 'fedavg' have the same label ('FedAvg')"),
    (accuracy_by_init_figure, "alpha", (0.1234567, 0.1234568), "the by-init accuracy figure's legend: the run groups "
     "alpha 0.1234568 and alpha 0.1234567 have the same label ('α=0.123457')"),
    (ranking_figure, "algorithm", ("fedavg", "FedAvg"), "the ranking figure's legend: the run groups algorithm "
     "'FedAvg' and algorithm 'fedavg' have the same label ('FedAvg')"),
    (ranking_figure, "alpha", (0.1234567, 0.1234568), "the ranking figure's panels: the run groups alpha 0.1234568 "
     "and alpha 0.1234567 have the same label ('α=0.123457')"),
    (accuracy_by_init_figure, "algorithm", ("fedavg", "fedprox"), None),
    (accuracy_by_init_figure, "alpha", (0.12, 0.125), None),
    (ranking_figure, "algorithm", ("fedavg", "fedprox"), None),
    (ranking_figure, "alpha", (0.12, 0.125), None),
], ids=["by-init-algorithm", "by-init-alpha", "ranking-algorithm", "ranking-alpha", "by-init-algorithms",
        "by-init-alphas", "ranking-algorithms", "ranking-alphas"])
def test_figures_refuse_run_groups_labelled_alike_naming_both(tmp_path, draw, field, values, refused):
    # Prepare: the alpha=0.1 groups split in two, labelled alike (`fedavg` and `FedAvg` both FedAvg, alphas both
    # α=0.123457) or not
    final = split_in_two(final_table(rounds_table()), field, *values)

    # Execute
    if refused:
        with pytest.raises(ValueError) as caught:
            draw(final, "digits", "cnn_small", tmp_path / "figure")
    else:
        data = assert_figure_files(draw(final, "digits", "cnn_small", tmp_path / "figure"))

    # Assert: refused before anything is drawn, or every group drawn
    if refused:
        assert str(caught.value) == f"{refused}, so one would hide the other; rename one of them"
        assert list(tmp_path.iterdir()) == []
    else:
        assert set(data[field]) >= set(values)


@pytest.mark.parametrize(("fedprox_seed_2", "bold"), [
    # FedProx diverged on the hard seed: 85.0 over the other two, which FedAvg tops with 90.0
    ((0.10, "diverged"), "76.7 ± 23.1"),
    ((0.70, "ok"), "80.0 ± 8.7"),
], ids=["lost-hard-seed", "all-seeds"])
def test_the_accuracy_tables_best_row_is_the_best_over_the_seeds_its_rivals_have(tmp_path, monkeypatch,
                                                                                  fedprox_seed_2, bold):
    # Prepare
    from fedscape.report.figures import accuracy as accuracy_figures

    final = hard_seed_final()
    final.loc[(final["algorithm"] == "fedprox") & (final["seed"] == 2), ["test_acc", "status"]] = fedprox_seed_2
    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    accuracy_table_figure(final, "digits", "cnn_small", tmp_path / "table")

    # Assert
    (ax,) = drawn["fig"].axes
    assert [t.get_text() for t in ax.texts if t.get_fontweight() == "bold"] == [bold]


@pytest.mark.parametrize(("n_seeds", "note"), [
    ([3, 3], ", mean ± std over 3 seeds"),
    ([2, 3, 0], ", mean ± std over 2-3 seeds (± where 2 or more)"),
    ([1, 0], ", one seed"),
    ([0, 0], ", no seed that did not diverge"),
], ids=["three", "lost-seeds", "one", "none"])
def test_a_tables_title_says_over_how_many_seeds_its_cells_are(n_seeds, note):
    assert seeds_note(pd.Series(n_seeds)) == note


def test_headline_table_figure_shows_only_computed_metrics(tmp_path):
    final = final_table(two_inits_two_algorithms())
    final.loc[final["alpha"] == math.inf, "lambda_max"] = 5.0
    final.loc[final["alpha"] == math.inf, "hd"] = 0.9

    paths = headline_table_figure(final, "digits", "cnn_small", tmp_path / "headline")

    data = assert_figure_files(paths)
    assert set(data["metric"]) == {"test_acc", "lambda_max", "hd"}
    # only the analysed groups (the IID ones) are rows; algorithm and init vary among them, alpha does not
    assert set(data["row"]) == {"FedAvg · random init", "FedAvg · pretrained init", "FedProx · random init",
                                "FedProx · pretrained init"}
    acc = data[(data["metric"] == "test_acc") & (data["row"] == "FedAvg · random init")].iloc[0]
    assert acc["mean"] == pytest.approx(100 * np.mean([0.91, 0.93, 0.95]))
    assert (data[data["metric"] == "lambda_max"]["mean"] == 5.0).all()


def test_the_headline_figure_shows_an_infinite_barrier_as_inf(tmp_path, monkeypatch):
    from fedscape.report.figures import accuracy as accuracy_figures

    # Prepare: one group's barriers to IID overflowed (+inf), another's were not computed (NaN)
    final = final_table(two_inits_two_algorithms())
    final["barrier_to_iid_loss"] = 0.5
    final.loc[(final["algorithm"] == "fedprox") & (final["init"] == "random"), "barrier_to_iid_loss"] = math.inf
    final.loc[(final["algorithm"] == "fedprox") & (final["init"] == "pretrained"), "barrier_to_iid_loss"] = math.nan
    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    paths = headline_table_figure(final, "digits", "cnn_small", tmp_path / "headline")

    # Assert: the overflowed group's mean is inf (not left out, not the other seeds'), its cells read inf
    data = assert_figure_files(paths)
    barrier = data[data["metric"] == "barrier_to_iid_loss"].set_index("row")["mean"]
    overflowed = barrier.index.str.startswith("FedProx · random init")
    assert overflowed.any() and (barrier[overflowed] == math.inf).all()
    assert (barrier[barrier.index.str.startswith("FedAvg")] == 0.5).all()
    (ax,) = drawn["fig"].axes
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("inf") == overflowed.sum()


def test_headline_table_without_analyses_has_accuracy_only():
    table = headline_table(final_table(rounds_table()))

    assert set(table["metric"]) == {"test_acc"}
    assert set(table["row"]) == {"IID", "α=0.1"}  # only alpha varies


def test_figures_and_summary_leave_out_the_same_diverged_seed(tmp_path):
    # Prepare: seed 2 of alpha = 0.1 diverged at round 2 (its finite accuracy stays in final.csv)
    rounds = rounds_table()
    rid = run_id("0.1", 2)
    rounds = rounds[~((rounds["run_id"] == rid) & (rounds["round"] == 3))].copy()
    rounds.loc[(rounds["run_id"] == rid) & (rounds["round"] == 2), "status"] = "diverged"
    final = final_table(rounds)
    expected = summary_table(final).set_index("alpha").loc[0.1, "test_acc_mean"]

    # Execute
    headline = headline_table(final)
    points = assert_figure_files(accuracy_by_init_figure(final, "digits", "cnn_small", tmp_path / "by_init"))

    # Assert: the headline table (in %) and the bars use the two healthy seeds, as summary.csv does
    row = headline[(headline["metric"] == "test_acc") & (headline["alpha"] == 0.1)].iloc[0]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(100 * expected)
    bar = points[points["alpha"] == 0.1].iloc[0]
    assert bar["n_seeds"] == 2 and bar["mean"] == pytest.approx(expected)


def test_accuracy_by_init_draws_a_diverged_seed_apart_and_says_which(tmp_path, monkeypatch):
    from fedscape.report.figures import accuracy as accuracy_figures

    # Prepare: alpha 0.1's seed 2 diverged at round 2, its last finite model at chance (0.10) in final.csv
    rounds = rounds_table()
    rid = run_id("0.1", 2)
    rounds = rounds[~((rounds["run_id"] == rid) & (rounds["round"] == 3))].copy()
    rounds.loc[(rounds["run_id"] == rid) & (rounds["round"] == 2), "status"] = "diverged"
    final = final_table(rounds)
    final.loc[final["run_id"] == rid, "test_acc"] = 0.10
    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    points = assert_figure_files(accuracy_by_init_figure(final, "digits", "cnn_small", tmp_path / "by_init"))

    # Assert: the CSV names the diverged seed, out of the mean; the drawing marks it with a cross (in %), not a dot
    cell = points[points["alpha"] == 0.1].iloc[0]
    assert cell["seeds"] == "0 1 2" and str(cell["diverged"]) in ("2", "2.0")
    assert cell["n_seeds"] == 2 and cell["mean"] == pytest.approx(np.mean([0.40, 0.52]))
    assert points.loc[points["alpha"] == math.inf, "diverged"].isna().all()
    (ax,) = [ax for ax in drawn["fig"].axes if ax.lines]
    dots = [y for line in ax.lines if line.get_marker() == "o" for y in line.get_ydata()]
    crosses = [y for line in ax.lines if line.get_marker() == "x" for y in line.get_ydata()]
    assert crosses == [10.0] and 10.0 not in dots and len(dots) == 5
    labels = [t.get_text() for legend in drawn["fig"].legends for t in legend.get_texts()]
    assert "diverged seed\n(not in the mean)" in labels


def test_accuracy_by_init_without_a_diverged_seed_has_no_cross(tmp_path, monkeypatch):
    from fedscape.report.figures import accuracy as accuracy_figures

    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    points = assert_figure_files(accuracy_by_init_figure(final_table(rounds_table()), "digits", "cnn_small",
                                                         tmp_path / "by_init"))

    assert points["diverged"].isna().all()
    assert not [line for ax in drawn["fig"].axes for line in ax.lines if line.get_marker() == "x"]
    (legend,) = drawn["fig"].legends  # the partitions only


def _by_init_axes(final, column, base_path, monkeypatch):
    """The y limits and the diverged seeds' cross lines of the accuracy-by-init figure of `final` (one panel)."""
    from fedscape.report.figures import accuracy as accuracy_figures

    drawn = {}
    save = accuracy_figures.save_figure
    monkeypatch.setattr(accuracy_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    accuracy_by_init_figure(final, "digits", "cnn_small", base_path, column=column)
    (ax,) = [ax for ax in drawn["fig"].axes if ax.get_visible()]
    return ax.get_ylim(), [line for line in ax.lines if line.get_marker() == "x"]


# alpha 0.1's seeds 0-2 close together, seed 3 diverged: its accuracy near chance, or a huge loss
TIGHT_ACC = {("iid", 0): 0.91, ("iid", 1): 0.93, ("iid", 2): 0.95,
             ("0.1", 0): 0.80, ("0.1", 1): 0.81, ("0.1", 2): 0.82, ("0.1", 3): 0.83}


@pytest.mark.parametrize(("column", "value", "edge"), [("test_acc", 0.10, "bottom"), ("test_loss", 1e6, "top")])
def test_a_diverged_seed_leaves_the_range_to_the_others_and_is_drawn_at_its_edge(tmp_path, monkeypatch, column,
                                                                                    value, edge):
    # Prepare: the same runs with and without the diverged seed
    final = final_table(rounds_table(final_acc=TIGHT_ACC))
    diverged = final["run_id"] == run_id("0.1", 3)
    final.loc[diverged, ["status", column]] = ["diverged", value]

    # Execute
    (low, high), crosses = _by_init_axes(final, column, tmp_path / "by_init", monkeypatch)
    (low_without, high_without), no_crosses = _by_init_axes(final[~diverged], column, tmp_path / "without", monkeypatch)

    # Assert: the range is that of the seeds that count (with matplotlib's margin), the cross at the edge its value
    # (an accuracy drawn in %) lies beyond, its whole marker drawn; the CSV keeps the value
    assert (low, high) == (low_without, high_without) and not no_crosses
    assert not low <= value * (100 if column == "test_acc" else 1) <= high
    (cross,) = crosses
    assert list(cross.get_ydata()) == [low if edge == "bottom" else high] and not cross.get_clip_on()
    points = pd.read_csv(tmp_path / "by_init.csv")
    assert f"{value:.6g}" in points.loc[points["alpha"] == 0.1, "values"].iloc[0].split()


def test_where_every_seed_diverged_the_crosses_set_the_range(tmp_path, monkeypatch):
    # Prepare: every seed of the figure diverged, at accuracies 0.10 to 0.25
    final = final_table(rounds_table())
    final["status"] = "diverged"
    final["test_acc"] = np.linspace(0.10, 0.25, len(final))

    # Execute
    (low, high), crosses = _by_init_axes(final, "test_acc", tmp_path / "by_init", monkeypatch)

    # Assert: every cross drawn at its own value (in %), within the range
    drawn = sorted(y for line in crosses for y in line.get_ydata())
    assert drawn == pytest.approx(sorted(100 * final["test_acc"]))
    assert low < 10 and 25 < high < 50


def test_the_headline_figure_counts_the_hessian_at_init_once():
    # Prepare: the three IID seeds share one round-0 estimate
    final = final_table(rounds_table())
    final.loc[final["alpha"] == math.inf, "lambda_max_init"] = 15.5

    # Execute
    table = headline_table(final)

    # Assert: one value, no spread to print as "± 0"; the title counts the seeds of the other cells
    row = table[table["metric"] == "lambda_max_init"].iloc[0]
    assert row["n_seeds"] == 1 and row["mean"] == 15.5 and math.isnan(row["std"])
    own = table.loc[table["metric"] != "lambda_max_init", "n_seeds"]
    assert own.min() == own.max() == 3
    assert headline_seeds_note(table) == ", mean ± std over 3 seeds"


def test_cost_figure(tmp_path):
    cost = pd.DataFrame([
        {"dataset": "digits", "model": "cnn_small", "algorithm": a, "algorithm_name": a, "device": "cpu",
         "device_name": "cpu (x86_64, 2 threads)", "num_runs": 3, "num_rounds": 30, "median_seconds_per_round": s,
         "peak_mem_mb": m, "seconds_vs_fedavg": s / base, "peak_mem_vs_fedavg": m / 400.0, "alpha": 0.1,
         "num_clients": clients, "participation": 1.0, "local_epochs": 2, "batch_size": 16}
        for a, s, m, clients, base in (("fedavg", 1.5, 400.0, 16, 1.5), ("moon", 4.4, 650.0, 16, 1.5),
                                       ("fedalign", 1.8, 420.0, 16, 1.5), ("fedavg", 3.0, 400.0, 32, 3.0))
    ])

    paths = cost_figure(cost, "digits", "cnn_small", tmp_path / "cost")

    data = assert_figure_files(paths)
    assert data["algorithm"].tolist() == ["fedalign", "fedavg", "fedavg", "moon"]
    assert data["num_clients"].tolist() == [16, 16, 32, 16]  # one bar per algorithm and setting
    assert data.loc[data["algorithm"] == "moon", "seconds_vs_fedavg"].iloc[0] == pytest.approx(4.4 / 1.5)


def test_cost_figure_labels_tell_local_work_apart(tmp_path):
    cost = pd.DataFrame([
        {"dataset": "digits", "model": "cnn_small", "algorithm": a, "algorithm_name": "fedavg", "device": "cpu",
         "device_name": "cpu", "num_runs": 1, "num_rounds": 5, "median_seconds_per_round": s, "peak_mem_mb": 400.0,
         "seconds_vs_fedavg": 1.0, "peak_mem_vs_fedavg": 1.0, "alpha": 0.1, "num_clients": 8, "participation": 1.0,
         "local_epochs": epochs, "batch_size": 16, "local_steps": steps, "local_work": text}
        for a, s, epochs, steps, text in (("fedavg", 1.0, 2, None, "2 epochs"),
                                           ("fedavg_s10", 2.0, None, 10, "10 steps"),
                                           ("fedavg_u", 1.5, None, None, "steps uniform in 1..9, drawn every round"))
    ])

    data = assert_figure_files(cost_figure(cost, "digits", "cnn_small", tmp_path / "cost"))

    assert sorted(data["local_work"]) == ["10 steps", "2 epochs", "steps uniform in 1..9, drawn every round"]
    row = cost.iloc[2]
    assert cost_figures._cost_label(row, ["local_work"]) == "fedavg_u · steps uniform in 1..9, drawn every round"


def test_cost_figure_bars_of_one_label_in_two_precisions_are_told_apart(tmp_path):
    # Prepare: one label's runs in fp32 and bf16 (a resumed run's attempts, or a label's own training.precision)
    cost = pd.DataFrame([
        {"dataset": "digits", "model": "cnn_small", "algorithm": "fedavg", "algorithm_name": "fedavg", "device": "cuda",
         "device_name": "NVIDIA H200", "num_runs": 1, "num_rounds": 5, "median_seconds_per_round": s,
         "peak_mem_mb": 400.0, "seconds_vs_fedavg": 1.0, "peak_mem_vs_fedavg": 1.0, "alpha": 0.1, "num_clients": 8,
         "participation": 1.0, "local_epochs": 2, "batch_size": 16, "local_steps": None, "local_work": "2 epochs",
         "execution": "vectorized", "precision": precision}
        for s, precision in ((1.0, "fp32"), (0.6, "bf16"))])

    # Execute
    data = assert_figure_files(cost_figure(cost, "digits", "cnn_small", tmp_path / "cost"))

    # Assert: two bars, each labelled with its precision
    assert sorted(data["precision"]) == ["bf16", "fp32"]
    assert [cost_figures._cost_label(row, ["precision"]) for _, row in cost.iterrows()] == ["FedAvg · fp32",
                                                                                           "FedAvg · bf16"]


@pytest.mark.parametrize("draw", [
    lambda df, p: curves_figure(df, "cifar10", "convnet", "accuracy", p),
    lambda df, p: accuracy_by_init_figure(final_table(df), "cifar10", "convnet", p),
    lambda df, p: accuracy_table_figure(final_table(df), "cifar10", "convnet", p),
    lambda df, p: headline_table_figure(final_table(df), "cifar10", "convnet", p),
    lambda df, p: cost_figure(df.assign(device_name="cpu"), "cifar10", "convnet", p),
], ids=["curves", "by_init", "table", "headline", "cost"])
def test_figures_of_an_absent_dataset_model_still_write_valid_files(tmp_path, draw):
    paths = draw(rounds_table(), tmp_path / "empty")

    data = assert_figure_files(paths, min_rows=0, min_png=1000)
    assert len(data.columns) > 0 and len(data) == 0


def test_curves_figure_rejects_unknown_metric(tmp_path):
    with pytest.raises(ValueError, match="accuracy"):
        curves_figure(rounds_table(), "digits", "cnn_small", "acuracy", tmp_path / "x")


# -- the shared style --------------------------------------------------------------------------------
def test_label_run_uses_one_order_and_format_everywhere():
    fields = {"seed": 1, "alpha": 0.1, "init": "pretrained", "algorithm": "fedadam", "participation": 0.5,
              "num_clients": 50}

    assert label_run(fields) == "FedAdam · pretrained init · α=0.1 · M=50 · 50% sampled · seed 1"
    assert label_run(fields, ["alpha", "algorithm"]) == "FedAdam · α=0.1"
    assert label_run({"alpha": math.inf}) == label_run({"alpha": "iid"}) == "IID"
    assert label_run({"algorithm": "my_variant"}) == "my_variant"


def test_alpha_order_and_colours_are_stable():
    alphas = [0.1, "iid", 1.0, 0.5]

    ordered = setting_order(alphas)
    style = RunStyle(pd.DataFrame({"alpha": [math.inf, 0.1, 1.0, 0.5], "init": "random", "algorithm": "fedavg"}))

    assert [alpha_label(a) for a in ordered] == ["IID", "α=1", "α=0.5", "α=0.1"]
    assert [style.color(a) for a in ("iid", 1.0, 0.5, 0.1)] == list(PALETTE[:4])
    assert style.color(math.inf) == style.color("iid")


def test_baselines_take_the_plainest_styles():
    runs = pd.DataFrame({"alpha": 1.0, "init": ["iid_warmup", "pretrained", "random"],
                         "algorithm": ["fedprox", "fedavg", "moon"]})

    style = RunStyle(runs)

    assert style.linestyle("random") == "-" and style.linestyle("iid_warmup") == "--"
    assert style.marker("fedavg") == "o" and style.marker("fedprox") != "o"


def test_palette_is_okabe_ito():
    assert set(PALETTE) == {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"}


@pytest.mark.parametrize(("participation", "label"), [
    (1.0, "all clients"), (0.5, "50% sampled"), (0.125, "12.5% sampled"), (0.12, "12% sampled"),
    (0.005, "0.5% sampled"), (0.999, "99.9% sampled"), (0.3333333, "33.33333% sampled"),
])
def test_a_participation_label_keeps_every_digit_of_its_fraction(participation, label):
    assert label_run({"participation": participation}) == label


def test_varying_keys():
    df = pd.DataFrame({"alpha": [1.0, 0.1], "init": ["random", "random"], "seed": [0, 1]})

    assert varying_keys(df) == ["alpha", "seed"]


@pytest.mark.parametrize("clip", [None, 5.0])
def test_log_levels_are_geometric_within_the_finite_range(clip):
    values = np.array([[0.5, 1.0], [np.inf, 20.0], [np.nan, 2.0]])

    levels = log_levels(values, n=7, clip=clip)

    assert len(levels) == 7
    assert levels[0] == pytest.approx(0.5)
    assert levels[-1] == pytest.approx(20.0 if clip is None else 5.0)
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0])


def test_log_levels_of_a_constant_surface_are_increasing():
    levels = log_levels(np.full((3, 3), 2.0), n=5)

    assert np.all(np.diff(levels) > 0)


def test_save_figure_writes_pdf_png_and_data_beside_each_other(tmp_path):
    fig = empty_figure("nothing")
    data = pd.DataFrame({"x": [1, 2], "y": [3.0, np.nan]})

    paths = save_figure(fig, tmp_path / "sub" / "figure.pdf", data)

    assert {p.name for p in paths.values()} == {"figure.pdf", "figure.png", "figure.csv"}
    back = assert_figure_files(paths, min_png=1000)
    assert back["x"].tolist() == [1, 2] and math.isnan(back["y"][1])


def test_save_figure_outputs_needs_one_base_name(tmp_path):
    from fedscape.outputs.style import save_figure_outputs

    outputs = {ext: tmp_path / f"fig.{ext}" for ext in ("png", "pdf", "csv")}
    assert save_figure_outputs(empty_figure("x"), outputs, pd.DataFrame({"x": [1]})) == outputs
    with pytest.raises(ValueError, match="one base"):
        save_figure_outputs(empty_figure("x"), {**outputs, "csv": tmp_path / "other.csv"}, pd.DataFrame())


def test_heatmap_colour_maps_are_colour_blind_safe_and_grey_where_missing():
    from matplotlib.colors import to_hex

    from fedscape.outputs.style import MISSING_COLOR, OKABE_ITO, diverging_cmap, sequential_cmap

    div, seq = diverging_cmap(), sequential_cmap()
    assert to_hex(div(0.0)) == OKABE_ITO["blue"].lower() and to_hex(div(1.0)) == OKABE_ITO["vermillion"].lower()
    assert to_hex(div(0.5)) == "#ffffff" or np.allclose(div(0.5)[:3], 1.0, atol=0.01)
    assert seq.name.startswith("viridis")
    assert to_hex(div(np.nan)) == to_hex(seq(np.nan)) == MISSING_COLOR


def test_final_table_unknown_runs_in_analyses_are_ignored():
    rounds = rounds_table()
    hessian = pd.DataFrame([{"run_id": run_id("iid", 7), "round": 3, "data": "all", "lambda_1": 1.0, "trace": 2.0}])

    final = final_table(rounds, hessian=hessian)

    assert len(final) == 6 and final["lambda_max"].isna().all()


# -- ranking of algorithms per init (Nguyen et al. 2022: pre-training changes the ranking) --------------
def ranking_final() -> pd.DataFrame:
    """final.csv rows at alpha 0.1: three algorithms x two inits x three seeds; one diverged run."""
    acc = {  # (init, algorithm) -> test accuracy of seeds 0, 1, 2
        ("random", "fedavg"): (0.80, 0.70, 0.90),   # mean 0.80: best under random, but 2nd on seed 1
        ("random", "fedprox"): (0.75, 0.72, 0.81),  # mean 0.76
        ("random", "scaffold"): (0.50, 0.55, 0.60),
        ("pretrained", "fedavg"): (0.90, 0.91, 0.92),
        ("pretrained", "fedprox"): (0.93, 0.94, 0.95),
        ("pretrained", "scaffold"): (0.99, 0.96, 0.97),  # seed 0 diverged: its 0.99 must not count
    }
    rows = [{"dataset": "digits", "model": "cnn_small", "init": init, "algorithm": algorithm, "alpha": 0.1,
             "num_clients": 10, "participation": 1.0, "seed": seed, "test_acc": value,
             "status": "diverged" if (init, algorithm, seed) == ("pretrained", "scaffold", 0) else "ok"}
            for (init, algorithm), values in acc.items() for seed, value in enumerate(values)]
    return pd.DataFrame(rows)


def test_ranking_table_ranks_by_mean_over_the_seeds_every_algorithm_has():
    # Execute
    table = ranking_table(ranking_final()).set_index(["init", "algorithm"])

    # Assert
    assert list(ranking_table(ranking_final()).columns) == RANKING_COLUMNS
    assert table.loc[("random", "fedavg"), "rank"] == 1
    assert table.loc[("random", "fedprox"), "rank"] == 2
    assert table.loc[("random", "scaffold"), "rank"] == 3
    # under pretrained, SCAFFOLD's seed 0 diverged: its 0.99 counts nowhere, and every algorithm is ranked by its mean
    # over seeds 1 and 2 (`rank_mean`), while `mean` stays each algorithm's own, over its seeds that did not diverge
    assert table.loc[("pretrained", "scaffold"), "rank"] == 1  # 0.96, 0.97 against 0.94, 0.95 and 0.91, 0.92
    assert table.loc[("pretrained", "scaffold"), ["mean", "rank_mean"]].tolist() == pytest.approx([0.965, 0.965])
    assert table.loc[("pretrained", "scaffold"), "n_seeds"] == 2
    assert table.loc[("pretrained", "fedavg"), ["mean", "rank_mean"]].tolist() == pytest.approx([0.91, 0.915])
    assert table.loc[("pretrained", "fedavg"), "rank"] == 3
    # the seed interval of the rank: FedAvg is 2nd on seed 1 under random
    assert (table.loc[("random", "fedavg"), "rank_seed_min"],
            table.loc[("random", "fedavg"), "rank_seed_max"]) == (1, 2)
    assert (table.loc[("random", "scaffold"), "rank_seed_min"],
            table.loc[("random", "scaffold"), "rank_seed_max"]) == (3, 3)
    # ... over the seeds where all three have a value: FedProx is 2nd on seeds 1 and 2 under pretrained, not 1st on
    # seed 0, where SCAFFOLD diverged and it would rank among two
    assert (table.loc[("pretrained", "fedprox"), "rank_seed_min"],
            table.loc[("pretrained", "fedprox"), "rank_seed_max"]) == (2, 2)
    assert (table["n_algorithms"] == 3).all()


def hard_seed_final() -> pd.DataFrame:
    """final.csv rows of two algorithms over three seeds (review t5): FedProx diverged on seed 2, the hard one."""
    runs = {"fedavg": ((0.90, "ok"), (0.90, "ok"), (0.50, "ok")),
            "fedprox": ((0.85, "ok"), (0.85, "ok"), (0.10, "diverged"))}
    return pd.DataFrame([{"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": algorithm,
                          "alpha": 0.1, "num_clients": 10, "participation": 1.0, "seed": seed, "test_acc": value,
                          "status": status}
                         for algorithm, seeds in runs.items() for seed, (value, status) in enumerate(seeds)])


@pytest.mark.parametrize("final", [hard_seed_final, ranking_final], ids=["hard-seed", "three-algorithms"])
def test_a_rank_lies_within_its_rank_range_over_seeds(final):
    # Execute
    table = ranking_table(final())

    # Assert: an algorithm that lost its hard seed does not win by the loss (FedProx: 0.85 over seeds 0-1 against
    # FedAvg's 0.767 over 0-2, but second on both seeds they share)
    assert ((table["rank_seed_min"] <= table["rank"]) & (table["rank"] <= table["rank_seed_max"])).all()


def test_an_algorithm_that_lost_its_hard_seed_is_ranked_over_the_seeds_both_have():
    # Execute
    table = ranking_table(hard_seed_final()).set_index("algorithm")

    # Assert: the mean columns keep each algorithm's own seeds; the rank is by the paired mean
    assert table[["n_seeds", "rank_seed_n"]].to_dict("index") == {"fedavg": {"n_seeds": 3, "rank_seed_n": 2},
                                                                  "fedprox": {"n_seeds": 2, "rank_seed_n": 2}}
    assert table["mean"].tolist() == pytest.approx([(0.9 + 0.9 + 0.5) / 3, 0.85])
    assert table["rank_mean"].tolist() == pytest.approx([0.90, 0.85])
    assert table["rank"].tolist() == [1, 2]


def test_without_a_seed_every_algorithm_has_the_ranks_are_by_each_ones_own_mean(tmp_path, monkeypatch):
    # Prepare: FedAvg ran seed 0 only, FedProx seed 1 only
    final = hard_seed_final()
    final = final[final["seed"] == final["algorithm"].map({"fedavg": 0, "fedprox": 1})]
    drawn = _drawn_ranking(monkeypatch)

    # Execute
    data = assert_figure_files(ranking_figure(final, "digits", "cnn_small", tmp_path / "ranking.png"))

    # Assert
    assert data.set_index("algorithm")[["rank", "rank_mean", "rank_seed_n"]].to_dict("index") == {
        "fedavg": {"rank": 1, "rank_mean": 0.90, "rank_seed_n": 0},
        "fedprox": {"rank": 2, "rank_mean": 0.85, "rank_seed_n": 0}}
    assert drawn["fig"].get_suptitle().endswith(
        "(ranks by each algorithm's mean over its own seeds (one seed): no seed has every algorithm)")


def _drawn_ranking(monkeypatch) -> dict:
    """{"fig": the figure} of the next ranking figure drawn."""
    from fedscape.report.figures import algorithms as algorithm_figures

    drawn = {}
    save = algorithm_figures.save_figure
    monkeypatch.setattr(algorithm_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    return drawn


def test_the_ranking_labels_each_point_with_the_mean_it_is_ranked_by(tmp_path, monkeypatch):
    # Prepare
    drawn = _drawn_ranking(monkeypatch)

    # Execute
    ranking_figure(hard_seed_final(), "digits", "cnn_small", tmp_path / "ranking.png")

    # Assert: FedAvg's 90.0% above FedProx's 85.0% (not its own mean 76.7%)
    (ax,) = [ax for ax in drawn["fig"].axes if ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == ["85.0%", "90.0%"]


RANKED = {"random": frozenset({"fedavg", "fedprox"}), "warmup": frozenset({"fedavg", "fedprox"}),
          "pretrained": frozenset({"fedavg"})}


@pytest.mark.parametrize(("inits", "groups"), [
    (["random", "warmup"], [[0, 1]]),                       # same algorithms ranked: one line
    (["random", "pretrained", "warmup"], [[0], [1], [2]]),  # FedAvg alone under pretrained: rank 1 of 1
    (["random", "warmup", "pretrained"], [[0, 1], [2]]),
    (["pretrained"], [[0]]),
])
def test_ranks_are_joined_only_across_inits_that_rank_the_same_algorithms(inits, groups):
    assert joined_groups(inits, RANKED) == groups


def test_a_ranking_of_inits_with_other_algorithms_keeps_every_rank_in_its_table(tmp_path):
    # Prepare: FedAvg alone from the pretrained init (as the default config runs it)
    final = ranking_final()
    final = final[(final["init"] == "random") | (final["algorithm"] == "fedavg")]

    # Execute
    data = assert_figure_files(ranking_figure(final, "digits", "cnn_small", tmp_path / "ranking.png"))

    # Assert
    ranks = data.set_index(["init", "algorithm"])
    assert ranks.loc[("pretrained", "fedavg"), ["rank", "n_algorithms"]].tolist() == [1, 1]
    assert ranks.loc[("random", "fedavg"), ["rank", "n_algorithms"]].tolist() == [1, 3]


def test_ranking_with_one_seed_has_no_rank_interval_and_the_figure_is_written(tmp_path):
    # Prepare
    final = ranking_final()
    final = final[final["seed"] == 1]

    # Execute
    paths = ranking_figure(final, "digits", "cnn_small", tmp_path / "ranking.png")

    # Assert
    data = assert_figure_files(paths)
    assert data[["rank_seed_min", "rank_seed_max", "ci95_low"]].isna().all().all()
    assert sorted(data[data["init"] == "random"]["rank"]) == [1, 2, 3]
    assert data.set_index(["init", "algorithm"]).loc[("random", "fedprox"), "rank"] == 1  # 0.72 > 0.70 on seed 1


@pytest.mark.parametrize(("lost", "expected"), [
    # (status, test_acc) of pretrained SCAFFOLD's seeds: one diverged, all diverged, none with a finite value
    ({0: ("diverged", 0.99)}, {"n_seeds": 2, "rank_seed_n": 2, "n_algorithms": 3}),
    ({s: ("diverged", 0.99) for s in range(3)}, {"n_seeds": None, "rank_seed_n": 3, "n_algorithms": 2}),
    ({s: ("ok", math.nan) for s in range(3)}, {"n_seeds": None, "rank_seed_n": 3, "n_algorithms": 2}),
], ids=["one-diverged", "all-diverged", "no-value"])
def test_ranking_table_counts_the_seeds_its_rank_range_is_over(lost, expected):
    # Prepare
    final = ranking_final().assign(status="ok")
    for seed, (status, value) in lost.items():
        row = (final["init"] == "pretrained") & (final["algorithm"] == "scaffold") & (final["seed"] == seed)
        final.loc[row, ["status", "test_acc"]] = [status, value]

    # Execute
    table = ranking_table(final).set_index(["init", "algorithm"])

    # Assert: the means are over each algorithm's seeds, the rank ranges over the seeds every ranked algorithm has;
    # an algorithm with no value is not ranked, the others rank 1..n among themselves
    pretrained = table.loc["pretrained"]
    assert pretrained["n_seeds"].get("scaffold") == expected["n_seeds"]
    assert (pretrained["rank_seed_n"] == expected["rank_seed_n"]).all()
    assert (pretrained["n_algorithms"] == expected["n_algorithms"]).all()
    assert sorted(pretrained["rank"]) == list(range(1, expected["n_algorithms"] + 1))
    assert (table.loc["random", "rank_seed_n"] == 3).all() and (table.loc["random", "n_seeds"] == 3).all()


def lose_nothing(final: pd.DataFrame) -> pd.DataFrame:
    return final.assign(status="ok")


def one_shared_seed(final: pd.DataFrame) -> pd.DataFrame:
    """The random init's runs, two seeds each, of which only seed 1 has all three algorithms."""
    return final[(final["init"] == "random") & (final["seed"] != final["algorithm"].map(
        lambda a: 2 if a == "fedavg" else 0))]


@pytest.mark.parametrize(("select", "band"), [
    # pretrained SCAFFOLD lost a seed: the pretrained means and bars are over the 2 seeds all three have
    (lambda f: f, "means and bars (rank range) over 2-3 seeds where every algorithm has a value"),
    (lose_nothing, "means and bars (rank range) over 3 seeds"),
    (lambda f: f[f["seed"] == 1], "one seed"),
    (lambda f: f[f["init"] == "pretrained"],
     "means and bars (rank range) over 2 seeds where every algorithm has a value"),
    # a setting that ran fewer seeds
    (lambda f: pd.concat([lose_nothing(f), lose_nothing(f[f["seed"] < 2]).assign(alpha=1.0)]),
     "means and bars (rank range) over 2-3 seeds"),
    # two seeds each, but only seed 1 has all three: ranked on it, no rank range
    (one_shared_seed, "means over the one seed where every algorithm has a value: no rank range"),
    # one setting with a single shared seed beside one with three
    (lambda f: pd.concat([lose_nothing(f[f["init"] == "random"]), one_shared_seed(f).assign(alpha=1.0)]),
     "means and bars (rank range) over 1-3 seeds where every algorithm has a value, no bar where one"),
], ids=["one-diverged", "all-equal", "one-seed", "bars-over-fewer", "setting-with-fewer", "one-shared-seed",
        "a-setting-with-one-shared-seed"])
def test_the_ranking_title_says_over_how_many_seeds(tmp_path, monkeypatch, select, band):
    # Prepare
    drawn = _drawn_ranking(monkeypatch)

    # Execute
    ranking_figure(select(ranking_final()), "digits", "cnn_small", tmp_path / "ranking.png")

    # Assert
    assert drawn["fig"].get_suptitle() == (
        f"digits / cnn_small: rank of each algorithm by final accuracy per initialisation ({band})")


# -- final accuracy against local work (Nguyen et al. 2022: local updates from both inits) --------------
WORK = {"fedavg": {"name": "fedavg", "local_epochs": 2}, "fedprox": {"name": "fedprox", "local_epochs": 2},
        "fedavg_e5": {"name": "fedavg", "local_epochs": 5}, "scaffold": {"name": "scaffold", "local_epochs": 1}}


def test_local_work_table_joins_labels_of_one_algorithm_by_their_local_epochs():
    # Prepare: FedAvg at 2 and 5 local epochs (two labels), FedProx at 2
    final = ranking_final()
    e5 = final[final["algorithm"] == "fedavg"].assign(algorithm="fedavg_e5", test_acc=lambda d: d["test_acc"] - 0.1)
    final = pd.concat([final, e5], ignore_index=True)

    # Execute
    table = local_work_table(final, WORK)

    # Assert
    assert list(table.columns) == LOCAL_WORK_COLUMNS
    fedavg = table[(table["algorithm_name"] == "fedavg") & (table["init"] == "random")]
    assert fedavg["local_epochs"].tolist() == [2, 5]
    assert fedavg["mean"].tolist() == pytest.approx([0.80, 0.70])
    assert fedavg["n_seeds"].tolist() == [3, 3]
    scaffold = table[(table["algorithm_name"] == "scaffold") & (table["init"] == "pretrained")].iloc[0]
    assert (scaffold["local_epochs"], scaffold["n_seeds"]) == (1, 2)  # the diverged seed left out


def test_local_work_figure_is_written_and_an_unknown_label_is_an_error(tmp_path):
    # Prepare
    final = ranking_final()

    # Execute
    data = assert_figure_files(local_work_figure(final, "digits", "cnn_small", tmp_path / "local_work.png", WORK))

    # Assert
    assert len(data) == 6
    with pytest.raises(ValueError, match=r"algorithm labels \['scaffold'\] of final.csv have no local work"):
        local_work_table(final, {k: v for k, v in WORK.items() if k != "scaffold"})


@pytest.mark.parametrize(("select", "band"), [
    (lambda f: f, "mean and 95% t-interval over 2-3 seeds"),  # pretrained SCAFFOLD lost a seed
    (lose_nothing, "mean and 95% t-interval over 3 seeds"),
    (lambda f: f[f["seed"] == 1], "one seed"),
    (lambda f: f[(f["algorithm"] != "fedavg") | (f["seed"] == 1)],
     "mean and 95% t-interval over 1-3 seeds, no interval where one"),
], ids=["one-diverged", "all-equal", "one-seed", "a-cell-of-one-seed"])
def test_the_local_work_title_says_over_how_many_seeds(tmp_path, monkeypatch, select, band):
    # Prepare
    from fedscape.report.figures import algorithms as algorithm_figures

    drawn = {}
    save = algorithm_figures.save_figure
    monkeypatch.setattr(algorithm_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))

    # Execute
    local_work_figure(select(ranking_final()), "digits", "cnn_small", tmp_path / "local_work.png", WORK)

    # Assert
    assert drawn["fig"].get_suptitle() == f"digits / cnn_small: final accuracy against local work ({band})"


def test_local_work_figure_draws_labels_in_local_steps_beside_those_in_epochs(tmp_path):
    # Prepare: FedAvg at 10 and 50 local steps, and at a drawn (unequal) work that has no single value
    final = ranking_final()
    fedavg = final[final["algorithm"] == "fedavg"]
    extra = [fedavg.assign(algorithm=label, test_acc=lambda d, k=k: d["test_acc"] - k)
             for k, label in ((0.05, "fedavg_s10"), (0.15, "fedavg_s50"), (0.2, "fedavg_u"))]
    final = pd.concat([final, *extra], ignore_index=True)
    work = {**WORK, "fedavg_s10": {"name": "fedavg", "local_epochs": None, "local_steps": 10},
            "fedavg_s50": {"name": "fedavg", "local_epochs": None, "local_steps": 50},
            "fedavg_u": {"name": "fedavg", "local_epochs": None}}

    # Execute
    data = assert_figure_files(local_work_figure(final, "digits", "cnn_small", tmp_path / "local_work.png", work))

    # Assert
    assert "fedavg_u" not in set(data["algorithm"])  # unequal work: no point on either axis
    steps = data[data["local_steps"].notna()].sort_values(["init", "local_steps"])
    assert steps["algorithm"].tolist() == ["fedavg_s10", "fedavg_s50"] * 2
    assert steps["local_epochs"].isna().all()
    assert len(data[data["local_epochs"].notna()]) == 6  # the epoch labels as before


def test_labels_of_one_algorithm_and_work_that_differ_otherwise_are_lines_of_their_own(tmp_path, monkeypatch):
    # Prepare: GradAug at 2 epochs with one seed, a variant of it at 2 epochs with three (its own band), and GradAug
    # at 5 epochs: the first and the last are one line; the variant is one of its own, never merged into it
    import matplotlib.axes

    final = ranking_final()
    fedavg = final[(final["algorithm"] == "fedavg") & (final["init"] == "random")]
    rows = [fedavg[fedavg["seed"] == 1].assign(algorithm="gradaug", test_acc=0.90),
            fedavg.assign(algorithm="gradaug_n1", test_acc=[0.45, 0.5, 0.55]),
            fedavg[fedavg["seed"] == 1].assign(algorithm="gradaug_e5", test_acc=0.95)]
    work = {"gradaug": {"name": "gradaug", "local_epochs": 2},
            "gradaug_n1": {"name": "gradaug", "local_epochs": 2, "variant": "num_subnets 1"},
            "gradaug_e5": {"name": "gradaug", "local_epochs": 5}}
    drawn, bands, plot, fill = [], [], matplotlib.axes.Axes.plot, matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, *a, **k: drawn.append(
        (list(x), list(y))) or plot(ax, x, y, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda ax, x, lo, hi, *a, **k: bands.append(
        (list(x), list(lo))) or fill(ax, x, lo, hi, *a, **k))

    # Execute
    data = assert_figure_files(local_work_figure(pd.concat(rows, ignore_index=True), "digits", "cnn_small",
                                                 tmp_path / "local_work.png", work))

    # Assert: two lines, each with its own values; the variant's band is its own
    assert sorted(drawn) == [([2], [pytest.approx(0.5)]), ([2, 5], [0.90, 0.95])]
    assert [x for x, _ in bands] == [[2]] and bands[0][1][0] < 0.5
    assert data.set_index("algorithm")["variant"].fillna("").to_dict() == {
        "gradaug": "", "gradaug_e5": "", "gradaug_n1": "num_subnets 1"}


def test_local_work_of_the_plan_names_what_a_label_sets_beside_its_work():
    # Prepare: GradAug with one sub-network, FedProx with its default mu written out and another lr
    config = copy.deepcopy(TINY)
    config["algorithms"].update({"gradaug_n1": {"name": "gradaug", "num_subnets": 1},
                                 "fedprox": {"name": "fedprox", "mu": 0.0001, "training": {"lr": 0.02,
                                                                                        "local_epochs": 3}},
                                 # the section's own lr, and how it computes and what it keeps: FedAvg all the same
                                 "fedavg_e5": {"name": "fedavg", "training": {
                                     "local_epochs": 5, "lr": TINY["training"]["lr"], "client_chunk_size": 2,
                                     "eval_batch_size": 7, "capture": "eager", "save_every": 1}}})
    config["experiments"] += [{"alpha": "iid", "init": "random", "algorithm": a}
                              for a in ("gradaug_n1", "fedprox", "fedavg_e5")]
    config = check_config(config, SCHEMA)

    # Execute
    work = report_plan.local_work(config, build_runs(config))

    # Assert: the hyperparameters off their defaults and the training overrides but the work
    assert work["gradaug_n1"]["variant"] == "num_subnets 1"
    assert work["fedprox"] == {"name": "fedprox", "local_epochs": 3, "variant": "lr 0.02"}
    assert "variant" not in work["fedavg"] and work["fedavg_e5"] == {"name": "fedavg", "local_epochs": 5}


def test_local_work_of_the_plan_takes_each_labels_training_override():
    # Prepare
    config = copy.deepcopy(TINY)
    config["algorithms"]["fedavg_e5"] = {"name": "fedavg", "training": {"local_epochs": 5}}
    config["experiments"].append({"alpha": "iid", "init": "random", "algorithm": "fedavg_e5"})
    config = check_config(config, SCHEMA)
    runs = build_runs(config)

    # Execute
    work = report_plan.local_work(config, runs)

    # Assert
    assert work["fedavg"] == {"name": "fedavg", "local_epochs": config["training"]["local_epochs"]}
    assert work["fedavg_e5"] == {"name": "fedavg", "local_epochs": 5}


@pytest.mark.parametrize(("extra", "drawn"), [
    (None, False),  # every run does the tiny config's local work: one x value per panel
    ({"local_epochs": 5}, True),
    ({"local_steps": 3}, True),
    ({"local_epochs": [1, 3, 1, 3]}, False),  # work that differs between clients is not drawn
])
def test_the_local_work_figure_is_planned_where_runs_do_more_than_one_local_work(extra, drawn):
    # Prepare: the tiny config, with a second FedAvg label of other local work where given
    config = copy.deepcopy(TINY)
    if extra is not None:
        config["algorithms"]["fedavg_other"] = {"name": "fedavg", "training": extra}
        config["experiments"].append({"alpha": "iid", "init": "random", "algorithm": "fedavg_other"})
    config = check_config(config, SCHEMA)
    runs = build_runs(config)

    # Execute
    targets = report_plan.targets(config, runs)

    # Assert: the local-work figure's files exactly where it has two x values; the other kinds always
    assert report_plan.varies_local_work(config, runs) == drawn
    kinds = {Path(t).stem for t in targets if "/accuracy/" in t}
    assert kinds == set(report_plan.ACCURACY_KINDS) - (set() if drawn else {"local_work"})



# -- the registry of accuracy figure kinds -------------------------------------------------------------
def test_the_plan_targets_the_kinds_and_metrics_of_the_registry():
    assert report_plan.ACCURACY_KINDS == tuple(ACCURACY_FIGURES) == (
        "by_init", "table", "headline", "paired", "ranking", "local_work")
    assert report_plan.CURVE_METRICS == tuple(CURVE_METRICS) == ("accuracy", "loss")


@pytest.mark.parametrize("kind", list(ACCURACY_FIGURES))
def test_every_accuracy_kind_is_drawn_from_final_csv_by_its_registered_function(tmp_path, kind):
    # Prepare: a final.csv of three algorithm labels under two inits, each label's local work
    final_csv = tmp_path / "final.csv"
    final = final_table(two_inits_two_algorithms())
    final = pd.concat([final, final[final["algorithm"] == "fedavg"].assign(algorithm="fedavg_e5")], ignore_index=True)
    final.to_csv(final_csv, index=False)
    figure, draw = accuracy_figure(kind)

    # Execute
    accuracy_figure_job(final_csv, kind, "digits", "cnn_small", tmp_path / f"{kind}.png", WORK)

    # Assert: the files of the figure, and the function is the one of the figures module the registry names
    data = assert_figure_files({ext: tmp_path / f"{kind}.{ext}" for ext in ("pdf", "png", "csv")})
    assert len(data) > 0
    module, _, name = figure.draw.partition(":")
    assert (draw.__module__, draw.__name__) == (f"fedscape.report.figures.{module}", name)
    assert figure.work == (kind == "local_work") and figure.paper


def test_an_unknown_accuracy_kind_is_refused_with_a_suggestion_before_final_csv_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"unknown accuracy figure kind 'tabel'\. Did you mean 'table'\?.* by_init"):
        accuracy_figure_job(tmp_path / "absent.csv", "tabel", "digits", "cnn_small", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_curves_and_accuracy_table_leave_out_diverged_rounds_and_runs():
    """The one rule of did_not_diverge: a diverged round (here a huge finite loss) is in no mean or count."""
    # Prepare: seed 2 of alpha 0.1 diverges at its last round with a finite but exploding loss
    rounds = rounds_table()
    last = (rounds["alpha"] == 0.1) & (rounds["seed"] == 2) & (rounds["round"] == 3)
    rounds.loc[last, ["train_loss", "status"]] = [2.29e19, "diverged"]

    # Execute
    stats = curve_statistics(rounds, "loss")
    table = accuracy_table(final_table(rounds))

    # Assert
    cell = stats[(stats["alpha"] == 0.1) & (stats["round"] == 3) & (stats["split"] == "train")].iloc[0]
    assert cell["n_seeds"] == 2 and cell["mean"] == pytest.approx(2.0 / 4)
    assert table.loc[table["alpha"] == 0.1, "n_seeds"].iloc[0] == 2
    assert table.loc[table["alpha"] == math.inf, "n_seeds"].iloc[0] == 3


# -- drawing cost: log ticks and one layout for both formats -------------------------------------------
def _log_axis(ylim: tuple[float, float]):
    from fedscape.outputs.style import pyplot

    fig, ax = pyplot().subplots()
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    return fig, ax


@pytest.mark.parametrize("ylim", [(1e-6, 1e6), (1e-6, 634.0), (1e-9, 1e-2)])
def test_bounded_log_ticks_drop_the_minor_ticks_of_a_log_axis_spanning_many_decades(ylim):
    from matplotlib.ticker import LogLocator

    from fedscape.outputs.style import LOG_MINOR_MAX_DECADES, bounded_log_ticks, pyplot

    # Prepare: matplotlib's own minor locator puts 8 ticks in each decade of views up to 10 decades wide
    fig, ax = _log_axis(ylim)
    decades = math.log10(ylim[1] / ylim[0])
    default = LogLocator(subs="auto")
    default.set_axis(ax.yaxis)
    assert decades > LOG_MINOR_MAX_DECADES

    # Execute
    bounded_log_ticks(ax.yaxis)

    # Assert: no minor ticks; the major ones (matplotlib's) stay few and the labels are untouched
    assert len(ax.yaxis.get_ticklocs(minor=True)) == 0
    assert len(default()) >= 8 * math.floor(decades) if decades <= 10 else len(default()) == 0
    assert 2 <= len(ax.yaxis.get_ticklocs()) <= 14
    pyplot().close(fig)


@pytest.mark.parametrize("ylim", [(0.05, 3.0), (1e-3, 2.5), (2.0, 9.0)])
def test_bounded_log_ticks_keep_matplotlibs_minor_ticks_of_a_narrow_log_axis(ylim):
    from matplotlib.ticker import LogLocator

    from fedscape.outputs.style import bounded_log_ticks, pyplot

    fig, ax = _log_axis(ylim)
    default = LogLocator(subs="auto")
    default.set_axis(ax.yaxis)

    bounded_log_ticks(ax.yaxis)

    assert np.array_equal(ax.yaxis.get_ticklocs(minor=True), default())
    assert len(ax.yaxis.get_ticklocs(minor=True)) >= 7
    pyplot().close(fig)


def test_bounded_log_ticks_need_a_log_axis():
    from fedscape.outputs.style import bounded_log_ticks, pyplot

    fig, ax = pyplot().subplots()
    with pytest.raises(ValueError, match="log-scaled axis; this one is 'linear'"):
        bounded_log_ticks(ax.yaxis)
    pyplot().close(fig)


@pytest.mark.parametrize("columns", [1, 3])
def test_widen_to_fit_gives_every_axes_its_width(columns):
    from fedscape.outputs.style import WIDEN_TOLERANCE_IN, category_ticks, pyplot, widen_to_fit

    # Prepare: narrow panels, each with 12 labels of two fields
    fig, axes = pyplot().subplots(1, columns, figsize=(2.0 * columns, 2.0), squeeze=False, layout="constrained")
    needs = {ax: category_ticks(ax, [f"algorithm {k} · pretrained init" for k in range(12)]) for ax in axes[0]}

    # Execute
    widen_to_fit(fig, needs)

    # Assert: each axes, laid out again, as wide as it needs (to the helper's tolerance)
    fig.get_layout_engine().execute(fig)
    widths = [ax.get_position().width * fig.get_figwidth() for ax in axes[0]]
    assert all(width >= need - WIDEN_TOLERANCE_IN for width, need in zip(widths, needs.values(), strict=True))
    assert min(needs.values()) > 2.0 * 2
    pyplot().close(fig)


def test_widen_to_fit_needs_a_layout_engine():
    from fedscape.outputs.style import pyplot, widen_to_fit

    fig, ax = pyplot().subplots(layout="none")
    with pytest.raises(ValueError, match="needs a figure with a layout engine"):
        widen_to_fit(fig, {ax: 1.0})
    pyplot().close(fig)


LONG_LABELS = [f"fedavg_variant_{k:02d} · pretrained_words init" for k in range(4)]


def _label_panels(n: int, labels: list[str] = LONG_LABELS):
    """A `draw(ncols)` for wrap_to_fit: n panels 2 inches wide, each with `labels` on its x axis."""
    from fedscape.outputs.style import category_ticks, facet_grid

    def draw(ncols: int):
        fig, facets = facet_grid(n, ncols=ncols, size=(2.0, 2.0), sharey=False, sharex=False)
        return fig, {ax: category_ticks(ax, labels) for (ax,) in facets}

    return draw


def _widened_width(draw, ncols: int) -> float:
    from fedscape.outputs.style import pyplot, widened

    fig = widened(draw, ncols)
    pyplot().close(fig)
    return fig.get_figwidth()


def _grid(fig) -> tuple[int, int]:
    """(rows, columns) of the one grid that `fig`'s axes sit in."""
    grids = {ax.get_subplotspec().get_gridspec() for ax in fig.axes}
    assert len(grids) == 1
    grid = grids.pop()
    return grid.nrows, grid.ncols


def _assert_every_panel_fits_its_labels(fig, labels: list[str]) -> None:
    """Every visible axes, laid out again, at least as wide as `labels` need (category_ticks), the others empty."""
    from fedscape.outputs.style import WIDEN_TOLERANCE_IN, category_ticks

    fig.get_layout_engine().execute(fig)
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.get_position().width * fig.get_figwidth() >= category_ticks(ax, labels) - WIDEN_TOLERANCE_IN
        else:
            assert not ax.has_data()


@pytest.mark.parametrize("slack", [0.0, 1.0])
def test_wrap_to_fit_keeps_the_one_row_figure_while_it_fits(slack):
    from fedscape.outputs.style import pyplot, wrap_to_fit

    # Prepare: a maximum at (or above) the width of the five panels in one row, widened to fit
    draw = _label_panels(5)
    one_row = _widened_width(draw, 5)

    # Execute
    fig = wrap_to_fit(draw, 5, max_width=one_row + slack)

    # Assert: that very figure, one row of five at that width
    assert _grid(fig) == (1, 5)
    assert fig.get_figwidth() == one_row and one_row > 5 * 2.0
    pyplot().close(fig)


@pytest.mark.parametrize(("n", "fraction"), [(7, 0.99), (7, 0.6), (7, 0.3), (8, 0.5), (2, 0.9)])
def test_wrap_to_fit_wraps_into_the_fewest_rows_within_the_width(n, fraction):
    from fedscape.outputs.style import WIDEN_TOLERANCE_IN, pyplot, wrap_to_fit

    # Prepare: a maximum below the one-row width
    draw = _label_panels(n)
    max_width = fraction * _widened_width(draw, n)

    # Execute
    fig = wrap_to_fit(draw, n, max_width=max_width)

    # Assert: within the width in rows spread evenly; one row fewer would be too wide; the unused cells hidden
    rows, columns = _grid(fig)
    assert fig.get_figwidth() <= max_width + WIDEN_TOLERANCE_IN
    assert rows > 1 and columns == math.ceil(n / rows) and rows == math.ceil(n / columns)
    assert _widened_width(draw, math.ceil(n / (rows - 1))) > max_width
    assert sum(ax.get_visible() for ax in fig.axes) == n and len(fig.axes) == rows * columns
    _assert_every_panel_fits_its_labels(fig, LONG_LABELS)
    pyplot().close(fig)


def test_wrap_to_fit_gives_a_panel_too_wide_for_the_maximum_a_row_of_its_own():
    from fedscape.outputs.style import pyplot, wrap_to_fit

    # Prepare: a maximum narrower than one panel's labels
    draw = _label_panels(3)

    # Execute
    fig = wrap_to_fit(draw, 3, max_width=1.0)

    # Assert: one column, as wide as the labels need rather than the maximum
    assert _grid(fig) == (3, 1)
    assert fig.get_figwidth() > 1.0
    _assert_every_panel_fits_its_labels(fig, LONG_LABELS)
    pyplot().close(fig)


@pytest.mark.parametrize(("n", "fraction"), [(7, 0.3), (3, 0.01)])
def test_wrap_to_fit_takes_the_one_column_figure_it_is_given_and_returns_what_it_draws_without(n, fraction):
    from fedscape.outputs.style import pyplot, widened, wrap_to_fit

    # Prepare: a maximum that n panels fit in a few rows (7) or in none (3), and the one-column figure, drawn once
    draw = _label_panels(n)
    max_width = fraction * _widened_width(draw, n)
    columns_drawn = []

    def counted(ncols: int):
        columns_drawn.append(ncols)
        return draw(ncols)

    one_column = widened(counted, 1)

    # Execute: given that figure, and without it
    fig = wrap_to_fit(counted, n, max_width=max_width, one_column=one_column)
    plain = wrap_to_fit(draw, n, max_width=max_width)

    # Assert: one column drawn once; the grid and width of the figure drawn without it; that figure returned where
    # it is the answer, else closed
    assert columns_drawn.count(1) == 1
    assert _grid(fig) == _grid(plain) and fig.get_figwidth() == plain.get_figwidth()
    assert (fig is one_column) == (_grid(plain)[1] == 1)
    assert pyplot().fignum_exists(one_column.number) == (fig is one_column)
    assert (fraction < 0.1) == (_grid(plain)[1] == 1)  # the two cases are told apart
    pyplot().close(fig)
    pyplot().close(plain)


def _laid_out_figure():
    """Constrained layout, a log axis, a colour bar and legends inside and outside: what the layout moves."""
    from fedscape.outputs.style import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.5), layout="constrained")
    x = np.linspace(0.1, 10, 50)
    axes[0].semilogy(x, np.exp(x), label="exp")
    axes[0].legend()
    image = axes[1].imshow(np.arange(12.0).reshape(3, 4), aspect="auto")
    fig.colorbar(image, ax=axes[1], label="value")
    axes[1].set_title("a title that constrained layout makes room for")
    fig.suptitle("suptitle")
    fig.legend([axes[0].lines[0]], ["outside"], loc="outside right center")
    return fig


@pytest.mark.parametrize("tight", [True, False])
def test_write_formats_lays_out_once_and_writes_the_png_savefig_writes(tmp_path, monkeypatch, tight):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from fedscape.outputs.style import DPI, pyplot, write_formats

    # Prepare: the PNG that savefig alone writes (its own layout and measuring draw)
    plt = pyplot()
    reference = _laid_out_figure()
    reference.savefig(tmp_path / "reference.png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(reference)
    layouts = []
    execute = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", lambda self, fig: layouts.append(fig) or execute(self, fig))
    fig = _laid_out_figure()
    paths = {"pdf": tmp_path / "fig.pdf", "png": tmp_path / "fig.png"}

    # Execute
    write_formats(fig, paths, tight=tight)

    # Assert: one layout for the two formats (savefig: one per format), the same pixels, a valid PDF, closed
    assert len(layouts) == 1
    png, expected = plt.imread(paths["png"]), plt.imread(tmp_path / "reference.png")
    assert png.shape == expected.shape and np.array_equal(png, expected)
    if not tight:
        assert png.shape[:2] == (round(2.5 * DPI), round(6.0 * DPI))
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    assert not plt.fignum_exists(fig.number)
    assert not list(tmp_path.glob(".*.tmp*"))


def test_density_figure_draws_each_runs_smoothed_spectrum_on_a_log_axis_without_a_minor_tick_comb(tmp_path,
                                                                                                monkeypatch):
    from fedscape.analysis.hessian import figures as hessian_figures
    from fedscape.analysis.hessian.definitions import AGGREGATE, DENSITY_COLUMNS

    # Prepare: two runs x two rounds, two SLQ probes each (weights summing to 1), and a client's rows
    inputs = []
    for alpha in ("iid", "0.1"):
        for round_ in (0, 5):
            rows = [(run_id(alpha, 0), round_, data, probe, node, weight)
                    for data in (AGGREGATE, "client~0") for probe in (0, 1)
                    for node, weight in ((-1.0 - probe, 0.25), (2.0, 0.5), (8.0 + round_, 0.25))]
            path = tmp_path / f"{alpha}_{round_}.csv"
            pd.DataFrame(rows, columns=DENSITY_COLUMNS).to_csv(path, index=False)
            inputs.append(path)
    drawn = {}
    save = hessian_figures.save
    monkeypatch.setattr(hessian_figures, "save", lambda fig, outs, data: drawn.update(fig=fig) or save(fig, outs, data))
    outputs = {ext: tmp_path / f"density.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    hessian_figures.hessian_density_figure_job(inputs, outputs, grid_points=2000)

    # Assert: one curve per run and round over its own padded range, each a probability density
    data = assert_figure_files(outputs)
    assert len(data) == 2 * 2 * 2000
    for (_, round_), curve in data.groupby(["run_id", "round"]):
        x, y = curve["eigenvalue"].to_numpy(), curve["density"].to_numpy()
        lo, hi, pad = -2.0, 8.0 + round_, 0.05 * (10.0 + round_)
        assert x[0] == pytest.approx(lo - pad) and x[-1] == pytest.approx(hi + pad)
        assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
    panels = [ax for ax in drawn["fig"].axes if ax.lines]
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_yscale() == "log" and len(ax.lines) == 2
        assert ax.get_ylim()[0] == 1e-6 and math.log10(ax.get_ylim()[1] / 1e-6) > 6
        assert len(ax.yaxis.get_ticklocs(minor=True)) == 0


@pytest.mark.parametrize("spread", [1.0, 50.0, 500.0, 5000.0])
def test_a_smoothed_density_integrates_to_one_whatever_the_spectrum_s_width(spread):
    from fedscape.analysis.hessian.figures import density_on_grid

    # Prepare: two probes' nodes over [-spread/100, spread] (a sharp network's wide spectrum), weights summing to 1
    rng = np.random.default_rng(0)
    nodes = [np.sort(rng.uniform(-spread / 100, spread, 30)) for _ in range(2)]
    weights = [rng.dirichlet(np.ones(30)) for _ in range(2)]
    lo, hi = min(n.min() for n in nodes), max(n.max() for n in nodes)
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 1000)

    # Execute
    density = density_on_grid(nodes, weights, grid)

    # Assert: a probability density on the figure's grid, every eigenvalue's kernel seen by it
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)


def test_the_density_figure_of_a_spectrum_narrower_than_its_kernel_integrates_to_one(tmp_path):
    from fedscape.analysis.hessian import figures as hessian_figures
    from fedscape.analysis.hessian.definitions import AGGREGATE, DENSITY_COLUMNS

    # Prepare: two probes' nodes within 1e-4 of each other (a flat network's spectrum): far narrower than the
    # smoothing kernel (sigma = sqrt(1e-5) ~ 3e-3), weights summing to 1
    rows = [(run_id("iid", 0), 0, AGGREGATE, probe, node, weight)
            for probe in (0, 1) for node, weight in ((0.5, 0.25), (0.50005, 0.5), (0.5001, 0.25))]
    path = tmp_path / "density_rows.csv"
    pd.DataFrame(rows, columns=DENSITY_COLUMNS).to_csv(path, index=False)
    outputs = {ext: tmp_path / f"density.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    hessian_figures.hessian_density_figure_job([path], outputs)

    # Assert: the figure's curve is a whole probability density, its tails on the grid
    data = assert_figure_files(outputs)
    x, y = data["eigenvalue"].to_numpy(), data["density"].to_numpy()
    assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
    assert max(y[0], y[-1]) < 1e-3 * y.max()


@pytest.mark.parametrize(("estimator", "label"), [("hutchinson", "trace (Hutchinson)"), ("hutchpp", "trace (Hutch++)"),
                                                   ("exact", "trace (exact)"), ("hutch", None)])
def test_the_trace_axis_names_the_estimator_the_jobs_computed_with(tmp_path, monkeypatch, estimator, label):
    from fedscape.analysis.hessian import figures as hessian_figures
    from fedscape.analysis.hessian.definitions import AGGREGATE

    pd.DataFrame([{"run_id": run_id("0.1", 0), "round": 5, "data": AGGREGATE, "lambda_1": 1.0, "trace": 2.0,
                   "trace_stderr": 0.1}]).to_csv(tmp_path / "hessian.csv", index=False)
    outputs = {ext: tmp_path / f"fig.{ext}" for ext in ("png", "pdf", "csv")}
    drawn = {}
    save = hessian_figures.save
    monkeypatch.setattr(hessian_figures, "save", lambda fig, outs, data: drawn.update(fig=fig) or save(fig, outs, data))

    if label is None:
        with pytest.raises(ValueError, match=r"trace_estimator must be one of \['hutchinson', 'hutchpp', 'exact'\]"):
            hessian_figures.hessian_by_init_figure_job(tmp_path / "hessian.csv", outputs, trace_estimator=estimator)
        return
    hessian_figures.hessian_by_init_figure_job(tmp_path / "hessian.csv", outputs, trace_estimator=estimator)

    assert sorted(ax.get_ylabel() for ax in drawn["fig"].axes if ax.get_ylabel()) == [label, "λmax"]


@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_lambda_trace_figures_never_pool_run_groups_that_differ_in_another_field(tmp_path, by):
    from fedscape.analysis.hessian import figures as hessian_figures
    from fedscape.analysis.hessian.definitions import AGGREGATE

    # Prepare: at alpha 0.1, FedAvg from random and pretrained inits, FedProx from random, FedAvg with half the
    # clients per round, two seeds each; lambda_max tells the groups apart
    groups = {("random", "fedavg", "1.0"): 1.0, ("pretrained", "fedavg", "1.0"): 2.0,
              ("random", "fedprox", "1.0"): 3.0, ("random", "fedavg", "0.5"): 4.0}
    rows = []
    for (init, algorithm, part), value in groups.items():
        for seed in (0, 1):
            rid = run_id("0.1", seed, init, algorithm).replace("part~1.0", f"part~{part}")
            rows.append({"run_id": rid, "round": 5, "data": AGGREGATE, "lambda_1": value + seed / 10, "trace": 1.0,
                         "trace_stderr": 0.1})
    rows.append({**rows[0], "data": "client~0", "lambda_1": 99.0})  # a client's row: not plotted
    pd.DataFrame(rows).to_csv(tmp_path / "hessian.csv", index=False)
    outputs = {ext: tmp_path / f"fig.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    hessian_figures.lambda_trace_figure(tmp_path / "hessian.csv", outputs, by)

    # Assert: each category holds one run group's two seeds; the usual group is named by its `by` value alone
    data = assert_figure_files(outputs)
    lam = data[data["metric"] == "lambda_max"]
    assert lam.groupby("group")["value"].apply(lambda v: sorted(v.round(1))).to_dict() == {
        "random init" if by == "init" else "FedAvg": [1.0, 1.1],
        "pretrained init" if by == "init" else "FedAvg · pretrained init": [2.0, 2.1],
        "random init · FedProx" if by == "init" else "FedProx": [3.0, 3.1],
        "random init · 50% sampled" if by == "init" else "FedAvg · 50% sampled": [4.0, 4.1],
    }


def _hessian_rows(runs_rounds) -> pd.DataFrame:
    """hessian.csv rows of the aggregate data for (run id, round) pairs, values that tell the runs apart."""
    from fedscape.analysis.hessian.definitions import AGGREGATE

    return pd.DataFrame([{"run_id": rid, "round": r, "data": AGGREGATE, "lambda_1": 1.0 + i, "trace": 10.0 + i,
                          "trace_stderr": 0.5} for i, (rid, r) in enumerate(runs_rounds)])


def _drawn_lambda_trace(tmp_path, monkeypatch, rows: pd.DataFrame, by: str):
    """The laid-out figure that lambda_trace_figure draws of `rows`, drawn again after saving."""
    from fedscape.analysis.hessian import figures as hessian_figures

    rows.to_csv(tmp_path / "hessian.csv", index=False)
    outputs = {ext: tmp_path / f"fig.{ext}" for ext in ("png", "pdf", "csv")}
    drawn = {}
    save = hessian_figures.save
    monkeypatch.setattr(hessian_figures, "save", lambda fig, outs, data: drawn.update(fig=fig) or save(fig, outs, data))
    hessian_figures.lambda_trace_figure(tmp_path / "hessian.csv", outputs, by)
    fig = drawn["fig"]
    agg_canvas(fig).draw()  # at the positions the saved files have
    return fig


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Neighbouring x tick labels of any axes of `fig` whose drawn extents overlap."""
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        labels = sorted((t for t in ax.get_xticklabels() if t.get_text()),
                        key=lambda t: t.get_window_extent(renderer).x0)
        pairs += [(a.get_text(), b.get_text()) for a, b in zip(labels, labels[1:], strict=False)
                  if a.get_window_extent(renderer).x1 > b.get_window_extent(renderer).x0]
    return pairs


def _default_config_hessian_rows() -> pd.DataFrame:
    from fedscape.plan.hessian import hessian_jobs

    config = check_config(copy.deepcopy(DEFAULT), SCHEMA)
    return _hessian_rows([(run.run_id, r) for run, r in hessian_jobs(config, build_runs(config))])


def _many_algorithms_rows() -> pd.DataFrame:
    """16 algorithm labels at alpha 0.1, each also from a pretrained init: 32 run groups of long labels."""
    return _hessian_rows([(run_id("0.1", 0, init, f"fedavg_variant_{k:02d}"), 5)
                          for k in range(16) for init in ("random", "pretrained_proxy")])


@pytest.mark.parametrize("rows", [_default_config_hessian_rows, _many_algorithms_rows], ids=["default", "many"])
@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_the_hessian_figures_run_group_labels_never_overlap(tmp_path, monkeypatch, rows, by):
    # Prepare
    table = rows()

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, by)

    # Assert: the labels side by side without touching, every run group a label with one field a line
    assert _overlapping_tick_labels(fig) == []
    labels = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    groups = set(pd.read_csv(tmp_path / "fig.csv")["group"])
    assert labels == {g.replace(" · ", "\n") for g in groups} and len(groups) >= 6


@pytest.mark.parametrize(("items", "pieces", "expected"), [
    (range(7), 3, [[0, 1, 2], [3, 4], [5, 6]]),
    (range(6), 3, [[0, 1], [2, 3], [4, 5]]),
    (range(2), 5, [[0], [1]]),
    (range(4), 1, [[0, 1, 2, 3]]),
    ([], 2, [[]]),
])
def test_split_evenly_keeps_the_order_in_pieces_that_differ_by_at_most_one(items, pieces, expected):
    from fedscape.outputs.style import split_evenly

    assert split_evenly(items, pieces) == expected


def test_split_evenly_refuses_fewer_than_one_piece():
    from fedscape.outputs.style import split_evenly

    with pytest.raises(ValueError, match="pieces must be >= 1"):
        split_evenly([1, 2], 0)


@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_a_hessian_panel_too_wide_for_a_screen_is_split_into_pieces_on_one_scale(tmp_path, monkeypatch, by):
    from fedscape.outputs.style import MAX_FIGURE_WIDTH_IN, WIDEN_TOLERANCE_IN

    # Prepare: one place (dataset/model, round) of 32 run groups with long labels, wider alone than the maximum
    table = _many_algorithms_rows()

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, by)

    # Assert: within the maximum, in pieces titled k/n; each run group a label once per metric, in the order of
    # the figure's data; each metric's pieces on one y scale, which holds every value
    assert fig.get_figwidth() <= MAX_FIGURE_WIDTH_IN + WIDEN_TOLERANCE_IN
    visible = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in visible]
    pieces = len(visible) // 2
    assert pieces > 1 and sorted(set(titles)) == [f"digits/cnn_small, round 5 ({k}/{pieces})"
                                                   for k in range(1, pieces + 1)]
    assert _overlapping_tick_labels(fig) == []
    groups = set(pd.read_csv(tmp_path / "fig.csv")["group"])
    for label in ("λmax", "trace (Hutchinson)"):
        axes = [ax for ax in visible if ax.get_ylabel() == label]
        shown = [t.get_text() for ax in axes for t in ax.get_xticklabels()]
        assert sorted(shown) == sorted(g.replace(" · ", "\n") for g in groups) and len(shown) == 32
        assert len({ax.get_ylim() for ax in axes}) == 1
        low, high = axes[0].get_ylim()
        values = table["lambda_1" if label == "λmax" else "trace"]
        assert low < values.min() and values.max() < high


def test_only_the_panel_too_wide_for_a_screen_is_split(tmp_path, monkeypatch):
    from fedscape.outputs.style import MAX_FIGURE_WIDTH_IN, WIDEN_TOLERANCE_IN

    # Prepare: round 0 of four short run groups beside round 5 of 32 long ones
    short = _hessian_rows([(run_id(alpha, 0, init), 0) for alpha in ("iid", "0.1")
                           for init in ("random", "pretrained")])
    table = pd.concat([short, _many_algorithms_rows()], ignore_index=True)

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, "init")

    # Assert: round 0 whole, round 5 in pieces, within the maximum
    titles = sorted({ax.get_title() for ax in fig.axes if ax.get_visible()})
    pieces = [t for t in titles if t.startswith("digits/cnn_small, round 5 (")]
    assert titles == ["digits/cnn_small, round 0", *pieces] and len(pieces) > 1
    assert fig.get_figwidth() <= MAX_FIGURE_WIDTH_IN + WIDEN_TOLERANCE_IN


def test_a_hessian_figure_whose_labels_fit_keeps_its_width(tmp_path, monkeypatch):
    # Prepare: two short run groups at two rounds
    table = _hessian_rows([(run_id(alpha, 0), r) for alpha in ("iid", "0.1") for r in (0, 5)]
                          + [(run_id("0.1", 0, "pretrained"), r) for r in (0, 5)])

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, "init")

    # Assert: 3.2 inches a panel, as before
    assert fig.get_figwidth() == pytest.approx(2 * 3.2)
    assert _overlapping_tick_labels(fig) == []


def _settings_rows(settings, rounds, inits, algorithms) -> pd.DataFrame:
    """hessian.csv rows of alpha 0.1, seed 0 runs of every dataset/model, init and algorithm at every round."""
    from fedscape.core.runs import Run

    return _hessian_rows([(Run(dataset, model, init, algorithm, "0.1", 10, "1.0", 0).run_id, r)
                          for dataset, model in settings for init in inits for algorithm in algorithms
                          for r in rounds])


def _meta_like_rows() -> pd.DataFrame:
    """As config/papers/meta.yaml: 4 dataset/models at 2 rounds (8 panels), groups as 'pretrained_words init ·
    fedavg_words'."""
    settings = [("cifar10", "resnet18"), ("femnist", "resnet18"), ("reddit", "word_lstm"),
                ("stackoverflow", "word_lstm")]
    return _settings_rows(settings, (0, 1500), ("random", "pretrained_words"), ("fedavg", "fedavg_words"))


def _many_panels_rows() -> pd.DataFrame:
    """12 panels (6 dataset/models at 2 rounds) of 4 run groups with long labels each."""
    settings = [(f"dataset_{k}", "model_with_a_long_name") for k in range(6)]
    return _settings_rows(settings, (0, 100), ("random", "pretrained_proxy"),
                          [f"fedavg_variant_{k:02d}" for k in range(2)])


def _panel_count(rows: pd.DataFrame) -> int:
    """The panels of lambda_trace_figure for `rows`: one per dataset/model and round."""
    return len({(parse_run_id(r)["dataset"], parse_run_id(r)["model"], round_)
                for r, round_ in zip(rows["run_id"], rows["round"], strict=True)})


@pytest.mark.parametrize("rows", [_meta_like_rows, _many_panels_rows], ids=["meta_like", "many_panels"])
@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_a_hessian_figure_of_many_wide_panels_wraps_into_rows_within_the_maximum_width(tmp_path, monkeypatch, rows,
                                                                                        by):
    from fedscape.outputs.style import DPI, MAX_FIGURE_WIDTH_IN, WIDEN_TOLERANCE_IN, pyplot

    # Prepare
    table = rows()
    panels = _panel_count(table)

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, by)

    # Assert: within the maximum (its PNG too, but for the tight crop's padding), the panels (a metric above the
    # other) in rows of fewer columns, the unused cells hidden, every run group a label, none overlapping
    nrows, ncols = _grid(fig)
    pad = pyplot().rcParams["savefig.pad_inches"]
    assert fig.get_figwidth() <= MAX_FIGURE_WIDTH_IN + WIDEN_TOLERANCE_IN
    assert pyplot().imread(tmp_path / "fig.png").shape[1] <= (MAX_FIGURE_WIDTH_IN + 2 * pad) * DPI
    assert 1 < ncols < panels and nrows == 2 * math.ceil(panels / ncols)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * panels and len(fig.axes) == nrows * ncols
    assert _overlapping_tick_labels(fig) == []
    data = pd.read_csv(tmp_path / "fig.csv")
    assert {t.get_text() for ax in visible for t in ax.get_xticklabels()} == {
        g.replace(" · ", "\n") for g in data["group"]}
    assert len(data) == 2 * len(table)


@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_the_default_configs_hessian_figures_keep_one_row_of_widened_panels(tmp_path, monkeypatch, by):
    from fedscape.outputs.style import MAX_FIGURE_WIDTH_IN

    # Prepare
    table = _default_config_hessian_rows()
    n = _panel_count(table)

    # Execute
    fig = _drawn_lambda_trace(tmp_path, monkeypatch, table, by)

    # Assert: one row of panels, widened for their labels and still within the maximum
    assert _grid(fig) == (2, n) and all(ax.get_visible() for ax in fig.axes)
    assert 3.2 * n < fig.get_figwidth() <= MAX_FIGURE_WIDTH_IN
    assert _overlapping_tick_labels(fig) == []


def copy_at(table: pd.DataFrame, field: str, first, second) -> pd.DataFrame:
    """`table` at `first` of `field` and a copy of it at `second`."""
    return pd.concat([table.assign(**{field: first}), table.assign(**{field: second})], ignore_index=True)


def fedavg_cost() -> pd.DataFrame:
    """cost.csv of FedAvg at alpha 0.1 on one CPU."""
    return pd.DataFrame([{
        "dataset": "digits", "model": "cnn_small", "algorithm": "fedavg", "algorithm_name": "fedavg", "device": "cpu",
        "device_name": "cpu", "num_runs": 3, "num_rounds": 30, "median_seconds_per_round": 1.5, "peak_mem_mb": 400.0,
        "seconds_vs_fedavg": 1.0, "peak_mem_vs_fedavg": 1.0, "alpha": 0.1, "num_clients": 10, "participation": 1.0,
        "local_epochs": 2, "batch_size": 16}])


FIGURES_OF_RUN_GROUPS = {  # the table a figure draws and the drawing
    "curves": (rounds_table, lambda table, path: curves_figure(table, "digits", "cnn_small", "accuracy", path)),
    "cost": (fedavg_cost, lambda table, path: cost_figure(table, "digits", "cnn_small", path)),
    "local-work": (ranking_final, lambda table, path: local_work_figure(table, "digits", "cnn_small", path, WORK)),
}


@pytest.mark.parametrize(("figure", "field", "values", "refused"), [
    ("curves", "algorithm", ("fedavg", "FedAvg"), "the curves figure's panels: the run groups algorithm 'FedAvg' and "
     "algorithm 'fedavg' have the same label ('FedAvg')"),
    ("curves", "alpha", (0.1234567, 0.1234568), "the curves figure's legend: the run groups alpha 0.1234568 and alpha "
     "0.1234567 have the same label ('α=0.123457')"),
    ("cost", "algorithm", ("fedavg", "FedAvg"), "the cost figure's bars: the run groups algorithm 'FedAvg' and "
     "algorithm 'fedavg' have the same labels ('FedAvg' / 'cpu')"),
    ("cost", "alpha", (0.1234567, 0.1234568), "the cost figure's bars: the run groups alpha 0.1234567 and alpha "
     "0.1234568 have the same labels ('FedAvg · α=0.123457' / 'cpu')"),
    ("local-work", "alpha", (0.1234567, 0.1234568), "the local-work figure's panels: the run groups alpha 0.1234568 "
     "and alpha 0.1234567 have the same label ('α=0.123457')"),
    ("curves", "algorithm", ("fedavg", "fedprox"), None),
    ("curves", "alpha", (0.12, 0.125), None),
    ("cost", "algorithm", ("fedavg", "fedprox"), None),
    ("cost", "alpha", (0.12, 0.125), None),
    ("cost", "device_name", ("cpu", "NVIDIA H200"), None),  # one label on two devices: two bars side by side
    ("local-work", "alpha", (0.12, 0.125), None),
], ids=["curves-algorithm", "curves-alpha", "cost-algorithm", "cost-alpha", "local-work-alpha", "curves-algorithms",
        "curves-alphas", "cost-algorithms", "cost-alphas", "cost-devices", "local-work-alphas"])
def test_curves_cost_and_local_work_figures_refuse_run_groups_labelled_alike_naming_both(tmp_path, figure, field,
                                                                                          values, refused):
    # Prepare: the figure's table and a copy of it, labelled alike (`fedavg` and `FedAvg` both FedAvg, alphas both
    # α=0.123457) or not
    table, draw = FIGURES_OF_RUN_GROUPS[figure]
    table = copy_at(table(), field, *values)

    # Execute
    if refused:
        with pytest.raises(ValueError) as caught:
            draw(table, tmp_path / "figure")
    else:
        data = assert_figure_files(draw(table, tmp_path / "figure"))

    # Assert: refused before anything is drawn, or both drawn
    if refused:
        assert str(caught.value) == f"{refused}, so one would hide the other; rename one of them"
        assert list(tmp_path.iterdir()) == []
    else:
        assert set(data[field]) >= set(values)


def _client_stats_of(runs: list[str], tables: Path, outputs: dict) -> None:
    """The client-statistics figure of `runs`, three rounds each, every round ok."""
    from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS
    from fedscape.analysis.client_stats.figures import client_stats_figure_job

    rows = pd.DataFrame([{"run_id": rid, "round": r, "drift_from_start": 1.0 + r, "drift_from_aggregate": 0.5 + r,
                          "gradient_diversity": 1.0, "update_cosine_mean": 0.5, "l2_to_final": 3.0 - r}
                         for rid in runs for r in range(1, 4)], columns=CLIENT_STATS_COLUMNS)
    rows.to_csv(tables / "client_stats.csv", index=False)
    rows[["run_id", "round"]].assign(status="ok").to_csv(tables / "rounds.csv", index=False)
    client_stats_figure_job(tables / "client_stats.csv", tables / "rounds.csv", outputs)


def _hessian_of(runs: list[str], tables: Path, outputs: dict) -> None:
    """The Hessian figure per algorithm of `runs` at round 5."""
    from fedscape.analysis.hessian.figures import lambda_trace_figure

    _hessian_rows([(rid, 5) for rid in runs]).to_csv(tables / "hessian.csv", index=False)
    lambda_trace_figure(tables / "hessian.csv", outputs, "algorithm")


def _density_of(runs: list[str], tables: Path, outputs: dict) -> None:
    """The Hessian density figure of `runs` at round 5, two SLQ probes each."""
    from fedscape.analysis.hessian.definitions import AGGREGATE, DENSITY_COLUMNS
    from fedscape.analysis.hessian.figures import hessian_density_figure_job

    rows = [(rid, 5, AGGREGATE, probe, node, weight) for rid in runs for probe in (0, 1)
            for node, weight in ((-1.0, 0.25), (2.0, 0.5), (8.0, 0.25))]
    pd.DataFrame(rows, columns=DENSITY_COLUMNS).to_csv(tables / "density.csv", index=False)
    hessian_density_figure_job([tables / "density.csv"], outputs, grid_points=50)


@pytest.mark.parametrize(("draw", "field", "values", "refused"), [
    (_client_stats_of, "algorithm", ("fedavg", "FedAvg"), "the client-statistics figure's rows: the run groups "
     "algorithm 'FedAvg' and algorithm 'fedavg' have the same label ('digits · cnn_small · FedAvg')"),
    (_client_stats_of, "alpha", ("0.1234567", "0.1234568"), "the client-statistics figure's legend: the run groups "
     "alpha '0.1234568' and alpha '0.1234567' have the same label ('α=0.123457')"),
    (_hessian_of, "algorithm", ("fedavg", "FedAvg"), "the categories of the Hessian figure per algorithm: the run "
     "groups algorithm 'FedAvg' and algorithm 'fedavg' have the same labels ('digits/cnn_small' / 'FedAvg')"),
    (_hessian_of, "alpha", ("0.1234567", "0.1234568"), "the legend of the Hessian figure per algorithm: the run groups "
     "alpha '0.1234568' and alpha '0.1234567' have the same label ('α=0.123457')"),
    (_density_of, "algorithm", ("fedavg", "FedAvg"), "the Hessian density figure's panels: the run groups algorithm "
     "'FedAvg' and algorithm 'fedavg' have the same label ('FedAvg · seed 0')"),
    (_density_of, "alpha", ("0.1234567", "0.1234568"), "the Hessian density figure's panels: the run groups alpha "
     "'0.1234567' and alpha '0.1234568' have the same label ('α=0.123457 · seed 0')"),
    (_client_stats_of, "algorithm", ("fedavg", "fedprox"), None),
    (_client_stats_of, "alpha", ("0.12", "0.125"), None),
    (_hessian_of, "algorithm", ("fedavg", "fedprox"), None),
    (_hessian_of, "alpha", ("0.12", "0.125"), None),
    (_density_of, "algorithm", ("fedavg", "fedprox"), None),
    (_density_of, "alpha", ("0.12", "0.125"), None),
], ids=["client-stats-algorithm", "client-stats-alpha", "hessian-algorithm", "hessian-alpha", "density-algorithm",
        "density-alpha", "client-stats-algorithms", "client-stats-alphas", "hessian-algorithms", "hessian-alphas",
        "density-algorithms", "density-alphas"])
def test_analysis_figures_refuse_runs_labelled_alike_naming_both(tmp_path, draw, field, values, refused):
    # Prepare: seeds 0 and 1 of FedAvg at alpha 0.1 and of a copy at each of `values` of `field`, labelled alike or not
    runs = [run_id(**{"alpha": "0.1", "seed": seed, "algorithm": "fedavg", field: value})
            for value in values for seed in (0, 1)]
    out = tmp_path / "figure"
    out.mkdir()
    outputs = {ext: out / f"figure.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    if refused:
        with pytest.raises(ValueError) as caught:
            draw(runs, tmp_path, outputs)
    else:
        draw(runs, tmp_path, outputs)

    # Assert: refused before anything is drawn, or every run drawn
    if refused:
        assert str(caught.value) == f"{refused}, so one would hide the other; rename one of them"
        assert list(out.iterdir()) == []
    else:
        data = assert_figure_files(outputs)
        drawn = data["run_id"].map(lambda rid: parse_run_id(rid)[field]) if "run_id" in data else data[field]
        assert set(drawn.astype(str)) == set(values)
