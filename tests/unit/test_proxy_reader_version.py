"""The reader version of down-sampled ImageNet (`data.specs.IMAGENET32_READER_VERSION`) in the settings of the inits
pretrained on it (`inits.<label>.proxy_dir`), as a `proxy_dataset`'s reader version is in those pretrained on it
(`PretrainedInit.proxy_reader_version`): a fix of the reader reruns those inits alone, and at the first version no
init's settings change."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers.configs import SCHEMA, config_with
from helpers.papers import CONFIGS
from helpers.workflow import ROOT

from fedscape.core.runs import build_runs
from fedscape.data import specs
from fedscape.plan.init import init_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init_settings import InitJob

SHIPPED = ["config.yaml", *CONFIGS]
IMAGENET32 = {"proxy_dir": "data/imagenet32"}


def _pretrained_settings(monkeypatch, version: int, spec: dict, recorded: list[str] | None = None) -> dict:
    """The planned settings of a pretrained init `pre` (`spec`) of runs on CIFAR-10 with down-sampled ImageNet's reader
    at `version` (Snakemake's `recorded` params texts of the job, if any)."""
    monkeypatch.setattr(specs, "IMAGENET32_READER_VERSION", version)
    config = check_config(config_with({"pre": {"kind": "pretrained", "epochs": 1, **spec}},
                                      [{"alpha": "iid"}, {"alpha": "iid", "init": "pre"}],
                                      datasets={"cifar10": {"proxy_fraction": 0.2}},
                                      experiment_defaults={"init": "random", "algorithm": "fedavg",
                                                           "dataset": "cifar10"}), SCHEMA)
    return init_settings(config, build_runs(config), "cifar10", "cnn_small", "pre", recorded)


@pytest.mark.parametrize(("spec", "version", "carried"), [
    (IMAGENET32, 2, 2),  # past the first: its settings carry it
    (IMAGENET32, 1, None),  # the first: the baseline, left out
    ({"proxy_dataset": "cifar100"}, 2, None),  # another proxy: its own data set's reader (CIFAR-100's first)
    ({}, 2, None),  # the clients' data set's own proxy split: no other data read
])
def test_an_init_carries_the_version_of_the_imagenet32_reader_only_where_it_reads_it(monkeypatch, spec, version,
                                                                                     carried):
    # Execute
    settings = _pretrained_settings(monkeypatch, version, spec)

    # Assert: and the init job reads it back
    assert settings.get("proxy_reader_version") == carried
    assert InitJob.from_settings(settings).proxy_reader_version == carried


@pytest.mark.parametrize(("version", "kept"), [(1, True), (2, False)])
def test_an_imagenet32_init_recorded_before_the_version_reruns_only_past_the_first(monkeypatch, version, kept):
    # Prepare: the init's settings as Snakemake recorded them without the key
    planned = _pretrained_settings(monkeypatch, version, IMAGENET32)
    recorded = {key: value for key, value in planned.items() if key != "proxy_reader_version"}

    # Execute
    settings = _pretrained_settings(monkeypatch, version, IMAGENET32, [repr(recorded)])

    # Assert: the same text as its record at the first reader; past it, the init pretrained with the old reader reruns
    assert (repr(settings) == repr(recorded)) == kept


def _shipped_init_settings(name: str) -> dict[tuple[str, str, str], dict]:
    """The settings of every init job of shipped config `name`, by (dataset, model, init label)."""
    path = ROOT / "config" / name if name == "config.yaml" else ROOT / "config" / "papers" / f"{name}.yaml"
    config = check_config(copy.deepcopy(yaml.safe_load(path.read_text())), SCHEMA)
    runs = build_runs(config)
    return {key: init_settings(config, runs, *key) for key in sorted({(r.dataset, r.model, r.init) for r in runs})}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_new_imagenet32_reader_reruns_the_shipped_inits_that_read_it_and_no_other(monkeypatch, name):
    # Prepare: the config's init jobs at the first reader
    first = _shipped_init_settings(name)

    # Execute: and at the next
    monkeypatch.setattr(specs, "IMAGENET32_READER_VERSION", 2)
    bumped = _shipped_init_settings(name)

    # Assert: at the first no init carries a proxy's reader version (every one keeps its settings); at the next the
    # inits on down-sampled ImageNet (`proxy_dir`) carry it, with their settings else the same, and no other changes
    reads = {key for key, settings in first.items() if settings.get("proxy_dir")}
    assert not any("proxy_reader_version" in settings for settings in first.values())
    assert {key for key in first if bumped[key] != first[key]} == reads
    assert all(bumped[key] == {**first[key], "proxy_reader_version": 2} for key in reads)
