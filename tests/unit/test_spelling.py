"""Two spellings of one setting plan one job: an int written where a number is meant (`weight_decay: 0` for `0.0`), a
whole float where a count is meant (`lr_warmup: 1.0` for `1`) and a reordered set of rounds (`save_clients_at`) give
the same settings text, which Snakemake compares to decide a rerun
(fedscape.core.config.canonical_numbers, fedscape.fl.hparams.registry.hyperparameter_settings,
fedscape.fl.settings.TrainingSettings.of). What changes a job still reaches its settings."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import yaml
from helpers.configs import DEFAULT, SCHEMA, TINY
from helpers.plans import all_settings
from helpers.workflow import ROOT

from fedscape.core.config import ConfigError, canonical_numbers
from fedscape.fl.hparams.registry import (
    ALGORITHM_NAMES,
    algorithm_config,
    hyperparameter_settings,
    without_default_hyperparameters,
)
from fedscape.plan.workflow import check_config

SHIPPED = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "papers").glob("*.yaml")),
           ROOT / "tests" / "data" / "tiny_config.yaml"]
CONTINUE = {"kind": "continue", "run": {"alpha": 1.0, "participation": 1.0, "init": "random", "algorithm": "fedavg"}}


def _texts(config: dict) -> list[str]:
    """The settings of every job `config` plans, as Snakemake records them (their text)."""
    return sorted(repr(settings) for settings in all_settings(check_config(copy.deepcopy(config), SCHEMA)))


def _edit(config: dict, path: tuple, value) -> dict:
    config = copy.deepcopy(config)
    parent = config
    for part in path[:-1]:
        parent = parent.setdefault(part, {}) if isinstance(parent, dict) else parent[part]
    parent[path[-1]] = value
    return config


def _numbers(value, path: tuple = ()):
    """(path, value) of every number of a parsed YAML document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, (*path, i))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def _whole_floats(value):
    """(path, value) of every float of a parsed YAML document that an int could spell (2.0, 0.0)."""
    return [(path, v) for path, v in _numbers(value) if isinstance(v, float) and math.isfinite(v) and v.is_integer()]


def _with_continue_init(config: dict) -> dict:
    return {**copy.deepcopy(config), "inits": {**config["inits"], "more": copy.deepcopy(CONTINUE)},
            "experiments": [*config["experiments"], {"alpha": 0.1, "init": "more"}]}


# (config, path, one spelling, the other): each pair means the same jobs.
SAME_MEANING = [
    pytest.param(DEFAULT, ("training", "weight_decay"), 0.0, 0, id="training-float-as-int"),
    pytest.param(DEFAULT, ("training", "lr"), 1.0, 1, id="training-lr-as-int"),
    pytest.param(DEFAULT, ("training", "lr_warmup"), 1, 1.0, id="whole-count-as-float"),
    pytest.param(DEFAULT, ("algorithms", "fedprox", "training"), {"lr_warmup": 2}, {"lr_warmup": 2.0},
                 id="override-whole-count-as-float"),
    pytest.param(DEFAULT, ("training", "save_clients_at"), [1, 10, 30], [30, 1, 10], id="rounds-reordered"),
    pytest.param(DEFAULT, ("training", "save_clients_at"), [1, 10, 30], [1, 10, 10, 30], id="rounds-repeated"),
    pytest.param(DEFAULT, ("algorithms", "fedprox", "mu"), 1.0, 1, id="hyperparameter-as-int"),
    pytest.param(DEFAULT, ("algorithms", "fedprox", "training"), {"momentum": 0.0}, {"momentum": 0},
                 id="algorithm-training-override-as-int"),
    pytest.param(DEFAULT, ("inits", "pretrained", "lr"), 1.0, 1, id="init-key-as-int"),
    pytest.param(_with_continue_init(DEFAULT), ("inits", "more", "run", "alpha"), 1.0, 1, id="continue-selector"),
    pytest.param(DEFAULT, ("partition", "min_size"), 10, 10, id="unchanged"),
]


@pytest.mark.parametrize(("config", "path", "one", "other"), SAME_MEANING)
def test_two_spellings_of_one_setting_plan_the_same_settings(config, path, one, other):
    # Prepare
    first, second = _edit(config, path, one), _edit(config, path, other)

    # Execute
    texts = _texts(first), _texts(second)

    # Assert
    assert texts[0] == texts[1]


@pytest.mark.parametrize(("path", "one", "other"), [
    (("training", "weight_decay"), 0, 0.5),
    (("training", "save_clients_at"), [1, 10, 30], [1, 10]),
    (("algorithms", "fedprox", "mu"), 1, 2),
    (("algorithms", "fedprox", "mu"), 1, 1.5),
    (("inits", "pretrained", "lr"), 1, 0.5),
])
def test_a_change_of_meaning_still_changes_the_settings(path, one, other):
    assert _texts(_edit(DEFAULT, path, one)) != _texts(_edit(DEFAULT, path, other))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_whole_number_of_a_shipped_config_may_be_written_as_an_int(path):
    # Prepare: each whole float of the file (a learning rate 1.0, a weight decay 0.0, an alpha 1.0) as an int
    config = yaml.safe_load(path.read_text())
    base = _texts(config)
    floats = list(_whole_floats(config))

    # Execute
    changed = [where for where, value in floats if _texts(_edit(config, where, int(value))) != base]

    # Assert
    assert changed == []


def _at(config, path: tuple):
    for part in path:
        config = config[part]
    return config


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_checking_a_shipped_config_respells_none_of_its_numbers(path):
    # The canonical spelling is the shipped configs' own: respelling one of their numbers would change the settings
    # text of their finished jobs, and rerun them.
    # Prepare
    written = yaml.safe_load(path.read_text())

    # Execute
    checked = check_config(copy.deepcopy(written), SCHEMA)

    # Assert
    assert [(where, value, _at(checked, where)) for where, value in _numbers(written)
            if repr(_at(checked, where)) != repr(value)] == []


def test_the_tiny_config_has_whole_floats_to_respell():
    # the test above checks something on at least the configs the suite runs
    assert list(_whole_floats(DEFAULT)) and list(_whole_floats(TINY))


SCHEMA_CASES = [
    ({"type": "number"}, 2, 2.0),
    ({"type": "number"}, 2.5, 2.5),
    ({"type": "integer"}, 2, 2),
    ({"type": ["integer", "number"]}, 2, 2),
    ({"type": ["number", "null"]}, 2, 2.0),
    ({"anyOf": [{"const": "iid"}, {"type": "number"}]}, 1, 1.0),
    ({"anyOf": [{"const": "iid"}, {"type": "number"}]}, "iid", "iid"),
    ({"anyOf": [{"type": "integer"}, {"type": "number"}]}, 3, 3),
    ({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "integer"}}}, {"a": 0, "b": 0},
     {"a": 0.0, "b": 0}),
    ({"type": "array", "items": {"type": "number"}}, [0, 1.5, 2], [0.0, 1.5, 2.0]),
    ({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"}}}, {"x": [1]},
     {"x": [1.0]}),
    ({"type": "number", "whole_as_int": True}, 2.0, 2),
    ({"type": "number", "whole_as_int": True}, 2, 2),
    ({"type": "number", "whole_as_int": True}, 0.5, 0.5),
    ({"type": "object", "properties": {"w": {"type": "number", "whole_as_int": True}}}, {"w": 1.0}, {"w": 1}),
]


@pytest.mark.parametrize(("schema", "value", "expected"), SCHEMA_CASES)
def test_canonical_numbers_spells_each_number_as_its_schema_position_says(schema, value, expected):
    # Execute
    result = canonical_numbers(copy.deepcopy(value), schema)

    # Assert: equal, and of the same types (1 == 1.0 in Python, so compare the text)
    assert repr(result) == repr(expected)


def test_canonical_numbers_leaves_a_boolean_alone():
    # a YAML true is a Python int: the schema refuses it where it means a number, and no float may hide that
    assert canonical_numbers({"a": True}, {"type": "object", "properties": {"a": {"type": "number"}}}) == {"a": True}


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"mu": 1}, "{'mu': 1.0}"),
    ({"mu": 0.5}, "{'mu': 0.5}"),
    ({"mu": 1e-4}, "{'mu': 0.0001}"),  # at its default: written, as the shipped studies write some
    ({"muu": 1}, "{'muu': 1}"),  # no such key: kept for the algorithm's check to name
])
def test_hyperparameters_reach_the_settings_as_their_declared_type(overrides, expected):
    assert repr(hyperparameter_settings("fedprox", overrides)) == expected


def test_a_list_of_float_hyperparameters_stays_a_list_of_floats():
    # GradAug's input scales, declared tuple[float, ...]: a YAML list, kept a list (its text is the settings')
    assert repr(hyperparameter_settings("gradaug", {"scales": [1, 0.5]})) == "{'scales': [1.0, 0.5]}"


def test_a_bad_value_is_still_refused_by_its_key():
    # the schema check runs before any respelling: a text where a number is meant names the key
    with pytest.raises(ConfigError, match="weight_decay"):
        check_config(_edit(DEFAULT, ("training", "weight_decay"), "zero"), SCHEMA)


@pytest.mark.parametrize(("name", "hyperparameters", "kept"), [
    ("fedprox", {"mu": 0.0001}, {}),  # its default: the run it names is FedProx without it
    ("fedprox", {"mu": 0.001}, {"mu": 0.001}),
    ("fedprox", {"mu": 0}, {"mu": 0}),  # an int written for a float, off its default
    ("gradaug", {"scales": [1, 0.875, 0.75, 0.625], "num_subnets": 2}, {}),  # a list for the default tuple
    ("gradaug", {"scales": [1, 0.5], "num_subnets": 3}, {"scales": [1, 0.5], "num_subnets": 3}),
    ("fedprox", {"muu": 0.0001}, {"muu": 0.0001}),  # no such key: kept as it is
    ("no_such_algorithm", {"mu": 0.0001}, {"mu": 0.0001}),  # a record of an unknown algorithm: kept
])
def test_hyperparameters_at_their_defaults_are_left_out_of_a_run_s_meaning(name, hyperparameters, kept):
    assert without_default_hyperparameters(name, hyperparameters) == kept


def test_every_hyperparameter_default_is_the_value_its_algorithm_takes_when_it_is_left_out():
    # what meaning drops must be what the algorithm's config takes without it
    for name in ALGORITHM_NAMES:
        defaults = {f.name: getattr(algorithm_config(name), f.name)
                    for f in dataclasses.fields(algorithm_config(name))}
        assert without_default_hyperparameters(name, defaults) == {}, name
