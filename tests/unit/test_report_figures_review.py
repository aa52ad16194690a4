"""The report's figures as a reader sees them after `make run` (review of the default run's figures): the headline
table ranks within a setting, the ranking's labels clear the rank axis and its one-algorithm panels are left out,
titles say "one seed" where there is one, the spectral densities of a model share an eigenvalue range and write no
subnormal density, and the by-init figure fits a screen, reads in % and puts all clients first."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers.figures import assert_figure_files
from helpers.tables import rounds_table, run_id

from fedscape.analysis.barriers.definitions import BARRIER_SPLIT
from fedscape.outputs.style import DPI, MAX_FIGURE_WIDTH_IN, WIDEN_TOLERANCE_IN, agg_canvas, pyplot
from fedscape.report.figures.accuracy import accuracy_by_init_figure, headline_table_figure
from fedscape.report.figures.algorithms import ranking_figure
from fedscape.report.figures.curves import curves_figure
from fedscape.report.summary import final_table


def _final(rows: list[dict]) -> pd.DataFrame:
    """final.csv rows of digits / cnn_small: each of `rows` (algorithm, test_acc and what else differs) over the
    defaults below."""
    base = {"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg", "alpha": 0.1,
            "num_clients": 10, "participation": 1.0, "seed": 0, "status": "ok"}
    return pd.DataFrame([{**base, **row} for row in rows])


def _drawn(monkeypatch, module) -> dict:
    """{"fig": the figure} of the next figure `module` saves with its `save_figure`."""
    drawn = {}
    save = module.save_figure
    monkeypatch.setattr(module, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    return drawn


# -- the headline table (FedAlign Table 1) ------------------------------------------------------------
def _headline(tmp_path, monkeypatch, rows: list[dict]):
    """The headline figure's axes of `rows` and its CSV."""
    from fedscape.report.figures import accuracy as accuracy_figures

    drawn = _drawn(monkeypatch, accuracy_figures)
    data = assert_figure_files(headline_table_figure(_final(rows), "digits", "cnn_small", tmp_path / "headline"))
    (ax,) = drawn["fig"].axes
    return ax, data


@pytest.mark.parametrize(("rows", "shades"), [
    # IID: FedAvg ahead; alpha 0.1: FedProx ahead, below both IID rows: each setting has its best
    ([{"alpha": math.inf, "test_acc": 0.95}, {"alpha": math.inf, "algorithm": "fedprox", "test_acc": 0.93},
      {"test_acc": 0.60}, {"algorithm": "fedprox", "test_acc": 0.70}],
     {"FedAvg · IID": 0.85, "FedProx · IID": 0.15, "FedAvg · α=0.1": 0.15, "FedProx · α=0.1": 0.85}),
    # a setting of one row has no rival: midway, not bold, however high
    ([{"alpha": math.inf, "test_acc": 0.95}, {"test_acc": 0.60}, {"algorithm": "fedprox", "test_acc": 0.70}],
     {"FedAvg · IID": 0.5, "FedAvg · α=0.1": 0.15, "FedProx · α=0.1": 0.85}),
    # half the clients sampled is a setting of its own
    ([{"test_acc": 0.60}, {"algorithm": "fedprox", "test_acc": 0.70}, {"participation": 0.5, "test_acc": 0.80},
      {"participation": 0.5, "algorithm": "fedprox", "test_acc": 0.50}],
     {"FedAvg · all clients": 0.15, "FedProx · all clients": 0.85, "FedAvg · 50% sampled": 0.85,
      "FedProx · 50% sampled": 0.15}),
    # one setting: from the worst of all rows to the best, as before
    ([{"test_acc": 0.60}, {"algorithm": "fedprox", "test_acc": 0.70}, {"algorithm": "scaffold", "test_acc": 0.65}],
     {"FedAvg": 0.15, "SCAFFOLD": 0.5, "FedProx": 0.85}),
], ids=["two-settings", "a-setting-of-one-row", "participation", "one-setting"])
def test_the_headline_table_ranks_its_rows_within_their_setting(tmp_path, monkeypatch, rows, shades):
    # Execute
    ax, _ = _headline(tmp_path, monkeypatch, rows)

    # Assert: each row's accuracy shaded by its rank within its setting (0.15 light = worst to 0.85 dark = best; a
    # row without a rival midway), the best of a setting of two rows or more bold
    labels = [t.get_text() for t in ax.get_yticklabels()]
    shade = np.asarray(ax.images[0].get_array())[:, 0]
    assert dict(zip(labels, shade, strict=True)) == pytest.approx(shades)
    bold = {labels[round(t.get_position()[1])] for t in ax.texts if t.get_fontweight() == "bold"}
    assert bold == {label for label, level in shades.items() if level > 0.8}


def test_the_headline_rows_are_grouped_by_setting_with_a_line_between_settings(tmp_path, monkeypatch):
    # Prepare: two algorithms at IID and at alpha 0.1 (by algorithm first, they would alternate)
    rows = [{"alpha": alpha, "algorithm": algorithm, "test_acc": acc}
            for alpha, acc in ((math.inf, 0.9), (0.1, 0.6)) for algorithm in ("fedavg", "fedprox")]

    # Execute
    ax, _ = _headline(tmp_path, monkeypatch, rows)

    # Assert: IID first (as the other figures' panels), the setting's rows together, a line where the setting changes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["FedAvg · IID", "FedProx · IID", "FedAvg · α=0.1",
                                                            "FedProx · α=0.1"]
    assert [line.get_ydata()[0] for line in ax.lines] == [1.5]


@pytest.mark.parametrize(("accs", "text"), [
    ((0.9398663697104676,), "94.0"),  # 3 significant digits wrote "94"
    ((0.9755011135857461,), "97.6"),
    ((0.94, 0.95), "94.5 ± 0.7"),
    ((0.999, 0.998), "99.8 ± 0.1"),
], ids=["whole", "one-decimal", "mean-and-std", "near-100"])
def test_the_headline_accuracy_is_written_with_one_decimal(tmp_path, monkeypatch, accs, text):
    # Execute
    ax, _ = _headline(tmp_path, monkeypatch, [{"seed": seed, "test_acc": acc} for seed, acc in enumerate(accs)])

    # Assert
    assert [t.get_text() for t in ax.texts] == [text]


def test_the_headline_barrier_header_says_it_is_the_training_loss_barrier(tmp_path, monkeypatch):
    # Prepare: a run with its barrier to IID
    rows = [{"test_acc": 0.6, "barrier_to_iid_loss": 0.12}]

    # Execute
    ax, data = _headline(tmp_path, monkeypatch, rows)

    # Assert: the barrier final.csv holds is that on the training data (barriers.definitions), and the header says so
    assert BARRIER_SPLIT == "train"
    assert set(data["metric"]) == {"test_acc", "barrier_to_iid_loss"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Acc. (%) ↑", "barrier to IID ↓\n(train loss)"]


# -- the ranking ----------------------------------------------------------------------------------------
def _ranking(tmp_path, monkeypatch, final: pd.DataFrame):
    """The ranking figure of `final` drawn at its saved positions, and its CSV."""
    from fedscape.report.figures import algorithms as algorithm_figures

    drawn = _drawn(monkeypatch, algorithm_figures)
    data = assert_figure_files(ranking_figure(final, "digits", "cnn_small", tmp_path / "ranking.png"))
    fig = drawn["fig"]
    agg_canvas(fig).draw()
    return fig, data


def _default_run_alpha_01() -> pd.DataFrame:
    """The default run's alpha 0.1 runs: three algorithms from a random init, FedAvg alone from two others."""
    return _final([{"algorithm": "fedavg", "test_acc": 0.969}, {"algorithm": "fedprox", "test_acc": 0.971},
                   {"algorithm": "fedsam", "test_acc": 0.976}, {"init": "pretrained", "test_acc": 0.973},
                   {"init": "warmup", "test_acc": 0.971}])


def _many_inits() -> pd.DataFrame:
    """Three algorithms under five inits, three seeds each: long labels side by side in a panel."""
    inits = ("random", "pretrained", "warmup", "pretrained_proxy", "continue_long")
    return _final([{"init": init, "algorithm": algorithm, "seed": seed, "test_acc": 0.5 + 0.1 * a + 0.01 * (i + seed)}
                   for i, init in enumerate(inits) for a, algorithm in enumerate(("fedavg", "fedprox", "scaffold"))
                   for seed in range(3)])


def _many_inits_two_settings() -> pd.DataFrame:
    """The five inits at alpha 0.1 and their random init at IID: two panels too wide for one row of a screen."""
    final = _many_inits()
    return pd.concat([final, final[final["init"] == "random"].assign(alpha=math.inf)], ignore_index=True)


def _two_inits() -> pd.DataFrame:
    return _final([{"init": init, "algorithm": algorithm, "test_acc": acc}
                   for init, accs in (("random", (0.7, 0.8)), ("pretrained", (0.9, 0.85)))
                   for algorithm, acc in zip(("fedavg", "fedprox"), accs, strict=True)])


@pytest.mark.parametrize("final", [_default_run_alpha_01, _many_inits, _many_inits_two_settings, _two_inits],
                         ids=["default-run", "five-inits", "five-inits-two-settings", "two-inits"])
def test_the_ranking_labels_clear_the_rank_axis_and_each_other(tmp_path, monkeypatch, final):
    # Execute
    fig, _ = _ranking(tmp_path, monkeypatch, final())

    # Assert: every mean label apart from every rank tick label and from the other labels of its panel, the panels
    # as wide as their labels need wrapped into rows within a screen
    assert fig.get_figwidth() <= MAX_FIGURE_WIDTH_IN + WIDEN_TOLERANCE_IN
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.texts]
    assert panels
    for ax in panels:
        labels = [t.get_window_extent(renderer) for t in ax.texts]
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
        assert ticks and labels
        assert not [(a, b) for a in labels for b in ticks if a.overlaps(b)]
        assert not [(a, b) for k, a in enumerate(labels) for b in labels[k + 1:] if a.overlaps(b)]


@pytest.mark.parametrize(("final", "panels", "left_out"), [
    # the default run: IID and alpha 1 rank FedAvg alone (two inits, one), alpha 0.1 three algorithms
    (lambda: pd.concat([_default_run_alpha_01(),
                        _final([{"alpha": math.inf, "test_acc": 0.976}, {"alpha": math.inf, "init": "pretrained",
                                                                          "test_acc": 0.976},
                                {"alpha": 1.0, "test_acc": 0.978}])]),
     ["α=0.1"], "not drawn, one algorithm each: IID, α=1"),
    (lambda: pd.concat([_two_inits(), _two_inits().assign(alpha=math.inf)]), ["IID", "α=0.1"], None),
], ids=["one-algorithm-settings", "every-setting-ranks-two"])
def test_the_ranking_leaves_out_the_settings_of_one_algorithm_and_names_them(tmp_path, monkeypatch, final, panels,
                                                                             left_out):
    # Execute
    fig, data = _ranking(tmp_path, monkeypatch, final())

    # Assert: a panel per setting that ranks two algorithms or more; the others named in the title, kept in the CSV
    assert [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.texts] == panels
    lines = fig.get_suptitle().split("\n")
    assert (lines[-1] == left_out) if left_out else not any(line.startswith("not drawn") for line in lines)
    assert set(data["alpha"]) == set(final()["alpha"])


def test_a_ranking_of_one_algorithm_everywhere_says_there_is_nothing_to_rank(tmp_path, monkeypatch):
    # Prepare: FedAvg alone, from two inits at two alphas
    final = _final([{"alpha": alpha, "init": init, "test_acc": 0.9} for alpha in (math.inf, 0.1)
                    for init in ("random", "pretrained")])

    # Execute
    fig, data = _ranking(tmp_path, monkeypatch, final)

    # Assert: no panel of rank 1 of 1; the CSV holds the ranks all the same
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["digits / cnn_small: one algorithm in every setting, nothing to rank"]
    assert len(data) == 4 and (data["rank"] == 1).all()


# -- titles with one seed -------------------------------------------------------------------------------
@pytest.mark.parametrize(("seeds", "title"), [
    ((0,), "one seed"),
    ((0, 1, 2), "mean over the seeds not diverged by then"),
], ids=["one", "three"])
def test_the_client_statistics_title_says_one_seed_where_there_is_one(tmp_path, monkeypatch, seeds, title):
    from fedscape.analysis.client_stats import figures as client_figures
    from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS

    # Prepare: one run per seed at alpha 0.1, three rounds each
    rows = [{"run_id": run_id("0.1", seed), "round": r, "drift_from_start": 1.0 + r, "drift_from_aggregate": 0.5,
             "gradient_diversity": 1.0, "update_cosine_mean": 0.1, "l2_to_final": 3.0 - r}
            for seed in seeds for r in range(1, 4)]
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    pd.DataFrame(rows)[["run_id", "round"]].assign(status="ok").to_csv(tmp_path / "rounds.csv", index=False)
    drawn = {}
    save = client_figures.save_figure_outputs
    monkeypatch.setattr(client_figures, "save_figure_outputs", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    client_figures.client_stats_figure_job(tmp_path / "client_stats.csv", tmp_path / "rounds.csv", outputs)

    # Assert
    assert drawn["fig"].get_suptitle() == (f"Client-update statistics per round, {title} (colour: alpha, "
                                           "line style: init)")


@pytest.mark.parametrize(("seeds", "note"), [((0,), "one seed"), ((0, 1), "points: seeds")], ids=["one", "two"])
@pytest.mark.parametrize("by", ["init", "algorithm"])
def test_the_hessian_figures_title_says_one_seed_where_each_point_is_one(tmp_path, monkeypatch, by, seeds, note):
    from fedscape.analysis.hessian import figures as hessian_figures
    from fedscape.analysis.hessian.definitions import AGGREGATE

    # Prepare: IID and alpha 0.1 from two inits, each over `seeds`
    rows = [{"run_id": run_id(alpha, seed, init), "round": 5, "data": AGGREGATE, "lambda_1": 1.0 + seed,
             "trace": 10.0, "trace_stderr": 0.5} for alpha in ("iid", "0.1") for init in ("random", "pretrained")
            for seed in seeds]
    pd.DataFrame(rows).to_csv(tmp_path / "hessian.csv", index=False)
    drawn = {}
    save = hessian_figures.save
    monkeypatch.setattr(hessian_figures, "save", lambda fig, outs, data: drawn.update(fig=fig) or save(fig, outs, data))
    outputs = {ext: tmp_path / f"fig.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    hessian_figures.lambda_trace_figure(tmp_path / "hessian.csv", outputs, by)

    # Assert
    assert drawn["fig"].get_suptitle() == f"Hessian of the global model on the aggregate data, per {by} ({note})"


# -- the spectral density -----------------------------------------------------------------------------
def _density_inputs(tmp_path, spectra: dict[str, tuple[float, float]]) -> list:
    """density.csv files of round 0 of each run id of `spectra`, two probes with nodes spread over its (low, high)."""
    from fedscape.analysis.hessian.definitions import AGGREGATE, DENSITY_COLUMNS

    paths = []
    for k, (rid, (low, high)) in enumerate(spectra.items()):
        nodes = np.linspace(low, high, 5)
        rows = [(rid, 0, AGGREGATE, probe, node, 0.2) for probe in (0, 1) for node in nodes + 0.01 * probe]
        paths.append(tmp_path / f"density_{k}.csv")
        pd.DataFrame(rows, columns=DENSITY_COLUMNS).to_csv(paths[-1], index=False)
    return paths


def _density(tmp_path, monkeypatch, spectra: dict[str, tuple[float, float]]):
    """{run id: its panel's x limits} of the density figure of `spectra` (a panel per run, in run id order), and its
    CSV."""
    from fedscape.analysis.hessian import figures as hessian_figures

    drawn = {}
    save = hessian_figures.save
    monkeypatch.setattr(hessian_figures, "save", lambda fig, outs, data: drawn.update(fig=fig) or save(fig, outs, data))
    outputs = {ext: tmp_path / f"density.{ext}" for ext in ("png", "pdf", "csv")}
    hessian_figures.hessian_density_figure_job(_density_inputs(tmp_path, spectra), outputs)
    panels = [ax for ax in drawn["fig"].axes if ax.lines]
    return dict(zip(sorted(spectra), (ax.get_xlim() for ax in panels), strict=True)), assert_figure_files(outputs)


PRETRAINED, RANDOM, MLP = run_id("0.1", 0, "pretrained"), run_id("0.1", 0), run_id("0.1", 0).replace("cnn_small", "mlp")


@pytest.mark.parametrize(("spectra", "shared"), [
    # a pretrained model's narrow spectrum beside a random init's three times wider one: one range
    ({PRETRAINED: (-1.0, 6.3), RANDOM: (-5.0, 16.0)}, [{PRETRAINED, RANDOM}]),
    # another model keeps its own range
    ({PRETRAINED: (-1.0, 6.3), RANDOM: (-5.0, 16.0), MLP: (0.0, 2.0)}, [{PRETRAINED, RANDOM}, {MLP}]),
], ids=["one-model", "two-models"])
def test_the_density_panels_of_a_dataset_and_model_share_their_eigenvalue_range(tmp_path, monkeypatch, spectra,
                                                                                 shared):
    # Execute
    xlims, data = _density(tmp_path, monkeypatch, spectra)

    # Assert: the panels of a dataset / model on the range of all its curves, and only its
    for runs in shared:
        curves = data.loc[data["run_id"].isin(runs), "eigenvalue"]
        for run in runs:
            assert xlims[run] == pytest.approx((curves.min(), curves.max()))


@pytest.mark.parametrize(("low", "high"), [(0.0, 100.0), (-5.0, 16.0), (0.5, 0.5001)],
                         ids=["wide", "default-run-like", "narrow"])
def test_the_density_csv_writes_no_subnormal_density(tmp_path, monkeypatch, low, high):
    from fedscape.analysis.hessian.figures import DENSITY_FLOOR, density_on_grid

    # Execute
    _, data = _density(tmp_path, monkeypatch, {run_id("iid", 0): (low, high)})

    # Assert: a density is 0 or at least the floor (no subnormal float: 1e-310), and otherwise the smoothed curve's
    density = data["density"].to_numpy()
    assert ((density == 0) | (density >= DENSITY_FLOOR)).all()
    nodes = np.linspace(low, high, 5)
    exact = density_on_grid([nodes, nodes + 0.01], [np.full(5, 0.2)] * 2, data["eigenvalue"].to_numpy())
    kept = exact >= DENSITY_FLOOR
    assert density[kept] == pytest.approx(exact[kept], rel=1e-12) and (density[~kept] == 0).all()


# -- accuracy by init -----------------------------------------------------------------------------------
def _default_run_final(seeds=(0,)) -> pd.DataFrame:
    """The default run's groups (FedAvg from three inits, at IID, alpha 1, 0.1 and half the clients sampled; FedProx
    and FedSAM at 0.1) over `seeds`."""
    groups = [("random", "fedavg", math.inf, 1.0), ("pretrained", "fedavg", math.inf, 1.0),
              ("random", "fedavg", 1.0, 1.0), ("random", "fedavg", 0.1, 1.0), ("pretrained", "fedavg", 0.1, 1.0),
              ("warmup", "fedavg", 0.1, 1.0), ("random", "fedavg", 0.1, 0.5), ("random", "fedprox", 0.1, 1.0),
              ("random", "fedsam", 0.1, 1.0)]
    return _final([{"init": init, "algorithm": algorithm, "alpha": alpha, "participation": part, "seed": seed,
                    "test_acc": 0.94 + 0.004 * k + 0.001 * seed}
                   for k, (init, algorithm, alpha, part) in enumerate(groups) for seed in seeds])


def test_the_by_init_figure_fits_a_full_hd_screen(tmp_path):
    # Execute
    paths = accuracy_by_init_figure(_default_run_final(), "digits", "cnn_small", tmp_path / "by_init")

    # Assert: within the style's width (its tight crop adds at most the savefig padding a side)
    width = pyplot().imread(paths["png"]).shape[1]
    assert width <= (MAX_FIGURE_WIDTH_IN + 2 * pyplot().rcParams["savefig.pad_inches"]) * DPI


@pytest.mark.parametrize(("seeds", "note"), [
    ((0,), "one seed"),
    ((0, 1, 2), "mean and 95% t-interval over 3 seeds"),
], ids=["one", "three"])
def test_the_by_init_figure_reads_in_percent_and_says_how_many_seeds(tmp_path, monkeypatch, seeds, note):
    from fedscape.report.figures import accuracy as accuracy_figures

    # Prepare
    drawn = _drawn(monkeypatch, accuracy_figures)

    # Execute
    data = assert_figure_files(accuracy_by_init_figure(_default_run_final(seeds), "digits", "cnn_small",
                                                       tmp_path / "by_init"))

    # Assert: the axis in % (as the accuracy and headline tables), the CSV in fractions (as final.csv)
    fig = drawn["fig"]
    assert fig.get_suptitle() == f"digits / cnn_small: final accuracy by initialisation and alpha ({note})"
    panels = [ax for ax in fig.axes if ax.get_visible()]
    low, high = panels[0].get_ylim()
    assert 90 < low < 94 and 97 < high <= 100
    assert {ax.get_ylabel() for ax in panels} == {"final test accuracy (%)"}
    assert data["mean"].between(0.9, 1.0).all()


def _sampled_too(table: pd.DataFrame) -> pd.DataFrame:
    """`table`'s runs with all clients and again with half of them sampled."""
    half = table.assign(participation=0.5)
    if "run_id" in half:
        half["run_id"] = half["run_id"].str.replace("part~1.0", "part~0.5")
    return pd.concat([half, table], ignore_index=True)  # the sampled runs first in the table


@pytest.mark.parametrize("figure", ["by_init", "curves"])
def test_the_panels_of_all_clients_come_before_the_sampled_ones(tmp_path, monkeypatch, figure):
    from fedscape.report.figures import accuracy as accuracy_figures
    from fedscape.report.figures import curves as curve_figures

    # Prepare
    rounds = _sampled_too(rounds_table())
    drawn = _drawn(monkeypatch, accuracy_figures if figure == "by_init" else curve_figures)

    # Execute
    if figure == "by_init":
        accuracy_by_init_figure(final_table(rounds), "digits", "cnn_small", tmp_path / "by_init")
    else:
        curves_figure(rounds, "digits", "cnn_small", "accuracy", tmp_path / "curves")

    # Assert: as the ranking's and the tables' settings (all clients first)
    titles = [ax.get_title() for ax in drawn["fig"].axes if ax.get_visible() and ax.get_title()]
    assert titles == ["FedAvg · all clients", "FedAvg · 50% sampled"]
