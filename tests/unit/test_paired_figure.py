"""The paired-differences figure (accuracy kind `paired`): a forest plot of paired_differences.csv's rows of one dataset
and model, drawn through the registry's accuracy figure job."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from helpers.figures import assert_figure_files
from matplotlib.colors import to_hex

from fedscape.report.figures import accuracy_figure_job
from fedscape.report.figures import paired as paired_figures
from fedscape.report.figures.paired import BETTER_COLOR, NO_PAIR, OPEN_COLOR, WORSE_COLOR
from fedscape.report.paired import PAIRED_COLUMNS, paired_differences
from fedscape.report.summary import FINAL_COLUMNS

RUN = {"dataset": "digits", "model": "cnn_small", "init": "random", "num_clients": 10, "participation": 1.0,
       "status": "ok"}
# Two settings x FedAvg, FedSAM x seeds 0-2. IID: FedSAM +0.5, +1.5, -1 points (its interval spans 0), lambda_max -2,
# -1.9, -2; alpha 0.1: FedAvg's seed 2 diverged (out of both rows' pairs), FedSAM +3, +3.1 points and lambda_max -5,
# -4.5 on seeds 0 and 1.
FINAL = """\
algorithm,alpha,seed,test_acc,lambda_max,status
fedavg,inf,0,0.900,10.0,ok
fedavg,inf,1,0.910,11.0,ok
fedavg,inf,2,0.920,12.0,ok
fedsam,inf,0,0.905,8.0,ok
fedsam,inf,1,0.925,9.1,ok
fedsam,inf,2,0.910,10.0,ok
fedavg,0.1,0,0.600,20.0,ok
fedavg,0.1,1,0.650,21.0,ok
fedavg,0.1,2,0.100,99.0,diverged
fedsam,0.1,0,0.630,15.0,ok
fedsam,0.1,1,0.681,16.5,ok
fedsam,0.1,2,0.690,17.0,ok
"""


def final_of(text: str, **fields) -> pd.DataFrame:
    """final.csv rows of the runs in `text` (CSV of run fields and metrics), `fields` and the fields of RUN that
    neither sets."""
    runs = pd.read_csv(io.StringIO(text))
    runs = runs.assign(**{k: v for k, v in RUN.items() if k not in runs}).assign(**fields)
    runs["run_id"] = [f"{r.dataset}/{r.model}/{r.algorithm}/{r.alpha}/{r.seed}" for r in runs.itertuples()]
    return runs.reindex(columns=FINAL_COLUMNS)


def drawn_figure(monkeypatch) -> dict:
    """{"fig": the figure} of the next figure the paired module saves, kept open to be read."""
    drawn = {}
    save = paired_figures.save_figure
    monkeypatch.setattr(paired_figures, "save_figure", lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    return drawn


def as_written(table: pd.DataFrame) -> pd.DataFrame:
    """`table` as a CSV reads back (the figure's CSV is compared to it)."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)), dtype={"seeds": str})


def panel_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_figure_is_written_with_the_paired_rows_of_its_dataset_and_model(tmp_path, monkeypatch):
    # Prepare: final.csv of two models; the figure is of cnn_small's
    final = pd.concat([final_of(FINAL), final_of(FINAL, model="mlp")], ignore_index=True)
    final.to_csv(tmp_path / "final.csv", index=False)
    drawn = drawn_figure(monkeypatch)

    # Execute
    accuracy_figure_job(tmp_path / "final.csv", "paired", "digits", "cnn_small", tmp_path / "paired.png")

    # Assert: the three files; the CSV is paired_differences' rows of cnn_small, columns and order
    data = assert_figure_files({ext: tmp_path / f"paired.{ext}" for ext in ("pdf", "png", "csv")})
    written = pd.read_csv(tmp_path / "paired.csv", dtype={"seeds": str})
    expected = paired_differences(final)
    expected = expected[expected["model"] == "cnn_small"].reset_index(drop=True)
    assert list(data.columns) == PAIRED_COLUMNS
    pd.testing.assert_frame_equal(written, as_written(expected))
    assert written[["row", "n_pairs", "seeds"]].values.tolist() == [
        ["FedSAM · IID", 3, "0;1;2"], ["FedSAM · IID", 3, "0;1;2"],
        ["FedSAM · α=0.1", 2, "0;1"], ["FedSAM · α=0.1", 2, "0;1"]]
    # one panel per metric in the headline's order, a heading per setting, the baseline on the y axis
    acc, lam = drawn["fig"].axes
    assert (acc.get_title(), lam.get_title()) == ("Acc. (%) ↑", "λmax ↓")
    labels = [t.get_text() for t in acc.get_yticklabels()]
    assert labels == ["IID", "FedSAM", "α=0.1", "FedSAM"]
    assert acc.get_ylabel() == "row − baseline (FedAvg)"
    assert "n=3" in panel_texts(acc) and "n=2" in panel_texts(acc)


@pytest.mark.parametrize(("metric", "colors"), [
    # IID: +0.33 points, interval spans 0 (black); alpha 0.1: +3.05 points over seeds 0 and 1, above 0 (better)
    ("test_acc", [OPEN_COLOR, BETTER_COLOR]),
    # lambda_max lower is better: IID -1.97 (better), alpha 0.1 -4.75 (better)
    ("lambda_max", [BETTER_COLOR, BETTER_COLOR]),
], ids=["accuracy", "lambda_max"])
def test_a_bar_whose_interval_excludes_0_is_coloured_by_the_metrics_better_direction(tmp_path, monkeypatch, metric,
                                                                                      colors):
    # Prepare
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final_of(FINAL), "digits", "cnn_small", tmp_path / "paired")

    # Assert: each row's point and bar in its colour, top to bottom
    ax = drawn["fig"].axes[["test_acc", "lambda_max"].index(metric)]
    bars = sorted(ax.containers, key=lambda c: c.lines[0].get_ydata()[0])
    assert [to_hex(c.lines[0].get_color()) for c in bars] == [to_hex(c) for c in colors]


def test_worse_than_the_baseline_is_the_other_colour(tmp_path, monkeypatch):
    # Prepare: FedSAM's lambda_max above FedAvg's on every seed (lower is better: worse)
    text = "algorithm,alpha,seed,test_acc,lambda_max\n" + "".join(
        f"fedavg,0.1,{s},0.6,{10 + s}\nfedsam,0.1,{s},0.6,{12 + s + 0.1 * s * s}\n" for s in range(3))
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final_of(text), "digits", "cnn_small", tmp_path / "paired")

    # Assert
    (bar,) = drawn["fig"].axes[1].containers
    assert to_hex(bar.lines[0].get_color()) == to_hex(WORSE_COLOR)


@pytest.mark.parametrize(("diverged", "expected"), [
    # FedAvg's seeds 1 and 2 at alpha 0.1 diverged: one pair left, a hollow point and no bar
    ({1, 2}, "one pair"),
    # every FedAvg seed at alpha 0.1 diverged: no pair, the row says so
    ({0, 1, 2}, "none"),
], ids=["one_pair", "no_pair"])
def test_a_single_pair_is_a_hollow_point_and_no_pair_is_named(tmp_path, monkeypatch, diverged, expected):
    # Prepare
    final = final_of(FINAL.replace("fedavg,0.1,2,0.100,99.0,diverged", "fedavg,0.1,2,0.640,21.5,ok"))
    lost = (final["algorithm"] == "fedavg") & (final["alpha"] == 0.1) & final["seed"].isin(diverged)
    final.loc[lost, "status"] = "diverged"
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final, "digits", "cnn_small", tmp_path / "paired")

    # Assert: the IID row (y 1) keeps its bar; alpha 0.1's row (y 3.5) a hollow point without a bar, or the text
    acc = drawn["fig"].axes[0]
    assert [c.lines[0].get_ydata()[0] for c in acc.containers] == [1.0]
    hollow = [line for line in acc.lines if line.get_markerfacecolor() == "white"]
    named = [t for t in acc.texts if t.get_text() == NO_PAIR]
    if expected == "one pair":
        assert [line.get_ydata()[0] for line in hollow] == [3.5] and not named
        assert "n=1" in panel_texts(acc)
    else:
        assert not hollow and [t.get_position()[1] for t in named] == [3.5]


@pytest.mark.parametrize(("fedsam", "fedavg", "edge", "marker"), [
    ([math.inf, 1.0, 1.2], [0.5, 0.6, 0.7], 1.0, ">"),  # FedSAM's barrier overflowed on seed 0: +inf, right edge
    ([0.5, 0.6, 0.7], [0.4, math.inf, 0.6], 0.0, "<"),  # the baseline's overflowed: -inf, left edge
], ids=["plus_inf", "minus_inf"])
def test_an_infinite_difference_is_a_triangle_at_the_panel_edge(tmp_path, monkeypatch, fedsam, fedavg, edge, marker):
    # Prepare
    text = "algorithm,alpha,seed,test_acc,barrier_to_iid_loss\n" + "".join(
        f"{a},0.1,{s},0.6,{v}\n" for a, values in (("fedavg", fedavg), ("fedsam", fedsam))
        for s, v in enumerate(values))
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final_of(text), "digits", "cnn_small", tmp_path / "paired")

    # Assert: the barrier's panel has no bar but a triangle at its edge (x in axes coordinates), which the legend
    # names; the CSV keeps the infinite mean
    barrier = drawn["fig"].axes[1]
    (triangle,) = [line for line in barrier.lines if line.get_marker() == marker]
    assert list(triangle.get_xdata()) == [edge] and not triangle.get_clip_on()
    assert not barrier.containers
    (legend,) = drawn["fig"].legends
    (key,) = [(t.get_text(), h.get_marker()) for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
              if "inf" in t.get_text()]
    assert key == ("+inf: at the right edge" if edge else "−inf: at the left edge", marker)  # the triangle drawn
    data = pd.read_csv(tmp_path / "paired.csv").set_index("metric")
    assert data.loc["barrier_to_iid_loss", "mean_diff"] == math.copysign(math.inf, edge - 0.5)
    # the title's intervals say that this one has none (the accuracy's, over the same 3 pairs, has one)
    assert drawn["fig"].get_suptitle().endswith(
        "(mean and 95% t-interval over 3 seeds, none where a difference is infinite)")


def test_a_title_over_finite_differences_does_not_speak_of_infinite_ones(tmp_path, monkeypatch):
    # Prepare: the same barriers as above, all finite
    text = "algorithm,alpha,seed,test_acc,barrier_to_iid_loss\n" + "".join(
        f"{a},0.1,{s},0.6,{v}\n" for a, values in (("fedavg", [0.5, 0.6, 0.7]), ("fedsam", [0.9, 1.0, 1.2]))
        for s, v in enumerate(values))
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final_of(text), "digits", "cnn_small", tmp_path / "paired")

    # Assert
    assert drawn["fig"].get_suptitle().endswith("(mean and 95% t-interval over 3 seeds)")


@pytest.mark.parametrize(("text", "model", "message"), [
    # one row in each setting: nothing to compare
    ("algorithm,alpha,seed,test_acc\nfedavg,0.1,0,0.5\nfedsam,1.0,0,0.6\n", "cnn_small",
     "digits / cnn_small: one row in every setting, nothing to compare"),
    # no run of the figure's model
    (FINAL, "mlp", "no runs of digits / mlp in final.csv"),
], ids=["one_row_per_setting", "no_runs"])
def test_no_comparison_is_a_figure_that_says_so(tmp_path, monkeypatch, text, model, message):
    # Prepare
    final_of(text).to_csv(tmp_path / "final.csv", index=False)
    drawn = drawn_figure(monkeypatch)

    # Execute
    accuracy_figure_job(tmp_path / "final.csv", "paired", "digits", model, tmp_path / "paired.png")

    # Assert: the files, the CSV paired_differences' header alone
    assert_figure_files({ext: tmp_path / f"paired.{ext}" for ext in ("pdf", "png", "csv")}, min_rows=0, min_png=1000)
    assert (tmp_path / "paired.csv").read_text() == ",".join(PAIRED_COLUMNS) + "\n"
    (ax,) = drawn["fig"].axes
    assert panel_texts(ax) == [message]


@pytest.mark.parametrize(("extra", "title_end"), [
    # a third setting, alpha 1.0, of FedAvg alone (analysed): one row of the headline
    ("fedavg,1.0,0,0.8,3.0\n", "\nnot drawn, one row each: α=1"),
    # FedAvg and FedSAM at alpha 1.0 with no analysis value: the headline keeps only analysed groups, so none of it
    # (not "one row")
    ("fedavg,1.0,0,0.8,\nfedsam,1.0,0,0.82,\n", "\nnot drawn, no analysis value: α=1"),
    ("fedavg,1.0,0,0.8,3.0\nfedavg,0.5,0,0.8,\nfedsam,0.5,0,0.82,\n",
     "\nnot drawn, one row each: α=1; no analysis value: α=0.5"),
], ids=["one-row", "unanalysed", "both"])
def test_a_setting_without_a_comparison_is_named_in_the_title(tmp_path, monkeypatch, extra, title_end):
    # Prepare: FINAL and settings without a comparison
    final = pd.concat([final_of(FINAL), final_of("algorithm,alpha,seed,test_acc,lambda_max\n" + extra)],
                      ignore_index=True)
    drawn = drawn_figure(monkeypatch)

    # Execute
    paired_figures.paired_differences_figure(final, "digits", "cnn_small", tmp_path / "paired")

    # Assert
    assert drawn["fig"].get_suptitle().endswith(title_end)
    assert [t.get_text() for t in drawn["fig"].axes[0].get_yticklabels()] == ["IID", "FedSAM", "α=0.1", "FedSAM"]
