"""What a job records of how it computed (`models.device.describe_compute`: its torch, and the switches that decide
whether its numbers repeat bit for bit, as in effect under `use_precision`; each attempt's torch), and the settings a
job or a library caller is refused before it computes: an unknown precision (before an `auto` job waits for a card),
a non-finite hyperparameter, and the local training's batch size, lr, momentum and weight decay out of the schema's
bounds."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import typing

import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA, problems_of, tiny_config
from helpers.plans import analysis_settings, stage_settings

from fedscape.analysis.barriers.definitions import InterpolationJob, LayerBarriersJob
from fedscape.analysis.hessian.definitions import EigenSettings
from fedscape.analysis.landscape.definitions import LandscapeChunkJob
from fedscape.core import manifest
from fedscape.fl.hparams.registry import ALGORITHM_SPECS, algorithm_config
from fedscape.fl.settings import TrainConfig
from fedscape.models import device as device_mod
from fedscape.models.device import describe_compute, job_precision, use_precision
from fedscape.outputs.tables import UNRECORDED
from fedscape.plan.workflow import check_config
from fedscape.report.cost import COST_COLUMNS, cost_table
from fedscape.stages.init_settings import InitJob
from fedscape.stages.progress import attempt_record
from fedscape.stages.train_settings import TrainJob


@pytest.fixture
def torch_switches():
    """cuDNN's benchmark mode and torch's deterministic algorithms as torch's defaults have them (off), restored
    after the test."""
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(False)
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.use_deterministic_algorithms(saved[1])


# -- the compute record -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "precision", "benchmark"), [
    ("cpu", "fp32", False),
    ("cpu", "bf16", False),
    ("cuda", "fp32", True),  # use_precision turns cuDNN's benchmark mode on for a card's work (no card needed here)
    ("cuda", "tf32", True),
])
@pytest.mark.parametrize("deterministic", [False, True])
def test_the_compute_record_names_the_torch_and_the_switches_in_effect_under_use_precision(
        torch_switches, device, precision, benchmark, deterministic):
    # Prepare: the switches outside any precision context at torch's defaults, deterministic algorithms as a user set
    torch.use_deterministic_algorithms(deterministic)

    # Execute: recorded outside the job's precision context (as a train job records it), then read inside it
    compute = describe_compute(torch.device(device), precision)
    with use_precision(precision, device):
        inside = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()

    # Assert: what the work ran under, not what was set where the record was made; nothing left changed
    assert compute["torch"] == torch.__version__ and type(compute["torch"]) is str  # loadable with weights_only
    assert (compute["cudnn_benchmark"], compute["deterministic_algorithms"]) == inside == (benchmark, deterministic)
    assert torch.backends.cudnn.benchmark is False


def test_each_attempt_records_its_torch_and_the_cost_table_reads_attempts_with_and_without_it(tmp_path):
    # Prepare: a run whose round 1 an older attempt trained (its record names no torch) and whose rounds 2 and 3 an
    # attempt of this code trained
    attempt = attempt_record(describe_compute(torch.device("cpu"), "fp32"))
    older = {key: value for key, value in attempt.items() if key != "torch"}
    metrics, meta = tmp_path / "metrics.csv", tmp_path / "meta.json"
    pd.DataFrame({"run_id": "r0", "dataset": "digits", "model": "cnn_small", "algorithm": "fedavg", "alpha": 0.1,
                  "num_clients": 4, "participation": 1.0, "round": [0, 1, 2, 3], "seconds": [0.0, 1.0, 2.0, 2.0],
                  "peak_mem_mb": 10.0}).to_csv(metrics, index=False)
    meta.write_text(json.dumps({
        **attempt, "execution": "sequential", "settings": {"algorithm": "fedavg",
                                                           "training": {"local_epochs": 1, "batch_size": 16}},
        "attempts": [{**older, "from_round": 1, "execution": "sequential"},
                     {**attempt, "from_round": 2, "execution": "sequential"}]}))

    # Execute
    table = cost_table([(metrics, meta)])

    # Assert: the attempt names its torch; cost.csv's columns are its contract, every round timed under its device
    assert attempt["torch"] == torch.__version__
    assert list(table.columns) == COST_COLUMNS
    assert table["num_rounds"].sum() == 3 and UNRECORDED not in set(table["precision"])


# -- precisions ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned() -> dict:
    """The settings of one job of each kind that computes in a precision its settings carry, as the tiny config plans
    them."""
    config = check_config(tiny_config(), SCHEMA)
    analyses = analysis_settings(config)
    stages = stage_settings(config)
    return {"landscape_chunk": (LandscapeChunkJob, analyses["landscape_chunk"][0], ()),
            "interpolation": (InterpolationJob, analyses["interpolation"][0], ()),
            "layer_barriers": (LayerBarriersJob, analyses["layer_barriers"][0], ()),
            "pretrained init": (InitJob, next(s for kind, s in stages if kind is InitJob and s["kind"] == "pretrained"),
                                ()),
            "train": (TrainJob, next(s for kind, s in stages if kind is TrainJob), ("training",))}


@pytest.mark.parametrize("kind", ["landscape_chunk", "interpolation", "layer_barriers", "pretrained init", "train"])
@pytest.mark.parametrize(("precision", "refused"), [("fp16", True), ("half", True), ("bf16", False),
                                                    ("tf32", False)])
def test_job_settings_refuse_an_unknown_precision(planned, kind, precision, refused):
    # Prepare
    job_kind, settings, where = planned[kind]
    changed = copy.deepcopy(dict(settings))
    target = changed
    for key in where:
        target = target[key]
    target["precision"] = precision

    # Execute / Assert
    if refused:
        with pytest.raises(ValueError, match=re.escape(f"precision must be one of fp32, tf32, bf16, got "
                                                       f"{precision!r}")):
            job_kind.from_settings(changed)
    else:
        job = job_kind.from_settings(changed)
        for key in where:
            job = getattr(job, key)
        assert job.precision == precision


READ_PRECISION = {"from the job's settings": lambda s: LandscapeChunkJob.from_settings(s).precision,
                  "as given": lambda s: s["precision"]}  # settings that do not check it themselves


@pytest.mark.parametrize("read", list(READ_PRECISION))
@pytest.mark.parametrize(("precision", "reaches_the_card"), [("fp16", False), ("bf16", True)])
def test_a_job_s_precision_is_read_before_its_device_is_resolved(planned, monkeypatch, read, precision,
                                                                 reaches_the_card):
    # Prepare: a stage of a chunk job's settings; resolving its device (for `auto`: perhaps waiting for a card) noted
    _, settings, _ = planned["landscape_chunk"]
    settings = {**settings, "precision": precision}
    monkeypatch.setattr(manifest, "_NOTES", {})
    resolved, ran = [], []
    monkeypatch.setattr(device_mod, "resolve_device", lambda name: resolved.append(name) or torch.device("cpu"))

    @job_precision(READ_PRECISION[read])
    def stage(settings):
        ran.append(torch.is_autocast_enabled("cpu"))

    # Execute
    try:
        stage(settings)
        error = None
    except ValueError as exc:
        error = str(exc)

    # Assert: a refused precision fails before the device is resolved, an accepted one runs in it
    assert bool(resolved) is reaches_the_card and (error is None) is reaches_the_card
    if reaches_the_card:
        assert ran == [True] and manifest.noted("compute")["precision_used"] == "bf16"
    else:
        assert "'fp16'" in error and "fp32, tf32, bf16" in error


# -- hyperparameters ----------------------------------------------------------------------------------------------
FLOAT_HYPERPARAMETERS = [(name, field.name) for name, spec in ALGORITHM_SPECS.items()
                         for field in dataclasses.fields(spec.config)
                         if typing.get_type_hints(spec.config)[field.name] is float]


@pytest.mark.parametrize(("name", "key"), FLOAT_HYPERPARAMETERS, ids=[f"{n}.{k}" for n, k in FLOAT_HYPERPARAMETERS])
@pytest.mark.parametrize("value", [math.inf, -math.inf, "default"])
def test_every_float_hyperparameter_refuses_an_infinity(name, key, value):
    # Prepare
    default = getattr(ALGORITHM_SPECS[name].config(), key)
    given = default if value == "default" else value

    # Execute / Assert: an infinity passes every lower bound (FedAdam's tau=inf freezes the run) and is refused as
    # not finite; the default is taken
    if value == "default":
        assert getattr(algorithm_config(name, {key: given}), key) == default
    else:
        with pytest.raises(ValueError, match=f"^{key} must be a finite number, got {given}$"):
            algorithm_config(name, {key: given})


# -- the local training's bounds: the schema's --------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "refused", "message"), [
    ("batch_size", 0, True, "batch_size must be an integer >= 1, got 0"),
    ("batch_size", -4, True, "batch_size must be an integer >= 1, got -4"),
    ("batch_size", 1, False, None),
    ("lr", 0.0, True, "lr must be a finite number > 0, got 0.0"),
    ("lr", -0.1, True, "lr must be a finite number > 0, got -0.1"),
    ("lr", math.inf, True, "lr must be a finite number > 0, got inf"),
    ("lr", math.nan, True, "lr must be a finite number > 0, got nan"),
    ("lr", 1e-9, False, None),
    ("momentum", 1.0, True, "momentum must be in [0, 1), got 1.0"),
    ("momentum", -0.1, True, "momentum must be in [0, 1), got -0.1"),
    ("momentum", math.nan, True, "momentum must be in [0, 1), got nan"),
    ("momentum", 0.0, False, None),
    ("momentum", 0.99, False, None),
    ("weight_decay", -1e-9, True, "weight_decay must be a finite number >= 0, got -1e-09"),
    ("weight_decay", math.inf, True, "weight_decay must be a finite number >= 0, got inf"),
    ("weight_decay", 0.0, False, None),
    ("weight_decay", 5e-4, False, None),
])
def test_train_config_refuses_what_the_config_schema_refuses(key, value, refused, message):
    # Prepare: the same value in a config's training section
    config = tiny_config()
    config["training"][key] = value

    # Execute
    try:
        TrainConfig(**{key: value})
        error = None
    except ValueError as exc:
        error = str(exc)

    # Assert: the library refuses exactly what the workflow's config check does, naming the key
    assert error == message
    assert bool(problems_of(config)) is refused


@pytest.mark.parametrize(("field", "value", "named"), [
    ("precision", "bf16", "Hessian precision"),
    ("precision", "fp16", "Hessian precision"),
    ("method", "lanczoz", "Hessian method"),
])
def test_a_plane_job_s_eigen_settings_refuse_what_its_hessian_settings_refuse(field, value, named):
    # Prepare: a plane job's eigen settings as the Hessian job's would give them, one field changed
    good = {"top_k": 2, "method": "lanczos", "tol": 1e-3, "max_iter": 100, "eval_samples": None, "batch_size": 64,
            "cache_graph": False, "seed": 0, "precision": "fp32"}
    EigenSettings(**good)

    # Execute / Assert
    with pytest.raises(ValueError, match=named):
        EigenSettings(**{**good, field: value})
