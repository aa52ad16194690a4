"""The typed job contracts of the partition, init, train and client_stats rules (fedscape.core.jobs): every job that
a shipped config plans reads back to the same settings, each kind's required fields are the keys of its first
results, and each later field's declared default is its recorded baseline."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from helpers.configs import DEFAULT, SCHEMA
from helpers.plans import stage_settings
from helpers.workflow import ROOT, TINY_CONFIG

from fedscape.analysis.client_stats.definitions import ClientStatsJob
from fedscape.core.config import RESULT_VERSION, canonical
from fedscape.core.jobs import JobSettings, JobSettingsError, declared_defaults, to_settings
from fedscape.core.runs import build_runs
from fedscape.fl.settings import RUN_ONLY_TRAINING_KEYS, TrainConfig, TrainingSettings
from fedscape.fl.swa import SWASettings
from fedscape.plan.init import init_settings, planned_init
from fedscape.plan.train import planned_train, train_settings
from fedscape.plan.workflow import check_config, load_config
from fedscape.stages.init_settings import (
    INIT_JOBS,
    KIND_KEYS,
    ContinueInit,
    InitJob,
    PretrainedInit,
    RandomInit,
    WarmupInit,
)
from fedscape.stages.partition_settings import PartitionJob
from fedscape.stages.train_settings import TrainJob

SHIPPED = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "papers").glob("*.yaml")), TINY_CONFIG]

# Each kind's settings as its first results had them (required fields), and its later fields with their baselines:
# the behaviour of every job before the field existed. A record, not a copy of the code: a new field must be added
# here with its baseline, and a default that moves off its baseline fails, since it would rerun the finished jobs
# that relied on the old behaviour.
CONTRACTS: dict[type[JobSettings], tuple[set[str], dict]] = {
    PartitionJob: ({"dataset", "dataset_options", "alpha", "num_clients", "seed", "min_size", "max_tries"},
                   {"kind": None}),
    RandomInit: ({"dataset", "model", "model_options", "in_channels", "image_size", "num_classes", "init", "kind",
                  "seed"}, {}),
    PretrainedInit: ({"dataset", "model", "model_options", "in_channels", "image_size", "num_classes", "init", "kind",
                      "seed", "epochs", "lr", "batch_size", "momentum", "weight_decay", "proxy_dataset",
                      "proxy_data_dir", "proxy_dir", "max_samples", "dataset_options", "device"},
                     {"precision": "fp32", "proxy_normalisation": "own", "proxy_reader_version": None}),
    WarmupInit: ({"dataset", "model", "model_options", "in_channels", "image_size", "num_classes", "init", "kind",
                  "seed", "rounds", "num_clients", "partition_seed", "training", "dataset_options", "partition",
                  "warmup_training", "device"}, {}),
    ContinueInit: ({"dataset", "model", "model_options", "in_channels", "image_size", "num_classes", "init", "kind",
                    "run", "source_run_id"}, {"source_swa": False, "source_model": "global"}),
    TrainJob: ({"run", "run_id", "dataset_options", "algorithm", "hyperparameters", "training"}, {}),
    TrainingSettings: ({"batch_size", "bf16_autocast", "client_chunk_size", "client_parallel", "device",
                        "eval_batch_size", "local_epochs", "lr", "momentum", "rounds", "save_clients_at",
                        "weight_decay"},
                       {"keep_optimizer_state": False, "local_steps": None, "optimizer": "sgd", "adamw_beta1": 0.9,
                        "adamw_beta2": 0.999, "adamw_eps": 1e-8, "lr_schedule": "constant",
                        "lr_schedule_over": "rounds", "lr_warmup": 0.0, "precision": "fp32", "eval_every": 1,
                        "save_every": 1, "nesterov": False, "drop_last": False, "batch_sampling": "shuffle",
                        "capture": "auto", "swa": None}),
    SWASettings: ({"start_round", "cycle", "lr_ratio", "scheduled_lr"}, {"bn_stats": "stored"}),
    ClientStatsJob: ({"run_ids"}, {}),
}
RULES = {PartitionJob: "partition", InitJob: "init", TrainJob: "train", ClientStatsJob: "client_stats"}


def _without_version(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != RESULT_VERSION}


def _assert_round_trips(kind: type[JobSettings], settings: dict) -> None:
    stripped = _without_version(settings)
    job = kind.from_settings(settings)

    assert to_settings(job) == stripped
    if kind is not ClientStatsJob:  # its params are separate values: no key order to keep
        assert repr(canonical(to_settings(job))) == repr(stripped)  # the text Snakemake records


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda p: p.name)
def shipped(request) -> list[tuple[type[JobSettings], dict]]:
    return stage_settings(load_config(request.param, ROOT / "workflow" / "schemas" / "config.schema.yaml"))


def test_every_planned_job_of_a_shipped_config_reads_back_to_its_settings(shipped):
    # Assert: the builders go through the declared shapes (a key outside them would fail to read back)
    assert {kind for kind, _ in shipped} == set(RULES)
    for kind, settings in shipped:
        _assert_round_trips(kind, settings)


def _edited(edit) -> dict:
    config = copy.deepcopy(DEFAULT)
    edit(config)
    return check_config(config, SCHEMA)


def _swa_on_batch_norm(config: dict) -> None:
    config["model_options"] = {"cnn_small": {"norm": "batch"}}
    config["algorithms"]["fedavg"]["training"] = {"swa": {"cycle": 2, "bn_stats": "recomputed"}}


@pytest.mark.parametrize(("edit", "written"), [
    (lambda c: c["training"].update(optimizer="adamw", momentum=0.0, lr_schedule="cosine", precision="bf16",
                                    eval_every=5, save_every=2, keep_optimizer_state=True),
     "'keep_optimizer_state': True, 'local_epochs': 2, 'lr': 0.05, 'lr_schedule': 'cosine', 'momentum': 0.0, "
     "'optimizer': 'adamw', 'precision': 'bf16'"),
    (lambda c: c["training"].update(local_epochs=None, local_steps={"low": 1, "high": 3}),
     "'local_epochs': None, 'local_steps': {'draw': 'round', 'high': 3, 'low': 1}"),
    (lambda c: c["training"].update(local_epochs=[1, 2, 1, 2, 1, 2, 1, 2, 1, 2]), "'local_epochs': [1, 2, 1, 2"),
    (lambda c: c["training"].update(momentum=0.9, nesterov=True, swa={"cycle": 2, "start_round": 20}),
     "'swa': {'cycle': 2, 'lr_ratio': 0.01, 'scheduled_lr': 'client', 'start_round': 20}"),
    (_swa_on_batch_norm, "'swa': {'bn_stats': 'recomputed', 'cycle': 2,"),
    (lambda c: (c.update(partitions={"c2": {"kind": "classes", "classes_per_client": 2}}),
                c["experiments"].append({"alpha": "c2"})), "'kind': {'classes_per_client': 2, 'kind': 'classes'}"),
], ids=["later_training_keys", "drawn_steps", "work_per_client", "swa", "swa_bn_stats", "partition_label"])
def test_jobs_with_later_keys_set_read_back_to_their_settings(edit, written):
    # Prepare
    jobs = stage_settings(_edited(edit))

    # Execute / Assert: the later keys reach the settings, sorted among the others, and read back
    assert any(written in repr(settings) for _, settings in jobs)
    for kind, settings in jobs:
        _assert_round_trips(kind, settings)


@pytest.mark.parametrize("kind", list(CONTRACTS), ids=lambda k: k.__name__)
def test_required_fields_are_the_first_keys_and_every_later_default_is_its_baseline(kind):
    # Prepare
    first, baselines = CONTRACTS[kind]
    defaults = declared_defaults(kind)

    # Assert: a field without a default would enter every finished job's settings; a default off its baseline
    # would change those of the jobs that relied on the baseline
    required = {f.name for f in dataclasses.fields(kind)} - set(defaults)
    assert required == first, f"{kind.__name__}: give {sorted(required - first)} a default equal to its baseline"
    assert defaults == baselines, f"{kind.__name__}: record the baseline of a new field here; defaults {defaults}"


def test_the_train_job_s_training_carries_every_training_key_of_the_schema_and_of_train_config():
    schema = set(SCHEMA["properties"]["training"]["properties"])
    declared = {f.name for f in dataclasses.fields(TrainingSettings)}

    assert declared == schema
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {"augment", "seed", "participation"} <= declared
    assert set(RUN_ONLY_TRAINING_KEYS) <= set(declared_defaults(TrainingSettings))  # a warm-up leaves them out


def test_each_init_kind_has_a_job_with_the_keys_it_reads():
    assert set(INIT_JOBS) == set(KIND_KEYS)
    for kind, job in INIT_JOBS.items():
        assert set(KIND_KEYS[kind]) <= {f.name for f in dataclasses.fields(job)}, kind


def test_the_partition_job_carries_the_partition_section():
    assert set(SCHEMA["properties"]["partition"]["properties"]) <= {f.name for f in dataclasses.fields(PartitionJob)}


def test_a_finished_train_job_s_settings_read_back_with_the_baselines():
    # Prepare: the training settings of a run made before any later key existed
    first = {"rounds": 3, "local_epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
             "save_clients_at": [2], "eval_batch_size": 64, "client_parallel": "auto", "client_chunk_size": 64,
             "device": "cpu", "bf16_autocast": False}

    # Execute
    cfg = TrainingSettings.from_settings(first).train_config(seed=0, participation=1.0)

    # Assert: every later key of TrainConfig is its baseline
    _, baselines = CONTRACTS[TrainingSettings]
    assert {k: getattr(cfg, k) for k in baselines if hasattr(cfg, k)} == {k: v for k, v in baselines.items()
                                                                        if k != "swa"}
    assert cfg.save_clients_at == (2,) and cfg.rounds == 3


def test_the_typed_jobs_are_what_the_settings_builders_write():
    # Prepare
    config = _edited(_swa_on_batch_norm)
    runs = build_runs(config)

    # Execute
    train = planned_train(config, runs[0])
    init = planned_init(config, runs, "digits", "cnn_small", "warmup")

    # Assert: attributes, not keys; SWA's bn_stats reaches the job of a batch-norm model; the warm-up leaves out
    # what a run evaluates and keeps
    assert isinstance(init, WarmupInit) and init.warmup_training.eval_every == 1 and init.warmup_training.swa is None
    assert TrainJob.from_settings(train_settings(config, runs[0])) == train
    swa = [planned_train(config, r).training.swa for r in runs if r.algorithm == "fedavg"]
    assert swa and all(s.bn_stats == "recomputed" for s in swa)
    assert isinstance(InitJob.from_settings(init_settings(config, runs, "digits", "cnn_small", "random")), RandomInit)


@pytest.mark.parametrize(("kind", "settings", "message"), [
    (PartitionJob, {"dataset": "digits", "alpha": "iid"}, r"PartitionJob \(rule partition\) settings lack the "
                                                          r"required 'dataset_options'"),
    (InitJob, {"kind": "warmup"}, r"unknown kind 'warmup'.*Valid: random, pretrained, iid_warmup, continue"),
    (ClientStatsJob, {"run_id": ["a"]}, r"no field 'run_id'\. Did you mean 'run_ids'"),
])
def test_settings_off_the_declared_shape_fail_naming_the_key(kind, settings, message):
    with pytest.raises(JobSettingsError, match=message):
        kind.from_settings(settings)


def test_an_init_job_s_kind_must_be_its_class_s():
    with pytest.raises(ValueError, match="ContinueInit is an init of kind continue, got kind 'random'"):
        ContinueInit(dataset="digits", model="mlp", model_options={}, in_channels=1, image_size=8, num_classes=10,
                     init="c", kind="random", run={}, source_run_id="x")
