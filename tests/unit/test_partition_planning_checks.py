"""Partition settings that planning (`snakemake -n`: the config check and its warnings, torch-free) refuses or warns
about, instead of the partition job failing on them later: a split file beside a proxy split or of another number of
users than num_clients, a Dirichlet concentration beyond MAX_CONCENTRATION, and several seeds of a kind that makes
one split for every seed."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from helpers.configs import SCHEMA, TINY
from helpers.workflow import ROOT

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data import partition as partition_module
from fedscape.data.partition import (
    MAX_CONCENTRATION,
    PartitionError,
    check_partition_entry,
    make_kind_partition,
    seed_free_reason,
)
from fedscape.plan.partition import check as check_planned_partitions
from fedscape.plan.partition import shared_partition_warnings
from fedscape.plan.workflow import check_config, config_warnings

SPLIT = {"kind": "split_file", "path": "splits/paper.json"}


def _write_split(path, users: int, per_user: int = 20) -> None:
    """A split file in LEAF's layout (Caldarola et al.'s): `users` users of `per_user` images each, image i labelled
    i % 10."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = {u: range(u * per_user, (u + 1) * per_user) for u in range(users)}
    data = {"users": list(range(users)), "num_samples": [per_user] * users,
            "user_data": {str(u): {"x": [f"img_{i}_label_{i % 10}.png" for i in ix], "y": [i % 10 for i in ix]}
                          for u, ix in images.items()}}
    path.write_text(json.dumps(data))


def _planning_config(dataset: str, entry: dict, options: dict | None = None) -> dict:
    """What plan.partition.check reads of a config with one `partitions` label `paper` on `dataset`."""
    return {"partitions": {"paper": entry}, "alphas": ["paper"], "partition": {"min_size": 1},
            "datasets": {dataset: {"test_fraction": 0.25, "proxy_fraction": 0.0, **(options or {})}}, "inits": {}}


def _runs(dataset: str, setting: str, num_clients: int, seeds=(0,)) -> list:
    return [SimpleNamespace(dataset=dataset, setting=setting, num_clients=num_clients, seed=seed, init="random")
            for seed in seeds]


def _tiny(partitions: dict, experiments: list[dict], **extra) -> dict:
    """The tiny digits config with these partitions and runs alone (no analysis sections)."""
    config = copy.deepcopy(TINY)
    config["partitions"] = partitions
    config["experiments"] = experiments
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["hessian"] = {"enabled": False}
    config.update(extra)
    return config


# --- 1. split_file: a proxy split, and the file's users against num_clients ---

@pytest.mark.parametrize(("dataset", "proxy_fraction", "refused"), [
    ("cifar10", 0.2, True),     # the schema's default proxy_fraction: the file's indices would name other images
    ("cifar100", 0.05, True),
    ("cifar10", 0.0, False),    # flatness.yaml's setting
    ("femnist", 0.0, False),
    ("digits", 0.2, False),     # no published training set: its pool (after its test and proxy splits) is indexed
])
def test_a_split_file_beside_a_proxy_split_is_refused_at_planning(dataset, proxy_fraction, refused):
    # Prepare: a split_file entry used on `dataset` with this proxy split (the file need not exist)
    config = _planning_config(dataset, SPLIT, {"proxy_fraction": proxy_fraction})

    # Execute
    problems = check_planned_partitions(config, _runs(dataset, "paper", 4))

    # Assert: one line naming the entry and datasets.<name>.proxy_fraction, and the fix
    assert problems == ([f"partitions.paper: the kind split_file reads a split of {dataset}'s whole training set "
                         "(its images by their index in the published order), but datasets."
                         f"{dataset}.proxy_fraction {proxy_fraction:g} holds part of that set out as the proxy split, "
                         f"so the file's indices would name other images; set datasets.{dataset}.proxy_fraction to "
                         "0 (a pretrained init on it then needs a proxy_dataset or proxy_dir)"] if refused else [])


def test_the_workflow_refuses_a_split_file_beside_a_proxy_split_before_any_job():
    # Prepare: CIFAR-10 at the schema's default proxy_fraction (0.2), one run on a split file that is not there
    config = _tiny({"paper": dict(SPLIT)}, [{"alpha": "paper", "init": "random", "algorithm": "fedavg"}],
                   datasets={"cifar10": {"data_dir": "data/cifar10"}},
                   inits={"random": {"kind": "random", "seed": 0}})

    # Execute / Assert: the config check (the Snakefile's, on every dry run) names the key to change
    with pytest.raises(ConfigError, match=r"set datasets\.cifar10\.proxy_fraction to 0"):
        check_config(config, SCHEMA)
    config["datasets"]["cifar10"]["proxy_fraction"] = 0.0
    check_config(config, SCHEMA)


@pytest.mark.parametrize(("users", "num_clients", "refused"), [
    (4, 4, False),
    (4, 5, True),   # fewer users than clients
    (4, 3, True),   # more: the job refuses any other count too
    (None, 5, False),  # no file yet: a dry run plans without it, as before (named before the partition jobs start)
])
def test_a_split_file_of_another_number_of_users_than_num_clients_is_refused_at_planning(tmp_path, monkeypatch,
                                                                                        users, num_clients, refused):
    # Prepare: the workflow's working directory, with the split file (relative path) where there is one
    monkeypatch.chdir(tmp_path)
    if users is not None:
        _write_split(tmp_path / SPLIT["path"], users)
    config = _planning_config("digits", SPLIT)

    # Execute
    problems = check_planned_partitions(config, _runs("digits", "paper", num_clients))

    # Assert: the line names num_clients and the entry's path, and the count to set
    assert problems == ([f"num_clients: {num_clients} clients of the split_file partition paper, but partitions.paper."
                         f"path (splits/paper.json) lists 4 users, one client each; set num_clients to 4 for the runs "
                         "on paper"] if refused else [])


@pytest.mark.parametrize("case", ["not_json", "no_users", "too_large", "directory"])
def test_a_split_file_planning_cannot_count_is_left_to_the_partition_job(tmp_path, monkeypatch, case):
    # Prepare: a file that is no split (or larger than planning reads): the job names what is wrong with it
    monkeypatch.chdir(tmp_path)
    path = tmp_path / SPLIT["path"]
    path.parent.mkdir(parents=True)
    if case == "not_json":
        path.write_text("{not json")
    elif case == "no_users":
        path.write_text(json.dumps({"user_data": {}}))
    elif case == "too_large":
        _write_split(path, 4)
        monkeypatch.setattr(partition_module, "SPLIT_FILE_PLANNING_BYTES", path.stat().st_size - 1)
    else:
        path.mkdir()

    # Execute
    problems = check_planned_partitions(_planning_config("digits", SPLIT), _runs("digits", "paper", 5))

    # Assert: planning adds nothing of its own
    assert problems == []


def test_a_rewritten_split_file_is_counted_again(tmp_path, monkeypatch):
    # Prepare: a file of 4 users, counted once (the count is cached by path, size and date)
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / SPLIT["path"], 4)
    config = _planning_config("digits", SPLIT)
    assert check_planned_partitions(config, _runs("digits", "paper", 5))

    # Execute: the file rewritten with 5 users
    _write_split(tmp_path / SPLIT["path"], 5)

    # Assert: the 5 clients fit it now
    assert check_planned_partitions(config, _runs("digits", "paper", 5)) == []


def test_the_workflow_refuses_a_split_file_of_other_users_before_any_job(tmp_path, monkeypatch):
    # Prepare: the tiny config's 4 clients on a split file of 3 users, in the working directory
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / SPLIT["path"], 3)
    config = _tiny({"paper": dict(SPLIT)}, [{"alpha": "paper", "init": "random", "algorithm": "fedavg"}])

    # Execute / Assert: refused by the config check, naming num_clients and the count the file holds
    with pytest.raises(ConfigError, match=r"num_clients: 4 clients of the split_file partition paper, but "
                                          r"partitions\.paper\.path \(splits/paper\.json\) lists 3 users"):
        check_config(config, SCHEMA)
    config["num_clients"] = [3]
    check_config(config, SCHEMA)


# --- 2. Dirichlet concentrations beyond MAX_CONCENTRATION ---

@pytest.mark.parametrize(("kind", "name"), [("dirichlet", "alpha"), ("quantity", "beta")])
@pytest.mark.parametrize(("value", "refused"), [(0.5, False), (1e6, False), (1.000001e6, True), (1e300, True)])
def test_a_concentration_above_the_maximum_is_refused_with_the_fix(kind, name, value, refused):
    # Prepare / Execute: the kind's concentration option (`name`) at `value`
    problems = check_partition_entry("lab", {"kind": kind, name: value})

    # Assert: the key, the bound, why, and what to write instead
    assert problems == ([f"partitions.lab.{name}: {value:g} is above 1e+06, where its Dirichlet draw gives each of "
                         "the M clients 1/M to within about 0.1%, indistinguishable from an IID split (and from about "
                         f"1e300 on numpy's draws overflow to zeros); set {name} to at most 1e+06, or use the kind iid "
                         "(`alphas: [iid]`) for an IID split"] if refused else [])


@pytest.mark.parametrize(("entry", "label"), [
    ({"kind": "dirichlet", "alpha": 1e308}, "dirichlet"),
    ({"kind": "quantity", "beta": 1e308}, "quantity"),
])
def test_the_partition_job_refuses_an_overflowing_concentration_instead_of_drawing_zeros(entry, label):
    # Prepare: a concentration whose draws overflow (numpy's Gamma variates sum to inf: every share 0)
    labels = np.arange(200) % 10
    with np.errstate(all="ignore"):
        assert not np.random.default_rng(0).dirichlet(np.full(10, entry.get("alpha", entry.get("beta")))).any()

    # Execute / Assert: the job's writer names the key and the bound (not a split spread evenly, nor "a larger beta")
    with pytest.raises(PartitionError, match=rf"partitions\.{label}\.\w+: 1e\+308 is above 1e\+06"):
        make_kind_partition(entry, labels, 10, seed=0, min_size=1, label=label)


@pytest.mark.parametrize(("where", "value", "refused"), [
    ("alphas", 1.0e300, True), ("alphas", 2.0e6, True), ("alphas", 1.0e6, False), ("alphas", 100.0, False),
    ("experiments", 1.0e300, True), ("experiments", 1.0e6, False),
])
def test_the_schema_caps_an_alpha_and_says_to_write_iid(where, value, refused):
    # Prepare: the tiny config with the alpha in its grid, or in an explicit run
    config = _tiny({}, [{"alpha": "iid", "init": "random", "algorithm": "fedavg"}])
    if where == "alphas":
        config["alphas"] = ["iid", value]
        config["experiments"] = []
    else:
        config["experiments"].append({"alpha": value, "init": "random", "algorithm": "fedavg"})

    # Execute / Assert: the key, the maximum and the fix
    if not refused:
        check_config(config, SCHEMA)
        return
    with pytest.raises(ConfigError) as err:
        check_config(config, SCHEMA)
    key = "alphas[1]" if where == "alphas" else "experiments[1].alpha"
    assert f"  - {key}: {value!r} is not valid: " in str(err.value)
    assert "at most 1000000.0" in str(err.value) and "write iid instead" in str(err.value)


def test_the_schema_s_maximum_alpha_is_the_library_s():
    # Prepare
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]

    # Execute: the maximum of the number branch of each alpha
    maxima = [branch["maximum"] for node in (props["alphas"]["items"], props["experiments"]["items"]["properties"]
                                             ["alpha"]) for branch in node["anyOf"] if branch.get("type") == "number"]

    # Assert
    assert maxima == [MAX_CONCENTRATION, MAX_CONCENTRATION]


# --- 3. Kinds that make one split for every seed ---

SEED_CASES = [
    ({"kind": "classes", "classes_per_client": 1}, 10, True),    # one class each, every class one holder
    ({"kind": "classes", "classes_per_client": 1}, 6, True),
    ({"kind": "classes", "classes_per_client": 1}, 15, False),   # classes shared by two holders: cut at random
    ({"kind": "classes", "classes_per_client": 2}, 5, False),    # the second class is drawn
    ({"kind": "natural", "select": "first"}, 5, True),
    ({"kind": "natural", "select": "random"}, 5, False),
    ({"kind": "split_file", "path": "splits/paper.json"}, 4, True),
    ({"kind": "dirichlet", "alpha": 0.5}, 5, False),
    ({"kind": "quantity", "beta": 0.5}, 5, False),
    ({"kind": "feature_noise", "sigma": 0.1}, 5, False),  # its split is IID, seeded (and so is its noise)
    ({"kind": "iid"}, 5, False),
]


@pytest.mark.parametrize(("entry", "num_clients", "seed_free"), SEED_CASES)
def test_a_kind_is_declared_seed_free_exactly_where_its_writer_ignores_the_seed(tmp_path, monkeypatch, entry,
                                                                             num_clients, seed_free):
    # Prepare: 10 classes of 60 samples, 12 writers of 50 (shuffled), and a split file of 4 users
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / SPLIT["path"], 4)
    labels = np.arange(600) % 10
    writers = np.random.default_rng(1).permutation(np.repeat(np.arange(12), 50))

    # Execute: the declaration (digits: 10 classes), and the writer's splits of two seeds
    reason = seed_free_reason(entry, num_clients, "digits")
    parts = [make_kind_partition(entry, labels, num_clients, seed, min_size=1, writer_ids=writers)
             for seed in (0, 1)]

    # Assert: declared seed-free if and only if the two seeds' splits are the same
    same = all(np.array_equal(a, b) for a, b in zip(parts[0].client_indices, parts[1].client_indices, strict=True))
    assert same == seed_free
    assert (reason is not None) == seed_free


@pytest.mark.parametrize(("dataset", "options", "num_clients", "pool_classes", "declared", "same"), [
    ("cifar100", None, 85, 100, True, True),   # an image data set's pool holds every class it declares
    ("digits", None, 10, 10, True, True),
    # Shakespeare from its raw texts declares 96 symbols; a pool whose labels use 80 of them shares classes among 85
    # clients, which the seed cuts (the review's reproduction)
    ("shakespeare", {"source": "raw"}, 85, 80, False, False),
    ("shakespeare", None, 60, 60, False, True),  # seed-free in fact, but planning cannot know the pool's symbols
])
def test_one_class_per_client_is_declared_seed_free_only_where_the_pool_holds_every_declared_class(
        dataset, options, num_clients, pool_classes, declared, same):
    # Prepare: a pool of `pool_classes` classes of 3 samples
    entry = {"kind": "classes", "classes_per_client": 1}
    labels = np.arange(3 * pool_classes) % pool_classes

    # Execute: the declaration for the data set, and the writer's splits of two seeds of that pool
    reason = seed_free_reason(entry, num_clients, dataset, options)
    parts = [make_kind_partition(entry, labels, num_clients, seed, min_size=1) for seed in (0, 1)]

    # Assert: declared seed-free only on an image data set, where the seeds' splits are the same
    assert (reason is not None) == declared
    assert all(np.array_equal(a, b) for a, b in zip(*(p.client_indices for p in parts), strict=True)) == same


@pytest.mark.parametrize(("dataset", "options", "num_clients", "warned"), [
    ("cifar100", {}, 85, True),
    ("shakespeare", {"source": "raw"}, 85, False),  # 96 declared symbols, but the pool may use fewer
    ("shakespeare", {}, 60, False),
])
def test_several_seeds_of_one_class_per_client_are_warned_about_on_image_data_sets_only(dataset, options,
                                                                                      num_clients, warned):
    # Prepare
    config = _planning_config(dataset, {"kind": "classes", "classes_per_client": 1}, options)

    # Execute
    lines = shared_partition_warnings(config, _runs(dataset, "paper", num_clients, (0, 1)))

    # Assert
    assert len(lines) == warned
    assert all("one class per client among no more clients than the data set's" in line for line in lines)


@pytest.mark.parametrize(("entry", "seeds", "num_clients", "warned"), [
    ({"kind": "classes", "classes_per_client": 1}, (0, 1), 4, "one class per client among no more clients than the "
                                                             "data set's 10 classes"),
    ({"kind": "classes", "classes_per_client": 1}, (0, 1), 12, None),  # more clients than classes: seeded
    ({"kind": "classes", "classes_per_client": 1}, (0,), 4, None),     # one seed: nothing shared
    ({"kind": "natural", "select": "first"}, (0, 1, 2), 4, "select: first takes the first writers"),
    ({"kind": "natural", "select": "random"}, (0, 1, 2), 4, None),
    ({"kind": "split_file", "path": "splits/paper.json"}, (0, 2), 4, "the file splits/paper.json decides the split"),
    ({"kind": "quantity", "beta": 0.5}, (0, 1), 4, None),
])
def test_several_seeds_of_a_seed_free_partition_are_warned_about(entry, seeds, num_clients, warned):
    # Prepare: runs on one label with these seeds (the dataset's declared classes: femnist's 62, digits' 10)
    dataset = "femnist" if entry["kind"] == "natural" else "digits"
    config = _planning_config(dataset, entry)

    # Execute
    lines = shared_partition_warnings(config, _runs(dataset, "paper", num_clients, seeds))

    # Assert: one line naming the label, its runs, their seeds and why they share one partition
    if warned is None:
        assert lines == []
        return
    assert len(lines) == 1
    assert lines[0].startswith(f"seeds: the runs on partitions.paper ({entry['kind']}: {dataset} with {num_clients} "
                               f"clients) take seeds {', '.join(map(str, seeds))}, but {warned}")
    assert lines[0].endswith("they share one partition, so their spread covers only the training's randomness "
                             "(client sampling, batch order), not the split's; keep one seed for paper, or read the "
                             "spread over seeds as the training's alone")


def test_the_workflow_warns_of_seeds_that_share_one_partition():
    # Prepare: the tiny config's 4 clients on one class each (digits has 10), two seeds, beside a Dirichlet alpha
    config = _tiny({"one": {"kind": "classes", "classes_per_client": 1}},
                   [{"alpha": a, "seed": s, "init": "random", "algorithm": "fedavg"} for a in ("one", 0.5)
                    for s in (0, 1)], seeds=[0, 1])
    check_config(config, SCHEMA)

    # Execute
    lines = [line for line in config_warnings(config, build_runs(config)) if line.startswith("seeds: the runs on")]

    # Assert: the label alone (the alpha's partitions differ by seed)
    assert len(lines) == 1 and lines[0].startswith("seeds: the runs on partitions.one (classes: digits with 4 clients) "
                                                   "take seeds 0, 1, but one class per client")
