"""Which figures across runs the report draws, declared without pandas or matplotlib: planning lists their
targets from here (fedscape.plan.report), the figure jobs draw them with the functions named here
(fedscape.report.figures). Adding a kind of final-accuracy figure is its drawing function and one entry in
ACCURACY_FIGURES."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from fedscape.core.names import unknown_name_error

# The metric of a curves figure -> its rounds.csv columns on the aggregate training data and on the test set.
CURVE_METRICS: dict[str, tuple[str, str]] = {"accuracy": ("train_acc", "test_acc"),
                                              "loss": ("train_loss", "test_loss")}


@dataclass(frozen=True)
class AccuracyFigure:
    """A figure of final.csv per dataset and model: figures/accuracy/<dataset>/<model>/<kind>.{png,pdf,csv}."""

    draw: str  # "module:function" below fedscape.report.figures: function(final, dataset, model, base_path)
    paper: str  # what the figure reproduces
    work: bool = False  # the function takes `work` too: each algorithm label's local work (plan.report.local_work)


ACCURACY_FIGURES: dict[str, AccuracyFigure] = {
    "by_init": AccuracyFigure("accuracy:accuracy_by_init_figure",
                              "Nguyen et al. 2022 (Where to Begin?): pre-training closes the non-IID gap"),
    "table": AccuracyFigure("accuracy:accuracy_table_figure", "Mendieta et al. 2022, FedAlign Tables 1-4 and 7"),
    "headline": AccuracyFigure("accuracy:headline_table_figure", "Mendieta et al. 2022, FedAlign Table 1"),
    "paired": AccuracyFigure("paired:paired_differences_figure",
                             "Mendieta et al. 2022, FedAlign Table 1's comparisons, paired by seed"),
    "ranking": AccuracyFigure("algorithms:ranking_figure",
                              "Nguyen et al. 2022 (Where to Begin?): pre-training changes which algorithm wins"),
    "local_work": AccuracyFigure("algorithms:local_work_figure",
                                 "Nguyen et al. 2022 (Where to Begin?): local updates pay off more from pre-training",
                                 work=True),
}
ACCURACY_KINDS: tuple[str, ...] = tuple(ACCURACY_FIGURES)


def accuracy_figure(kind: str) -> tuple[AccuracyFigure, Callable]:
    """The declaration of accuracy figure `kind` and its drawing function (whose module imports matplotlib);
    ValueError naming the closest and every valid kind for an unknown one."""
    if kind not in ACCURACY_FIGURES:
        raise unknown_name_error("accuracy figure kind", kind, ACCURACY_KINDS)
    figure = ACCURACY_FIGURES[kind]
    module, _, name = figure.draw.partition(":")
    return figure, getattr(importlib.import_module(f"fedscape.report.figures.{module}"), name)
