"""The train stage trains the run's sampled fraction of clients (pilot study Fig. 7, FedAlign Table 4).

Regression test: `participation` is a run field (a wildcard of the train rule), not a `training` key, so
the train stage must pass it to the engine itself; it once did not, and every run trained all clients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedscape.core.config import load_schema
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.models.checkpoint import load_clients
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"


@pytest.mark.parametrize("participation", [0.5, 1.0])
def test_train_stage_samples_the_runs_fraction_of_clients(tmp_path, participation):
    raw = yaml.safe_load(TINY.read_text())
    config = {key: raw[key] for key in ("datasets", "models", "num_clients", "partition", "training")}
    config.update(inits={"random": {"kind": "random", "seed": 0}}, algorithms={"fedavg": {"name": "fedavg"}},
                  alphas=["iid"], seeds=[0], participation=[participation])
    config["training"] = {**config["training"], "rounds": 2, "save_clients_at": [1, 2], "device": "cpu"}
    check_config(config, load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    (run,) = build_runs(config)
    partition = tmp_path / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                    tmp_path / "counts.csv")
    init = tmp_path / "init.pt"
    init_job(init_settings(config, build_runs(config), run.dataset, run.model, run.init), init)
    outputs = {name: str(tmp_path / file) for name, file in TRAIN_FILE_NAMES.items()}

    train_job(train_settings(config, run), partition, init, outputs, tmp_path / "_progress")

    clients = load_clients(outputs["clients"])
    expected = round(participation * run.num_clients)
    assert [len(clients[r].client_ids) for r in (1, 2)] == [expected, expected]
