"""Shared pieces of the Hessian tests: an explicit matrix behind the operator interface the eigensolvers and
estimators use, and one tiny trained run whose Hessian jobs the stage tests run."""

from __future__ import annotations

from pathlib import Path

import torch

from fedscape.core.config import load_schema
from fedscape.core.runs import build_runs
from fedscape.plan.workflow import check_config
from helpers.configs import tiny_config
from helpers.stages import train_run
from helpers.workflow import ROOT

SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
# A Hessian section whose jobs take seconds: few products, a loose tolerance, a small evaluation subset, no density.
CHEAP = {"trace_probes": 4, "max_iter": 10, "tol": 0.5, "eval_samples": 64, "density": {"enabled": False}}


class DenseOperator:
    """An explicit symmetric matrix behind the operator interface the eigensolvers and estimators use."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.dim, self.device, self.dtype = matrix, matrix.shape[0], matrix.device, matrix.dtype
        self.products = 0

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.matrix @ v.to(self.dtype)


def one_round_run(tmp: Path, hessian: dict | None = None, **sections) -> dict:
    """One FedAvg run of the tiny config (4 IID clients, a random init), trained one round in `tmp`, with the CHEAP
    Hessian section (or `hessian`) and no other analysis: its config, runs, run, trajectory and partition. `sections`
    replace the config's top-level entries (e.g. `experiments` and `algorithms` of another algorithm)."""
    config = tiny_config(**(CHEAP if hessian is None else hessian))
    config.update({"alphas": ["iid"], "experiments": [{"alpha": "iid"}],
                   "inits": {"random": {"kind": "random", "seed": 0}}, **sections})
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["training"].update(rounds=1, save_clients_at=[])
    config = check_config(config, SCHEMA)
    runs = build_runs(config)
    (run,) = runs
    partition, _, train = train_run(config, runs, run, tmp)
    return {"config": config, "runs": runs, "run": run, "trajectory": train["trajectory"], "partition": partition}
