"""The partition kinds beyond Dirichlet (#C=k, quantity, feature noise, natural): coverage, their defining
property, min_size, seeds, the saved file and the config checks."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from fedscape.core.runs import Run
from fedscape.core.setting import (
    alpha_column,
    format_setting,
    is_iid,
    is_partition_label,
    setting_label,
    setting_order_key,
)
from fedscape.data.datasets import Dataset
from fedscape.data.federated import client_inputs, federate
from fedscape.data.partition import (
    PARTITION_KINDS,
    PartitionError,
    PartitionKind,
    check_partition_dataset,
    check_partition_entry,
    check_partition_file,
    classes_partition,
    feature_noise_partition,
    load_partition,
    make_kind_partition,
    natural_partition,
    noise_std,
    quantity_partition,
    save_partition,
)
from fedscape.data.specs import dataset_info
from fedscape.plan.partition import check as check_planned_partitions

ENTRIES = {
    "classes": {"kind": "classes", "classes_per_client": 2},
    "quantity": {"kind": "quantity", "beta": 0.5},
    "feature_noise": {"kind": "feature_noise", "sigma": 0.3},
    "dirichlet": {"kind": "dirichlet", "alpha": 0.3},
    "iid": {"kind": "iid"},
}


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 10, size=3000)


@pytest.fixture(scope="module")
def writers() -> np.ndarray:
    """60 writers with 1..99 samples each, in a shuffled order (as LEAF's users are)."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 100, size=60)
    return rng.permutation(np.repeat(np.arange(60), sizes))


def _covered_at_most_once(part, n: int) -> np.ndarray:
    all_idx = np.concatenate(part.client_indices)
    assert len(np.unique(all_idx)) == len(all_idx), "a sample is held by two clients"
    assert all_idx.min() >= 0 and all_idx.max() < n
    return all_idx


@pytest.mark.parametrize("kind", sorted(ENTRIES))
@pytest.mark.parametrize("num_clients", [3, 10, 25])
def test_every_kind_covers_each_sample_at_most_once_and_honours_min_size(labels, kind, num_clients):
    part = make_kind_partition(ENTRIES[kind], labels, num_clients, seed=1, min_size=8, label="x")

    _covered_at_most_once(part, len(labels))

    assert part.num_clients == num_clients
    assert part.sizes.min() >= 8
    assert part.kind == kind and part.label == "x"


@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_every_kind_is_bit_reproducible_and_seeded(labels, kind):
    a = make_kind_partition(ENTRIES[kind], labels, 10, seed=4)
    b = make_kind_partition(ENTRIES[kind], labels, 10, seed=4)
    c = make_kind_partition(ENTRIES[kind], labels, 10, seed=5)

    assert all(np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a.client_indices, c.client_indices, strict=True))


@pytest.mark.parametrize("k", [1, 2, 3, 10])
@pytest.mark.parametrize("num_clients", [4, 10, 17])
def test_classes_gives_every_client_exactly_k_classes(labels, k, num_clients):
    part = classes_partition(labels, num_clients, k, seed=0, min_size=1)

    held = (part.class_counts(labels, 10) > 0).sum(axis=1)

    assert (held == k).all()
    assert part.options == {"classes_per_client": k}


def test_classes_splits_each_class_evenly_among_its_holders(labels):
    part = classes_partition(labels, 10, 2, seed=0, min_size=1)
    counts = part.class_counts(labels, 10)

    for c in range(10):
        nonzero = counts[:, c][counts[:, c] > 0]
        if len(nonzero):
            assert nonzero.max() - nonzero.min() <= 1
            assert nonzero.sum() == (labels == c).sum()  # a drawn class is used whole


def test_classes_at_k_equal_to_all_classes_covers_everything(labels):
    part = classes_partition(labels, 6, 10, seed=0)

    assert len(_covered_at_most_once(part, len(labels))) == len(labels)


@pytest.mark.parametrize(("k", "match"), [(0, "classes_per_client must be in 1..10"),
                                          (11, r"classes_per_client must be in 1\.\.10 \(the classes among the client "
                                               r"pool's labels\), got 11")])
def test_classes_rejects_k_outside_the_classes(labels, k, match):
    with pytest.raises(PartitionError, match=match):
        classes_partition(labels, 4, k, seed=0)


def test_classes_fails_naming_the_kind_and_numbers_when_a_class_has_too_few_samples():
    tiny = np.array([0] * 50 + [1] * 50 + [2] * 2)  # class 2 cannot be shared by many clients

    with pytest.raises(PartitionError, match=r"partition kind classes.*class 2 has 2 samples"):
        classes_partition(tiny, 9, 3, seed=0, min_size=1, max_tries=5)


def _classes_partition_as_first_written(labels, num_clients, k, seed, min_size, max_tries):
    """classes_partition's draws as the first partitions were made (each class's indices found and each class's
    holders searched per try): the client indices, or the last try's problem where it gives up."""
    classes, class_sizes = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    problem = ""
    for _ in range(max_tries):
        held = []
        for i in range(num_clients):
            first = i % len(classes)
            others = rng.choice(np.delete(np.arange(len(classes)), first), size=k - 1, replace=False)
            held.append(np.sort(np.concatenate([[first], others])).astype(np.int64))
        holders = np.bincount(np.concatenate(held), minlength=len(classes))
        short = np.flatnonzero(holders > class_sizes)
        if len(short):
            c = int(short[0])
            problem = f"class {classes[c]} has {class_sizes[c]} samples for {holders[c]} clients"
            continue
        shards = [[] for _ in range(num_clients)]
        for c in range(len(classes)):
            if holders[c] == 0:
                continue
            idx_c = np.flatnonzero(labels == classes[c])
            rng.shuffle(idx_c)
            owners = [i for i in range(num_clients) if c in held[i]]
            for owner, part in zip(owners, np.array_split(idx_c, holders[c]), strict=True):
                shards[owner].append(part)
        smallest = min(sum(len(x) for x in sh) for sh in shards)
        if smallest >= min_size:
            return [np.sort(np.concatenate(sh)).astype(np.int64) for sh in shards]
        problem = f"smallest client in the last try: {smallest} samples"
    return problem


@pytest.mark.parametrize(("seed", "k", "num_clients", "min_size"), [
    (0, 1, 10, 1), (1, 2, 10, 10), (2, 3, 25, 10), (3, 2, 40, 40), (4, 10, 7, 10), (5, 4, 13, 120),
    (6, 2, 45, 64),  # gives up: 45 clients of 2 classes rarely all reach 64 samples
])
def test_classes_draws_the_partitions_it_always_has(seed, k, num_clients, min_size):
    # Prepare: unequal classes with gaps in their ids, so that class ids and positions differ
    labels = np.random.default_rng(seed).choice([0, 2, 3, 5, 7, 8, 9, 11, 12, 14], size=3000,
                                                p=np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum())
    expected = _classes_partition_as_first_written(labels, num_clients, k, seed, min_size, max_tries=25)

    # Execute
    try:
        got = [ix.tolist() for ix in classes_partition(labels, num_clients, k, seed, min_size, max_tries=25)
               .client_indices]
    except PartitionError as err:
        got = str(err)

    # Assert: the same clients' indices for every seed (finished runs' partitions are remade bit for bit), or the
    # same last try where it gives up
    if isinstance(expected, str):
        assert isinstance(got, str) and f"({expected})" in got
    else:
        assert got == [ix.tolist() for ix in expected]


def test_classes_redraws_as_it_always_has_after_a_class_too_small_for_its_holders():
    # Prepare: class 2's 4 samples cannot go to 5 or more of 9 clients, so some tries fail before any shuffle
    tiny = np.array([0] * 50 + [1] * 50 + [2] * 4)
    expected = [_classes_partition_as_first_written(tiny, 9, 2, seed, 1, max_tries=25) for seed in range(8)]

    # Execute
    got = [[ix.tolist() for ix in classes_partition(tiny, 9, 2, seed, 1, max_tries=25).client_indices]
           for seed in range(8)]

    # Assert
    assert got == [[ix.tolist() for ix in e] for e in expected]


def test_quantity_keeps_labels_iid_within_sampling_error(labels):
    part = quantity_partition(len(labels), 8, beta=0.5, seed=2, min_size=20)
    global_p = np.bincount(labels, minlength=10) / len(labels)
    counts = part.class_counts(labels, 10)

    assert len(_covered_at_most_once(part, len(labels))) == len(labels)
    for n, row in zip(part.sizes, counts, strict=True):
        # multinomial sampling: each class share within 4.5 standard errors of the global share
        se = np.sqrt(global_p * (1 - global_p) / n)
        assert (np.abs(row / n - global_p) <= 4.5 * se + 1e-12).all()


def test_quantity_sizes_grow_more_unequal_as_beta_falls(labels):
    def spread(beta):
        return np.mean([quantity_partition(len(labels), 10, beta, seed=s, min_size=1).sizes.std()
                        for s in range(10)])

    assert spread(0.3) > 2 * spread(100.0)


def test_quantity_fails_naming_the_kind_and_numbers(labels):
    with pytest.raises(PartitionError, match=r"partition kind quantity.*at least min_size=200"):
        quantity_partition(len(labels), 14, beta=0.05, seed=0, min_size=200, max_tries=3)


def test_feature_noise_is_an_iid_split_with_std_growing_with_the_client(labels):
    part = feature_noise_partition(len(labels), 5, sigma=0.4, seed=0)

    assert len(_covered_at_most_once(part, len(labels))) == len(labels)
    assert [noise_std(part, i) for i in range(5)] == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4])


def test_feature_noise_perturbs_each_client_by_its_std_and_nothing_else():
    n, m, sigma = 4000, 4, 0.8
    part = feature_noise_partition(n, m, sigma=sigma, seed=3)
    x = torch.zeros(n, 1, 4, 4)

    noisy = client_inputs(x, part)
    again = client_inputs(x, part)

    assert torch.equal(noisy, again)
    assert torch.equal(x, torch.zeros(n, 1, 4, 4)), "the stored data must stay clean"
    for i, idx in enumerate(part.client_indices):
        std = float(noisy[torch.as_tensor(idx)].std())
        assert std == pytest.approx(sigma * (i + 1) / m, rel=0.05)


def test_feature_noise_leaves_other_kinds_untouched(labels):
    part = classes_partition(labels, 4, 2, seed=0)
    x = torch.randn(len(labels), 3)

    assert client_inputs(x, part) is x


def test_feature_noise_rejects_token_inputs():
    part = feature_noise_partition(100, 4, sigma=0.1, seed=0)

    with pytest.raises(PartitionError, match="token ids"):
        client_inputs(torch.zeros(100, 8, dtype=torch.long), part)


@pytest.mark.parametrize("select", ["first", "random"])
def test_natural_gives_one_client_per_writer(writers, select):
    part = natural_partition(writers, 12, seed=0, select=select, min_size=10)

    _covered_at_most_once(part, len(writers))
    for idx in part.client_indices:
        assert len(np.unique(writers[idx])) == 1  # one writer
        assert len(idx) == (writers == writers[idx[0]]).sum()  # all of its samples
        assert len(idx) >= 10


def test_natural_first_takes_the_first_eligible_writers_and_random_a_seeded_sample(writers):
    counts = np.bincount(writers)
    eligible = np.flatnonzero(counts >= 10)

    first = natural_partition(writers, 5, seed=0, select="first", min_size=10)
    r1 = natural_partition(writers, 5, seed=1, select="random", min_size=10)
    r2 = natural_partition(writers, 5, seed=2, select="random", min_size=10)

    assert first.options["writers"] == [int(w) for w in eligible[:5]]
    assert set(r1.options["writers"]) <= set(eligible.tolist())
    assert r1.options["writers"] != r2.options["writers"]


def test_natural_fails_without_writers_or_with_too_few(writers):
    with pytest.raises(PartitionError, match="needs a dataset with writer ids.*digits has none"):
        natural_partition(None, 4, seed=0, dataset="digits")
    with pytest.raises(PartitionError, match=r"500 clients asked for, but only \d+ of .* writers"):
        natural_partition(writers, 500, seed=0, min_size=10)


@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_saved_partition_round_trips_with_its_kind(tmp_path, labels, kind):
    part = make_kind_partition(ENTRIES[kind], labels, 6, seed=2, label="lab")
    path = tmp_path / "partition.npz"

    save_partition(path, part, labels, 10, {"dataset": "digits"})
    back = load_partition(path, labels)

    assert back.kind == kind and back.label == "lab" and back.options == part.options
    assert all(np.array_equal(x, y) for x, y in zip(back.client_indices, part.client_indices, strict=True))
    assert math.isnan(back.alpha) == math.isnan(part.alpha)
    check_partition_file(path, "digits", 6, "lab", 2)
    with pytest.raises(PartitionError, match=r"partition 'lab' \(expected 'other'\)"):
        check_partition_file(path, "digits", 6, "other", 2)
    with pytest.raises(PartitionError, match="partition 'lab'"):
        check_partition_file(path, "digits", 6, "iid", 2)


def _saved_of_kind(kind: str, tmp_path, writers, label: str | None = "lab") -> tuple:
    """A partition of `kind` (any of PARTITION_KINDS) for `label` among 6 clients of the samples of `writers`, sample
    i labelled i % 10, saved; with its path."""
    labels = np.arange(len(writers)) % 10
    entry = ENTRIES.get(kind)
    if kind == "natural":
        entry = {"kind": "natural"}
    elif kind == "split_file":  # LEAF's layout, as Caldarola et al. publish it: 6 users of 20 images each
        entry = {"kind": "split_file", "path": str(tmp_path / "split.json")}
        users = {str(u): range(u * 20, (u + 1) * 20) for u in range(6)}
        (tmp_path / "split.json").write_text(json.dumps({"users": list(users), "user_data": {
            u: {"x": [f"img_{i}_label_{i % 10}.png" for i in ix], "y": [i % 10 for i in ix]}
            for u, ix in users.items()}}))
    part = make_kind_partition(entry, labels, 6, seed=2, writer_ids=writers, label=label)
    path = tmp_path / "partition.npz"
    save_partition(path, part, labels, 10, {"dataset": "digits"})
    return part, path


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


@pytest.mark.parametrize("kind", sorted(PARTITION_KINDS))
def test_a_saved_partitions_metadata_is_strict_json_and_names_the_numpy_that_drew_it(tmp_path, writers, kind):
    # Prepare
    _, path = _saved_of_kind(kind, tmp_path, writers)

    # Execute: the metadata as load_partition reads it, refusing NaN and Infinity (which strict JSON has not)
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]), parse_constant=_reject_constant)

    # Assert
    assert json.dumps(meta, allow_nan=False)
    assert meta["numpy"] == np.__version__


@pytest.mark.parametrize(("kind", "alpha"), [("iid", math.inf), ("quantity", math.inf), ("feature_noise", math.inf),
                                             ("dirichlet", 0.3), ("classes", math.nan), ("natural", math.nan),
                                             ("split_file", math.nan)])
def test_a_saved_partitions_alpha_reads_back(tmp_path, writers, kind, alpha):
    # Prepare
    part, path = _saved_of_kind(kind, tmp_path, writers)

    # Execute
    back = load_partition(path)

    # Assert: inf and NaN as well as a number (NaN is not equal to itself)
    assert part.alpha == pytest.approx(alpha, nan_ok=True)
    assert back.alpha == pytest.approx(alpha, nan_ok=True)


@pytest.mark.parametrize("written", ["inf", math.inf], ids=["strict_json", "as_before"])
def test_an_iid_partition_reads_as_iid_whether_its_alpha_is_strict_json_or_as_files_before_held_it(tmp_path,
                                                                                                  writers, written):
    # Prepare: the IID partition of an alpha (no label) whose metadata holds alpha as `written` ("inf": strict JSON;
    # inf: as files written before hold it, which json.dumps writes as Infinity)
    _, path = _saved_of_kind("iid", tmp_path, writers, label=None)
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "alpha": written}))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)

    # Execute
    back = load_partition(path)

    # Assert: the IID split of its run's setting, whether the run names it iid or inf
    assert back.alpha == math.inf and back.kind == "iid"
    check_partition_file(path, "digits", 6, "iid", 2)
    check_partition_file(path, "digits", 6, math.inf, 2)
    with pytest.raises(PartitionError, match=r"alpha inf \(expected 0\.5\)"):
        check_partition_file(path, "digits", 6, 0.5, 2)


def test_a_partition_whose_alpha_is_no_number_is_named_unreadable_before_any_job(tmp_path, writers):
    # Prepare: an IID partition whose metadata's alpha is a text that float() does not read
    _, path = _saved_of_kind("iid", tmp_path, writers, label=None)
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "alpha": "many"}))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)

    # Execute / Assert: one line naming the file, not a ValueError from reading its alpha
    with pytest.raises(PartitionError, match=re.escape(f"{path} is not a readable partition file (ValueError")):
        check_partition_file(path, "digits", 6, "iid", 2)


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "clases", "classes_per_client": 2}, "unknown partition kind 'clases'. Did you mean 'classes'"),
    ({"kind": "classes"}, "needs `classes_per_client`"),
    ({"kind": "quantity", "beta": 1.0, "sigma": 0.1}, "sigma: not an option of the partition kind quantity"),
    ({"kind": "feature_noise"}, "needs `sigma`"),
])
def test_bad_entries_are_named(entry, message):
    problems = check_partition_entry("lab", entry)

    assert any(message in p for p in problems), problems
    assert all(p.startswith("partitions.lab") for p in problems)


@pytest.mark.parametrize(("entry", "dataset", "expected"), [
    ({"kind": "classes", "classes_per_client": 11}, "digits",
     ["partitions.lab.classes_per_client: 11 classes per client, but digits has 10 classes; set classes_per_client "
      "to at most 10"]),
    ({"kind": "classes", "classes_per_client": 11}, "cifar100", []),
    ({"kind": "classes", "classes_per_client": 81}, "shakespeare",
     ["partitions.lab.classes_per_client: 81 classes per client, but shakespeare has 80 classes; set "
      "classes_per_client to at most 80 (a bound only: the partition job bounds k by the classes shakespeare's client "
      "pool uses as labels, which may be fewer)"]),
    ({"kind": "classes", "classes_per_client": 10}, "digits", []),
    ({"kind": "natural"}, "cifar10", ["partitions.lab: the kind natural splits by each sample's writer, but cifar10 "
                                      "has no writer ids (datasets with writers: femnist, reddit, shakespeare, "
                                      "stackoverflow)"]),
    ({"kind": "natural", "select": "random"}, "femnist", []),
    ({"kind": "classes"}, "digits", []),  # the missing option is check_partition_entry's to report
    ({"kind": "quantity", "beta": 0.5}, "digits", []),
    ({"kind": "feature_noise", "sigma": 0.1}, "digits", []),
    ({"kind": "feature_noise", "sigma": 0.1}, "femnist", []),
    ({"kind": "feature_noise", "sigma": 0.1}, "shakespeare",
     ["partitions.lab: the kind feature_noise adds Gaussian noise to each client's inputs, but shakespeare gives "
      "sequences of 80 tokens over 80 symbols (token ids, which noise cannot perturb); use it on a dataset of "
      "images (cifar10, cifar100, digits, femnist) or another kind on shakespeare"]),
    ({"kind": "feature_noise", "sigma": 0.1}, "imagenet200",
     ["partitions.lab: the kind feature_noise adds fixed noise to a float copy of the whole training pool, but "
      "imagenet200 holds its training images as 256x256 uint8 pixels, cropped per batch: the copy would take 56 GiB "
      "and lose the larger images resized_crop draws from; use it on cifar10, cifar100, digits, femnist or another "
      "kind on imagenet200"]),
])
def test_the_options_a_dataset_cannot_take_are_known_from_its_declaration(entry, dataset, expected):
    # Prepare / Execute
    problems = check_partition_dataset("lab", {"kind": entry["kind"], **entry}, dataset)

    # Assert
    assert problems == expected


@pytest.mark.parametrize(("dataset", "refused"), [("shakespeare", True), ("stackoverflow", True), ("reddit", True),
                                                 ("digits", False)])
def test_planning_refuses_feature_noise_on_token_data(dataset, refused):
    # Prepare: a run of each dataset on a feature_noise partition, as the config check plans it
    config = {"partitions": {"noise": {"kind": "feature_noise", "sigma": 0.1}}, "alphas": [],
              "partition": {"min_size": 1}, "datasets": {dataset: {"test_fraction": 0.2, "proxy_fraction": 0.0}}}
    runs = [Run(dataset, "cnn_small", "random", "fedavg", "noise", 4, "1.0", 0)]

    # Execute
    problems = check_planned_partitions(config, runs)

    # Assert: before any job runs (the train job would be the first to see the token ids)
    noise = [p for p in problems if "feature_noise adds Gaussian noise" in p]
    assert noise == ([f"partitions.noise: the kind feature_noise adds Gaussian noise to each client's inputs, but "
                      f"{dataset} gives {dataset_info(dataset).input_description} (token ids, which noise cannot "
                      f"perturb); use it on a dataset of images (cifar10, cifar100, digits, femnist) or "
                      f"another kind on {dataset}"] if refused else [])
    assert problems == noise


def test_every_kind_cites_a_paper_and_declares_its_options():
    for name, kind in PARTITION_KINDS.items():
        assert kind.paper and kind.make.__name__ == f"_make_{name}"
        assert not check_partition_entry("x", {"kind": name, **{k: 1 for k, v in kind.options.items() if v is None}})


@pytest.mark.parametrize(("value", "label", "canonical", "column"), [
    ("iid", "IID", "iid", math.inf), (0.1, "α=0.1", "0.1", 0.1), ("0.5", "α=0.5", "0.5", 0.5),
    ("inf", "IID", "iid", math.inf), ("c2", "c2", "c2", "c2"), ("qskew_0", "qskew_0", "qskew_0", "qskew_0"),
])
def test_settings_parse_and_print(value, label, canonical, column):
    assert setting_label(value) == label
    assert format_setting(value) == canonical
    assert alpha_column(value) == column
    assert is_partition_label(value) == isinstance(column, str)
    assert is_iid(value) == (canonical == "iid")


def test_settings_order_iid_first_then_decreasing_alpha_then_labels():
    values = ["c2", 0.1, "iid", "noise", 1.0, "0.5"]

    ordered = sorted(values, key=setting_order_key)

    assert ordered == ["iid", 1.0, "0.5", 0.1, "c2", "noise"]


def test_federated_data_of_a_feature_noise_partition_holds_the_noisy_inputs(tmp_path, labels):
    # Prepare: a dataset in memory and its feature-noise partition on disk
    n = len(labels)
    x = torch.zeros(n, 1, 2, 2)
    ds = Dataset("toy", x, torch.as_tensor(labels), x[:10], torch.as_tensor(labels[:10]), x[:0],
                 torch.as_tensor(labels[:0]), 10)
    part = feature_noise_partition(n, 4, sigma=2.0, seed=0)
    path = tmp_path / "partition.npz"
    save_partition(path, part, labels, 10, {"dataset": "toy"})

    # Execute
    data = federate(ds, path)

    # Assert: client 0 with std 0.5, client 3 with std 2.0 (= sigma), the test set clean
    assert float(data.client(0)[0].std()) == pytest.approx(0.5, rel=0.05)
    assert float(data.client(3)[0].std()) == pytest.approx(2.0, rel=0.05)
    assert torch.equal(data.x_test, torch.zeros_like(data.x_test))


def test_loading_applies_the_input_transform_a_kind_declares(tmp_path, labels, monkeypatch):
    # Prepare: a new kind (the IID writer, inputs shifted by one) declared by its PartitionKind entry alone
    shifted = PartitionKind("shifted", {}, "a test kind", PARTITION_KINDS["iid"].make,
                            inputs=lambda x, part: x + float(part.num_clients))
    monkeypatch.setitem(PARTITION_KINDS, "shifted", shifted)
    n = len(labels)
    x = torch.zeros(n, 1, 2, 2)
    ds = Dataset("toy", x, torch.as_tensor(labels), x[:10], torch.as_tensor(labels[:10]), x[:0],
                 torch.as_tensor(labels[:0]), 10)
    path = tmp_path / "partition.npz"
    part = make_kind_partition({"kind": "shifted"}, labels, 4, seed=0, label="lab")
    save_partition(path, part, labels, 10, {"dataset": "toy"})

    # Execute
    data = federate(ds, path)

    # Assert: the file records the kind its entry names; every client's inputs shifted, the stored data and the
    # test set not
    assert part.kind == load_partition(path).kind == "shifted"
    assert torch.equal(data.x_train, torch.full_like(x, 4.0)) and torch.equal(x, torch.zeros_like(x))
    assert torch.equal(data.x_test, torch.zeros_like(data.x_test))


@pytest.mark.parametrize(("kind", "writers_given"), [("natural", True), ("iid", False), ("classes", False)])
def test_only_a_kind_that_needs_writers_gets_them(labels, writers, kind, writers_given, monkeypatch):
    # Prepare: the kind's writer, spied on
    seen = []
    spec = PARTITION_KINDS[kind]
    monkeypatch.setitem(PARTITION_KINDS, kind, dataclasses.replace(
        spec, make=lambda *args, **kw: seen.append(args[5]) or spec.make(*args, **kw)))
    entry = {"kind": kind, **({"classes_per_client": 2} if kind == "classes" else {})}
    assert len(writers) <= len(labels)

    # Execute: every kind is offered the samples' writers
    make_kind_partition(entry, labels[: len(writers)], 4, seed=0, min_size=5, writer_ids=writers)

    # Assert
    assert (seen[0] is not None) == writers_given == spec.needs_writers
