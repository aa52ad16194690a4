"""What a job's data held: the fingerprint of the files each data set is read from (`core.fingerprints`,
`data.locations`), recorded by every job that reads data and compared by `make status` with the files there now."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cifar import write_fake_cifar10
from helpers.configs import TINY
from helpers.imagenet import flatten_val, write_imagenet, write_imagenet32
from helpers.leaf import write_femnist, write_shakespeare_raw
from helpers.words import write_reddit, write_stackoverflow

from fedscape.core import fingerprints, manifest
from fedscape.core.fingerprints import TreeDifference, tree_difference, tree_files, tree_fingerprint
from fedscape.data.datasets import dataset_from_options
from fedscape.data.federated import federate
from fedscape.data.imagenet32 import ImageNet32
from fedscape.data.locations import (
    IMAGENET32,
    DataRead,
    changed_data,
    data_files,
    data_reads,
    hash_cache,
    job_fingerprint,
    unfingerprinted_jobs,
    with_data_locations,
)
from fedscape.data.partition import PartitionError, iid_partition, save_partition
from fedscape.data.sources import load_source
from fedscape.data.specs import DATASET_NAMES, DATASETS
from fedscape.plan.status import report

# -- the digest of a folder's files ------------------------------------------------------------------------------


def _files(root: Path, contents: dict[str, bytes]) -> tuple[str, ...]:
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return tuple(contents)


FILES = {"a.bin": b"alpha", "sub/b.bin": b"beta" * 1000}


def test_a_copy_elsewhere_has_the_fingerprint_of_the_original(tmp_path):
    names = _files(tmp_path / "here", FILES)
    shutil.copytree(tmp_path / "here", tmp_path / "there")  # new dates, new inodes

    here = tree_fingerprint(tmp_path / "here", names, tmp_path / "cache")
    there = tree_fingerprint(tmp_path / "there", names, tmp_path / "cache")

    assert here == there
    assert (here.files, here.bytes) == (2, 5 + 4000)


@pytest.mark.parametrize("change", ["a byte", "a name", "a file more"])
def test_changed_contents_or_names_change_the_fingerprint(tmp_path, change):
    names = _files(tmp_path / "d", FILES)
    before = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    if change == "a byte":
        (tmp_path / "d/a.bin").write_bytes(b"alphA")  # the same size
        os.utime(tmp_path / "d/a.bin", ns=(1, 1))  # a date the cache has not seen
    elif change == "a name":
        (tmp_path / "d/a.bin").rename(tmp_path / "d/c.bin")
        names = ("c.bin", "sub/b.bin")
    else:
        names = (*names, *_files(tmp_path / "d", {"extra": b""}))

    after = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")

    assert after.sha256 != before.sha256


def test_the_cache_hashes_only_files_that_changed(tmp_path, monkeypatch):
    # Prepare: a first fingerprint fills the cache; then one file changes
    names = _files(tmp_path / "d", FILES)
    first = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    hashed = []
    real = fingerprints.file_sha256
    monkeypatch.setattr(fingerprints, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))

    # Execute
    again = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    (tmp_path / "d/a.bin").write_bytes(b"changed")
    changed = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")

    # Assert: nothing re-read while nothing changed, then only the changed file; the digest is the uncached one
    assert again == first and hashed == ["a.bin"]
    assert changed == tree_fingerprint(tmp_path / "d", names, None)


def test_jobs_fingerprinting_the_same_data_at_once_hash_each_file_once(tmp_path, monkeypatch):
    # Prepare: four new files; a slow hash, so that the two jobs (threads, each with its own lock file handle, as
    # processes have) overlap
    names = _files(tmp_path / "d", {f"f{i}.bin": bytes([i]) * 100 for i in range(4)})
    hashed = []
    real = fingerprints.file_sha256

    def slow(path):
        hashed.append(Path(path).name)
        time.sleep(0.05)
        return real(path)

    monkeypatch.setattr(fingerprints, "file_sha256", slow)
    start = threading.Barrier(2)
    found = []

    def job():
        start.wait()
        found.append(tree_fingerprint(tmp_path / "d", names, tmp_path / "cache"))

    # Execute
    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert: one job hashed every file, the other read its digests
    assert sorted(hashed) == sorted(names)
    assert found[0] == found[1] == tree_fingerprint(tmp_path / "d", names, None)


def test_checks_against_the_cache_run_side_by_side(tmp_path):
    # Prepare: the cache filled; another job is checking its files against it (a shared lock)
    names = _files(tmp_path / "d", FILES)
    want = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    (lock_file,) = (tmp_path / "cache").glob("*.lock")
    found = []
    with open(lock_file) as held:
        fcntl.flock(held, fcntl.LOCK_SH)

        # Execute
        check = threading.Thread(target=lambda: found.append(tree_fingerprint(tmp_path / "d", names,
                                                                              tmp_path / "cache")), daemon=True)
        check.start()
        check.join(timeout=10)

        # Assert: done while the other check holds its lock
        assert not check.is_alive() and found == [want]


def test_rehashing_a_few_files_keeps_the_cached_digests_of_the_others(tmp_path, monkeypatch):
    names = _files(tmp_path / "d", FILES)
    tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    tree_fingerprint(tmp_path / "d", names[:1], tmp_path / "cache", rehash=True)
    hashed = []
    real = fingerprints.file_sha256
    monkeypatch.setattr(fingerprints, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))

    tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")

    assert hashed == []


@pytest.mark.parametrize("cache", ["damaged", "another version", "read-only"])
def test_a_damaged_or_unwritable_cache_costs_a_hash_never_a_wrong_digest(tmp_path, cache):
    names = _files(tmp_path / "d", FILES)
    want = tree_fingerprint(tmp_path / "d", names, None)
    folder = tmp_path / "cache"
    folder.mkdir()
    tree_fingerprint(tmp_path / "d", names, folder)
    (path,) = folder.glob("*.json")
    if cache == "damaged":
        path.write_text('{"version": 1, "files": {"a.bin": [')
    elif cache == "another version":
        path.write_text(json.dumps({"version": 99, "files": {"a.bin": [[5, 0, 0], "0" * 64]}}))
    else:
        (tmp_path / "d/a.bin").write_bytes(b"other")
        want = tree_fingerprint(tmp_path / "d", names, None)
        folder.chmod(0o500)

    try:
        assert tree_fingerprint(tmp_path / "d", names, folder) == want
    finally:
        folder.chmod(0o700)


def test_rehashing_sees_a_change_that_keeps_size_date_and_inode(tmp_path):
    # Prepare: a byte changed in place, the file's modification time put back (inode and size unchanged)
    names = _files(tmp_path / "d", FILES)
    before = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    stat = (tmp_path / "d/a.bin").stat()
    with open(tmp_path / "d/a.bin", "r+b") as fh:
        fh.write(b"A")
    os.utime(tmp_path / "d/a.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # Execute
    cached = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    rehashed = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache", rehash=True)
    after = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")

    # Assert: the cache cannot see it (its documented blind spot); a rehash does, and the cache keeps the new digest
    assert cached == before
    assert rehashed == after == tree_fingerprint(tmp_path / "d", names, None) != before


def test_each_fingerprint_keeps_the_list_of_its_files_so_a_later_one_names_what_differs(tmp_path):
    # Prepare: one file changed, one added, one removed, between two fingerprints
    first = {**FILES, "gone.bin": b"g", "z/same.bin": b"s"}
    names = _files(tmp_path / "d", first)
    before = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    (tmp_path / "d/a.bin").write_bytes(b"changed")
    names = (*[n for n in names if n != "gone.bin"], *_files(tmp_path / "d", {"new.bin": b"n"}))

    # Execute
    after = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache")
    difference = tree_difference(tree_files(tmp_path / "cache", before.sha256),
                                 tree_files(tmp_path / "cache", after.sha256))

    # Assert
    assert tree_files(tmp_path / "cache", before.sha256) == {n: hashlib.sha256(b).hexdigest() for n, b in first.items()}
    assert difference == TreeDifference(changed=("a.bin",), added=("new.bin",), removed=("gone.bin",))
    assert difference.describe() == "1 changed (a.bin), 1 added (new.bin), 1 removed (gone.bin)"
    assert fingerprints.describe_change(tmp_path / "cache", before.sha256, before.sha256) == "the same files"
    assert "not known" in fingerprints.describe_change(tmp_path / "cache", "0" * 64, after.sha256)


def test_a_file_difference_names_a_few_files_and_counts_the_rest():
    before = {f"f{i}": "x" for i in range(5)}

    difference = tree_difference(before, {f"f{i}": "y" for i in range(5)})

    assert difference.describe(limit=2) == "5 changed (f0, f1 and 3 more)"


@pytest.mark.parametrize("damage", ["not gzip", "another version", "no files"])
def test_a_damaged_list_of_files_is_no_list(tmp_path, damage):
    names = _files(tmp_path / "d", FILES)
    sha = tree_fingerprint(tmp_path / "d", names, tmp_path / "cache").sha256
    (path,) = (tmp_path / "cache/trees").iterdir()
    body = {"not gzip": b"{}", "another version": gzip.compress(b'{"version": 99, "files": {}}'),
            "no files": gzip.compress(b'{"version": 1}')}[damage]
    path.write_bytes(body)

    assert tree_files(tmp_path / "cache", sha) is None


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        tree_fingerprint(tmp_path, ("gone.bin",), None)


# -- which files a data set is read from --------------------------------------------------------------------------


class _Opened:
    """The files this process opens (Python's audit events: open, and sqlite3.connect for SQLite's own reads)."""

    active: list | None = None

    @classmethod
    def hook(cls, event, args):
        if cls.active is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            cls.active.append(os.path.abspath(os.fsdecode(args[0])))
        elif cls.active is not None and event == "sqlite3.connect":
            cls.active.append(os.path.abspath(str(args[0]).removeprefix("file:").split("?")[0]))


sys.addaudithook(_Opened.hook)


def _opened_while(read) -> set[str]:
    _Opened.active = []
    try:
        read()
    finally:
        opened, _Opened.active = _Opened.active, None
    return {p for p in opened if os.path.isfile(p)}


def _read_all(name, data_dir, **options):
    """Read data set `name` as its jobs do, decoding every image (ImageNet-200 opens an image when it is read)."""
    def read():
        source = load_source(name, data_dir=data_dir, **options)
        for images in (source.train_images, source.test_images):
            if not isinstance(images, np.ndarray):
                images[np.arange(len(images))]
    return read


def _writers(tmp_path):
    vocab = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "<BOS>": 4, "<EOS>": 5}
    words = ["the", "is", "code", "a", "bug"] + [f"w{i}" for i in range(9995)]
    return {
        "cifar10": lambda: write_fake_cifar10(tmp_path, 4, 4),
        "femnist": lambda: write_femnist(tmp_path, files=2, layout="leaf") and tmp_path,
        "shakespeare_raw": lambda: write_shakespeare_raw(tmp_path, {"A_X": "to be\nor not\n" * 90,
                                                                     "B_Y": "that is\n" * 90}) and tmp_path,
        "reddit": lambda: write_reddit(tmp_path, {"train": {"u1": [["hi", "there"]]}, "test": {"u1": [["hi"]]}},
                                       vocab, size=DATASETS["reddit"].num_classes),
        "stackoverflow": lambda: write_stackoverflow(tmp_path / "so", [("train", "1", "the code is"),
                                                                       ("test", "1", "a bug")], words),
        "imagenet200": lambda: write_imagenet(tmp_path / "in", others=True),
        "imagenet200_flat": lambda: flatten_val(write_imagenet(tmp_path / "in", others=False)) and tmp_path / "in",
    }


@pytest.mark.parametrize("case", ["digits", "cifar10", "femnist", "shakespeare_raw", "reddit", "stackoverflow",
                                  "imagenet200", "imagenet200_flat"])
def test_a_data_set_s_files_are_exactly_those_its_reader_opens(tmp_path, case):
    # Prepare: the data set in its published layout (with files beside it that the reader skips)
    name = {"shakespeare_raw": "shakespeare", "imagenet200_flat": "imagenet200"}.get(case, case)
    source = "raw" if case == "shakespeare_raw" else None
    data_dir = None if case == "digits" else str(_writers(tmp_path)[case]())
    if data_dir is not None:
        (Path(data_dir) / "README.txt").write_text("not data")

    # Execute
    root, names = data_files(name, data_dir, source)
    opened = _opened_while(_read_all(name, data_dir, **({"source": "raw"} if source else {})))

    # Assert: the reader opened these files and no other below data_dir (digits: scikit-learn's CSV); ImageNet-200's
    # are the 200 classes' images, not those of the two other classes' folders
    below = str(root) if data_dir is None else os.path.abspath(data_dir)
    assert {str(root / n) for n in names} == {p for p in opened if p.startswith(below)}
    assert len(names) >= (1 if case == "digits" else 2)


def test_down_sampled_imagenet_s_files_are_those_its_reader_opens(tmp_path):
    write_imagenet32(tmp_path / "i32", sizes=(3, 4))
    (tmp_path / "i32/notes.txt").write_text("x")

    root, names = data_files(IMAGENET32, str(tmp_path / "i32"))
    opened = _opened_while(lambda: ImageNet32(tmp_path / "i32").read(np.arange(7)))

    assert root == tmp_path / "i32" and names == ("train_data_batch_1.npz", "train_data_batch_2.npz")
    assert {str(root / n) for n in names} == {p for p in opened if p.startswith(str(root))}


@pytest.mark.parametrize(("reader", "message"), [
    ("cifar10", r"CIFAR-10 not found \(missing data_batch_1, .* in {dir}/cifar-10-batches-py\)"),
    ("femnist", r"femnist not found \(looked in {dir} and {dir}/femnist/data\)"),
    ("imagenet200", r"ImageNet-200 .* not found: {dir}/train is not a directory"),
    (IMAGENET32, r"no train_data_batch_\*\.npz files in {dir}$"),
])
def test_missing_files_are_the_reader_s_error(tmp_path, reader, message):
    # the reader's own message, naming the folder it looked in: not a FileNotFoundError of some other file
    with pytest.raises(FileNotFoundError, match=message.format(dir=re.escape(str(tmp_path)))):
        data_files(reader, str(tmp_path))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_data_set_s_files_are_known(tmp_path, name):
    # an empty data_dir: the reader's own error (digits: its bundled file), never "no files are known"
    try:
        root, names = data_files(name, str(tmp_path))
    except FileNotFoundError:
        return
    assert name == "digits" and names == ("digits.csv.gz",)


def test_an_unknown_reader_names_the_known_ones():
    with pytest.raises(ValueError, match="mnist.*cifar10"):
        data_files("mnist", None)


# -- which data sets a job reads, and its record ----------------------------------------------------------------


def _init(**fields) -> dict:
    return {"kind": "pretrained", "init": "pre", "dataset": "cifar10", "dataset_options": {"data_dir": None},
            "proxy_dataset": None, "proxy_data_dir": None, "proxy_dir": None, **fields}


@pytest.mark.parametrize(("settings", "expected"), [
    ({"dataset": "digits", "dataset_options": {}},
     [DataRead("datasets.digits", "digits", (("datasets", "digits", "data_dir"),))]),
    ({"run": {"dataset": "shakespeare"}, "dataset_options": {"source": "raw"}},
     [DataRead("datasets.shakespeare", "shakespeare", (("datasets", "shakespeare", "data_dir"),), "raw")]),
    ({"pair": [{"dataset": "cifar10", "dataset_options": {"source": "preprocessed"}}]},
     [DataRead("datasets.cifar10", "cifar10", (("datasets", "cifar10", "data_dir"),))]),
    (_init(), [DataRead("datasets.cifar10", "cifar10", (("datasets", "cifar10", "data_dir"),))]),
    (_init(proxy_dir="/d/i32"), [DataRead("inits.pre.proxy_dir", IMAGENET32, (("inits", "pre", "proxy_dir"),))]),
    (_init(proxy_dataset="cifar100"),
     [DataRead("inits.pre.proxy_dataset", "cifar100",
               (("inits", "pre", "proxy_data_dir"), ("datasets", "cifar10", "data_dir")))]),
    ({"kind": "random", "dataset": "digits"}, []),
])
def test_a_job_reads_the_data_sets_its_settings_name(settings, expected):
    assert data_reads(settings) == expected


def test_a_proxy_data_set_without_a_folder_of_its_own_is_read_from_the_clients_one():
    read = data_reads(_init(proxy_dataset="cifar100"))[0]

    clients = {"cifar10": {"data_dir": "/c"}}
    assert read.data_dir({"inits": {"pre": {"proxy_data_dir": "/p"}}, "datasets": clients}) == "/p"
    assert read.data_dir({"inits": {"pre": {"proxy_data_dir": None}}, "datasets": clients}) == "/c"
    assert DataRead.from_record(read.key, json.loads(json.dumps(read.as_record()))) == read


def _cifar_config(tmp_path: Path, data_dir: Path) -> dict:
    return {"results_dir": str(tmp_path / "results"), "datasets": {"cifar10": {"data_dir": str(data_dir)}},
            "inits": {}}


def test_a_job_s_record_keeps_the_fingerprint_of_the_data_it_read_once_it_has_read_it(tmp_path):
    # Prepare: the job's settings; CIFAR's files appear only after the job started (as `download: true` fetches them)
    config = _cifar_config(tmp_path, tmp_path / "data")
    settings = {"dataset": "cifar10", "dataset_options": {"data_dir": None, "download": False}}

    # Execute
    with_data_locations(settings, config)
    write_fake_cifar10(tmp_path / "data", 4, 4)
    manifest.write_record(tmp_path / "record.json", [], 0.0, root=tmp_path)

    # Assert
    entry = json.loads((tmp_path / "record.json").read_text())["data"]["datasets.cifar10"]
    root, names = data_files("cifar10", str(tmp_path / "data"))
    assert entry["sha256"] == tree_fingerprint(root, names).sha256 and entry["files"] == 7
    assert entry["data_dir"] == str(tmp_path / "data") and entry["reader"] == "cifar10"
    assert list((tmp_path / "results/_data_hashes").iterdir())  # the cache below the results


def test_a_job_whose_data_cannot_be_fingerprinted_records_why(tmp_path):
    config = _cifar_config(tmp_path, tmp_path / "nowhere")
    with_data_locations({"dataset": "cifar10", "dataset_options": {}}, config)
    manifest.write_record(tmp_path / "record.json", [], 0.0, root=tmp_path)

    entry = json.loads((tmp_path / "record.json").read_text())["data"]["datasets.cifar10"]

    assert entry["sha256"] is None and "FileNotFoundError" in entry["problem"]


# -- make status: results made from other data ---------------------------------------------------------------------


def _recorded(tmp_path: Path, monkeypatch, config: dict) -> dict[str, dict]:
    """Two finished jobs (a partition and a run with two outputs) that read CIFAR-10 as it is now, as
    `output_records` gives them."""
    monkeypatch.chdir(tmp_path)
    entry = {**data_reads({"dataset": "cifar10", "dataset_options": {}})[0].as_record()}
    read = DataRead.from_record("datasets.cifar10", entry)
    root, names = data_files("cifar10", read.data_dir(config))
    entry["sha256"] = tree_fingerprint(root, names, hash_cache(config)).sha256
    partition = {"log": "logs/p.log", "data": {"datasets.cifar10": entry}, "code": {"commit": "a" * 40}}
    train = {"log": "logs/t.log", "data": {"datasets.cifar10": entry}, "code": {"commit": "a" * 40}}
    records = {"results/p/partition.npz": partition, "results/t/metrics.csv": train, "results/t/trajectory.pt": train,
               "results/tables/final.csv": {"log": "logs/f.log", "code": {"commit": "a" * 40}}}
    for output in records:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text("x")
    return records


def test_status_lists_the_jobs_made_from_other_data_with_the_command_that_remakes_them(tmp_path, monkeypatch):
    # Prepare
    data = write_fake_cifar10(tmp_path / "data", 4, 4)
    config = _cifar_config(tmp_path, data)
    records = _recorded(tmp_path, monkeypatch, config)
    same = changed_data(records, config)
    (data / "cifar-10-batches-py/data_batch_3").write_bytes(b"other images")

    # Execute
    changes = changed_data(records, config)
    lines = report([], records, ["--configfile", "c.yaml"], changes)

    # Assert: one data set changed, read by two jobs; the current results are the others
    assert same == []
    (change,) = changes
    assert change.read.key == "datasets.cifar10" and change.data_dir == str(data)
    assert change.jobs == [("results/p/partition.npz",), ("results/t/metrics.csv", "results/t/trajectory.pt")]
    assert lines[0] == f"current: 1 recorded result, made by {'a' * 12} (1)"
    assert "made from other data than the files there now: 2 jobs" in lines
    assert any(line.startswith(f"  datasets.cifar10 ({data}) now holds ") and "7 files" in line for line in lines)
    made_from = records["results/p/partition.npz"]["data"]["datasets.cifar10"]["sha256"]
    listed = lines.index(f"    made from {made_from[:12]}, now 1 changed (data_batch_3)")
    assert lines[listed + 1:listed + 3] == ["      results/p/partition.npz", "      results/t/metrics.csv"]
    assert lines[-1] == ("  snakemake --cores all --configfile c.yaml --forcerun results/p/partition.npz "
                         "results/t/metrics.csv")


def test_status_names_ten_jobs_of_a_group_and_counts_the_others_by_stage(tmp_path, monkeypatch):
    # Prepare: a partition and twelve runs that read CIFAR-10, whose files then change
    data = write_fake_cifar10(tmp_path / "data", 4, 4)
    config = _cifar_config(tmp_path, data)
    entry = _recorded(tmp_path, monkeypatch, config)["results/p/partition.npz"]["data"]
    records = {"results/partitions/p/partition.npz": {"log": "logs/p.log", "data": entry}}
    records |= {f"results/train/r{k:02d}/metrics.csv": {"log": f"logs/r{k}.log", "data": entry} for k in range(12)}
    for output in records:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text("x")
    (data / "cifar-10-batches-py/test_batch").write_bytes(b"other images")

    # Execute
    lines = report([], records, [], changed_data(records, config), root="results")

    # Assert: ten named, the other three counted by the folder they lie in; the command names all thirteen
    listed = [line.strip() for line in lines if line.startswith("      results/")]
    assert listed == ["results/partitions/p/partition.npz"] + [f"results/train/r{k:02d}/metrics.csv" for k in range(9)]
    assert "      and 3 more (train 3)" in lines
    assert len(lines[-1].split("--forcerun ")[1].split()) == 13


def test_status_leaves_out_planned_jobs_and_moved_data_and_says_what_it_cannot_read(tmp_path, monkeypatch):
    # Prepare: the data moved, and the config says where
    data = write_fake_cifar10(tmp_path / "data", 4, 4)
    config = _cifar_config(tmp_path, data)
    records = _recorded(tmp_path, monkeypatch, config)
    shutil.move(data, tmp_path / "moved")
    (data / "cifar-10-batches-py/data_batch_3").parent.mkdir(parents=True)
    moved = _cifar_config(tmp_path, tmp_path / "moved")

    # Execute / Assert: moved data is the same data
    assert changed_data(records, moved) == []
    # the old place holds other (too few) files: unreadable there, so nothing is listed to remake
    (unreadable,) = changed_data(records, config)
    assert unreadable.now is None and "FileNotFoundError" in unreadable.problem
    lines = report([], records, [], [unreadable])
    assert any("cannot be read now" in line and "2 jobs not checked" in line for line in lines)
    assert not any("--forcerun" in line for line in lines)
    # a data set the config no longer has is no longer the workflow's
    assert changed_data(records, {**config, "datasets": {"digits": {}}}) == []
    # a job the dry run plans anyway is not listed twice
    (tmp_path / "moved/cifar-10-batches-py/test_batch").write_bytes(b"x")
    (change,) = changed_data(records, moved, skip={"results/t/trajectory.pt"})
    assert change.jobs == [("results/p/partition.npz",)]


def test_the_hash_cache_lies_below_the_results():
    assert hash_cache({**TINY, "results_dir": "res/x"}) == os.path.join("res/x", "_data_hashes")


def test_status_counts_the_jobs_that_read_data_before_fingerprints_were_recorded():
    # two jobs that noted where their data was but not what it held (one with two outputs), one that read no data,
    # one with a fingerprint
    old = {"log": "logs/t.log", "data_locations": {"digits": {"data_dir": None}}}
    records = {"t/a.pt": old, "t/b.csv": old, "p/p.npz": {"log": "logs/p.log", "data_locations": {"digits": {}}},
               "tables/x.csv": {"log": "logs/x.log", "data_locations": {}},
               "n/n.npz": {"log": "logs/n.log", "data_locations": {"digits": {}}, "data": {}}}

    assert unfingerprinted_jobs(records) == 2
    assert report([], {}, [], [], 2)[-2] == ("made before fedscape recorded what their data held: 2 jobs (not checked "
                                             "against the files there now)")


def _job(config: dict) -> None:
    """The start of a job that reads CIFAR-10 where `config` says (as `job_log` and the rule's script start it)."""
    manifest.start_notes()
    with_data_locations({"dataset": "cifar10", "dataset_options": {}}, config)


def test_a_job_loading_a_partition_made_from_other_files_stops(tmp_path):
    # Prepare: a partition job records the fingerprint of the files it split
    data = write_fake_cifar10(tmp_path / "data", 6, 6)
    config = _cifar_config(tmp_path, data)
    _job(config)
    labels = dataset_from_options("cifar10", {"data_dir": str(data)}).y_train.numpy()
    made_from = job_fingerprint("cifar10")
    save_partition(tmp_path / "p.npz", iid_partition(len(labels), 3, seed=0), labels, 10,
                   {"dataset": "cifar10", "data_sha256": made_from})

    # Execute / Assert: the same files, and a copy elsewhere the config points to, load
    _job(config)
    federate(dataset_from_options("cifar10", {"data_dir": str(data)}), tmp_path / "p.npz")
    shutil.copytree(data, tmp_path / "copy")
    _job(_cifar_config(tmp_path, tmp_path / "copy"))
    assert job_fingerprint("cifar10") == made_from
    federate(dataset_from_options("cifar10", {"data_dir": str(tmp_path / "copy")}), tmp_path / "p.npz")
    # other images with the same labels (which the labels' checksum cannot see) stop the job, naming both prints
    write_fake_cifar10(data, 6, 6, seed=1)
    _job(config)
    now = job_fingerprint("cifar10")
    with pytest.raises(PartitionError, match=f"made from other files of cifar10 .*{made_from[:12]}, now {now[:12]}: "
                       r"6 changed \(data_batch_1, data_batch_2, data_batch_3 and 3 more\)"):
        federate(dataset_from_options("cifar10", {"data_dir": str(data)}), tmp_path / "p.npz")
    # outside a job (no data set noted), and for a partition that recorded no fingerprint, nothing is compared
    manifest.start_notes()
    assert job_fingerprint("cifar10") is None
    federate(dataset_from_options("cifar10", {"data_dir": str(data)}), tmp_path / "p.npz")
    save_partition(tmp_path / "old.npz", iid_partition(len(labels), 3, seed=0), labels, 10, {"dataset": "cifar10"})
    _job(config)
    federate(dataset_from_options("cifar10", {"data_dir": str(data)}), tmp_path / "old.npz")
