"""`make check-config [CONFIG=my.yaml]` (`plan.workflow.check_config_main`): a config checked as the workflow checks
it, without Snakemake: its problems one line each, or that it is valid and the warnings the workflow prints on it."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers.configs import DEFAULT
from helpers.workflow import ROOT

from fedscape.core.config import ConfigError, load_schema
from fedscape.core.runs import build_runs
from fedscape.plan.workflow import (
    DEFAULT_CONFIG,
    SCHEMA,
    check_config,
    check_config_file,
    check_config_main,
    config_warnings,
    load_config,
)


@pytest.fixture(autouse=True)
def at_the_workflows_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # where make runs: the schema and the default config below it


def _write(tmp_path, config: dict, name: str = "my.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_valid_config_is_said_valid(tmp_path, capsys):
    path = _write(tmp_path, DEFAULT)

    assert check_config_main([path]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{path} is valid"]


@pytest.mark.parametrize(("test_fraction", "warned"), [(0.3, True), (None, False)])
def test_a_test_fraction_nothing_reads_is_a_warning_that_keeps_the_config_valid(tmp_path, capsys, test_fraction,
                                                                               warned):
    # Prepare: a CIFAR-10 entry (its own test set) beside digits, with a test_fraction of another value or none
    config = copy.deepcopy(DEFAULT)
    config["datasets"]["cifar10"] = {} if test_fraction is None else {"test_fraction": test_fraction}
    config["experiment_defaults"]["dataset"] = "digits"
    path = _write(tmp_path, config)

    # Execute: valid (results made with it stay valid), and warned of
    code = check_config_main([path])

    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0] == f"{path} is valid"
    warning = ("warning: datasets.cifar10.test_fraction: cifar10 keeps its own test set, so nothing reads "
               "test_fraction 0.3 (it splits a test set off digits only); changing it reruns every job of cifar10 "
               "for nothing")
    assert (warning in lines) == warned


def test_a_valid_configs_warnings_are_those_the_workflow_prints_after_it_is_valid(tmp_path, capsys):
    # Prepare: a second seed that no experiment takes (each leaves `seed` unset: the first of `seeds`)
    path = _write(tmp_path, {**copy.deepcopy(DEFAULT), "seeds": [0, 1]})
    config = load_config(path, "workflow/schemas/config.schema.yaml")

    # Execute
    code = check_config_main([path])

    # Assert: exit 0, "is valid", then the workflow's warnings
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines == [f"{path} is valid", *(f"warning: {w}" for w in config_warnings(config, build_runs(config),
                                                                                  load_schema(SCHEMA)))]
    assert lines[1].startswith("warning: seeds: 1 taken by no run")


def _set(path: str, value):
    """A change of the default config: `value` at the key `path` (its parts split at /)."""
    def change(config: dict) -> None:
        *parents, key = path.split("/")
        for part in parents:
            config = config[part]
        config[key] = value
    return change


NO_BN = "changes nothing: cnn_small has no batch norm, so there are no batch-norm statistics to recompute or keep"
SWA = {"start_round": 21, "bn_stats": "stored"}  # one whole cycle of 10 in the 30 rounds: no partial-cycle line


@pytest.mark.parametrize(("changes", "warning"), [
    ([], None),  # the default config: none of these lines
    # options of a model no run trains
    ([_set("model_options", {"resnet20": {"norm": "group"}})],
     "model_options.resnet20: no run trains resnet20 (the runs train cnn_small), so nothing reads its options"),
    ([_set("model_options", {"cnn_small": {"norm": "none"}})], None),
    # a bn_stats away from its default, on models without batch norm
    ([_set("landscapes/global_0.1/bn_stats", "recomputed")], f"landscapes.global_0.1.bn_stats: recomputed {NO_BN}"),
    ([_set("interpolation/bn_stats", "stored")], f"interpolation.bn_stats: stored {NO_BN}"),
    ([_set("layer_barriers/bn_stats", "stored")], f"layer_barriers.bn_stats: stored {NO_BN}"),
    ([_set("training/swa", SWA)], f"training.swa.bn_stats: stored {NO_BN}"),
    ([_set("algorithms/fedprox/training", {"swa": SWA})], f"algorithms.fedprox.training.swa.bn_stats: stored {NO_BN}"),
    ([_set("interpolation/bn_stats", "recomputed"), _set("training/swa", {"start_round": 21})], None),  # defaults
    ([_set("algorithms/fedprox/training", {"swa": {"start_round": 21}})], None),
    # ... and with batch norm, where they take effect
    ([_set("model_options", {"cnn_small": {"norm": "batch"}}), _set("landscapes/global_0.1/bn_stats", "recomputed"),
      _set("interpolation/bn_stats", "stored"), _set("training/swa", SWA)], None),
    # where a bundled data set's files would be
    ([_set("datasets/digits/data_dir", "/data/digits")],
     "datasets.digits.data_dir: nothing reads data_dir: \"/data/digits\", since digits is scikit-learn's bundled"),
    ([_set("datasets/digits/download", True)], "datasets.digits.download: nothing reads download: true, since digits"),
    ([_set("datasets/digits/download", False)], None),
    # a proxy split that no init reads (the pretrained init made random), still held out of the clients' pool
    ([_set("inits/pretrained", {"kind": "random", "seed": 1})],
     "datasets.digits.proxy_fraction: a proxy split of 0.2 of the training samples is held out of the clients' pool, "
     "but no init of the runs on digits reads it"),
    ([_set("inits/pretrained", {"kind": "random", "seed": 1}), _set("datasets/digits/proxy_fraction", 0.0)], None),
])
def test_a_setting_that_nothing_reads_is_warned_about_naming_its_key(changes, warning):
    # Prepare: the default config (valid, no warnings) with the changes
    config = copy.deepcopy(DEFAULT)
    for change in changes:
        change(config)
    check_config(config, load_schema(SCHEMA))

    # Execute
    lines = config_warnings(config, build_runs(config), load_schema(SCHEMA))

    # Assert: one line naming the key, or none
    assert [line[: len(warning)] for line in lines] == ([] if warning is None else [warning])


@pytest.mark.parametrize(("config", "problem"), [
    ({**DEFAULT, "not_a_key": 1}, "not_a_key"),
    # a YAML syntax error, with its line
    ("seeds: [0\nalphas: [iid]\n", "YAML syntax error"),
])
def test_an_invalid_config_prints_its_problems_alone_and_exits_1(tmp_path, capsys, config, problem):
    # Prepare
    path = tmp_path / "my.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        check_config_file(path)

    # Execute
    code = check_config_main([str(path)])

    # Assert: the ConfigError's message, as the workflow gives it (one line per problem), and nothing else
    out, stderr = capsys.readouterr()
    assert code == 1 and out == ""
    assert stderr == f"{err.value}\n" and problem in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("written", ["a number", ".nan"])
@pytest.mark.parametrize(("path", "number"), [
    ("training/lr", 0.05),
    ("algorithms/fedprox/mu", 0.01),  # an algorithm's hyperparameter, beside its `name`
    ("landscapes/global_0.1/span", 1.0),  # an analysis's setting
    ("partitions/d2/alpha", 0.3),  # a partition's Dirichlet alpha
])
def test_a_nan_in_a_config_file_is_refused_naming_its_key(tmp_path, capsys, written, path, number):
    # Prepare: the default config with a Dirichlet partition, one key of it written as a number or as YAML's .nan
    # (every schema bound passes NaN: it compares false)
    config = {**copy.deepcopy(DEFAULT), "partitions": {"d2": {"kind": "dirichlet", "alpha": 0.3}}}
    _set(path, number if written == "a number" else float("nan"))(config)
    file = _write(tmp_path, config)
    assert (".nan" in (tmp_path / "my.yaml").read_text()) == (written == ".nan")

    # Execute
    code = check_config_main([file])

    # Assert: a number is valid; .nan is refused, its key named
    out, stderr = capsys.readouterr()
    if written == "a number":
        assert code == 0 and out.splitlines()[0] == f"{file} is valid"
    else:
        assert code == 1 and f"  - {path.replace('/', '.')}: nan is not a finite number" in stderr.splitlines()


def test_without_a_config_the_default_one_is_checked_and_said_so(capsys):
    assert check_config_main([]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"no CONFIG= given: checking the default config {DEFAULT_CONFIG}")
    assert lines[1:] == check_config_file(DEFAULT_CONFIG)
    assert lines[1] == f"{DEFAULT_CONFIG} is valid"


def test_more_than_one_config_is_refused(capsys):
    assert check_config_main(["a.yaml", "b.yaml"]) == 2
    assert "checks one config file" in capsys.readouterr().err
