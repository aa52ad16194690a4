"""Synthetic inputs of final.csv with every branch the analyses' columns take, and their outputs at ee381b1."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, "tests")
from helpers.tables import rounds_table, run_id

from fedscape.report.summary import final_table_job, summary_table_job

out = Path("tests/data/report/pairs")
rounds = rounds_table()
pairs = [
    (run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.7, False, "linear"),
    (run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.1, True, "linear"),   # aligned: not the barrier to IID
    (run_id("iid", 0), 3, run_id("0.1", 0), 3, 0.05, False, "bezier"),  # the curve: not the barrier to IID
    (run_id("iid", 1), 3, run_id("0.1", 0), 3, 9.0, False, "linear"),   # another seed
    (run_id("0.1", 1), 3, run_id("iid", 0), 3, 0.2, False, "linear"),   # only other-seed pair, b -> a
    (run_id("0.1", 1), 3, run_id("iid", 2), 3, 0.4, False, "linear"),   # a second other-seed pair: mean
    (run_id("iid", 2), 1, run_id("0.1", 2), 3, 5.0, False, "linear"),   # round 1: not final
    (run_id("iid", 0), 3, run_id("iid", 1), 3, 0.05, False, "linear"),  # IID vs IID
]
barriers, curves = [], []
for i, (a, ra, b, rb, value, aligned, path) in enumerate(pairs):
    for split, scale in (("train", 1.0), ("test", 10.0)):
        barriers.append({"pair_id": f"p{i}", "run_a": a, "run_b": b, "split": split, "barrier_loss": value * scale,
                         "barrier_error": value * scale / 2, "aligned": aligned, "path": path})
        for t in (0.0, 0.5, 1.0):
            curves.append({"pair_id": f"p{i}", "run_a": a, "round_a": ra, "run_b": b, "round_b": rb, "t": t,
                           "split": split, "loss": 1.0, "error": 0.5, "aligned": aligned, "path": path})
hessian, clients = [], []
for k, (alpha, seed) in enumerate([("iid", 0), ("iid", 1), ("0.1", 0), ("0.1", 1)]):
    rid = run_id(alpha, seed)
    for r in (0, 3) if seed == 0 else (3,):
        hessian.append({"run_id": rid, "round": r, "data": "all", "lambda_1": 10.0 + k + r, "lambda_2": 1.0,
                        "trace": 100.0 * (k + 1) + r, "sharpness": (10.0 + k + r) / 100,
                        "adaptive_sharpness": (100.0 * (k + 1) + r) / 100})
        hessian.append({"run_id": rid, "round": r, "data": "client_0", "lambda_1": 99.0, "lambda_2": 1.0,
                        "trace": 999.0, "sharpness": 0.99, "adaptive_sharpness": 9.99})
        clients.append({"run_id": rid, "round": r, "hn": 1.5 * (k + 1) + r, "hd": 0.9 - 0.1 * k})
hessian.append({"run_id": run_id("0.1", 2), "round": 1, "data": "all", "lambda_1": 11.0, "lambda_2": 1.0,
                "trace": 5.0, "sharpness": 0.11, "adaptive_sharpness": 0.05})
rounds.to_csv(out / "rounds.csv", index=False)
pd.DataFrame(barriers).to_csv(out / "barriers.csv", index=False)
pd.DataFrame(curves).to_csv(out / "interpolation.csv", index=False)
pd.DataFrame(hessian).to_csv(out / "hessian.csv", index=False)
pd.DataFrame(clients).to_csv(out / "hessian_clients.csv", index=False)
final_table_job(out / "rounds.csv", out / "final.csv", barriers=out / "barriers.csv",
                interpolation=out / "interpolation.csv", hessian=out / "hessian.csv",
                hessian_clients=out / "hessian_clients.csv")
summary_table_job(out / "final.csv", out / "summary.csv")
