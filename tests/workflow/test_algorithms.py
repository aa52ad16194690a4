"""The FL algorithm suite: reductions to FedAvg, hand computations, invariants, sub-networks, learning."""
from __future__ import annotations

import pandas as pd
import pytest
from helpers.configs import TINY

from fedscape.report.cost import COST_COLUMNS

RESIDUAL_ALGOS = {"stochdepth"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


LEARN_SETUPS = {"mlp": ("mlp", None, 3, 1, 16), "resnet20": ("resnet20", 100, 3, 2, 16)}


def test_tiny_run_cost_table_and_extra_algorithm(tiny_run):
    cost = pd.read_csv(tiny_run / "results/tables/cost.csv")
    rounds = pd.read_csv(tiny_run / "results/tables/rounds.csv")

    assert list(cost.columns) == COST_COLUMNS
    assert set(cost["algorithm"]) == set(rounds["algorithm"])
    assert (cost["median_seconds_per_round"] > 0).all() and (cost["peak_mem_mb"] > 0).all()
    assert (cost["device"] == "cpu").all()
    assert (cost.loc[cost["algorithm"] == "fedavg", "seconds_vs_fedavg"] == 1.0).all()  # FedAvg per setting
    prox = rounds[rounds["algorithm"] == "fedprox"]
    assert len(prox) == TINY["training"]["rounds"] + 1 and (prox["status"] == "ok").all()
    assert prox["test_acc"].iloc[-1] > 0.3
