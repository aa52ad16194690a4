"""The figures across runs, by subject, from the aggregated tables; each function draws one figure with
fedscape.outputs.style and writes PDF, PNG and the plotted data as CSV:

- curves: train and test accuracy or loss of the global model per round (Nguyen et al. 2022).
- accuracy: final accuracy by initialisation and alpha (Nguyen et al. 2022), as an accuracy table (FedAlign
  Tables 1-4 and 7) and beside the analyses' headline numbers (FedAlign Table 1).
- paired: each headline row minus its setting's baseline, seed by seed, with its 95% interval (a forest plot of
  paired_differences.csv).
- algorithms: the algorithms' rank by final accuracy under each init, and final accuracy against local work
  (Nguyen et al. 2022).
- cost: seconds per round and peak memory per algorithm (FedAlign Table 5).

The kinds of final-accuracy figure and the curves' metrics are declared in fedscape.report.figure_kinds (read by
planning without matplotlib). This module holds the thin entry points of the figure rules' scripts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedscape.fl.settings import ROUNDS_COLUMNS
from fedscape.outputs.tables import read_table
from fedscape.report.cost import COST_COLUMNS
from fedscape.report.figure_kinds import accuracy_figure
from fedscape.report.figures.cost import cost_figure
from fedscape.report.figures.curves import curves_figure
from fedscape.report.summary import FINAL_COLUMNS, FINAL_NUMERIC

log = logging.getLogger("fedscape.figures")


def curves_figure_job(rounds: str | Path, dataset: str, model: str, metric: str, base_path: str | Path) -> None:
    curves_figure(read_table(rounds, ROUNDS_COLUMNS), dataset, model, metric, base_path)
    log.info("curves %s / %s (%s) -> %s", dataset, model, metric, base_path)


def accuracy_figure_job(final: str | Path, kind: str, dataset: str, model: str, base_path: str | Path,
                        work: dict[str, dict] | None = None) -> None:
    """The final-accuracy figure `kind` (fedscape.report.figure_kinds.ACCURACY_FIGURES) of one dataset and model;
    `work`: each algorithm label's local work, for the kinds that draw it."""
    figure, draw = accuracy_figure(kind)  # an unknown kind fails before final.csv is read
    df = read_table(final, FINAL_COLUMNS, numeric=FINAL_NUMERIC)
    if figure.work:
        draw(df, dataset, model, base_path, work or {})
    else:
        draw(df, dataset, model, base_path)
    log.info("final accuracy %s %s / %s -> %s", kind, dataset, model, base_path)


def cost_figure_job(cost: str | Path, dataset: str, model: str, base_path: str | Path) -> None:
    cost_figure(read_table(cost, COST_COLUMNS), dataset, model, base_path)
    log.info("cost %s / %s -> %s", dataset, model, base_path)
