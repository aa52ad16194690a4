"""Finished jobs keep their settings: a key added to a job's settings after results existed is left out at its
baseline (a typed job's declared default, `fedscape.core.jobs`; else `fedscape.core.config.without_baselines`), so
adding it reruns nothing, while every other value, and a changed default, reach the settings. The contracts of every
typed job kind: tests/unit/test_job_contracts.py."""

from __future__ import annotations

import copy
from dataclasses import fields, replace

import pytest
import yaml
from helpers.configs import SCHEMA, config_with
from helpers.papers import load
from helpers.workflow import ROOT

from fedscape.analysis.barriers.definitions import InterpolationJob
from fedscape.analysis.hessian.definitions import HessianSettings
from fedscape.analysis.landscape.definitions import LandscapeChunkJob, LandscapePlaneJob
from fedscape.core.config import ConfigError, load_schema, without_baselines
from fedscape.core.jobs import declared_defaults
from fedscape.core.runs import build_runs
from fedscape.data.specs import DATASET_BASELINES, DATASET_NAMES, DATASETS, READER_VERSION, dataset_settings
from fedscape.fl.settings import TrainConfig, TrainingSettings
from fedscape.plan.barriers import interpolation_pair, interpolation_settings
from fedscape.plan.hessian import hessian_job_settings
from fedscape.plan.init import init_settings
from fedscape.plan.landscape import chunk_settings, landscape_plans, plane_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init_settings import InitJob

# The training keys that every train job's settings have carried since the first results: the settings of a
# finished job are these plus the baselines' keys that differ from their baselines.
FIRST_TRAINING_KEYS = {"batch_size", "bf16_autocast", "client_chunk_size", "client_parallel", "device",
                       "eval_batch_size", "local_epochs", "lr", "momentum", "rounds", "save_clients_at",
                       "weight_decay"}
# The later training keys with their baselines, recorded (how every run trained before the key): the declared defaults
# of TrainingSettings must be these.
TRAINING_BASELINES = {
    "keep_optimizer_state": False, "local_steps": None, "optimizer": "sgd", "adamw_beta1": 0.9, "adamw_beta2": 0.999,
    "adamw_eps": 1e-8, "lr_schedule": "constant", "lr_schedule_over": "rounds", "lr_warmup": 0.0, "precision": "fp32",
    "eval_every": 1, "save_every": 1, "nesterov": False, "drop_last": False, "batch_sampling": "shuffle",
    "capture": "auto", "swa": None,
}
# Likewise for the Hessian jobs' `hessian` settings.
FIRST_HESSIAN_KEYS = {"batch_size", "cache_graph", "density", "density_probes", "density_steps", "eval_samples",
                      "max_iter", "method", "seed", "tol", "top_k", "trace_probes"}
# Likewise for the `datasets.<name>` keys every job that reads data carries as its `dataset_options`.
FIRST_DATASET_KEYS = {"augment", "data_dir", "download", "proxy_fraction", "split_seed", "test_fraction"}


@pytest.fixture(scope="module")
def default_config() -> tuple[dict, dict]:
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return check_config(copy.deepcopy(config), schema), schema


def _edited(default_config, edit) -> tuple[dict, list]:
    config, schema = default_config
    config = copy.deepcopy(config)
    edit(config)
    config = check_config(config, schema)
    return config, build_runs(config)


@pytest.mark.parametrize(("settings", "expected"), [
    ({"a": 1, "precision": "fp32"}, {"a": 1}),  # at its baseline: left out
    ({"a": 1, "precision": "bf16"}, {"a": 1, "precision": "bf16"}),  # anything else: kept
    ({"a": 1, "modes": ["x", "y"]}, {"a": 1}),  # lists compare by value
    ({"a": 1, "modes": ["y", "x"]}, {"a": 1, "modes": ["y", "x"]}),
    ({"curve": None}, {}),
])
def test_without_baselines_leaves_out_exactly_the_keys_at_their_baseline(settings, expected):
    # Execute / Assert
    assert without_baselines(settings, {"precision": "fp32", "modes": ["x", "y"], "curve": None}) == expected


def test_every_training_key_is_a_first_key_or_has_its_baseline_as_default():
    # Prepare: every field a train job's training settings carry, and TrainConfig's (less the run's own)
    declared = {f.name for f in fields(TrainingSettings)}
    defaults = declared_defaults(TrainingSettings)
    keys = {f.name for f in fields(TrainConfig)} - {"augment", "seed", "participation"}

    # Assert: a key added without a default would enter every finished job's settings and rerun it; a default off
    # its baseline would change the settings of the jobs that relied on the baseline
    assert keys <= declared, f"declare {sorted(keys - declared)} in fedscape.fl.settings.TrainingSettings"
    missing = declared - FIRST_TRAINING_KEYS - set(defaults)
    assert not missing, f"give {sorted(missing)} a default in TrainingSettings: its baseline"
    assert defaults == TRAINING_BASELINES, "a later training key's default is its baseline, recorded above"


def test_every_hessian_key_is_a_first_key_or_has_a_baseline():
    keys = {f.name for f in fields(HessianSettings)}
    baselines = set(declared_defaults(HessianSettings))

    # Assert: a later key without a default would enter every finished job's settings; a first key with one would
    # leave the settings of the jobs at that value
    missing = keys - FIRST_HESSIAN_KEYS - baselines
    assert not missing, f"give {sorted(missing)} its baseline as its default in analysis.hessian.HessianSettings"
    assert not FIRST_HESSIAN_KEYS & baselines, "a key of the first results is required: it has no baseline"


def test_every_dataset_key_is_a_first_key_or_has_a_baseline(default_config):
    _, schema = default_config
    keys = set(schema["properties"]["datasets"]["additionalProperties"]["properties"])

    missing = keys - FIRST_DATASET_KEYS - set(DATASET_BASELINES)
    assert not missing, f"give {sorted(missing)} a baseline in fedscape.data.specs.DATASET_BASELINES"
    # and a job carries only the first keys of a dataset read as before
    config, runs = _edited(default_config, lambda c: None)
    assert set(train_settings(config, runs[0])["dataset_options"]) <= FIRST_DATASET_KEYS


def test_the_default_config_s_jobs_carry_no_later_key(default_config):
    # Prepare
    config, runs = _edited(default_config, lambda c: None)
    plan = landscape_plans(config, runs)[0]

    # Execute
    training = train_settings(config, runs[0])["training"]
    hessian = hessian_job_settings(config, runs, runs[0], 30)["hessian"]
    interpolation = interpolation_settings(config, interpolation_pair(config, runs, "iid_vs_1.0"))
    plane, chunk = plane_settings(config, plan), chunk_settings(config, plan, plan.data[0], 0)

    # Assert: the keys of the first results, and none of the later ones but those the default config sets on purpose
    assert set(training) == FIRST_TRAINING_KEYS
    # it measures sharpness, and takes the exact diagonal and trace
    assert set(hessian) == FIRST_HESSIAN_KEYS | {"sharpness", "trace_estimator"}
    assert hessian["trace_estimator"] == "exact"
    assert set(interpolation) & set(declared_defaults(InterpolationJob)) == {"align"}  # the default config aligns
    assert not set(plane) & set(declared_defaults(LandscapePlaneJob))
    assert not set(chunk) & set(declared_defaults(LandscapeChunkJob))


@pytest.mark.parametrize(("edit", "where", "key", "value"), [
    (lambda c: c["training"].update(optimizer="adamw", momentum=0.0), "train", "optimizer", "adamw"),
    (lambda c: c["training"].update(lr_warmup=2.0), "train", "lr_warmup", 2.0),
    (lambda c: c["training"].update(capture="eager"), "train", "capture", "eager"),
    (lambda c: c["hessian"].update(trace_estimator="hutchpp"), "hessian", "trace_estimator", "hutchpp"),
    (lambda c: c["hessian"]["sharpness"].update(rho=0.1), "hessian", "sharpness_rho", 0.1),
    (lambda c: c["hessian"]["sharpness"].update(method="apgd"), "hessian", "sharpness_method", "apgd"),
    (lambda c: c["interpolation"].update(align=True), "interpolation", "align", True),
])
def test_a_later_key_off_its_baseline_reaches_the_job(default_config, edit, where, key, value):
    # Prepare
    config, runs = _edited(default_config, edit)

    # Execute
    settings = {"train": lambda: train_settings(config, runs[0])["training"],
                "hessian": lambda: hessian_job_settings(config, runs, runs[0], 30)["hessian"],
                "interpolation": lambda: interpolation_settings(config, interpolation_pair(config, runs,
                                                                                           "iid_vs_1.0"))}[where]()

    # Assert
    assert settings[key] == value


def test_a_changed_default_reruns_the_jobs_that_relied_on_the_old_one(monkeypatch, default_config):
    # Prepare: Hutchinson spelled out (the baseline), and the estimator's default moved to Hutch++
    config, runs = _edited(default_config, lambda c: c["hessian"].update(trace_estimator="hutchinson"))
    before = hessian_job_settings(config, runs, runs[0], 30)["hessian"]
    moved, _ = _edited(default_config, lambda c: c["hessian"].update(trace_estimator="hutchpp"))

    # Execute
    after = hessian_job_settings(moved, runs, runs[0], 30)["hessian"]

    # Assert: the baseline is the behaviour before the key, not the default: the job's settings change
    assert "trace_estimator" not in before and after["trace_estimator"] == "hutchpp"


def test_a_job_s_settings_read_back_take_the_baselines_not_the_current_defaults(monkeypatch):
    # Prepare: job settings that omit the later keys (a finished job's); the training keys' baselines are
    # TrainingSettings' declared defaults, checked against the record above
    training = {"rounds": 3, "local_epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                "save_clients_at": [], "eval_batch_size": 64, "client_parallel": "auto", "client_chunk_size": 64,
                "device": "cpu", "bf16_autocast": False}

    # Execute
    cfg = TrainingSettings.from_settings(training).train_config(seed=0, participation=1.0)

    # Assert: an omitted later key is its baseline, not the dataclass's default
    assert all(getattr(cfg, k) == v for k, v in TRAINING_BASELINES.items() if k != "swa")


def test_a_hessian_job_s_settings_read_back_take_the_baselines():
    # Prepare: a finished job's `hessian` settings from before the later keys (the first results' keys)
    first = {"top_k": 2, "method": "lanczos", "tol": 1e-4, "max_iter": 100, "trace_probes": 300,
             "eval_samples": 1024, "batch_size": 512, "cache_graph": True, "density": True, "density_steps": 90,
             "density_probes": 10, "seed": 0}

    # Execute
    hessian = HessianSettings.from_settings(first)

    # Assert: what the job computed with (the declared defaults: `HessianSettings` holds no config default)
    assert (hessian.sharpness_rho, hessian.trace_estimator, hessian.precision) == (0.05, "hutchinson", "fp32")


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_data_set_s_reader_is_at_its_first_version_or_later(name):
    # Assert: 1 is the reader every result was made with before the versions existed
    assert isinstance(DATASETS[name].reader_version, int) and DATASETS[name].reader_version >= 1


@pytest.mark.parametrize(("name", "options", "expected"), [
    # 2: an empty Stack Overflow text is [bos, oov, eos], as TFF splits it
    ("stackoverflow", {"data_dir": "data/so", "max_clients": 1500}, {"data_dir": None, "max_clients": 1500,
                                                                       "reader_version": 2}),
    ("stackoverflow", {}, {"reader_version": 2}),
    # 2: Reddit's accuracy credits no prediction of <PAD> or <UNK>, as LEAF's
    ("reddit", {"data_dir": "data/reddit"}, {"data_dir": None, "reader_version": 2}),
    # at the first version: the settings every finished job of the data set carries
    ("digits", {"test_fraction": 0.25, "proxy_fraction": 0.2}, {"test_fraction": 0.25, "proxy_fraction": 0.2}),
    ("femnist", {"data_dir": "data/femnist"}, {"data_dir": None}),
])
def test_a_reader_past_its_first_version_enters_its_data_set_s_settings_last(name, options, expected):
    # Execute
    settings = dataset_settings(name, options)

    # Assert: the same keys in the same order (Snakemake compares the text)
    assert list(settings.items()) == list(expected.items())


def _meta_run(dataset: str):
    return next(r for r in build_runs(load("meta")) if r.dataset == dataset and load("meta")["inits"][r.init]["kind"]
                == "pretrained")


@pytest.mark.parametrize(("dataset", "expected"), [("stackoverflow", 2), ("reddit", 2), ("femnist", None)])
def test_the_jobs_that_read_a_data_set_carry_its_reader_version_past_the_first(dataset, expected):
    # Prepare: the meta study's run on the data set from its pretrained init (an init job that reads the data)
    config, run = load("meta"), _meta_run(dataset)

    # Execute
    options = [train_settings(config, run)["dataset_options"],
               partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed)["dataset_options"],
               init_settings(config, build_runs(config), run.dataset, run.model, run.init)["dataset_options"]]

    # Assert
    assert [o.get(READER_VERSION) for o in options] == [expected] * 3


def test_the_default_config_s_jobs_carry_no_reader_version(default_config):
    # Prepare
    config, runs = _edited(default_config, lambda c: None)

    # Execute / Assert: digits' reader is at its first version, so its jobs' settings are those of before the key
    assert READER_VERSION not in train_settings(config, runs[0])["dataset_options"]


@pytest.mark.parametrize(("dataset", "kept"), [("stackoverflow", False), ("reddit", False), ("femnist", True)])
def test_a_job_recorded_before_its_reader_s_version_reruns_and_only_then(dataset, kept):
    # Prepare: the job's settings as Snakemake recorded them before the reader versions, with a memory setting
    # other than today's (which alone reruns nothing: the record is kept)
    config, run = load("meta"), _meta_run(dataset)
    recorded = copy.deepcopy(train_settings(config, run))
    recorded["dataset_options"].pop(READER_VERSION, None)
    recorded["training"]["eval_batch_size"] += 1

    # Execute
    settings = train_settings(config, run, [repr(recorded)])

    # Assert: Snakemake reruns a job whose params text changed: the Stack Overflow and Reddit jobs read their data
    # with the old reader
    assert (repr(settings) == repr(recorded)) == kept


def test_the_config_cannot_set_a_reader_version(default_config):
    # Execute / Assert: the reader's version is the code's; the schema refuses it under datasets.<name>
    with pytest.raises(ConfigError, match=r"datasets\.digits\.reader_version: unknown key 'reader_version'"):
        _edited(default_config, lambda c: c["datasets"]["digits"].update(reader_version=2))


def _proxy_init_settings(monkeypatch, bumped: str, version: int, spec: dict, recorded: list[str] | None = None
                         ) -> dict:
    """The planned settings of a pretrained init `pre` (`spec`) of runs on CIFAR-10, with data set `bumped`'s reader
    at `version` (Snakemake's `recorded` params texts of the job, if any)."""
    monkeypatch.setitem(DATASETS, bumped, replace(DATASETS[bumped], reader_version=version))
    config = check_config(config_with({"pre": {"kind": "pretrained", "epochs": 1, **spec}},
                                      [{"alpha": "iid"}, {"alpha": "iid", "init": "pre"}],
                                      datasets={"cifar10": {"proxy_fraction": 0.2}},
                                      experiment_defaults={"init": "random", "algorithm": "fedavg",
                                                           "dataset": "cifar10"}), SCHEMA)
    return init_settings(config, build_runs(config), "cifar10", "cnn_small", "pre", recorded)


@pytest.mark.parametrize(("bumped", "spec", "proxy_version", "own_version"), [
    ("cifar100", {"proxy_dataset": "cifar100"}, 3, None),  # the proxy data set's reader: its own key
    ("cifar10", {"proxy_dataset": "cifar100"}, None, 3),  # the clients' data set's: in its dataset_options
    ("cifar10", {}, None, 3),  # the init's own proxy split: its data set's reader
    ("cifar100", {"proxy_dir": "data/imagenet32"}, None, None),  # no proxy data set
    ("cifar100", {}, None, None),  # CIFAR-10's own proxy split: no other data set read
])
def test_a_pretrained_init_carries_the_reader_version_of_each_data_set_it_reads(monkeypatch, bumped, spec,
                                                                               proxy_version, own_version):
    # Execute: the data set `bumped` at reader version 3
    settings = _proxy_init_settings(monkeypatch, bumped, 3, spec)

    # Assert: and the init job reads them back
    assert settings.get("proxy_reader_version") == proxy_version
    assert settings["dataset_options"].get(READER_VERSION) == own_version
    assert InitJob.from_settings(settings).proxy_reader_version == proxy_version


@pytest.mark.parametrize(("version", "kept"), [(1, True), (2, False)])
def test_an_init_recorded_before_its_proxy_s_reader_version_reruns_and_only_then(monkeypatch, version, kept):
    # Prepare: the init's settings as Snakemake recorded them before the field (without the key), with a model
    # option written at its default (which alone reruns nothing: the record is kept)
    planned = _proxy_init_settings(monkeypatch, "cifar100", version, {"proxy_dataset": "cifar100"})
    recorded = {key: value for key, value in planned.items() if key != "proxy_reader_version"}
    recorded["model_options"] = {"norm": "none"}

    # Execute
    settings = _proxy_init_settings(monkeypatch, "cifar100", version, {"proxy_dataset": "cifar100"}, [repr(recorded)])

    # Assert: the same text as before the field at the first reader; past it, the init pretrained with the old reader
    # of its proxy reruns
    assert (repr(settings) == repr(recorded)) == kept
    assert ("proxy_reader_version" in planned) != kept
