"""The split_file partition kind: a split a paper published as a file, in the layout Caldarola et al. 2022 publish
theirs (github.com/debcaldarola/fedsam, data/cifar10/data/train/federated_train_alpha_<a>.json: LEAF's JSON,
images named img_<index>_label_<label>.png), read as the clients' indices; the planning of its input file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedscape.data.partition import PartitionError, check_partition_entry, make_kind_partition
from fedscape.plan.partition import partition_files

LABELS = np.random.default_rng(11).integers(0, 10, size=600)


def write_split(path, shards: dict[int, list[int]], labels=LABELS, users_order=None, name=None) -> None:
    """A split file as fedsam's are: `users` integer ids in a shuffled order, `num_samples`, and `user_data` keyed by
    the id as a string, each image named by its training-set index and label, `y` its label."""
    users = users_order or list(shards)
    name = name or (lambda i: f"img_{i}_label_{int(labels[i])}.png")
    data = {"users": users, "num_samples": [len(shards[u]) for u in users],
            "user_data": {str(u): {"x": [name(i) for i in shards[u]], "y": [int(labels[i]) for i in shards[u]]}
                          for u in users}}
    path.write_text(json.dumps(data))


def shards_of(order: np.ndarray, sizes: list[int]) -> dict[int, list[int]]:
    cuts = np.cumsum([0, *sizes])
    return {u: [int(i) for i in order[a:b]] for u, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))}


def test_a_split_file_gives_each_user_its_images_in_ascending_id_order(tmp_path):
    # Prepare: 4 users listed out of order, 150/149/150/150 images (one image left out, as fedsam's alpha 0.05 file)
    order = np.random.default_rng(0).permutation(len(LABELS))
    shards = shards_of(order, [150, 149, 150, 150])
    path = tmp_path / "federated_train_alpha_0.05.json"
    write_split(path, shards, users_order=[2, 0, 3, 1])

    # Execute
    part = make_kind_partition({"kind": "split_file", "path": str(path)}, LABELS, 4, seed=3, min_size=10,
                               label="fedsam_a005")

    # Assert: client k = user k, its images exactly, sorted; the left-out image with no client
    assert [sorted(shards[u]) for u in range(4)] == [ix.tolist() for ix in part.client_indices]
    held = np.concatenate(part.client_indices)
    assert len(np.unique(held)) == len(held) == 599
    assert part.kind == "split_file" and part.options == {"path": str(path)} and part.label == "fedsam_a005"


def test_string_user_ids_sort_as_strings(tmp_path):
    shards = {"b": [0, 1], "a": [2, 3]}
    data = {"users": ["b", "a"], "num_samples": [2, 2],
            "user_data": {u: {"x": [f"img_{i}_label_{int(LABELS[i])}.png" for i in ix],
                              "y": [int(LABELS[i]) for i in ix]} for u, ix in shards.items()}}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))

    part = make_kind_partition({"kind": "split_file", "path": str(path)}, LABELS, 2, seed=0, min_size=1)

    assert [ix.tolist() for ix in part.client_indices] == [[2, 3], [0, 1]]


def _bad_label(i):
    return f"img_{i}_label_{(int(LABELS[i]) + 1) % 10}.png"


@pytest.mark.parametrize(("case", "num_clients", "match"), [
    ("clients", 5, "splits among 4 clients, but the run has num_clients 5: set num_clients to 4"),
    ("label", 4, "labelled .* but the dataset labels it"),
    ("twice", 4, "belongs to clients 0 and 1"),
    ("beyond", 4, "set the dataset's proxy_fraction to 0"),
    ("name", 4, "is not named img_<index>_label_<label>.png"),
    ("small", 4, "fewer than partition.min_size=10"),
    ("missing", 4, "not found"),
    ("json", 4, "is not JSON"),
])
def test_a_split_file_that_does_not_fit_the_run_is_refused_with_the_fix(tmp_path, case, num_clients, match):
    # Prepare: a valid 4-client split, then one defect
    shards = shards_of(np.arange(len(LABELS)), [150, 150, 150, 150])
    path, name = tmp_path / "split.json", None
    if case == "label":
        name = _bad_label
    elif case == "twice":
        shards[1][0] = shards[0][0]
    elif case == "beyond":
        shards[3][-1] = len(LABELS) + 5
    elif case == "name":
        name = lambda i: f"image{i}.png"  # noqa: E731
    elif case == "small":
        shards[2] = shards[2][:3]
    labels = np.concatenate([LABELS, np.zeros(10, dtype=LABELS.dtype)]) if case == "beyond" else LABELS
    if case == "json":
        path.write_text("{not json")
    elif case != "missing":
        write_split(path, shards, labels=labels, name=name)

    # Execute / Assert
    with pytest.raises(PartitionError, match=match):
        make_kind_partition({"kind": "split_file", "path": str(path)}, LABELS, num_clients, seed=0, min_size=10)


def test_the_split_file_is_the_partition_jobs_input_where_it_exists_and_its_path_is_required(tmp_path, monkeypatch):
    # Prepare: the workflow's working directory, the split file not there yet
    monkeypatch.chdir(tmp_path)
    config = {"partitions": {"fedsam_a005": {"kind": "split_file", "path": "data/splits/a.json"}}}

    # Execute / Assert: no input until the file exists (a dry run plans without it), then the file
    assert partition_files(config, "fedsam_a005") == []
    (tmp_path / "data/splits").mkdir(parents=True)
    (tmp_path / "data/splits/a.json").write_text("{}")
    assert partition_files(config, "fedsam_a005") == ["data/splits/a.json"]
    assert partition_files(config, "0.5") == [] and partition_files(config, "iid") == []
    assert check_partition_entry("s", {"kind": "split_file"}) == ["partitions.s.path: the partition kind split_file "
                                                                  "needs `path`"]


def test_a_split_file_read_in_a_pool_less_its_proxy_split_names_the_proxy_split(tmp_path):
    # Prepare: the pool as a proxy split leaves it (every 10th image of the training set gone), and a split of the
    # training set's first images: its image 9 is the pool's row 9, image 10 of the training set
    pool = np.delete(np.arange(600), np.arange(0, 600, 10))
    path = tmp_path / "split.json"
    write_split(path, {0: list(range(0, 20)), 1: list(range(20, 40))}, labels=np.arange(600) % 10)

    # Execute / Assert: a label mismatch whose message names the proxy split among its causes
    with pytest.raises(PartitionError, match="or the dataset's proxy_fraction is above 0 .the file indexes the whole "
                                             "training set; set proxy_fraction to 0"):
        make_kind_partition({"kind": "split_file", "path": str(path)}, pool % 10, 2, seed=0, min_size=10)
