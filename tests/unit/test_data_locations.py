"""Where the data is (`datasets.<name>.data_dir`, `download`, a pretrained init's `proxy_data_dir` and `proxy_dir`) is
not what a job computes: the jobs' settings carry these keys at their baselines (`data.specs.dataset_settings`,
`plan.init`), and a job reads the config's own when it starts (`data.locations.with_data_locations`)."""

from __future__ import annotations

import copy

import pytest
from helpers.configs import SCHEMA, TINY
from helpers.plans import all_settings

from fedscape.core import manifest
from fedscape.core.runs import build_runs
from fedscape.data.locations import with_data_locations
from fedscape.data.specs import INIT_LOCATION_BASELINES, LOCATION_BASELINES, dataset_settings
from fedscape.plan.init import init_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init import proxy_data
from fedscape.stages.init_settings import InitJob


def _config(**digits) -> dict:
    """The tiny config with a pretrained init, its digits options updated by `digits`, checked and filled."""
    config = copy.deepcopy(TINY)
    config["datasets"]["digits"].update(digits)
    return check_config(config, SCHEMA)


def test_dataset_settings_carry_the_location_keys_at_their_baselines_in_one_order():
    options = {"split_seed": 3, "data_dir": "/scratch/me/digits", "test_fraction": 0.25, "download": True}

    settings = dataset_settings("digits", options)

    assert settings == {"test_fraction": 0.25, "data_dir": None, "download": False, "split_seed": 3}
    # DATASET_OPTION_ORDER, not the order written: the jobs whose settings are not sorted carry them so
    assert list(settings) == ["test_fraction", "data_dir", "download", "split_seed"]
    assert options["data_dir"] == "/scratch/me/digits"  # the config itself is untouched


@pytest.mark.parametrize("moved", [{"data_dir": "data/elsewhere"}, {"download": True},
                                   {"data_dir": "/scratch/digits", "download": True}])
def test_moving_the_data_plans_the_same_settings(moved):
    # Prepare: the tiny config as it is, and with the data somewhere else (and a pretrained init's proxy folder set)
    here = _config()
    there = copy.deepcopy(TINY)
    there["datasets"]["digits"].update(moved)
    there["inits"]["pre"]["proxy_data_dir"] = "/scratch/proxy"
    there = check_config(there, SCHEMA)

    # Execute
    before, after = all_settings(here), all_settings(there)

    # Assert: every job's settings (the params Snakemake compares) are the same, as text too
    assert [repr(s) for s in after] == [repr(s) for s in before]
    assert any(s.get("kind") == "pretrained" for s in after)


def _imagenet32_config(proxy_dir: str | None) -> dict:
    """The tiny config on CIFAR-10 (cnn_small), its pretrained init reading down-sampled ImageNet from `proxy_dir`."""
    config = copy.deepcopy(TINY)
    config["datasets"] = {"cifar10": {"data_dir": "/data/cifar10", "proxy_fraction": 0.2}}
    config["inits"]["pre"]["proxy_dir"] = proxy_dir
    return check_config(config, SCHEMA)


def test_moving_down_sampled_imagenet_plans_the_same_settings_while_using_it_or_not_does_not():
    # Prepare: the pretrained init on down-sampled ImageNet in one folder, in another, and on the proxy split
    here, there, split = (_imagenet32_config(d) for d in ("data/imagenet32", "/scratch/me/in32", None))

    # Execute
    before, after, unused = all_settings(here), all_settings(there), all_settings(split)

    # Assert: the folder is not in the settings, whether ImageNet is the proxy is
    assert [repr(s) for s in after] == [repr(s) for s in before]
    pretrained = [s for s in before if s.get("kind") == "pretrained"]
    assert pretrained and all(s["proxy_dir"] == INIT_LOCATION_BASELINES["proxy_dir"] for s in pretrained)
    assert [s.get("proxy_dir") for s in unused if s.get("kind") == "pretrained"] == [None]
    assert unused != before and len(unused) == len(before)


def test_a_pretrained_init_reads_down_sampled_imagenet_where_the_config_says_and_never_its_baseline():
    # Prepare: the planned settings of the pretrained init, which carry the folder's baseline
    config = _imagenet32_config("/scratch/me/in32")
    runs = build_runs(config)
    settings = next(s for s in (init_settings(config, runs, r.dataset, r.model, r.init) for r in runs)
                    if s["kind"] == "pretrained")

    # Execute
    filled = with_data_locations(settings, config)

    # Assert: the job gets the config's folder; a job given the baseline itself stops before reading anything
    assert filled["proxy_dir"] == "/scratch/me/in32" and filled["dataset_options"]["data_dir"] == "/data/cifar10"
    assert manifest._NOTES["data_locations"]["inits.pre"] == {"proxy_data_dir": None, "proxy_dir": "/scratch/me/in32"}
    with pytest.raises(ValueError, match="proxy_dir is its planned baseline, not a folder"):
        proxy_data(InitJob.from_settings(settings))


def test_a_meaningful_dataset_option_still_changes_the_settings():
    before, after = all_settings(_config()), all_settings(_config(test_fraction=0.3))

    assert before != after


@pytest.mark.parametrize("where", ["dataset", "run"])
def test_with_data_locations_gives_the_job_the_config_s_locations(where):
    # Prepare: settings as planned (locations at their baselines), the data set named beside the options or in a run
    config = {"datasets": {"digits": {"data_dir": "/data/digits", "download": True, "test_fraction": 0.25}}}
    options = {"test_fraction": 0.25, **LOCATION_BASELINES}
    named = {"dataset": "digits"} if where == "dataset" else {"run": {"dataset": "digits", "seed": 0}}
    settings = {**named, "dataset_options": options, "seed": 1}

    # Execute
    filled = with_data_locations(settings, config)

    # Assert: the locations are the config's, everything else is the settings', which are left as they were
    assert filled["dataset_options"] == {"test_fraction": 0.25, "data_dir": "/data/digits", "download": True}
    assert {k: v for k, v in filled.items() if k != "dataset_options"} == {**named, "seed": 1}
    assert settings["dataset_options"] == options
    assert manifest._NOTES["data_locations"] == {"digits": {"data_dir": "/data/digits", "download": True}}


def test_with_data_locations_fills_nested_jobs_and_a_pretrained_init_s_proxy_folder():
    config = {"datasets": {"a": {"data_dir": "/a"}, "b": {"data_dir": "/b", "download": False}},
              "inits": {"pre": {"kind": "pretrained", "proxy_data_dir": "/proxy"}}}
    barrier = {"pair": [{"run": {"dataset": "a"}, "dataset_options": {"data_dir": None}},
                        {"run": {"dataset": "b"}, "dataset_options": {"data_dir": None}}]}
    init = {"dataset": "a", "dataset_options": {}, "init": "pre", "kind": "pretrained", "proxy_data_dir": None}

    pair = with_data_locations(barrier, config)["pair"]
    pretrained = with_data_locations(init, config)

    assert [p["dataset_options"] for p in pair] == [{"data_dir": "/a", "download": False},
                                                    {"data_dir": "/b", "download": False}]
    assert pretrained["proxy_data_dir"] == "/proxy" and pretrained["dataset_options"]["data_dir"] == "/a"


def test_with_data_locations_refuses_options_of_no_known_data_set():
    config = {"datasets": {"digits": {}, "cifar10": {}}}

    with pytest.raises(ValueError, match=r"no data set of the config's datasets \(cifar10, digits\): 'mnist'"):
        with_data_locations({"dataset": "mnist", "dataset_options": {}}, config)
    with pytest.raises(ValueError, match="None"):
        with_data_locations({"dataset_options": {}}, config)
