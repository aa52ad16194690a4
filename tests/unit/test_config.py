"""Config validation: every bad config fails before any job runs, naming the offending key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers.cifar import write_fake_cifar10, write_fake_cifar100
from helpers.configs import DEFAULT, SCHEMA, TINY
from helpers.leaf import write_femnist, write_shakespeare, write_shakespeare_raw
from helpers.plans import all_settings
from helpers.words import write_reddit
from helpers.workflow import ROOT

from fedscape.core.config import ConfigError, config_value, duplicate_keys, read_config_file
from fedscape.core.paths import DEFAULT_LOG_PARTS
from fedscape.core.runs import RUN_FIELDS, Run, build_runs, resolve_run, select_runs, unused_grid_values
from fedscape.data.specs import DATASET_OPTION_ORDER, data_layout_problems
from fedscape.fl.hparams import registry
from fedscape.plan.barriers import consecutive_pairs
from fedscape.plan.landscape import landscape_plans, plane_settings
from fedscape.plan.report import local_work
from fedscape.plan.workflow import check_config, check_data, config_warnings

# The default's run grid without the analyses, whose run selectors assume the default grid.
# the grid tests use the default config's lists, not its `experiments` (which replace the grid)
GRID_KEYS = ("datasets", "models", "model_options", "inits", "algorithms", "alphas", "num_clients", "participation",
             "seeds", "partition", "training")
GRID_ONLY = {k: v for k, v in DEFAULT.items() if k in GRID_KEYS}
# one init and one algorithm (the default's first), so that alpha and seed name a single run
GRID_ONLY.update({key: dict(list(DEFAULT[key].items())[:1]) for key in ("inits", "algorithms")})


def with_change(path: str, value, base: dict = DEFAULT) -> dict:
    """A copy of the config with the dotted key set (value None with path ending '!' deletes)."""
    config = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize("base", [DEFAULT, TINY], ids=["default", "tiny"])
def test_shipped_configs_are_valid(base):
    config = check_config(copy.deepcopy(base), SCHEMA)

    assert build_runs(config)


def test_empty_config_gets_documented_defaults():
    config = check_config({}, SCHEMA)

    assert config["training"]["rounds"] == 100 and config["training"]["batch_size"] == 16
    assert list(config["datasets"]) == ["digits"]
    assert len(build_runs(config)) == 1


def test_every_schema_key_has_description_and_default():
    missing = []

    def walk(node, where):
        for key, sub in node.get("properties", {}).items():
            here = f"{where}.{key}" if where else key
            if "description" not in sub:
                missing.append(f"{here} (description)")
            if "default" not in sub and key not in node.get("required", []):
                missing.append(f"{here} (default)")
            walk(sub, here)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}.*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(SCHEMA, "")

    assert missing == []


BAD_CONFIGS = [
    # a section of another type than the schema's, inits among them (read before the schema checks the config)
    ("inits", ["random"], "inits: ['random'] is not of type 'object'"),
    ("inits", "random", "inits: 'random' is not of type 'object'"),
    # a training key beside an algorithm's name, and a misspelt `training`: said as such, not as a hyperparameter
    ("algorithms.fedavg", {"name": "fedavg", "lr": 0.1},
     "algorithms.fedavg.lr: lr is a training key, not a hyperparameter of fedavg: put it in "
     "algorithms.fedavg.training"),
    ("algorithms.fedavg", {"name": "fedavg", "trainig": {"lr": 0.1}},
     "algorithms.fedavg.trainig: not a key of an algorithm entry. Did you mean 'training'?"),
    # algorithm labels that figures would show alike
    ("algorithms.FedAvg", {"name": "fedavg"},
     "algorithms.FedAvg: figures and tables show it as FedAvg, as they show algorithms.fedavg; rename one of them"),
    ("alphas", [0.0], "alphas"),
    ("alphas", [-1], "alphas"),
    ("alphas", ["idd"], "alphas"),
    ("training.rounds", 0, "training.rounds"),
    # an lr warm-up no step of which ends at the full lr
    ("training.lr_warmup", 31, "training: lr_warmup (31) is not shorter than the 30 rounds it warms up over"),
    ("training.rounds", -5, "training.rounds"),
    ("training.lr", 0, "training.lr"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.momentum", 1.5, "training.momentum"),
    ("training.save_clients_at", [1, 99], "save_clients_at"),
    ("training.device", "gpu", "training.device"),
    ("training.rouns", 10, "Did you mean 'rounds'"),
    ("participation", [1.5], "participation"),
    ("participation", [0], "participation"),
    ("num_clients", [0], "num_clients"),
    ("seeds", [-1], "seeds"),
    ("models", ["resnet21"], "Did you mean 'resnet20'"),
    ("models", ["convnet"], "convnet"),
    ("algorithms", {"x": {"name": "fedsgd"}}, "algorithms.x.name"),
    ("algorithms", {"m": {"name": "fedavgm", "server_momentm": 0.9}}, "Did you mean 'server_momentum'"),
    ("algorithms", {"m": {"name": "fedavg", "training": {"lr_": 0.1}}}, "algorithms.m.training"),
    # an override's value is checked as the `training` section's own (it trained by gradient ascent, or failed in
    # the train job after the partition and init jobs ran)
    ("algorithms", {"m": {"name": "fedavg", "training": {"lr": -1.0}}},
     "algorithms.m.training.lr: -1.0 is less than or equal to the minimum of 0"),
    ("algorithms", {"m": {"name": "fedavg", "training": {"lr": "0.1"}}},
     "algorithms.m.training.lr: '0.1' is not of type 'number'; YAML read '0.1' as text"),
    ("algorithms", {"m": {"name": "fedavg", "training": {"device": "gpu"}}},
     "algorithms.m.training.device: 'gpu' is not valid: auto, cpu, cuda or cuda:<index>"),
    ("algorithms", {"m": {"name": "fedavg", "training": {"rounds": 3.0}}},
     "algorithms.m.training.rounds: 3.0 is not an integer: write 3"),
    ("inits", {"w": {"kind": "iid_warmup", "training": {"momentum": 2.0}}},
     "inits.w.training.momentum: 2.0 is greater than or equal to the maximum of 1"),
    # another kind's keys were ignored: the init was not the one the config describes
    ("inits", {"w": {"kind": "iid_warmup", "epochs": 5}}, "inits.w: kind iid_warmup does not read epochs; the kinds "
     "that do: epochs: pretrained. Kind iid_warmup reads seed, rounds, num_clients, partition_seed, training"),
    ("inits", {"w": {"kind": "iid_warmup", "lr": 0.01}}, "inits.w: kind iid_warmup does not read lr (the warm-up's "
     "own training keys, such as lr, go in its `training`)"),
    ("inits", {"r": {"kind": "random", "seed": 1, "run": {"alpha": "iid"}}}, "inits.r: kind random does not read run; "
     "the kinds that do: run: continue"),
    ("inits.warmup", {"kind": "iid_warmup", "rounds": 2, "training": {"rounds": 3}},
     "inits.warmup.training.rounds: the warm-up's rounds are inits.warmup.rounds (2); remove rounds from its "
     "training"),
    ("datasets", {"digitz": {}}, "digitz"),
    ("datasets", {"digits": {"test_fraction": 1.0}}, "test_fraction"),
    ("datasets", {"digits": {"augment": "flip"}}, "augment"),
    ("partition.min_size", 0, "partition.min_size"),
    ("inits", {"r": {"kind": "random", "seed": -3}}, "inits.r.seed"),
    ("experiments", [{"dataset": "digits", "init": "nope"}], "experiments[0].init"),
    ("trainig", {}, "Did you mean 'training'"),
    ("num_clients", [200], "num_clients: 200 clients x partition.min_size 10 = 2000 samples, but digits leaves"),
    ("inits.warmup.num_clients", 500, "inits.warmup.num_clients: 500 clients x partition.min_size 10 = 5000 samples, "
                                      "but digits leaves"),
    ("landscapes", {"..": {"kind": "random", "runs": [{"alpha": "iid"}]}}, "landscapes: the label '..' names a"),
    ("inits", {".": {"kind": "random", "seed": 0}}, "inits: the label '.' names a directory"),
    ("algorithms", {2024: {"name": "fedavg"}}, "algorithms: the label 2024 is read by YAML as an integer, not as "
     "text; quote it ('2024':)"),
    ("landscapes", {0.1: {"kind": "random", "runs": [{"alpha": "iid"}]}}, "landscapes: the label 0.1 is read by YAML "
     "as a number"),
    ("interpolation", {"pairs": {None: {"a": {"alpha": "iid"}, "b": {"alpha": 0.1}}}}, "interpolation.pairs: the "
     "label ~ is read by YAML as null"),
    ("partitions", {1: {"kind": "classes", "classes_per_client": 2}}, "partitions: the label 1 is read by YAML as"),
    ("algorithms", {"fed/prox": {"name": "fedprox"}}, "algorithms: 'fed/prox' is not valid: letters, digits, _, . "
     "and - only (it names a folder or a file of the results"),
    ("landscapes", {"a b": {"kind": "random", "runs": [{"alpha": "iid"}]}}, "landscapes: 'a b' is not valid: letters"),
    ("model_options", {"mlp": {"norm": "batch"}}, "model_options.mlp: unknown option 'norm'. mlp takes no options"),
    ("model_options", {"cnn_small": {"norm": "group"}}, "model_options.cnn_small.norm: 'group' is not a norm of "
     "cnn_small. Valid: none, batch"),
    ("model_options", {"resnet20": {"norn": "group"}}, "model_options.resnet20: unknown option 'norn'. Did you mean"),
    ("model_options", {"resnet20": {"norm": "layer"}}, "model_options.resnet20.norm: 'layer' is not a norm"),
    ("model_options", {"resnet18": {"norm": "grup"}}, "model_options.resnet18.norm: 'grup' is not a norm of "
     "resnet18. Did you mean 'group'? Valid: group, batch, none"),
    ("model_options", {"resnet18_nonorm": {"norm": "group"}}, "model_options.resnet18_nonorm: unknown option 'norm'"),
    ("model_options", {"char_gpt": {"num_heads": 3}}, "model_options.char_gpt: embed_dim 128 is not divisible by "
     "num_heads 3"),
    ("model_options", {"char_lstm": {"hidden_size": 0}}, "model_options.char_lstm.hidden_size: must be a positive"),
    ("model_options", {"char_lstm": {"hidden": 8}}, "model_options.char_lstm: unknown option 'hidden'. Did you mean"),
    ("alphas", ["iid", 0], "alphas[1]: 0 is not valid: an alpha is a number > 0"),
    ("alphas", ["IID", 0.5], "alphas[0]: 'IID' is not valid: an alpha is a number > 0 (e.g. 0.1 or 1.0;"),
    ("results_dir", "../x", "results_dir: '../x' is not valid: a path without `..` parts"),
    ("landscapes", {"big": {"kind": "random", "runs": [{"alpha": "iid"}], "resolution": 10000}},
     "raise `chunks` to at least 2500 or set `allow_large: true`"),
    ("alphas", ["idd"], "alphas: 'idd' is neither a number, iid nor a label of `partitions`. Did you mean 'iid'?"),
    ("partitions", {"c2": {"kind": "clases", "classes_per_client": 2}},
     "partitions.c2.kind: unknown partition kind 'clases'. Did you mean 'classes'?"),
    ("partitions", {"c2": {"kind": "classes"}}, "partitions.c2.classes_per_client: the partition kind classes needs"),
    ("partitions", {"q": {"kind": "quantity", "beta": 0.5, "sigma": 1.0}},
     "partitions.q.sigma: not an option of the partition kind quantity (its options: beta)"),
    ("partitions", {"q": {"kind": "quantity", "beta": 0}}, "partitions.q.beta"),
    ("partitions", {"q": {"beta": 0.5}}, "partitions.q"),
    ("partitions", {"C2": {"kind": "iid"}}, "a label of lower-case letters, digits and _ that starts with a letter"),
    ("partitions", {"inf": {"kind": "iid"}},
     "partitions: 'inf' is not valid: a label of lower-case letters, digits and _ that starts with a letter and is "
     "not iid, inf, infinity, nan or null"),
    ("partitions", {"infinity": {"kind": "iid"}}, "partitions: 'infinity' is not valid: a label"),
    ("partitions", {"null": {"kind": "iid"}}, "partitions: 'null' is not valid: a label"),
    ("experiments", [{"alpha": "iid", "model": "resnet21"}],
     "experiments[0].model: unknown model 'resnet21'. Did you mean 'resnet20'?"),
    ("experiments", [{"alpha": "iid", "model": "convnet"}], "experiments[0].model: model 'convnet' needs 32x32"),
    ("experiments", [{"alpha": "iid"}, {"alpha": "c2"}],
     "experiments[1].alpha: 'c2' is neither iid, a Dirichlet alpha nor a label of `partitions`. Labels: (none)"),
    # a default model is checked whether an experiment takes it or not, a default label where one does
    ("experiment_defaults", {"model": "cnn_smal"}, "experiment_defaults.model: unknown model 'cnn_smal'. Did you "
                                                   "mean 'cnn_small'?"),
    ("experiment_defaults", {"init": "random", "algorithm": "fedav"},
     "experiment_defaults.algorithm: 'fedav' is not defined in `algorithms`. Did you mean 'fedavg'?"),
    # text that reads as a number (YAML's plain nan and inf are text), and YAML's .nan
    ("experiments", [{"alpha": "nan"}], "experiments[0].alpha: 'nan' is not valid: Dirichlet alpha, iid, or a label"),
    ("experiments", [{"alpha": "inf"}], "experiments[0].alpha: 'inf' is not valid: Dirichlet alpha, iid, or a label"),
    ("experiments", [{"alpha": float("nan")}], "experiments[0].alpha: nan is not a finite number"),
    ("layer_barriers.pairs", {"clients_iid": {"run": {"alpha": "iid", "init": "random", "algorithm": "fedavg"},
                                              "clients": [0, 1]},
                              "clients_iid_distances": {"run": {"alpha": 0.1, "init": "random", "algorithm": "fedavg"},
                                                        "clients": [0, 1]}},
     "layer_barriers.pairs.clients_iid_distances: a pair labelled clients_iid_distances beside pair clients_iid would "
     "share a log with that pair's figure (barriers/layerwise/clients_iid_distances.log); name it without the ending "
     "_distances"),
    ("interpolation.pairs", {"p": {"a": {"alpha": 0.3}, "b": {"alpha": "iid"}}},
     "interpolation.pairs.p.a: no run of the config matches {'alpha': 0.3}; the runs' values: alpha: 0.1, iid, 1.0"),
    ("interpolation.pairs", {"p": {"a": {"alpha": "iid", "init": "warmup"}, "b": {"alpha": "iid"}}},
     "not together; the runs' (alpha, init): (0.1, pretrained); (iid, pretrained); (0.1, random)"),
    ("inits.pretrained.proxy_dataset", "cifar1",
     "inits.pretrained.proxy_dataset: unknown dataset 'cifar1'. Did you mean"),
    # a continue init's selector, checked as every run selector is, whether a run takes the init or not
    ("inits.more", {"kind": "continue", "run": {"alpah": 1.0}},
     "inits.more.run.alpah: unknown key 'alpah'. Did you mean 'alpha'?"),
    ("inits.more", {"kind": "continue", "run": {"seed": -1}}, "inits.more.run.seed"),
    # what a value of several forms may be, and a misspelt key of one of them
    ("hessian.rounds", [0, "last"], "hessian.rounds[1]: 'last' is not valid: a round, an integer >= 0"),
    ("hessian.eval_samples", "al", "hessian.eval_samples: 'al' is not valid: an integer >= 1, null"),
    ("training.local_epochs", {"low": 1, "high": 3, "drw": "once"},
     "training.local_epochs.drw: unknown key 'drw'. Did you mean 'draw'?"),
    ("hessian.runs", {"alpah": "iid"}, "hessian.runs.alpah: unknown key 'alpah'. Did you mean 'alpha'?"),
    ("hessian.runs", [{"alpha": "iid"}, {"alpah": "iid"}],
     "hessian.runs[1].alpah: unknown key 'alpah'. Did you mean 'alpha'?"),
    # ... and beside it the other mistakes of the form it was meant as
    ("training.local_epochs", {"low": -1, "hgh": 3},
     "Did you mean 'high'? Valid keys: low, high, draw; training.local_epochs: 'high' is a required property; "
     "training.local_epochs.low: -1 is less than the minimum of 1"),
    ("hessian.runs", [{"alpha": "iid"}, {"alpah": "iid", "seed": -1}],
     "Did you mean 'alpha'? Valid keys: dataset, model, init, algorithm, alpha, num_clients, participation, seed; "
     "hessian.runs[1].seed: -1 is less than the minimum of 0"),
    # statistics on the 0-255 scale, which normalise every input to nearly one value
    ("datasets.cifar10", {"channel_mean": [125.3, 123.0, 113.9]}, "datasets.cifar10.channel_mean[0]: 125.3 is greater "
     "than the maximum of 1; pixels are on the [0, 1] scale: divide statistics on the 0-255 scale by 255"),
    ("datasets.cifar10", {"channel_std": [63.0, 62.1, 66.7]}, "datasets.cifar10.channel_std[2]: 66.7 is greater than "
     "the maximum of 1; pixels are on the [0, 1] scale"),
    ("datasets.cifar10", {"channel_mean": [0.5, -0.5, 0.5]}, "datasets.cifar10.channel_mean[1]: -0.5 is less than the "
     "minimum of 0"),
    # a seed that torch cannot take (it failed inside the job) or that the tables' int64 columns cannot hold
    ("seeds", [2**64], "seeds[0]: 18446744073709551616 is greater than the maximum of 9223372036854775807; a seed is "
     "from 0 to 2**63 - 1"),
    ("seeds", [0, 2**63], "seeds[1]: 9223372036854775808 is greater than the maximum of 9223372036854775807"),
    ("inits.random.seed", 2**64, "inits.random.seed: 18446744073709551616 is greater than the maximum"),
    ("inits.w", {"kind": "iid_warmup", "partition_seed": 2**63}, "inits.w.partition_seed: 9223372036854775808 is "
     "greater than the maximum"),
    ("inits.more", {"kind": "continue", "run": {"seed": 2**63}}, "inits.more.run.seed: 9223372036854775808 is greater "
     "than the maximum"),
    ("datasets.digits.split_seed", 2**63, "datasets.digits.split_seed: 9223372036854775808 is greater than the "
     "maximum"),
    ("experiments", [{"alpha": "iid", "seed": 2**63}], "experiments[0].seed: 9223372036854775808 is greater than the "
     "maximum"),
    ("hessian.seed", 2**64, "hessian.seed: 18446744073709551616 is greater than the maximum"),
    ("landscapes", {"g": {"kind": "random", "runs": [{"alpha": 0.1, "init": "random", "algorithm": "fedavg"}],
                          "seed": 2**64}}, "landscapes.g.seed: 18446744073709551616 is greater than the maximum"),
    ("layer_barriers.order_seed", 2**63, "layer_barriers.order_seed: 9223372036854775808 is greater than the maximum"),
    # a momentum of 1 never decays: every SGD momentum is in [0, 1), as server_momentum
    ("training.momentum", 1.0, "training.momentum: 1.0 is greater than or equal to the maximum of 1; an SGD momentum "
     "is in [0, 1)"),
    ("inits.pretrained.momentum", 1.0, "inits.pretrained.momentum: 1.0 is greater than or equal to the maximum of 1"),
    ("algorithms", {"m": {"name": "fedavg", "training": {"momentum": 1.0}}},
     "algorithms.m.training.momentum: 1.0 is greater than or equal to the maximum of 1"),
]


@pytest.mark.parametrize(("path", "problem"), [
    ("training", "training: empty (YAML reads `training:` with nothing after it as null): write `training: {}` to set "
     "none of its keys or delete the key for its default"),
    ("landscapes", "landscapes: empty (YAML reads `landscapes:` with nothing after it as null): write "
     "`landscapes: {}` for none or delete the key for its default"),
    ("interpolation.pairs", "interpolation.pairs: empty (YAML reads `pairs:` with nothing after it as null): write "
     "`pairs: {}` for none or delete the key for its default"),
    ("experiments", "experiments: empty (YAML reads `experiments:` with nothing after it as null): write "
     "`experiments: []` for none or delete the key for its default"),
    # a section that needs an entry offers no empty one; its default is named where it is not the empty one
    ("alphas", "alphas: empty (YAML reads `alphas:` with nothing after it as null): give it at least one item or "
     "delete the key for its default ([iid])"),
    ("datasets", "datasets: empty (YAML reads `datasets:` with nothing after it as null): give it at least one entry "
     "or delete the key for its default ({digits: {}})"),
    # a label's entry has no default to fall back to
    ("datasets.digits", "datasets.digits: empty (YAML reads `digits:` with nothing after it as null): write "
     "`digits: {}` to set none of its keys"),
    ("algorithms.fedavg", "algorithms.fedavg: empty (YAML reads `fedavg:` with nothing after it as null): give its "
     "keys (name)"),
])
def test_an_empty_section_that_yaml_reads_as_null_says_what_to_write(path, problem):
    # Prepare: the key written with nothing after it (every entry commented out), which YAML reads as null
    config = with_change(path, None)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: the problem line is the whole advice, with no fix that the key does not have
    assert f"  - {problem}" in str(err.value).splitlines()


@pytest.mark.parametrize(("path", "value", "base"), [
    ("seeds", [0, 2**63 - 1], GRID_ONLY),
    ("inits.random.seed", 2**32 - 1, DEFAULT),  # (it seeds torch as it is: $defs.torch_seed)
    ("datasets.digits.split_seed", 2**63 - 1, DEFAULT),
    ("training.momentum", 0.99, DEFAULT),
    ("inits.pretrained.momentum", 0.0, DEFAULT),
    # (a second data set: the experiments then name theirs by default)
    ("datasets.cifar10", {"channel_mean": [0.0, 0.5, 1.0], "channel_std": [1.0, 0.2023, 0.001]},
     with_change("experiment_defaults.dataset", "digits")),
])
def test_a_value_at_the_edge_of_its_range_stays_valid(path, value, base):
    config = with_change(path, value, base)

    check_config(config, SCHEMA)

    assert config_value(config, path.split(".")) == value


def test_a_label_may_be_no_word_that_the_tables_read_as_missing():
    # Prepare: every word pandas reads as missing that a label's letters could spell; a label that holds one
    import re

    from pandas._libs.parsers import STR_NA_VALUES

    label = SCHEMA["$defs"]["label"]
    words = sorted(v for v in STR_NA_VALUES if re.fullmatch(r"[A-Za-z0-9_.-]+", v))

    # Execute / Assert: each is refused, as an algorithm's and an init's label alike; a longer label holding one is not
    assert words and all(not re.search(label["pattern"], word) for word in words)
    for section, word in (("algorithms", "NA"), ("inits", "None"), ("algorithms", "null")):
        config = copy.deepcopy(DEFAULT)
        config[section][word] = copy.deepcopy(next(iter(config[section].values())))
        with pytest.raises(ConfigError, match=rf"{section}: '{word}' is not valid: .*read as missing"):
            check_config(config, SCHEMA)
    assert re.search(label["pattern"], "fedavg_NA") and re.search(label["pattern"], "nan_free")


@pytest.mark.parametrize(("named", "refused"), [({"model": "cnn_small"}, True), ({"dataset": "cifar10"}, True),
                                                 ({"model": "mlp"}, False), ({}, False)])
def test_a_continue_init_naming_another_model_than_its_runs_is_refused_not_replaced(named, refused):
    # Prepare: pilot_digits.yaml (cnn_small and mlp runs, each from continue inits), the continue selector of one
    # init naming a model or data set; only mlp runs start from it
    config = yaml.safe_load((ROOT / "config" / "papers" / "pilot_digits.yaml").read_text())
    config["inits"]["pretrained_1.0star"]["run"].update(named)
    config["experiments"] = [e for e in config.get("experiments", []) if e.get("init") != "pretrained_1.0star"]
    config["experiments"].append({"model": "mlp", "init": "pretrained_1.0star", "algorithm": "fedavg", "alpha": 0.1,
                                  "num_clients": 10, "participation": 1.0, "seed": 0})
    config["landscapes"] = {}  # (its planes hold the cnn_small runs of that init, which the mlp run would join)

    # Execute / Assert: a selector naming what its runs are not is refused, naming both; one that agrees is taken
    if refused:
        with pytest.raises(ConfigError, match=r"inits\.pretrained_1\.0star\.run: names .* but runs on digits with mlp"):
            check_config(config, SCHEMA)
    else:
        check_config(config, SCHEMA)


@pytest.mark.parametrize(("path", "value", "needle"), BAD_CONFIGS, ids=[f"{p}={v}" for p, v, _ in BAD_CONFIGS])
def test_bad_config_is_rejected_naming_the_key(path, value, needle):
    config = with_change(path, value)

    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    assert needle in str(err.value)


def test_an_alpha_label_without_its_partitions_entry_names_alphas_in_a_grid():
    config = with_change("alphas", ["iid", "zz"], GRID_ONLY)

    with pytest.raises(ConfigError, match=r"alphas: 'zz' is neither"):
        check_config(config, SCHEMA)


def test_a_natural_partition_of_a_dataset_without_writers_is_rejected_at_planning():
    config = with_change("partitions", {"nat": {"kind": "natural"}}, GRID_ONLY)

    with pytest.raises(ConfigError, match="partitions.nat: the kind natural splits by each sample.s writer, but digits "
                                          "has no writer ids"):
        check_config(config, SCHEMA)

def test_one_problem_of_the_training_section_is_reported_once_not_once_per_algorithm():
    # Prepare: the default has three algorithms, none of which overrides save_clients_at or rounds
    config = with_change("training.save_clients_at", [1, 99])

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert
    assert str(err.value).count("save_clients_at") == 1
    assert "training: save_clients_at has rounds [99] outside 1..30" in str(err.value)


def test_an_algorithm_whose_override_causes_the_problem_is_reported_under_its_label():
    config = with_change("algorithms.fedprox.training", {"rounds": 5})

    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    assert str(err.value).splitlines()[1:] == ["  - algorithms.fedprox.training: save_clients_at has rounds [10, 30] "
                                               "outside 1..5"]


def test_grid_is_the_product_of_the_lists():
    config = check_config(with_change("seeds", [0, 1], with_change("num_clients", [5, 10], GRID_ONLY)), SCHEMA)

    runs = build_runs(config)

    others = len(config["inits"]) * len(config["algorithms"]) * len(config["models"])
    assert len(runs) == len(config["alphas"]) * 2 * 2 * others
    assert len({r.run_id for r in runs}) == len(runs)
    assert {r.setting for r in runs} == {"iid", "1.0", "0.1"}


def test_the_setting_keeps_the_name_alpha_outside_the_run():
    # Prepare: an IID run and an alpha run
    config = check_config(with_change("experiments", [{"alpha": "iid"}, {"alpha": 0.1, "seed": 2}], GRID_ONLY),
                          SCHEMA)
    runs = build_runs(config)

    # Execute / Assert: wildcards, table columns, run ids and partition paths name the field alpha, the Run setting
    for run in runs:
        assert list(run.fields()) == list(RUN_FIELDS) and RUN_FIELDS[4] == "alpha"
        assert run.fields()["alpha"] == run.field("alpha") == run.setting
        assert f"/alpha~{run.setting}/" in run.run_id
        assert run.partition_fields["alpha"] == run.setting
        assert Run.from_id(run.run_id) == Run.from_wildcards(run.fields()) == run
    assert [r.setting for r in select_runs(runs, {"alpha": "0.1"})] == ["0.1"]
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        select_runs(runs, {"setting": "iid"})


def test_explicit_experiments_replace_the_grid():
    config = check_config(with_change("experiments", [{"alpha": "iid"}, {"alpha": 0.5, "seed": 2}], GRID_ONLY), SCHEMA)

    runs = build_runs(config)

    assert [(r.setting, r.seed) for r in runs] == [("0.5", 2), ("iid", 0)]


@pytest.mark.parametrize(("default", "expected"), [
    (None, [("0.5", 2), ("iid", 0)]),  # the first of `seeds`
    (1, [("0.5", 2), ("iid", 1)]),
    ("every", [("0.5", 2), ("iid", 0), ("iid", 1), ("iid", 2)]),  # replicates of the experiment that names no seed
])
def test_an_experiment_without_a_seed_takes_the_default_seed_or_every_seed(default, expected):
    # Prepare
    config = with_change("experiments", [{"alpha": "iid"}, {"alpha": 0.5, "seed": 2}], GRID_ONLY)
    config["seeds"] = [0, 1, 2]
    config["experiment_defaults"] = {"seed": default}

    # Execute
    runs = build_runs(check_config(config, SCHEMA))

    # Assert
    assert [(r.setting, r.seed) for r in runs] == expected


@pytest.mark.parametrize(("change", "expected"), [
    ({}, []),
    ({"seeds": [0, 1, 2]}, ["seeds: 1 taken by no run (an experiment that leaves `seed` unset takes the first of "
                            "`seeds`, 0): set `experiment_defaults: {seed: every}`"]),
    ({"alphas": ["iid", 1.0, 0.5], "num_clients": [10, 20]}, ["alphas: 1.0 taken by no run",
                                                              "num_clients: 20 taken by no run"]),
    ({"experiment_defaults": {"seed": "every"}, "seeds": [0, 1, 2]}, []),
    ({"experiments": None, "seeds": [0, 1, 2]}, []),  # the grid takes every value of every list
    # labels of a mapping that no run takes: a partitions entry or an algorithm added alone plans nothing
    ({"partitions": {"c2": {"kind": "classes", "classes_per_client": 2}}},
     ["partitions: c2 taken by no run: name them as `alpha` in `experiments`, or drop them"]),
    ({"algorithms": {"fedavg": {"name": "fedavg"}, "prox": {"name": "fedprox"}},
      "experiment_defaults": {"algorithm": "fedavg"}},
     ["algorithms: prox taken by no run: name them as `algorithm` in `experiments`"]),
    # the grid runs every partitions label beside the alphas
    ({"experiments": None, "partitions": {"c2": {"kind": "classes", "classes_per_client": 2}}}, []),
])
def test_values_of_the_grid_that_no_experiment_takes_are_named(change, expected):
    # Prepare: experiments at iid (seed 0) and 0.5 (seed 2), beside lists that may hold more values
    config = with_change("experiments", [{"alpha": "iid"}, {"alpha": 0.5, "seed": 2}], GRID_ONLY)
    config.update({"alphas": ["iid", 0.5], "num_clients": [10], "seeds": [0, 2], **change})
    if config["experiments"] is None:
        config.pop("experiments")
    config = check_config(config, SCHEMA)

    # Execute
    lines = sorted(unused_grid_values(config, build_runs(config)))

    # Assert: one line a list, naming the values, the first value taken instead and the fix
    assert len(lines) == len(expected)
    assert all(line.startswith(want) for line, want in zip(lines, sorted(expected), strict=True))


def test_selectors_resolve_runs_and_fail_clearly():
    config = check_config(with_change("seeds", [0, 1], GRID_ONLY), SCHEMA)
    runs = build_runs(config)

    assert resolve_run(runs, {"alpha": "iid", "seed": 1}).seed == 1
    assert len(select_runs(runs, {"alpha": 1.0})) == 2
    with pytest.raises(ConfigError, match="2 runs match.*seed"):
        resolve_run(runs, {"alpha": "iid"})
    with pytest.raises(ConfigError, match="no run of the config matches"):
        resolve_run(runs, {"alpha": 0.3})
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        select_runs(runs, {"alpah": 1.0})




# -- keys written twice in a config file --------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\nb: 2\n", []),
    ("a: 1\nb: 2\na: 3\n", ["key 'a' at line 3 repeats the key of line 1"]),
    ("landscapes:\n  x: {kind: random}\n  y: {kind: random}\n  x: {kind: local}\n",
     ["key 'x' at line 4 repeats the key of line 2"]),
    ("pairs:\n  p: {a: 1, b: 2}\nq:\n  p: {a: 1, a: 2}\n", ["key 'a' at line 4 repeats the key of line 4"]),
    ("a: [1, 2]\nb: {c: 1}\n", []),
])
def test_duplicate_keys_names_both_lines(tmp_path, text, expected):
    # Prepare
    path = tmp_path / "c.yaml"
    path.write_text(text)

    # Execute
    problems = duplicate_keys(path)

    # Assert
    assert [p.split(": ", 1)[1].split(":")[0] for p in problems] == expected
    assert all(p.startswith(f"{path}: ") for p in problems)


def test_check_config_rejects_a_file_with_a_key_written_twice(tmp_path):
    # Prepare: a landscape label written twice; the parsed config holds only the second
    path = tmp_path / "c.yaml"
    path.write_text("landscapes:\n  surf: {kind: random, runs: [{alpha: iid}]}\n  surf: {kind: final_models}\n")

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"key 'surf' at line 3 repeats the key of line 2"):
        check_config(copy.deepcopy(TINY), SCHEMA, files=[path])


# -- YAML syntax errors name the file, the line and the column -----------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("results_dir: x\ntraining:\n  rounds: 3\n   lr: 0.1\n", "line 4, column 6: YAML syntax error: mapping values"),
    ("alphas: [iid, 0.1\nseeds: [0]\n", "line 2, column 6: YAML syntax error: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence at line 1)"),
    ("training:\n\trounds: 3\n", "line 2, column 1: YAML syntax error: found character '\\t'"),
    ("- alphas\n- seeds\n", "a config is a mapping of keys (e.g. `alphas: [iid, 0.1]`), found a list"),
])
def test_a_config_file_with_a_yaml_error_names_file_and_line(tmp_path, text, expected):
    # Prepare
    path = tmp_path / "c.yaml"
    path.write_text(text)

    # Execute
    with pytest.raises(ConfigError) as err:
        read_config_file(path)

    # Assert
    assert str(err.value).startswith(f"{path}: {expected}")


def test_a_valid_config_file_reads_as_its_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text("alphas: [iid, 0.1]\ntraining: {rounds: 3}\n")
    (tmp_path / "empty.yaml").write_text("# nothing set\n")

    assert read_config_file(tmp_path / "c.yaml") == {"alphas": ["iid", 0.1], "training": {"rounds": 3}}
    assert read_config_file(tmp_path / "empty.yaml") == {}


# -- the order of YAML mappings carries no meaning ----------------------------------------------------
def _reversed_mappings(value):
    """`value` with the keys of every mapping in reverse order (what a YAML rewriter may do)."""
    if isinstance(value, dict):
        return {k: _reversed_mappings(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_mappings(v) for v in value]
    return value


@pytest.mark.parametrize("path", sorted(str(p) for p in (ROOT / "config").rglob("*.yaml")))
def test_reordering_every_mapping_of_a_shipped_config_changes_no_run_and_no_job_setting(path):
    # Prepare
    raw = yaml.safe_load(Path(path).read_text())

    # Execute
    config, flipped = check_config(copy.deepcopy(raw), SCHEMA), check_config(_reversed_mappings(raw), SCHEMA)

    # Assert: the same runs, and every job's settings the same as text (Snakemake compares the text, key order and all)
    runs = build_runs(config)
    assert runs == build_runs(flipped)
    assert _settings_texts(config) == _settings_texts(flipped)
    assert _rule_params_texts(config) == _rule_params_texts(flipped)


def test_reordering_consecutive_layer_pairs_changes_no_table_params():
    # Prepare: layerwise_digits.yaml with a second consecutive-round pair (of another run), after the first
    raw = yaml.safe_load((ROOT / "config/papers/layerwise_digits.yaml").read_text())
    raw["layer_barriers"]["pairs"]["central_consecutive_b"] = {
        "run": {"algorithm": "central_lowlr", "init": "random", "seed": 0}, "consecutive": True}

    # Execute
    config, flipped = check_config(copy.deepcopy(raw), SCHEMA), check_config(_reversed_mappings(raw), SCHEMA)

    # Assert: layer_consecutive_table's pairs in one order whatever the YAML's (the pair labels' order)
    assert consecutive_pairs(config, build_runs(config)) == ["central_consecutive", "central_consecutive_b"]
    assert _rule_params_texts(config) == _rule_params_texts(flipped)


def test_every_dataset_option_of_the_schema_has_its_place_in_the_jobs_settings():
    # a key left out of DATASET_OPTION_ORDER would follow the order written, and reordering the config would rerun
    options = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]

    assert sorted(DATASET_OPTION_ORDER) == sorted(options)
    assert len(set(DATASET_OPTION_ORDER)) == len(DATASET_OPTION_ORDER)


def _rule_params_texts(config: dict) -> list[str]:
    """The params text of the rules' own params that `config`'s mappings feed beyond the jobs' settings: each algorithm
    label's local work (accuracy_figure's `work`, whose `variant` prints a mapping-valued override such as `swa`) and
    layer_consecutive_table's `pairs`."""
    runs = build_runs(config)
    return [repr(local_work(config, runs)), repr(consecutive_pairs(config, runs))]


def _settings_texts(config: dict) -> list[str]:
    """The params text of every job `config` plans, sorted (the sections' order lists the jobs, but is not part of
    any job's settings)."""
    return sorted(repr(s) for s in all_settings(config))


def test_an_experiment_without_init_needs_a_default_when_inits_has_several_labels():
    # Prepare: two init labels, an experiment that names none, no experiment_defaults
    config = copy.deepcopy(TINY)
    config["inits"] = {"random": {"kind": "random", "seed": 0}, "other": {"kind": "random", "seed": 1}}
    config["experiments"] = [{"alpha": "iid", "algorithm": "fedavg"}]
    config.pop("experiment_defaults", None)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"experiments\[0\]: no `init` given, and `inits` has several labels"):
        check_config(copy.deepcopy(config), SCHEMA)
    config["experiment_defaults"] = {"init": "other"}
    config["experiments"].append({"alpha": "iid", "init": "random", "algorithm": "fedavg"})  # the sections' runs
    assert {r.init for r in build_runs(check_config(config, SCHEMA))} == {"other", "random"}


# -- data directories: checked for the jobs about to run, not by a dry run's planning --------------------
def _cifar_config(options: dict, inits: dict | None = None) -> dict:
    # digits too, except beside a proxy of 32x32 images (which fits no digits model)
    config = with_change("datasets", {"cifar10": options, **({"digits": {}} if inits is None else {})}, GRID_ONLY)
    config["models"] = ["cnn_small"]
    if inits is not None:
        config["inits"] = inits
    return check_config(config, SCHEMA)


TRAIN_CIFAR = [("train", {"dataset": "cifar10", "model": "cnn_small"}), ("rounds_table", {})]


@pytest.mark.parametrize(("options", "inits", "jobs", "expected"), [
    ({}, None, None, ["datasets.cifar10.data_dir: cifar10 (CIFAR-10 (Krizhevsky 2009), python version from "
                      "data_dir) is read from a data_dir, and none is set"]),
    ({}, None, TRAIN_CIFAR, ["datasets.cifar10.data_dir: cifar10"]),
    ({"data_dir": "no/such/dir"}, None, None, ["datasets.cifar10.data_dir: 'no/such/dir' is not a directory"]),
    ({"data_dir": "no/such/dir", "download": True}, None, None, []),
    ({"data_dir": "{tmp}"}, None, None, []),
    # a folder without CIFAR's files: named before any job (the partition job would fail on it), unless downloaded
    ({"data_dir": "{empty}"}, None, None, ["datasets.cifar10.data_dir: missing data_batch_1, data_batch_2, "
                                           "data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta in "
                                           "{empty}/cifar-10-batches-py: cifar10's python version is read from there"]),
    ({"data_dir": "{empty}", "download": True}, None, None, []),
    ({"data_dir": "{cifar10}"}, {"pre": {"kind": "pretrained", "proxy_dataset": "cifar100"}}, None,
     ["inits.pre: proxy_dataset cifar100 from datasets.cifar10.data_dir: missing train, test, meta in "
      "{cifar10}/cifar-100-python"]),
    # jobs that read no data (tables, figures), or only digits: a machine without CIFAR runs them
    ({}, None, [("rounds_table", {}), ("curves_figure", {"dataset": "cifar10"})], []),
    ({}, None, [("train", {"dataset": "digits"}), ("partition", {"dataset": "digits"})], []),
    # a barrier pair's job has no dataset wildcard: it may read any dataset of the config
    ({}, None, [("interpolation", {"pair": "p"})], ["datasets.cifar10.data_dir"]),
    ({"data_dir": "{tmp}"}, {"pre": {"kind": "pretrained", "proxy_dir": "no/imagenet32"}},
     [("init", {"dataset": "cifar10", "model": "cnn_small", "init": "pre"})],
     ["inits.pre.proxy_dir: 'no/imagenet32' (down-sampled ImageNet) is not a directory"]),
    ({"data_dir": "{tmp}"}, {"pre": {"kind": "pretrained", "proxy_dataset": "cifar100", "proxy_data_dir": "no/c100"}},
     None, ["inits.pre.proxy_data_dir: 'no/c100' is not a directory"]),
    ({"data_dir": "{tmp}"}, {"pre": {"kind": "pretrained", "proxy_dataset": "cifar100"}}, None, []),
])
def test_missing_data_directories_are_reported_for_the_jobs_about_to_run(tmp_path, options, inits, jobs, expected):
    # Prepare: {tmp} holds CIFAR-10 and CIFAR-100 as their archives unpack, {cifar10} CIFAR-10 only, {empty} nothing
    folders = {"{tmp}": tmp_path / "both", "{cifar10}": tmp_path / "cifar10", "{empty}": tmp_path / "empty"}
    write_fake_cifar100(write_fake_cifar10(folders["{tmp}"]))
    write_fake_cifar10(folders["{cifar10}"])
    folders["{empty}"].mkdir()
    options = {k: str(folders.get(v, v)) if isinstance(v, str) else v for k, v in options.items()}
    expected = [e.replace("{empty}", str(folders["{empty}"])).replace("{cifar10}", str(folders["{cifar10}"]))
                for e in expected]
    config = _cifar_config(options, inits)
    runs = build_runs(config)

    # Execute
    if not expected:
        check_data(config, runs, jobs)
        return
    with pytest.raises(ConfigError) as err:
        check_data(config, runs, jobs)

    # Assert: one line per problem, each naming its key
    lines = str(err.value).splitlines()
    assert lines[0].startswith("data missing for the jobs about to run (nothing ran; `snakemake -n` does not check")
    assert len(lines) == 1 + len(expected)
    assert all(line.startswith(f"  - {e}") for line, e in zip(lines[1:], expected, strict=True))


def test_planning_a_config_without_its_data_is_valid():
    """check_config (what `snakemake -n` runs) never looks for data: the paper configs plan anywhere."""
    config = _cifar_config({"data_dir": "no/such/dir"})

    assert {r.dataset for r in build_runs(config)} == {"cifar10", "digits"}


def test_a_plane_file_reaches_the_plane_job_only_when_set_so_other_plane_jobs_keep_their_settings(tmp_path):

    # Prepare: a hessian surface on the user's own plane file beside one without
    runs_ = [{"alpha": "iid", "init": "random"}]
    plane_file = _plane(tmp_path / "plane.npz")
    config = with_change("landscapes", {"h": {"kind": "hessian", "runs": runs_, "round": 10,
                                              "plane_file": plane_file},
                                        "r": {"kind": "random", "runs": runs_}})
    config = check_config(config, SCHEMA)

    # Execute
    settings = {p.label: plane_settings(config, p) for p in landscape_plans(config, build_runs(config))}

    # Assert: the plane job then says "your own file" in its errors, never "delete it"
    assert settings["h"]["plane_file"] == plane_file
    assert "plane_file" not in settings["r"]


@pytest.mark.parametrize(("options", "says"), [
    ({}, "is read from a data_dir, and none is set: set it to the directory that holds its files (LEAF builds"),
    ({"data_dir": "no/such/leaf"}, "is not a directory (relative paths start at the working directory"),
    ({"data_dir": "{empty}"}, "datasets.femnist.data_dir: no train/*.json and test/*.json in {empty} or "
                              "{empty}/femnist/data: expected LEAF's train/ and test/ JSON files (LEAF builds"),
])
def test_missing_leaf_data_points_to_leafs_scripts_not_to_download(tmp_path, options, says):
    # Prepare: FEMNIST, which LEAF's preprocess.sh builds (no download can fetch it); {empty}: a folder without it
    options = {k: str(tmp_path) if v == "{empty}" else v for k, v in options.items()}
    says = says.replace("{empty}", str(tmp_path))
    config = with_change("datasets", {"femnist": options}, GRID_ONLY)
    config["models"] = ["cnn_small"]
    config = check_config(config, SCHEMA)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_data(config, build_runs(config), None)

    # Assert: the hint names LEAF's script, never `download: true`
    message = str(err.value)
    assert says in message and "preprocess.sh" in message
    assert "download: true" not in message


@pytest.mark.parametrize(("name", "options", "write", "says"), [
    ("cifar10", {}, "cifar10", None),
    ("cifar100", {}, "cifar100", None),
    ("femnist", {}, "femnist", None),
    ("femnist", {}, "femnist_leaf", None),  # LEAF's own data/femnist/data below data_dir
    ("shakespeare", {}, "shakespeare", None),
    ("shakespeare", {"source": "raw"}, "raw", None),
    ("reddit", {}, "reddit", None),
    ("cifar10", {}, "cifar100", "missing data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, "
                                "test_batch, batches.meta in {d}/cifar-10-batches-py"),
    ("cifar10", {}, "cifar10_no_test", "missing test_batch in {d}/cifar-10-batches-py"),
    ("cifar100", {}, None, "missing train, test, meta in {d}/cifar-100-python"),
    ("femnist", {}, "femnist_train_only", "no train/*.json and test/*.json in {d} or {d}/femnist/data"),
    ("shakespeare", {}, "raw", "no train/*.json and test/*.json in {d} or {d}/shakespeare/data"),
    ("shakespeare", {"source": "raw"}, "shakespeare", "no .txt files in {d}/by_play_and_character, "
                                                      "{d}/raw_data/by_play_and_character"),
    ("reddit", {}, "cifar10", "no train/*.json and test/*.json in {d} or {d}/reddit/data"),
])
def test_a_data_dir_without_its_datasets_files_is_named_before_any_job(tmp_path, name, options, write, says):
    """The readers' own layouts (sources._check_cifar_files, leaf.leaf_directory and raw_roles_directory), checked
    before the first job: the fixtures in the published formats pass, a folder lacking them names what it lacks."""
    # Prepare
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    writers = {"cifar10": write_fake_cifar10, "cifar100": write_fake_cifar100, "femnist": write_femnist,
               "femnist_leaf": lambda d: write_femnist(d, layout="leaf"), "shakespeare": write_shakespeare,
               "raw": lambda d: write_shakespeare_raw(d, {"PLAY_ROLE": "To be, or not to be.\n" * 20}),
               "reddit": lambda d: write_reddit(d, {s: {"u0": [["hi"]]} for s in ("train", "test")}, {"hi": 2}, 10),
               "cifar10_no_test": lambda d: (write_fake_cifar10(d) / "cifar-10-batches-py" / "test_batch").unlink(),
               "femnist_train_only": lambda d: [f.unlink() for f in write_femnist(d).data_dir.glob("test/*.json")]}
    if write is not None:
        writers[write](data_dir)

    # Execute
    problems = data_layout_problems(name, str(data_dir), {"data_dir": str(data_dir), **options})

    # Assert: one problem naming the key's folder and what it lacks
    if says is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(says.format(d=data_dir))


@pytest.mark.parametrize(("path", "jobs", "says"), [
    ("nofile.json", None, "partitions.paper.path: 'nofile.json' does not exist (relative paths start at the working "
                          "directory {tmp}): the partition kind split_file reads this file"),
    ("{tmp}/splits/nofile.json", None, "partitions.paper.path: '{tmp}/splits/nofile.json' does not exist: the "
                                       "partition kind split_file reads this file"),
    ("splits", None, "partitions.paper.path: 'splits' is a directory, not a file (relative paths start at"),
    ("nofile.json", [("partition", {"dataset": "digits", "num_clients": "4", "alpha": "paper", "seed": "0"})],
     "partitions.paper.path: 'nofile.json' does not exist"),
    # the split's partition made already, or only other partitions about to be made: the file is read by no job
    ("nofile.json", [("train", {"dataset": "digits", "alpha": "paper"})], None),
    ("nofile.json", [("partition", {"dataset": "digits", "num_clients": "4", "alpha": "0.5", "seed": "0"})], None),
    ("splits/a.json", None, None),
])
def test_a_missing_split_file_is_named_by_its_key_before_the_partition_job_starts(tmp_path, monkeypatch, path, jobs,
                                                                                  says):
    # Prepare: the workflow's working directory with a split file, a config with a run on `partitions.paper`
    monkeypatch.chdir(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/a.json").write_text("{}")
    config = copy.deepcopy(TINY)
    config["partitions"] = {"paper": {"kind": "split_file", "path": path.replace("{tmp}", str(tmp_path))}}
    config["experiments"].append({"alpha": "paper", "init": "random", "algorithm": "fedavg"})
    config = check_config(config, SCHEMA)  # a dry run plans without the file

    # Execute
    if says is None:
        check_data(config, build_runs(config), jobs)
        return
    with pytest.raises(ConfigError) as err:
        check_data(config, build_runs(config), jobs)

    # Assert: one line, naming the key and where a relative path is read from
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"  - {says.replace('{tmp}', str(tmp_path))}")


KEEPS_STATE = r"cannot keep the clients' optimiser state"  # FedNova and SCAFFOLD divide by the round's own steps
SGD_ONLY = r"trains its clients with sgd only \(training\.optimizer: adamw\): its option-II control variate"
# FedDyn's g_k update reads a stationary point of the local objective, which AdamW's decoupled decay moves
DECOUPLED = (r"cannot train its clients with adamw's decoupled weight decay \(training\.optimizer: adamw, "
             r"weight_decay: 0\.01\): .*; use optimizer: sgd \(its weight decay is an L2 term of the objective\) or "
             r"weight_decay: 0")
ADAMW = {"optimizer": "adamw", "momentum": 0.0}
DECAY = {"weight_decay": 0.01}


@pytest.mark.parametrize(("name", "training", "label_training", "refusal"), [
    *[(name, *case) for name in ("fednova", "scaffold") for case in [
        ({"keep_optimizer_state": True}, {}, KEEPS_STATE),  # the whole config keeps the clients' momentum
        ({}, {"keep_optimizer_state": True}, KEEPS_STATE),  # only the label does
        ({"keep_optimizer_state": True}, {"keep_optimizer_state": False}, None),  # the label turns it off
        ({}, {}, None),
    ]],
    ("scaffold", ADAMW, {}, SGD_ONLY),  # the whole config trains with adamw
    ("scaffold", {}, ADAMW, SGD_ONLY),  # only the SCAFFOLD label does
    ("scaffold", ADAMW, {"optimizer": "sgd"}, None),  # the label turns it off
    ("feddyn", {**ADAMW, **DECAY}, {}, DECOUPLED),  # the whole config trains with adamw and weight decay
    ("feddyn", DECAY, ADAMW, DECOUPLED),  # only the FedDyn label takes adamw
    ("feddyn", ADAMW, DECAY, DECOUPLED),  # only the FedDyn label decays
    ("feddyn", {**ADAMW, **DECAY}, {"weight_decay": 0.0}, None),  # the label turns the decay off
    ("feddyn", {**ADAMW, **DECAY}, {"optimizer": "sgd"}, None),  # the label trains with sgd: the decay is L2
    ("feddyn", ADAMW, {}, None),  # adamw without weight decay stops where the objective's gradient is zero
    ("feddyn", DECAY, {}, None),  # sgd's weight decay is a term of the objective
    ("fedavg", ADAMW, {}, None),  # FedAvg averages whatever the clients did
    ("fedavg", {"keep_optimizer_state": True}, {}, None),  # and may keep its momentum
])
def test_algorithms_refuse_the_local_optimisers_their_maths_cannot_read(name, training, label_training, refusal):
    # Prepare: a label of `name` beside FedAvg, the optimiser's settings in `training` and/or the label
    config = with_label_x({"name": name, "training": label_training}, training)

    # Execute / Assert: refused at planning, naming the label and the reason
    if refusal is None:
        check_config(config, SCHEMA)
        return
    with pytest.raises(ConfigError, match=rf"algorithms\.x: {name} {refusal}"):
        check_config(config, SCHEMA)


def with_label_x(spec: dict, training: dict | None = None) -> dict:
    """GRID_ONLY whose runs train the algorithm label `x` (`spec`) beside FedAvg, with `training` added."""
    config = copy.deepcopy(GRID_ONLY)
    config["training"] = {**config.get("training", {}), **(training or {})}
    config["algorithms"] = {"fedavg": {"name": "fedavg"}, "x": spec}
    config["experiment_defaults"] = {"init": next(iter(config["inits"])), "algorithm": "x"}
    return config


SIDE_HEAD = r"MOON with head side "
PLAINLY = SIDE_HEAD + r"averages its head plainly, so "
SERVER_SWA = {"swa": {"cycle": 1, "scheduled_lr": "server"}}


@pytest.mark.parametrize(("hparams", "label_training", "refusal"), [
    # the head, kept beside the model, is averaged plainly: a server step or a kept state of the model's alone
    ({"server_lr": 0.5}, {}, PLAINLY + r"server_lr 0\.5"),
    ({"server_momentum": 0.9}, {}, PLAINLY + r"server_lr 1\.0 and server_momentum 0\.9"),
    ({}, SERVER_SWA, PLAINLY + r"swa\.scheduled_lr: server"),
    ({}, {"keep_optimizer_state": True}, SIDE_HEAD + r"keeps the clients' optimiser state of the model's parameters "
                                                     r"only \(training\.keep_optimizer_state: true\)"),
    # the head in the model takes the model's server step and optimiser state
    ({"head": "projection", "server_lr": 0.5, "server_momentum": 0.9}, {}, None),
    ({"head": "projection"}, {**SERVER_SWA, "keep_optimizer_state": True}, None),
    # the SWA schedule of the clients' lr reaches the head too
    ({}, {"swa": {"cycle": 1, "scheduled_lr": "client"}}, None),
    ({}, {}, None),
])
def test_moon_with_its_head_beside_the_model_refuses_what_would_reach_the_model_alone(hparams, label_training,
                                                                                      refusal):
    # Prepare
    config = with_label_x({"name": "moon", **hparams, "training": label_training})

    # Execute / Assert: refused at planning, naming the label and what to use instead
    if refusal is None:
        check_config(config, SCHEMA)
        return
    with pytest.raises(ConfigError, match=rf"algorithms\.x: {refusal}.*: use head: projection"):
        check_config(config, SCHEMA)


# -- algorithm hyperparameters are type-checked from their dataclass, for every algorithm ----------------------
@pytest.mark.parametrize(("hparams", "expected"), [
    ({"name": "fedasam", "rho": "big"}, "algorithms.x.rho: expected a number (e.g. its default 0.5), got 'big'"),
    ({"name": "fedsam", "rho": True}, "algorithms.x.rho: expected a number (e.g. its default 0.05), got True"),
    ({"name": "moon", "projection_dim": 2.5}, "algorithms.x.projection_dim: expected an integer (e.g. its default 0), "
                                              "got 2.5"),
    ({"name": "fedalign", "power_iterations": "ten"}, "algorithms.x.power_iterations: expected an integer"),
    ({"name": "gradaug", "scales": "big"}, "algorithms.x.scales: expected a list of numbers (e.g. its default "
                                           "[1.0, 0.875, 0.75, 0.625]), got 'big'"),
    ({"name": "gradaug", "scales": [1.0, "half"]}, "algorithms.x.scales: expected a list of numbers"),
    ({"name": "fedadam", "beta1": None}, "algorithms.x.beta1: expected a number (e.g. its default 0.9), got None"),
])
def test_an_algorithm_hyperparameter_of_the_wrong_type_is_rejected_naming_the_key(hparams, expected):
    # Prepare
    config = with_change("algorithms", {"x": hparams}, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: the key and the expected type, never Python's own comparison error
    assert expected in str(err.value)
    assert "not supported between" not in str(err.value)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedprox", "scaffold", "fednova", "fedsam", "fedasam", "moon",
                                  "feddyn", "fedalign", "gradaug", "mixup", "stochdepth"])
@pytest.mark.parametrize(("step", "refusal"), [
    ({"server_lr": 0.0}, "server_lr must be positive, got 0.0"),
    ({"server_lr": -1.0}, "server_lr must be positive, got -1.0"),
    ({"server_momentum": 1.0}, "server_momentum must be in [0, 1), got 1.0"),
    ({"server_momentum": -0.5}, "server_momentum must be in [0, 1), got -0.5"),
])
def test_a_server_step_that_cannot_train_is_rejected_for_every_server_sgd_algorithm(name, step, refusal):
    # Prepare: lr 0 trains a run of identical rounds to the end, and says nothing
    config = with_change("algorithms", {"x": {"name": name, **step}}, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: the label's problem names the key, its value and the range
    assert f"  - algorithms.x: {refusal}" in str(err.value).splitlines()


@pytest.mark.parametrize(("hparams", "refusal"), [
    ({"name": "moon", "temperature": 0.0}, "algorithms.x: temperature must be positive, got 0.0"),
    ({"name": "gradaug", "min_width": 0.0}, "algorithms.x: min_width must be in (0, 1], got 0.0"),
    ({"name": "fedalign", "width": 1.5}, "algorithms.x: width must be in (0, 1], got 1.5"),
    ({"name": "fedalign", "width": 0, "power_iterations": 0},
     "algorithms.x: width must be in (0, 1], got 0; power_iterations must be at least 1, got 0"),
])
def test_an_algorithm_hyperparameter_out_of_range_is_rejected_naming_the_key_and_value(hparams, refusal):
    # Prepare
    config = with_change("algorithms", {"x": hparams}, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: one line for the label, each bad key with its value and its range
    assert f"  - {refusal}" in str(err.value).splitlines()


def test_a_server_step_within_its_ranges_is_accepted():
    check_config(with_change("algorithms", {"x": {"name": "fedavgm", "server_lr": 0.5, "server_momentum": 0.9}},
                             GRID_ONLY), SCHEMA)


def test_an_unknown_device_names_the_devices_not_a_regex():
    with pytest.raises(ConfigError, match=r"training.device: 'gpu' is not valid: auto, cpu, cuda or cuda:<index>"):
        check_config(with_change("training.device", "gpu"), SCHEMA)


@pytest.mark.parametrize(("algorithm", "training", "message"), [
    # GradAug on cnn_small (the default config's model): its sub-networks stack on the ResNets only
    ({"name": "gradaug"}, {"client_parallel": "vectorized"}, "training.client_parallel: vectorized trains stacked "
     "clients' batches, but algorithm gradaug (fedavg) needs each client's sub-networks at its own width, which only "
     "the ResNets stack (not cnn_small) (sequential client training only); set client_parallel to auto or "
     "sequential"),
    ({"name": "fedavg", "training": {"client_parallel": "vectorized", "keep_optimizer_state": True}}, {},
     "algorithms.fedavg.training.client_parallel: vectorized trains stacked clients' batches, but "
     "keep_optimizer_state keeps each client's optimiser state between rounds"),
    ({"name": "gradaug"}, {"client_parallel": "auto"}, None),  # auto falls back to sequential training
    ({"name": "scaffold"}, {"client_parallel": "vectorized"}, None),
    ({"name": "feddyn"}, {"client_parallel": "vectorized"}, None),
    ({"name": "fedprox"}, {"client_parallel": "vectorized"}, None),
    # vectorised algorithms whose stacked form does not cover the run: FedAlign on cnn_small (the default config's
    # model), Stochastic Depth with AdamW
    ({"name": "fedalign"}, {"client_parallel": "vectorized"}, "training.client_parallel: vectorized trains stacked "
     "clients' batches, but algorithm fedalign (fedavg) needs its last block slimmed per client, which only the "
     "ResNets stack (not cnn_small) (sequential client training only)"),
    ({"name": "mixup"}, {"client_parallel": "vectorized"}, None),
])
def test_an_explicit_vectorized_that_cannot_be_honoured_is_refused_at_planning(algorithm, training, message):
    """Before: refused by the train job, after the partition and init jobs (and in a grid, other runs) ran."""
    config = with_change("algorithms.fedavg", algorithm)
    config["training"].update(training)

    if message is None:
        check_config(config, SCHEMA)
        return
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    assert message in str(err.value)


def test_an_algorithm_without_any_stacked_form_is_refused_vectorized_at_planning(monkeypatch):
    # Prepare: an algorithm whose spec declares that its clients train one after another (none does today: GradAug,
    # the last, vectorises on the ResNets), as a new algorithm without a stacked form would
    spec = dataclasses.replace(registry.ALGORITHM_SPECS["mixup"], sequential_only="the passes of its own objective")
    monkeypatch.setitem(registry.ALGORITHM_SPECS, "mixup", spec)
    config = with_change("algorithms.fedavg", {"name": "mixup"})
    config["training"].update({"client_parallel": "vectorized"})

    # Execute / Assert: refused before any job, with the spec's reason; auto falls back
    with pytest.raises(ConfigError, match="algorithm mixup \\(fedavg\\) needs the passes of its own objective"):
        check_config(config, SCHEMA)
    config["training"]["client_parallel"] = "auto"
    check_config(config, SCHEMA)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("training.rounds", 2.0, "training.rounds: 2.0 is not an integer: write 2"),
    ("training.batch_size", 16.0, "training.batch_size: 16.0 is not an integer: write 16"),
    ("hessian.top_k", 2.0, "hessian.top_k: 2.0 is not an integer: write 2"),
    ("training.rounds", True, "training.rounds: True is not of type 'integer'"),
    ("training.rounds", 2.5, "training.rounds: 2.5 is not of type 'integer'"),
    ("training.lr", "1e-3", "training.lr: '1e-3' is not of type 'number'; YAML read '1e-3' as text: an exponent "
                            "needs a decimal point (1.0e-3, not 1e-3)"),
    ("training.lr", "0.1", "training.lr: '0.1' is not of type 'number'; YAML read '0.1' as text: it is quoted, or "
                           "it came in a list or a mapping given to Snakemake's --config"),
    ("seeds", "[0,1]", "seeds: '[0,1]' is not of type 'array'; Snakemake's --config passes a list or a mapping as "
                       "text: set it in a config file (--configfile) instead"),
])
def test_a_number_of_the_wrong_kind_is_refused_before_any_job_with_how_to_write_it(key, value, message):
    """2.0 for an integer passed JSON Schema and failed in the jobs that count with it, after the ones before
    (and a finished run whose params changed lost its training); 1e-3 is text to YAML 1.1."""
    with pytest.raises(ConfigError) as err:
        check_config(with_change(key, value), SCHEMA)
    assert message in str(err.value)


@pytest.mark.parametrize(("key", "hint"), [
    ("rounds", "It is training.rounds or hessian.rounds: set it inside its section (in a config file: `training: "
               "{rounds: ...}`; Snakemake's --config sets top-level keys only)."),
    ("min_size", "It is partition.min_size: set it inside its section"),
    ("seedz", "Did you mean 'seeds'?"),  # no section holds it: the nearest top-level key
    # the singular of a top-level key that a section also holds: both
    ("seed", "Did you mean 'seeds'? Or it is experiment_defaults.seed or hessian.seed: set it inside its section"),
])
def test_a_sections_key_given_at_the_top_level_names_its_section(key, hint):
    # Prepare: what `snakemake --config rounds=5` gives
    config = with_change(key, 5)

    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    assert f"{key}: unknown key {key!r}. {hint}" in str(err.value)


def _every_hyperparameter():
    from dataclasses import fields

    from fedscape.fl.hparams.registry import ALGORITHM_SPECS

    return [(name, f.name) for name, spec in ALGORITHM_SPECS.items() for f in fields(spec.config)]


@pytest.mark.parametrize(("name", "key"), _every_hyperparameter(), ids=[f"{n}.{k}" for n, k in _every_hyperparameter()])
def test_every_hyperparameter_of_every_algorithm_refuses_a_string(name, key):
    # Prepare
    config = with_change("algorithms", {"x": {"name": name, key: "big"}}, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert
    assert f"algorithms.x.{key}: expected " in str(err.value)
    assert "got 'big'" in str(err.value)


@pytest.mark.parametrize("hparams", [{"name": "fedasam", "rho": 1}, {"name": "moon", "projection_dim": 4},
                                     {"name": "gradaug", "scales": [1, 0.5]}, {"name": "fedavgm", "server_lr": 2}])
def test_an_integer_where_a_number_is_expected_and_a_list_of_numbers_stay_valid(hparams):
    config = with_change("algorithms", {"x": hparams}, GRID_ONLY)

    check_config(config, SCHEMA)


# -- partition options bounded by the dataset ---------------------------------------------------------------
@pytest.mark.parametrize(("partitions", "expected"), [
    ({"c11": {"kind": "classes", "classes_per_client": 11}},
     "partitions.c11.classes_per_client: 11 classes per client, but digits has 10 classes; set classes_per_client "
     "to at most 10"),
    ({"nat": {"kind": "natural"}}, "partitions.nat: the kind natural splits by each sample's writer, but digits has "
                                   "no writer ids"),
])
def test_a_partition_option_beyond_the_dataset_is_rejected_at_planning(partitions, expected):
    # Prepare: the label joins the run grid of digits (10 classes, no writers)
    config = with_change("partitions", partitions, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert
    assert expected in str(err.value)


def test_classes_per_client_is_checked_against_each_dataset_the_label_is_used_with():
    # Prepare: c10 fits digits (10 classes); c20 does not; neither is checked against a dataset it is not used with
    config = with_change("partitions", {"c10": {"kind": "classes", "classes_per_client": 10},
                                        "c20": {"kind": "classes", "classes_per_client": 20}}, GRID_ONLY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: only c20, once
    lines = str(err.value).splitlines()[1:]
    assert lines == ["  - partitions.c20.classes_per_client: 20 classes per client, but digits has 10 classes; set "
                     "classes_per_client to at most 10"]


# -- a user's plane file is checked at planning ----------------------------------------------------------------
HESSIAN_RUN = [{"alpha": "iid", "init": "random", "algorithm": "fedavg"}]


def _plane(path: Path) -> str:
    import json

    import numpy as np

    meta = {"kind": "hessian", "runs": [], "round": None, "explained_variance": None, "axis_labels": ["x", "y"],
            "model_meta": {}, "seed": 0}
    np.savez(path, center=np.ones(6, np.float32), center_buffers=np.zeros(0, np.float32), d1=np.ones(6, np.float32),
             d2=np.ones(6, np.float32), meta=np.array(json.dumps(meta)))
    return str(path)


@pytest.mark.parametrize(("entry", "file", "expected"), [
    ({"kind": "hessian", "runs": HESSIAN_RUN}, "missing",
     "landscapes.x.plane_file: plane file {path} does not exist (relative paths start at the working directory"),
    ({"kind": "hessian", "runs": HESSIAN_RUN}, "garbage",
     "landscapes.x.plane_file: cannot read plane file {path}: not an .npz archive (a plane file is numpy's savez of "
     "['center', 'center_buffers', 'd1', 'd2', 'meta']); it is your own file (`landscapes.x.plane_file`), which no job "
     "makes: fix or replace it"),
    ({"kind": "hessian", "runs": HESSIAN_RUN}, "directory",
     "landscapes.x.plane_file: cannot read plane file {path}: a directory"),
    ({"kind": "hessian", "runs": HESSIAN_RUN}, "short_d1", "landscapes.x.plane_file: plane file {path}: plane "
                                                           "direction d1 has 5 entries, the centre 6"),
    ({"kind": "random", "runs": HESSIAN_RUN}, "plane",
     "landscapes.x.plane_file: only kind hessian reads a plane file; kind random makes its own plane: remove "
     "plane_file or set kind: hessian"),
    ({"kind": "three_points", "checkpoints": [{"run": {"alpha": "iid", "init": "random"}},
                                              {"run": {"alpha": 1.0}},
                                              {"run": {"alpha": "iid", "init": "random"}, "round": 0}]},
     "plane", "landscapes.x.plane_file: only kind hessian reads a plane file; kind three_points makes its own plane"),
])
def test_a_plane_file_that_is_no_readable_plane_or_that_the_kind_ignores_is_refused_at_planning(
        tmp_path, entry, file, expected):
    import json

    import numpy as np

    # Prepare
    path = tmp_path / "plane.npz"
    if file == "garbage":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif file == "directory":
        path.mkdir()
    elif file == "plane":
        _plane(path)
    elif file == "short_d1":
        _plane(path)
        with np.load(path) as npz:
            arrays = dict(npz)
        np.savez(path, **{**arrays, "d1": np.ones(5, np.float32), "meta": np.array(json.dumps(
            json.loads(str(arrays["meta"]))))})
    config = with_change("landscapes", {"x": {**entry, "plane_file": str(path)}})

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert
    assert expected.format(path=path) in str(err.value)


def test_a_readable_plane_file_of_a_hessian_surface_is_valid(tmp_path):
    config = with_change("landscapes", {"x": {"kind": "hessian", "runs": HESSIAN_RUN,
                                              "plane_file": _plane(tmp_path / "plane.npz")}})

    check_config(config, SCHEMA)


# -- options the chosen local optimiser ignores ------------------------------------------------------------------
@pytest.mark.parametrize(("training", "overrides", "expected"), [
    ({"optimizer": "sgd", "adamw_beta2": 0.95}, {},
     "training: adamw_beta2 0.95 is ignored by optimizer sgd (only adamw reads adamw_beta1, adamw_beta2 and "
     "adamw_eps): set optimizer: adamw, or adamw_beta2: 0.999 (the default)"),
    ({"optimizer": "sgd", "adamw_eps": 1e-6, "adamw_beta1": 0.8}, {},
     "training: adamw_beta1 0.8 and adamw_eps 1e-06 are ignored by optimizer sgd (only adamw reads adamw_beta1, "
     "adamw_beta2 and adamw_eps): set optimizer: adamw, or adamw_beta1: 0.9, adamw_eps: 1e-08 (the defaults)"),
    ({"optimizer": "adamw", "momentum": 0.9}, {},
     "training: momentum 0.9 is ignored by optimizer adamw (AdamW has no SGD momentum: its moments are adamw_beta1 "
     "and adamw_beta2): set momentum: 0, or optimizer: sgd"),
    ({"momentum": 0.9}, {"optimizer": "adamw"}, "algorithms.x.training: momentum 0.9 is ignored by optimizer adamw"),
    ({"optimizer": "adamw", "adamw_beta2": 0.95}, {"optimizer": "sgd"},
     "algorithms.x.training: adamw_beta2 0.95 is ignored by optimizer sgd"),
    ({}, {"adamw_beta1": 0.5}, "algorithms.x.training: adamw_beta1 0.5 is ignored by optimizer sgd"),
])
def test_an_option_that_the_chosen_optimiser_ignores_is_rejected(training, overrides, expected):
    # Prepare: no momentum unless given (the default config's 0.9 is for SGD)
    config = copy.deepcopy(GRID_ONLY)
    config["training"] = {**config["training"], "momentum": 0.0, **training}
    config["algorithms"] = {"x": {"name": "fedavg", "training": overrides}}

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: once, under the section that makes it so
    assert expected in str(err.value)
    assert len(str(err.value).splitlines()) == 2


@pytest.mark.parametrize(("training", "overrides"), [
    ({"optimizer": "adamw", "momentum": 0.0, "adamw_beta2": 0.95}, {}),
    ({"momentum": 0.9}, {"optimizer": "adamw", "momentum": 0.0, "adamw_eps": 1e-6}),
    ({"optimizer": "adamw", "momentum": 0.0, "adamw_beta1": 0.8}, {"optimizer": "sgd", "adamw_beta1": 0.9,
                                                                   "momentum": 0.9}),
])
def test_options_that_the_chosen_optimiser_reads_stay_valid(training, overrides):
    config = copy.deepcopy(GRID_ONLY)
    config["training"] = {**config["training"], **training}
    config["algorithms"] = {"x": {"name": "fedavg", "training": overrides}}

    check_config(config, SCHEMA)


# -- results_dir is pasted into shell commands and is deleted below ------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("/", "results_dir: '/' is the root of the file system"),
    ("//", "results_dir: '//' is the root of the file system"),
    ("/./", "results_dir: '/./' is the root of the file system"),
    *[(f"res{c}ults", f"results_dir: {f'res{c}ults'!r} is not valid: it contains {c!r}; results_dir ends up in shell "
                      "command lines") for c in "'\"|&<>`$;()*?[]\\"],
    ("res\nults", "results_dir: 'res\\nults' is not valid: it contains '\\n'; results_dir ends up in shell"),
    ("res ults", "results_dir: 'res ults' is not valid: it contains ' '; results_dir ends up in shell"),
    ("a|b;c|d", "results_dir: 'a|b;c|d' is not valid: it contains '|', ';'; results_dir ends up in shell"),
    ("results\n", "results_dir: 'results\\n' is not valid: it contains '\\n'; results_dir ends up in shell"),
    ("x/../$y", "results_dir: 'x/../$y' is not valid: a path without `..` parts"),
])
def test_an_unsafe_results_dir_is_rejected_naming_the_character(value, expected):
    config = with_change("results_dir", value)

    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    assert expected in str(err.value)


@pytest.mark.parametrize(("value", "folder", "instead"), [
    ("train", "logs/train", "results/train"),  # its logs in logs/train/, the default run's train logs' folder
    ("tables/old", "logs/tables/old", "results/tables/old"),
    ("./figures/", "logs/figures", "results/figures"),
    ("/hessian/me", "logs/hessian/me", "results/hessian/me"),  # an absolute one's: below logs/ without its leading /
])
def test_a_results_dir_whose_logs_lie_among_the_default_runs_is_rejected(value, folder, instead):
    # Prepare
    config = with_change("results_dir", value)
    first = folder.split("/")[1]

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: the folder named, and a results_dir that would not share it
    assert (f"results_dir: {value!r} keeps its logs in {folder}/, inside logs/{first}/ where the default results "
            f"keep their {first} logs") in str(err.value)
    assert str(err.value).count(f"e.g. {instead}") == 1
    check_config(with_change("results_dir", instead), SCHEMA)


def test_the_results_dir_description_names_the_default_runs_log_folders():
    description = " ".join(SCHEMA["properties"]["results_dir"]["description"].split())

    assert f"default run's log folders ({', '.join(sorted(DEFAULT_LOG_PARTS))})" in description


@pytest.mark.parametrize("value", ["results", "results/x_1", "/scratch/me/fedscape-2.0", "./out", "/tmp", "a,b=c@d",
                                   "trains", "results/train", "/scratch/tables"])
def test_a_plain_results_dir_stays_valid(value):
    check_config(with_change("results_dir", value), SCHEMA)


@pytest.mark.parametrize(("path", "yaml_value", "key"), [
    ("training.lr", ".nan", "training.lr"),
    ("training.momentum", ".inf", "training.momentum"),
    ("algorithms.fedprox.mu", ".inf", "algorithms.fedprox.mu"),
    ("algorithms.fedprox.mu", "-.inf", "algorithms.fedprox.mu"),
    ("hessian.tol", ".NaN", "hessian.tol"),
    ("alphas", "[iid, .inf]", "alphas[1]"),
])
def test_a_number_that_is_not_finite_is_rejected_naming_the_key(path, yaml_value, key):
    # Prepare: the tiny config with one value written as YAML's NaN or infinity (a bound of the schema passes NaN)
    config = with_change(path, yaml.safe_load(f"v: {yaml_value}")["v"], base=TINY)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)

    # Assert: the key and why
    assert f"{key}: " in str(err.value) and "is not a finite number" in str(err.value)


@pytest.mark.parametrize(("label", "name", "warned"), [
    ("fedprox", "fedavg", True),   # shown as FedProx, trained as FedAvg
    ("FedProx", "fedavg", True),
    ("FedProx", "fedprox", False),
    ("fedavg_lowlr", "fedavg", False),
])
def test_an_algorithm_label_that_spells_another_algorithm_is_warned_about(label, name, warned):
    # Prepare: the tiny config's grid (without its analyses, which name its labels) with one algorithm label
    config = copy.deepcopy(TINY)
    for section in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(section, None)
    config["algorithms"] = {label: {"name": name}}
    config["experiment_defaults"] = {**config.get("experiment_defaults", {}), "algorithm": label}
    config["experiments"] = [{"alpha": "iid", "init": "random", "algorithm": label}]
    check_config(config, SCHEMA)

    # Execute
    lines = [line for line in config_warnings(config, build_runs(config)) if line.startswith("algorithms.")]

    # Assert
    assert lines == ([f"algorithms.{label}: figures and tables show it as FedProx, the algorithm its label spells, "
                      f"but its runs are of {name}: a label such as {name}_{label.lower()} would say so"]
                     if warned else [])


def test_the_schema_and_a_config_copy_are_the_pure_python_loader_s(monkeypatch):
    # Prepare: what PyYAML's pure-Python safe loader and dumper make of the schema and of a copy of the default config
    import fedscape.core.config as config_mod

    assert config_mod.SAFE_LOADER is yaml.CSafeLoader  # libyaml, as PyYAML's wheels ship it
    schema_path = ROOT / "workflow/schemas/config.schema.yaml"
    with monkeypatch.context() as m:
        m.setattr(config_mod, "SAFE_LOADER", yaml.SafeLoader)
        m.setattr(config_mod, "SAFE_DUMPER", yaml.SafeDumper)
        pure_schema, pure_copy = config_mod.load_schema(schema_path), config_mod._copy(DEFAULT)

    # Execute
    schema, copied = config_mod.load_schema(schema_path), config_mod._copy(DEFAULT)

    # Assert: the same documents, down to each number's type
    assert schema == pure_schema and copied == pure_copy == DEFAULT
    assert repr(schema) == repr(pure_schema) and repr(copied) == repr(pure_copy)
