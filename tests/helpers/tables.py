"""Hand-made rounds tables of IID and alpha=0.1 runs over three seeds (summary and figure tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from fedscape.core.runs import Run

ACC = {("iid", 0): 0.91, ("iid", 1): 0.93, ("iid", 2): 0.95, ("0.1", 0): 0.40, ("0.1", 1): 0.52, ("0.1", 2): 0.61}


def run_id(alpha: str, seed: int, init: str = "random", algorithm: str = "fedavg") -> str:
    """The id of a digits / cnn_small run of 10 clients, all taking part."""
    return Run("digits", "cnn_small", init, algorithm, alpha, 10, "1.0", seed).run_id


def rounds_table(rounds: int = 3, final_acc: dict | None = None, inits=("random",)) -> pd.DataFrame:
    """Per-round rows of runs IID and alpha=0.1 x seeds 0-2; the last round's test_acc is ACC."""
    final_acc = final_acc or ACC
    rows = []
    for init in inits:
        for (alpha, seed), acc in final_acc.items():
            for r in range(rounds + 1):
                rows.append({
                    "run_id": run_id(alpha, seed, init), "dataset": "digits", "model": "cnn_small", "init": init,
                    "algorithm": "fedavg", "alpha": math.inf if alpha == "iid" else float(alpha), "num_clients": 10,
                    "participation": 1.0, "seed": seed, "round": r, "train_loss": 2.0 / (r + 1),
                    "train_acc": acc * r / rounds + 0.01, "test_loss": 2.1 / (r + 1), "test_acc": acc * r / rounds,
                    "seconds": 0.0 if r == 0 else 0.5 * r, "peak_mem_mb": 0.0, "status": "ok",
                })
    return pd.DataFrame(rows)


def assert_hd_bounded_or_unresolved(results: Path, clients: pd.DataFrame) -> None:
    """hessian_clients.csv's HN finite (an unbiased estimate: negative where a small test budget does not resolve the
    clients' difference), and HD in [-1, 1] where the products resolved every client's Hessian diagonal; NaN only
    where the job's hessian.json names the clients they did not resolve (a small test budget may not)."""
    for row in clients.itertuples():
        details = json.loads((Path(results) / "hessian" / row.run_id / f"round~{row.round}" / "hessian.json")
                             .read_text())
        assert math.isfinite(row.hn) or details["hd_unresolved_clients"], row
        if math.isnan(row.hd):
            assert details["hd_unresolved_clients"], row
        else:
            assert -1 <= row.hd <= 1 and details["hd_unresolved_clients"] == [], row
