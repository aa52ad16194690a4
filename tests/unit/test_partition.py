"""Partition invariants: coverage, determinism, skew, min_size and the failure cases."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from fedscape.core.setting import IID, AlphaError, format_alpha, parse_alpha
from fedscape.data.federated import load_federated_data
from fedscape.data.partition import (
    PartitionError,
    check_partition_file,
    dirichlet_partition,
    iid_partition,
    load_partition,
    make_partition,
    save_partition,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(123)
    return rng.integers(0, 10, size=2000)


def classes_per_client(part, labels) -> float:
    return float(np.mean([(part.class_counts(labels, 10)[i] > 0).sum() for i in range(part.num_clients)]))


@pytest.mark.parametrize("alpha", [IID, 100.0, 1.0, 0.5, 0.1])
@pytest.mark.parametrize("num_clients", [2, 10, 37])
def test_every_index_exactly_once(labels, alpha, num_clients):
    part = make_partition(labels, num_clients, alpha, seed=0, min_size=5)

    all_idx = np.concatenate(part.client_indices)

    assert part.num_clients == num_clients
    assert len(all_idx) == len(labels)
    assert np.array_equal(np.sort(all_idx), np.arange(len(labels)))
    assert part.sizes.min() >= 5


@pytest.mark.parametrize("alpha", [IID, 0.3])
def test_same_seed_identical_other_seed_different(labels, alpha):
    a = make_partition(labels, 10, alpha, seed=7)
    b = make_partition(labels, 10, alpha, seed=7)
    c = make_partition(labels, 10, alpha, seed=8)

    assert all(np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a.client_indices, c.client_indices, strict=True))


def test_large_alpha_gives_near_global_proportions(labels):
    part = dirichlet_partition(labels, 5, alpha=1000.0, seed=0)

    global_p = np.bincount(labels, minlength=10) / len(labels)
    counts = part.class_counts(labels, 10)
    local_p = counts / counts.sum(axis=1, keepdims=True)

    assert np.abs(local_p - global_p).max() < 0.05


def test_small_alpha_gives_fewer_classes_per_client(labels):
    skewed = dirichlet_partition(labels, 10, alpha=0.1, seed=0)
    mild = dirichlet_partition(labels, 10, alpha=10.0, seed=0)

    assert classes_per_client(skewed, labels) < 6
    assert classes_per_client(mild, labels) == 10
    assert classes_per_client(skewed, labels) < classes_per_client(mild, labels)


def test_iid_shards_are_balanced(labels):
    part = iid_partition(len(labels), 7, seed=0)

    assert part.sizes.max() - part.sizes.min() <= 1
    assert math.isinf(part.alpha)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 10, "alpha": 0.0}, "alpha must be positive"),
        ({"num_clients": 10, "alpha": -1.0}, "alpha must be positive"),
        ({"num_clients": 300, "alpha": 1.0, "min_size": 10}, "at most 200 clients"),
        ({"num_clients": 0, "alpha": 1.0}, "at least 1"),
        ({"num_clients": 100, "alpha": 0.01, "min_size": 15, "max_tries": 3}, "in 3 tries"),
    ],
)
def test_invalid_requests_fail_clearly(labels, kwargs, message):
    with pytest.raises(PartitionError, match=message):
        dirichlet_partition(labels, seed=0, **kwargs)


@pytest.mark.parametrize(("text", "value", "canonical"), [("iid", IID, "iid"), ("IID", IID, "iid"), (1, 1.0, "1.0"),
                                                          ("0.5", 0.5, "0.5"), (0.1, 0.1, "0.1")])
def test_alpha_parsing(text, value, canonical):
    assert parse_alpha(text) == value
    assert format_alpha(text) == canonical


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.0001, 0.00005, 1e-300, 100.0, 1e16, 1e22, "iid"])
def test_every_alpha_s_path_text_is_one_the_run_wildcards_take(alpha):
    # the text repr gives a float (no point below 1e-4, an exponent from 1e16) is the path's: the constraint must
    # take it, or a valid config plans a path no rule makes
    from fedscape.core.runs import WILDCARD_CONSTRAINTS
    from fedscape.core.setting import format_fraction

    assert re.fullmatch(WILDCARD_CONSTRAINTS["alpha"], format_alpha(alpha))
    if alpha != "iid" and alpha <= 1:
        assert re.fullmatch(WILDCARD_CONSTRAINTS["participation"], format_fraction(alpha))


@pytest.mark.parametrize("bad", ["foo", 0, -0.5, "nan"])
def test_alpha_parsing_rejects(bad):
    with pytest.raises(AlphaError, match="alpha must be"):
        parse_alpha(bad)


def test_save_load_round_trip_and_dataset_check(tmp_path, labels):
    part = dirichlet_partition(labels, 6, 0.5, seed=3)
    path = tmp_path / "p.npz"
    save_partition(path, part, labels, 10, {"dataset": "synthetic"})

    loaded = load_partition(path, labels)

    assert all(np.array_equal(x, y) for x, y in zip(part.client_indices, loaded.client_indices, strict=True))
    assert loaded.alpha == 0.5 and loaded.seed == 3
    other = labels.copy()
    other[0] = (other[0] + 1) % 10
    with pytest.raises(PartitionError, match=rf"does not match this dataset.*make it again alone \(bit-identical from "
                                             rf"its seed with the numpy it records\) with `snakemake --cores 1 --force "
                                             rf"{path}`"):
        load_partition(path, other)
    with pytest.raises(PartitionError, match="does not match this dataset"):
        load_partition(path, labels[:-1])


# -- the check of an existing partition file when the workflow is planned -------------------------------
def _saved(tmp_path, dataset="digits", clients=4, alpha=0.5, seed=3):
    labels = np.repeat(np.arange(4), 25)
    part = make_partition(labels, clients, alpha, seed, min_size=2)
    path = tmp_path / "partition.npz"
    save_partition(path, part, labels, 4, {"dataset": dataset})
    return path


def test_check_partition_file_accepts_the_runs_own_partition(tmp_path):
    check_partition_file(_saved(tmp_path), "digits", 4, 0.5, 3)
    check_partition_file(_saved(tmp_path, alpha=math.inf), "digits", 4, math.inf, 3)


@pytest.mark.parametrize(("want", "message"), [
    ({"dataset": "cifar10"}, "dataset 'digits' (expected 'cifar10')"),
    ({"num_clients": 5}, "clients 4 (expected 5)"),
    ({"setting": 0.1}, "alpha 0.5 (expected 0.1)"),
    ({"seed": 0}, "seed 3 (expected 0)"),
])
def test_check_partition_file_names_what_differs(tmp_path, want, message):
    # Prepare
    path = _saved(tmp_path)
    args = {"dataset": "digits", "num_clients": 4, "setting": 0.5, "seed": 3} | want

    # Execute / Assert
    with pytest.raises(PartitionError, match=re.escape(f"{path} is not the partition of this run: {message}")):
        check_partition_file(path, **args)


def test_every_stage_loading_a_runs_data_refuses_another_runs_partition(tmp_path):
    # Prepare: the partition of the seed-3 run, read for the run of seed 0 (as the Hessian, barrier and train jobs
    # read theirs, through load_federated_data)
    path = _saved(tmp_path)
    run = {"dataset": "digits", "num_clients": "4", "alpha": "0.5", "seed": "0"}

    # Execute / Assert: the foreign file is named with what differs and the command that remakes it
    with pytest.raises(PartitionError, match=re.escape(f"{path} is not the partition of this run: seed 3 (expected "
                                                       "0)")) as err:
        load_federated_data(run, {}, path)
    assert "--force" in str(err.value)


@pytest.mark.parametrize("content", ["pickled", "truncated", "not_npz", "no_meta"])
def test_check_partition_file_rejects_unreadable_files(tmp_path, content):
    # Prepare
    path = _saved(tmp_path)
    if content == "pickled":
        with open(path, "wb") as fh:
            np.savez(fh, indices=np.array([{"a": 1}], dtype=object), offsets=np.array([0]), meta=np.array("{}"))
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif content == "not_npz":
        path.write_text("hello")
    else:
        with open(path, "wb") as fh:
            np.savez(fh, indices=np.arange(3), offsets=np.array([0, 3]))

    # Execute / Assert
    with pytest.raises(PartitionError, match=re.escape(f"{path} is not a readable partition file")):
        check_partition_file(path, "digits", 4, 0.5, 3)


@pytest.mark.parametrize("content", ["garbage", "pickled", "no_meta"])
def test_an_unreadable_partition_file_is_one_line_naming_it_and_the_command_that_remakes_it(tmp_path, content):
    # Prepare
    path = tmp_path / "partition.npz"
    if content == "garbage":
        path.write_bytes(b"not an npz")
    elif content == "pickled":  # an object array: loading it would unpickle
        np.savez(path, indices=np.array([{"x": 1}], dtype=object), offsets=np.array([0, 1]))
    else:
        np.savez(path, indices=np.arange(3), offsets=np.array([0, 3]))

    # Execute
    with pytest.raises(PartitionError) as err:
        load_partition(path)

    # Assert
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable partition file (") and "\n" not in message
    assert f"`snakemake --cores 1 --force {path}`" in message


def _with_stored_alpha(path, alpha) -> None:
    """Rewrite the partition file at `path` with `alpha` as its metadata's alpha (as another tool might write it)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "alpha": alpha}))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize(("stored", "expected"), [(0.5, 0.5), ("inf", math.inf), (None, math.nan)])
def test_a_partition_files_alpha_is_a_number_inf_or_null(tmp_path, stored, expected):
    # Prepare
    path = _saved(tmp_path)
    _with_stored_alpha(path, stored)

    # Execute
    alpha = load_partition(path).alpha

    # Assert
    assert alpha == expected or (math.isnan(alpha) and math.isnan(expected))


@pytest.mark.parametrize("stored", ["iid", "label_a", [0.5]])
def test_a_partition_files_alpha_of_another_form_is_named_with_the_forms_and_the_remake(tmp_path, stored):
    # Prepare: a value no writer stores (a setting's text, a `partitions` label, a list)
    path = _saved(tmp_path)
    _with_stored_alpha(path, stored)

    # Execute
    with pytest.raises(PartitionError) as err:
        load_partition(path)

    # Assert: one line naming the file, the value, the forms a file records and the command that remakes it
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable partition file (ValueError: its alpha {stored!r} is none "
                              'of those a partition file records: a number, "inf" (an IID split) or null')
    assert "\n" not in message and f"`snakemake --cores 1 --force {path}`" in message
    with pytest.raises(PartitionError, match=re.escape(f"{path} is not a readable partition file (ValueError: its "
                                                       f"alpha {stored!r} is none")):
        check_partition_file(path, "digits", 4, 0.5, 3)  # the check before any job, as the workflow plans


@pytest.mark.parametrize("shape", [(0,), (7,), (10, 3)])
def test_the_labels_checksum_is_that_of_the_whole_int64_array_taken_in_chunks(monkeypatch, shape):
    # Prepare: chunks of 3 rows, so that every shape above but the empty one is taken in several
    import zlib

    from fedscape.data import partition as partition_mod

    monkeypatch.setattr(partition_mod, "_CHECKSUM_ROWS", 3)
    labels = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape) * 7 - 5

    # Execute / Assert: the value partition files were written with (CRC-32 of the int64 bytes, in one piece)
    whole = zlib.crc32(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    assert partition_mod._labels_checksum(labels) == whole
    assert partition_mod._labels_checksum(np.asfortranarray(labels)) == whole


@pytest.mark.parametrize(("edit", "error"), [({"seed": None}, "ValueError: its seed None is not an integer"),
                                             ("seed", "KeyError"),
                                             ("num_samples_total", "KeyError"), ({"num_samples_total": "many"},
                                                                                 "ValueError"),
                                             ({"seed": 1.7}, "ValueError: its seed 1.7 is not an integer"),
                                             ({"seed": "3"}, "ValueError: its seed '3' is not an integer"),
                                             ({"num_samples_total": 10**400}, "OverflowError"),
                                             ([1, 2], "ValueError: its metadata is a JSON list, not an object")])
def test_a_partition_files_missing_or_odd_seed_or_size_is_named_with_the_remake(tmp_path, edit, error):
    # Prepare: metadata without, or with an unusable, seed or sample count (as another tool might write it)
    path = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta = (edit if isinstance(edit, list) else {k: v for k, v in meta.items() if k != edit}
            if isinstance(edit, str) else {**meta, **edit})
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)

    # Execute
    with pytest.raises(PartitionError) as err:
        load_partition(path)

    # Assert: one line naming the file, the error and the command that remakes it (was a bare KeyError / TypeError)
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable partition file ({error}") and "\n" not in message
    assert f"`snakemake --cores 1 --force {path}`" in message
