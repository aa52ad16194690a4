"""An iid_warmup init's own `training`: the keys the warm-up never reads (its rounds, SWA, the client models it keeps,
how often a run evaluates and keeps its global model) are refused at planning as `inits.<label>.training.<key>`, with
why; every key it trains with is accepted (fedscape.stages.init_settings.WARMUP_UNREAD_TRAINING)."""

from __future__ import annotations

import copy

import pytest
from helpers.configs import SCHEMA, problems_of

from fedscape.core.runs import build_runs
from fedscape.fl.settings import RUN_ONLY_TRAINING_KEYS
from fedscape.plan.init import planned_init
from fedscape.plan.workflow import check_config


def warmup_config(training: dict) -> dict:
    """A config of two runs on digits that start from an iid_warmup init `warm` (its own `training`)."""
    return {"datasets": {"digits": {"test_fraction": 0.25}}, "models": ["cnn_small"],
            "inits": {"warm": {"kind": "iid_warmup", "rounds": 2, "num_clients": 4, "training": training}},
            "algorithms": {"fedavg": {"name": "fedavg"}}, "experiments": [{"alpha": a} for a in ("iid", 0.5)],
            "experiment_defaults": {"init": "warm", "algorithm": "fedavg"}, "num_clients": [4], "seeds": [0],
            "partition": {"min_size": 10}, "training": {"rounds": 3, "local_epochs": 1, "batch_size": 16,
                                                         "device": "cpu"}}


@pytest.mark.parametrize(("key", "value", "why"), [
    ("eval_every", 5, "the warm-up evaluates every round: the runs' evaluation schedule is not the init's"),
    ("save_every", 10, "the warm-up keeps only its last global model (the init), whatever rounds a run keeps"),
    ("save_clients_at", [1], "the warm-up keeps no client models, only its last global model (the init)"),
    # (refused before, now from the same table)
    ("rounds", 3, "the warm-up's rounds are inits.warm.rounds (2)"),
    ("swa", {"start_round": 1, "cycle": 1}, "an IID warm-up is plain FedAvg and keeps its last global model"),
])
def test_a_key_the_warmup_does_not_read_is_refused_naming_it(key, value, why):
    # Prepare
    config = warmup_config({"lr": 0.02, key: value})

    # Execute
    problems = problems_of(config)

    # Assert: the key where it is written, why, and the fix (nothing else is wrong with the config)
    assert f"inits.warm.training.{key}: {why}" in problems
    assert f"remove {key} from its training" in problems
    assert problems.count("  - ") == 1


def test_what_a_run_evaluates_and_keeps_is_refused_for_every_such_key():
    # every key a warm-up leaves at its baseline (`plan.init.init_extras`) is one it refuses
    for key in RUN_ONLY_TRAINING_KEYS:
        assert f"inits.warm.training.{key}:" in problems_of(warmup_config({key: 2}))


@pytest.mark.parametrize("training", [
    {},
    {"lr": 0.02, "momentum": 0.5, "batch_size": 8, "local_epochs": 2, "weight_decay": 1e-4},
    {"local_steps": 3, "lr_schedule": "constant", "momentum": 0.9, "nesterov": True},
    {"eval_batch_size": 64, "precision": "fp32", "capture": "eager", "client_parallel": "sequential",
     "client_chunk_size": 2, "keep_optimizer_state": True},
    {"optimizer": "adamw", "momentum": 0.0, "adamw_beta2": 0.99, "drop_last": True, "batch_sampling": "replacement"},
    {"swa": None},  # says what the warm-up does: keeps its last global model
])
def test_every_key_the_warmup_trains_with_is_accepted_and_reaches_its_job(training):
    # Prepare
    config = warmup_config(training)

    # Execute
    problems = problems_of(config)

    # Assert: valid, and each value the warm-up's training
    assert problems == ""
    checked = check_config(copy.deepcopy(config), SCHEMA)
    job = planned_init(checked, build_runs(checked), "digits", "cnn_small", "warm")
    for key, value in training.items():
        if key != "swa":
            assert getattr(job.warmup_training, key) == value


def test_the_runs_own_settings_of_the_section_are_not_the_warmups_to_refuse():
    # Prepare: the `training` section (the runs') keeps every 3rd round; the warm-up's own training gives none of it
    config = warmup_config({"lr": 0.02})
    config["training"] = {**config["training"], "save_every": 3, "save_clients_at": [2]}

    # Execute / Assert
    assert problems_of(config) == ""
