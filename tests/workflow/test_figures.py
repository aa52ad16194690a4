"""Figures and the shared plotting style: valid PDF/PNG/CSV from small fixture tables, the style's
helpers, and the figures, tables and HTML report of the tiny end-to-end run."""

from __future__ import annotations

import pandas as pd
from helpers.figures import assert_figure_files
from helpers.workflow import snakemake

from fedscape.report.paired import PAIRED_COLUMNS
from fedscape.report.summary import FINAL_COLUMNS, SUMMARY_COLUMNS


# -- the tiny end-to-end run -------------------------------------------------------------------------
def test_tiny_run_tables_and_figures(tiny_run):
    final = pd.read_csv(tiny_run / "results/tables/final.csv")
    summary = pd.read_csv(tiny_run / "results/tables/summary.csv")
    rounds = pd.read_csv(tiny_run / "results/tables/rounds.csv")

    assert list(final.columns) == FINAL_COLUMNS
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert sorted(final["run_id"]) == sorted(rounds["run_id"].unique())
    assert len(summary) == len(final)  # one seed: one group per run
    # the tiny config's only interpolation pair is round 1 vs final of one run: no barrier to an IID run
    assert final["barrier_to_iid_loss"].isna().all()
    # the tiny config analyses the Hessian of the IID run at rounds 0 and final
    iid = final[final["run_id"].str.contains("alpha~iid")].iloc[0]
    assert iid["lambda_max"] > 0 and iid["lambda_max_init"] > 0 and iid["trace"] == iid["trace"]
    assert final[~final["run_id"].str.contains("alpha~iid")]["lambda_max"].isna().all()
    assert not (final.select_dtypes("number") == -1).any().any()
    for kind in ("curves/digits/cnn_small/accuracy", "curves/digits/cnn_small/loss",
                 "accuracy/digits/cnn_small/by_init", "accuracy/digits/cnn_small/table",
                 "accuracy/digits/cnn_small/headline", "accuracy/digits/cnn_small/ranking",
                 "cost/digits/cnn_small/cost"):
        base = tiny_run / "results/figures" / kind
        assert_figure_files({ext: f"{base}.{ext}" for ext in ("pdf", "png", "csv")})
    # the headline keeps the runs with an analysis value, the IID run alone: one row a setting, no paired difference,
    # and the paired figure says so over the CSV's header
    paired = assert_figure_files({ext: tiny_run / f"results/figures/accuracy/digits/cnn_small/paired.{ext}"
                                  for ext in ("pdf", "png", "csv")}, min_rows=0)
    assert list(paired.columns) == PAIRED_COLUMNS and paired.empty
    # every run of the tiny config does the same local work: no figure against it
    assert not list((tiny_run / "results/figures/accuracy/digits/cnn_small").glob("local_work.*"))


def test_tiny_run_report_builds(tiny_run):
    snakemake(tiny_run, "--configfile", "tiny.yaml", "--report", "report.html")

    html = (tiny_run / "report.html").read_text(errors="replace")
    assert html.lstrip().lower().startswith("<!doctype html")
    for category in ("Training curves", "Final accuracy", "Tables", "Barriers", "Hessian", "Loss landscapes", "Cost"):
        assert category in html, category
    assert "loss landscapes of federated learning" in html  # the front page (workflow.rst)
