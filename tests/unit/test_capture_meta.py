"""What capturing a run's steps did, as the run records it (fedscape.fl.engine.capture_of, meta.json's `capture`):
on a CPU with the stand-in graph makers of tests/unit/test_capture.py (a sequential client's passes) and
helpers.graphs.emulated_graph (a vectorised chunk's whole steps)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers.graphs import emulated_graph
from helpers.resume import killed_after_round
from helpers.stages import train_run
from helpers.synthetic import shard_data
from helpers.vectorized import model_of
from helpers.workflow import TINY_CONFIG
from unit.test_capture import bn_model, stand_in_maker
from unit.test_capture_stacked import CFG, SIZES

from fedscape.core.config import load_schema
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.fl import capture as capture_mod
from fedscape.fl import engine as engine_mod
from fedscape.fl.capture import CapturedForward
from fedscape.fl.engine import run_federated
from fedscape.fl.sequential import SequentialTrainer
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.params import FlatParams
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = TINY_CONFIG.parents[2] / "workflow" / "schemas" / "config.schema.yaml"
REFUSED = lambda step: (lambda: None)  # noqa: E731  (a stacked 'graph' whose replay computes nothing: refused)
# Sequential: clients of 9 and 14 samples in batches of 4, one epoch a round: 2 + 3 full batches a round, the first
# captured (and replayed once checked), the last smaller batch of each client eager.
SEQUENTIAL_SIZES, SEQUENTIAL_FULL_BATCHES = [9, 14], 5


def vectorized(model, data, strategy, cfg: TrainConfig, make_graph):
    return VectorizedTrainer(model, data, strategy, cfg, make_graph=make_graph)


def sequential(model, data, strategy, cfg: TrainConfig, make_graph):
    trainer = SequentialTrainer(model, FlatParams(model), data, strategy, cfg)
    if make_graph is not None:  # on a CPU: the capture of a card, with the stand-in maker
        trainer.capture = CapturedForward(model, cfg.batch_size, make_graphed=make_graph)
    return trainer


# (the trainer, its graph maker (None: eager), the data's shards, what the run's `capture` says)
CASES = {
    # SIZES in 2 rounds of one chunk: 24 stacked steps a round, of 4 shapes; the shape of 12 steps captured in the
    # first round, the other three once planned 8 times, in the second (tests/unit/test_capture_stacked.py)
    "stacked": (vectorized, emulated_graph, SIZES,
                {"graphs": 4, "replays": 12 + 24, "eager_steps": 12, "evictions": 0, "refusals": 0}),
    "stacked-refused": (vectorized, REFUSED, SIZES,
                        {"graphs": 0, "replays": 0, "eager_steps": 48, "evictions": 0, "refusals": 4}),
    "sequential": (sequential, stand_in_maker(), SEQUENTIAL_SIZES,
                   {"graphs": 1, "replays": 2 * SEQUENTIAL_FULL_BATCHES, "refusals": 0}),
    # a replay off by 0.1%, where the eager pass is deterministic: refused, every pass eager
    "sequential-refused": (sequential, stand_in_maker(scale=1.001), SEQUENTIAL_SIZES,
                           {"graphs": 0, "replays": 0, "refusals": 1}),
    "stacked-eager": (vectorized, None, SIZES, None),  # a CPU's: no step is ever captured
    "sequential-eager": (sequential, None, SEQUENTIAL_SIZES, None),
}


def run_of(case: str, progress_dir=None):
    """Two rounds of FedAvg of `case` (CASES) through run_federated, with its trainer."""
    make, make_graph, sizes, _ = CASES[case]
    data = shard_data(sizes)
    if make is vectorized:
        model, cfg = model_of("cnn_small"), TrainConfig(**{**CFG, "rounds": 2})
    else:
        model = bn_model()
        cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=4, lr=0.05, seed=0, client_parallel="sequential")
    strategy = make_strategy("fedavg")
    trainer = make(model, data, strategy, cfg, make_graph)
    return run_federated(model, data, strategy, cfg, progress_dir=progress_dir, trainer=trainer)


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_counts_what_capturing_its_steps_did(case):
    # Prepare / Execute
    result = run_of(case)

    # Assert: the counts, in the result and in its attempt; nothing where no step is captured
    expected = CASES[case][3]
    assert result.capture == expected
    assert result.attempts[-1].get("capture") == expected


# The counts of one round trained by a new trainer (a resumed attempt's): the stacked shapes planned fewer than 8 times
# in it stay eager, the recurring one is captured
ONE_ROUND = {"stacked": {"graphs": 1, "replays": 12, "eager_steps": 12, "evictions": 0, "refusals": 0},
             "sequential": {"graphs": 1, "replays": SEQUENTIAL_FULL_BATCHES, "refusals": 0}}


@pytest.mark.parametrize("killed_after", [1, 2], ids=["mid-run", "after-its-last-round"])
@pytest.mark.parametrize("case", ["stacked", "sequential"])
def test_a_resumed_run_records_its_last_attempts_counts(tmp_path, monkeypatch, case, killed_after):
    # Prepare: a run killed once round 1 (or its last, 2) is saved
    killed_after_round(monkeypatch, killed_after, lambda: run_of(case, tmp_path))

    # Execute
    resumed = run_of(case, tmp_path)

    # Assert: each attempt keeps its own counts, and the run's are those of the last attempt that trained rounds, not
    # their sum: the second's, a new trainer's of round 2 alone, where it resumed mid-run; the first's where the call
    # found every round done (it trained none, and captured nothing)
    if killed_after == 2:
        assert not resumed.trained
        assert [a["capture"] for a in resumed.attempts] == [CASES[case][3]] and resumed.capture == CASES[case][3]
    else:
        assert [a["capture"] for a in resumed.attempts] == [ONE_ROUND[case]] * 2
        assert resumed.capture == ONE_ROUND[case]


def tiny_config(client_parallel: str) -> dict:
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    config = {key: raw[key] for key in ("datasets", "models", "num_clients", "partition", "training")}
    config.update(inits={"random": {"kind": "random", "seed": 0}}, algorithms={"fedavg": {"name": "fedavg"}},
                  alphas=["iid"], seeds=[0], participation=[1.0])
    config["training"] = {**config["training"], "rounds": 2, "save_clients_at": [2], "device": "cpu",
                          "client_parallel": client_parallel}
    check_config(config, load_schema(SCHEMA))
    return config


@pytest.mark.parametrize(("client_parallel", "make_graph"), [
    ("vectorized", emulated_graph), ("vectorized", None), ("sequential", stand_in_maker()), ("sequential", None),
], ids=["stacked", "stacked-eager", "sequential", "sequential-eager"])
def test_meta_json_holds_the_counts_and_the_checkpoints_do_not(tmp_path, monkeypatch, client_parallel, make_graph):
    # Prepare: a train job on a CPU whose steps the stand-in captures (as on a card: every recurring stacked shape
    # once planned, the sequential passes where no blocker is declared), or eager as a CPU trains
    config = tiny_config(client_parallel)
    if make_graph is not None and client_parallel == "vectorized":
        monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
        monkeypatch.setattr(engine_mod, "VectorizedTrainer", type("StandIn", (VectorizedTrainer,), {
            "__init__": lambda self, *args: VectorizedTrainer.__init__(self, *args, make_graph=make_graph)}))
    elif make_graph is not None:
        monkeypatch.setattr("fedscape.fl.capture.capture_blocker", lambda *args: None)
        original = CapturedForward.__init__
        monkeypatch.setattr(CapturedForward, "__init__", lambda self, model, batch_size, strict=False, **_:
                            original(self, model, batch_size, strict, make_graph))
    (run,) = build_runs(config)

    # Execute
    _, _, outputs = train_run(config, [run], run, tmp_path)

    # Assert: meta.json says what the capture did (nothing where none was to be), and the checkpoints hold the rest
    # of meta.json unchanged, without it
    meta = json.loads((tmp_path / TRAIN_FILE_NAMES["meta"]).read_text())
    if make_graph is None:
        assert "capture" not in meta and meta["execution"] == client_parallel
    else:
        capture = meta["capture"]
        assert capture["graphs"] >= 1 and capture["replays"] > 0 and capture["refusals"] == 0
        assert meta["execution"] == f"{client_parallel}, captured"
    clients = json.loads(torch.load(outputs["clients"], weights_only=True)["meta"])
    for checkpoint in (load_trajectory(outputs["trajectory"]).meta, clients):
        assert checkpoint == {key: value for key, value in meta.items() if key != "capture"}

