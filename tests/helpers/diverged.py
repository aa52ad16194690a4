"""A healthy and a diverged federated run on digits, trained with the workflow's stage functions.

The diverged run uses a huge client learning rate (an algorithm label with a `training.lr` override,
as a config would), so its training loss becomes NaN/inf within a few rounds and the engine stops it
early with status `diverged`; the healthy run next to it trains every round. Both share one
partition, so the analysis stages of a test can treat them like runs of one workflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedscape.core.config import load_schema
from fedscape.core.runs import Run, build_runs
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
ROUNDS = 3
DIVERGING_LR = 1.0e6


HEALTHY = {"algorithm": "fedavg"}
BOOM = {"algorithm": "boom"}


def raw_config() -> dict:
    """The config as a YAML file would hold it: two runs, `fedavg` (healthy) and `boom` (FedAvg at a huge learning
    rate), every analysis on both (small and fast settings)."""
    return {
        "datasets": {"digits": {"test_fraction": 0.25}},
        "models": ["cnn_small"],
        "inits": {"random": {"kind": "random", "seed": 0}},
        "algorithms": {"fedavg": {"name": "fedavg"},
                       "boom": {"name": "fedavg", "training": {"lr": DIVERGING_LR}}},
        "alphas": ["iid"],
        "num_clients": [3],
        "participation": [1.0],
        "seeds": [0],
        "partition": {"min_size": 10},
        "training": {"rounds": ROUNDS, "local_epochs": 1, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
                     "save_clients_at": [1, ROUNDS], "device": "cpu"},
        "interpolation": {"points": 3, "pairs": {"ok_r1_vs_final": {"a": HEALTHY, "round_a": 1, "b": HEALTHY},
                                                 "ok_vs_boom": {"a": HEALTHY, "b": BOOM}}},
        "layer_barriers": {"pairs": {"ok_clients": {"run": HEALTHY, "clients": [0, 1], "rounds": [1]},
                                     "boom_clients": {"run": BOOM, "clients": [0, 1]},
                                     "ok_vs_boom": {"a": HEALTHY, "b": BOOM, "rounds": [1]}}},
        "client_stats": {"enabled": True},
        "hessian": {"enabled": True, "rounds": ["final"], "top_k": 2, "trace_probes": 2, "eval_samples": 32,
                    "max_iter": 10, "tol": 1.0e-2, "density": {"lanczos_steps": 6, "probes": 1}},
        "landscapes": {"boom_hessian": {"kind": "hessian", "runs": [BOOM], "resolution": 3}},
    }


def diverged_config() -> dict:
    """`raw_config` checked against the schema, defaults filled."""
    return check_config(raw_config(), load_schema(SCHEMA))


@dataclass(frozen=True)
class DivergedRuns:
    """Where the two runs' files lie, and their train settings."""

    root: Path
    config: dict
    healthy: Run
    diverged: Run

    def run_dir(self, run: Run) -> Path:
        return self.root / "train" / run.run_id

    @property
    def partition(self) -> Path:
        return self.root / "partition.npz"

    def trajectory(self, run: Run) -> Path:
        return self.run_dir(run) / "trajectory.pt"

    def clients(self, run: Run) -> Path:
        return self.run_dir(run) / "clients.pt"

    def settings(self, run: Run) -> dict:
        return train_settings(self.config, run)


def build_diverged_runs(root: Path) -> DivergedRuns:
    """Partition, init and train both runs below `root` (a few seconds on one CPU core)."""
    from fedscape.stages.init import init_job
    from fedscape.stages.partition import partition_job
    from fedscape.stages.train import train_job

    config = diverged_config()
    runs = {r.algorithm: r for r in build_runs(config)}
    healthy, diverged = runs["fedavg"], runs["boom"]
    partition_job(partition_settings(config, "digits", "iid", 3, 0), root / "partition.npz",
                    root / "partition.csv")
    init_job(init_settings(config, build_runs(config), "digits", "cnn_small", "random"), root / "init.pt")
    out = DivergedRuns(root, config, healthy, diverged)
    for run in (healthy, diverged):
        d = out.run_dir(run)
        outputs = {"trajectory": d / "trajectory.pt", "clients": d / "clients.pt", "metrics": d / "metrics.csv",
                   "meta": d / "meta.json", "client_updates": d / "client_updates.csv"}
        train_job(train_settings(config, run), root / "partition.npz", root / "init.pt", outputs, d / "_progress")
    return out
