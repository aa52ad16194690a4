"""Stack Overflow and Reddit as data sets of the workflow: their sources, tensors, partitions and the checks that
planning makes of them (the readers of their files: test_word_datasets.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.words import write_reddit, write_stackoverflow

from fedscape.data.datasets import dataset_from_options
from fedscape.data.federated import federate
from fedscape.data.leaf import IGNORE
from fedscape.data.partition import (
    check_partition_dataset,
    class_label_problem,
    make_kind_partition,
    save_partition,
)
from fedscape.data.sources import load_source, source_from_options
from fedscape.data.specs import DATASETS, data_layout_problems, dataset_option_problems, dataset_settings
from fedscape.data.stackoverflow import SpecialTokens

WORDS = ["the", "is", "code", "a", "bug"] + [f"w{i}" for i in range(9995)]  # TFF's vocabulary: 10,000 words
TEXTS = ["the code is a bug", "is the code", "a bug", "the the the the the the the the the the the the the the the "
         "the the the the the the the", "code", "bug is the"]


@pytest.fixture
def stackoverflow_dir(tmp_path):
    rows = [("train", f"{c:03d}", TEXTS[(c + k) % len(TEXTS)]) for c in range(6) for k in range(3 + c % 2)]
    rows += [("test", f"{c:03d}", TEXTS[c % len(TEXTS)]) for c in range(6)]
    rows += [("heldout", "999", "the")]
    return write_stackoverflow(tmp_path / "so", rows, WORDS)


@pytest.fixture
def reddit_dir(tmp_path):
    vocab = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "<BOS>": 4, "<EOS>": 5, "ok": 6}
    users = {"train": {f"u{u}": [["hi", "there"] * (u + 1), ["ok"]] for u in range(5)},
             "test": {f"u{u}": [["hi", "ok"]] for u in range(5)}}
    return write_reddit(tmp_path / "reddit_root", users, vocab, size=DATASETS["reddit"].num_classes)


def test_stackoverflow_source_has_every_position_labels_and_its_users(stackoverflow_dir):
    # Execute
    src = load_source("stackoverflow", data_dir=str(stackoverflow_dir), proxy_fraction=0.25, seed=3)

    # Assert: sequences of 20 over 10,004 ids, labels [N, 20], one writer per train client, the heldout not read
    info = DATASETS["stackoverflow"]
    assert src.train_images.shape[1] == info.image_size == 20 and src.train_labels.shape == src.train_images.shape
    assert len(src.vocabulary) == src.num_classes == info.num_classes == 10_004
    assert src.inputs == "tokens" and src.writer_names == tuple(f"{c:03d}" for c in range(6))
    assert len(src.test_labels) == 6
    # the proxy part: a quarter of the train rows drawn at random, disjoint from the clients' pool, covering it
    n = len(src.train_labels)
    assert len(src.proxy_index) == round(0.25 * n)
    assert np.array_equal(np.sort(np.concatenate([src.train_index, src.proxy_index])), np.arange(n))
    again = load_source("stackoverflow", data_dir=str(stackoverflow_dir), proxy_fraction=0.25, seed=3)
    assert np.array_equal(again.proxy_index, src.proxy_index)
    assert not np.array_equal(load_source("stackoverflow", data_dir=str(stackoverflow_dir), proxy_fraction=0.25,
                                          seed=4).proxy_index, src.proxy_index)


@pytest.mark.parametrize("max_clients", [1, 4])
def test_max_clients_reads_the_first_users_with_their_test_samples(stackoverflow_dir, reddit_dir, max_clients):
    # Execute
    so = source_from_options("stackoverflow", {"data_dir": str(stackoverflow_dir), "max_clients": max_clients})
    rd = source_from_options("reddit", {"data_dir": str(reddit_dir), "max_clients": max_clients})

    # Assert
    assert so.writer_names == tuple(f"{c:03d}" for c in range(max_clients))
    assert rd.writer_names == tuple(f"u{u}" for u in range(max_clients))
    assert len(rd.test_labels) == max_clients  # one test sequence per user, of the users read only
    assert len(so.test_labels) == max_clients


def test_reddit_source_keeps_leafs_masked_positions(reddit_dir):
    # Execute
    src = load_source("reddit", data_dir=str(reddit_dir))
    ds = dataset_from_options("reddit", {"data_dir": str(reddit_dir)})

    # Assert: u0's first comment, <BOS> hi there <EOS> -> hi there <EOS> <PAD> then 6 positions that do not count
    assert src.train_labels.shape[1] == 10 and src.num_classes == 10_000
    assert src.train_labels[0].tolist() == [2, 3, 5, 0, *[IGNORE] * 6]
    assert ds.y_train.dtype == torch.int64 and ds.x_train.dtype == torch.int64
    assert torch.equal(ds.y_train, torch.from_numpy(src.train_labels[src.train_index]))


@pytest.mark.parametrize(("text", "first"), [("", ["bos", "oov", "eos"]), ("code", ["bos", 3, "eos"]),
                                           ("zz code", ["bos", "oov", 3])])
def test_a_stackoverflow_job_s_settings_with_its_reader_version_load_what_that_reader_makes(tmp_path, text, first):
    # Prepare: one user whose train text is `text`, and the data set's options as its jobs carry them, with the
    # location a job reads (`with_data_locations`)
    data_dir = write_stackoverflow(tmp_path / "so", [("train", "1", text), ("test", "1", "code")], WORDS)
    options = {**dataset_settings("stackoverflow", {"proxy_fraction": 0.0}), "data_dir": str(data_dir)}
    special = SpecialTokens.of(len(WORDS))

    # Execute: the reader's version is no keyword of the loaders
    ds = dataset_from_options("stackoverflow", options)

    # Assert: version 2 reads an empty text as one empty word, out of the vocabulary (TFF's split)
    assert options["reader_version"] == DATASETS["stackoverflow"].reader_version == 2
    assert ds.x_train[0, :3].tolist() == [getattr(special, t) if isinstance(t, str) else t for t in first]


def test_tensors_keep_the_files_labels_as_every_position_targets(stackoverflow_dir):
    # Execute: the schema's default targets (null) and every give the same tensors
    options = {"data_dir": str(stackoverflow_dir), "proxy_fraction": 0.2}
    ds = dataset_from_options("stackoverflow", {**options, "targets": None})
    every = dataset_from_options("stackoverflow", {**options, "targets": "every"})

    # Assert
    assert ds.y_train.shape == ds.x_train.shape and ds.y_train.ndim == 2
    assert torch.equal(ds.y_train, every.y_train) and torch.equal(ds.y_proxy, every.y_proxy)
    with pytest.raises(ValueError, match="every position's next token"):
        dataset_from_options("stackoverflow", {**options, "targets": "next"})


def test_a_natural_partition_of_word_data_loads_back_against_its_labels(stackoverflow_dir, tmp_path):
    # Prepare
    options = {"data_dir": str(stackoverflow_dir)}
    src = source_from_options("stackoverflow", options)
    part = make_kind_partition({"kind": "natural"}, src.labels, 4, seed=0, min_size=1, writer_ids=src.writer_ids,
                               dataset="stackoverflow")

    # Execute
    save_partition(tmp_path / "p.npz", part, src.labels, src.num_classes, {"dataset": "stackoverflow"})
    data = federate(dataset_from_options("stackoverflow", options), tmp_path / "p.npz")

    # Assert: one user per client; the histogram counts the positions that count, per target word
    for client, ix in enumerate(part.client_indices):
        assert len(set(src.writer_ids[ix])) == 1
        assert torch.equal(data.y_train[data.client_indices[client]], torch.from_numpy(src.labels[ix]))
    counts = part.class_counts(src.labels, src.num_classes)
    assert counts.shape == (4, 10_004)
    assert counts.sum() == sum(int((src.labels[ix] >= 0).sum()) for ix in part.client_indices)


@pytest.mark.parametrize(("entry", "refused"), [
    ({"kind": "dirichlet", "alpha": 0.1}, True), ({"kind": "classes", "classes_per_client": 2}, True),
    ({"kind": "split_file", "path": "x.json"}, True), ({"kind": "natural"}, False), ({"kind": "iid"}, False),
    ({"kind": "quantity", "beta": 0.5}, False),
])
@pytest.mark.parametrize("dataset", ["stackoverflow", "reddit"])
def test_partitions_by_class_are_refused_for_word_data(entry, refused, dataset):
    # Execute
    problems = check_partition_dataset("lab", entry, dataset)

    # Assert
    assert bool(problems) == refused
    if refused:
        assert problems[0].startswith(f"partitions.lab: the kind {entry['kind']} splits by each sample's class")
        assert "natural" in problems[0] and "iid" in problems[0]
    assert class_label_problem(entry["kind"], "shakespeare") is None  # one label per sample: every kind fits


@pytest.mark.parametrize(("dataset", "options", "match"), [
    ("digits", {"max_clients": 3}, "datasets.digits.max_clients: 3"),
    ("stackoverflow", {"targets": "next"}, "datasets.stackoverflow.targets: next"),
    ("reddit", {"download": True}, "fedscape cannot download reddit"),
    ("stackoverflow", {"augment": "crop_flip"}, "datasets.stackoverflow.augment: crop_flip"),
])
def test_word_data_options_that_cannot_hold_are_named(dataset, options, match):
    # Execute / Assert
    assert any(match in p for p in dataset_option_problems(dataset, options))


def test_a_vocabulary_of_another_size_is_refused_naming_it(tmp_path):
    # Prepare: LEAF's build_vocab.py run with --vocab-size 6
    root = write_reddit(tmp_path, {"train": {"u": [["hi"]]}, "test": {"u": [["hi"]]}},
                        {"<PAD>": 0, "<UNK>": 1, "hi": 2}, size=6)

    # Execute / Assert
    with pytest.raises(ValueError, match="vocabulary of 6 ids, but reddit has 10000"):
        load_source("reddit", data_dir=str(root))


@pytest.mark.parametrize(("remove", "compressed", "says"), [
    ((), False, None),
    (("stackoverflow.sqlite",), True, "missing stackoverflow.sqlite in {d}: expected TFF's stackoverflow.sqlite "
     "(decompressed from its stackoverflow.sqlite.lzma) and stackoverflow.word_count ({d}/stackoverflow.sqlite.lzma "
     "is there: decompress it once with fedscape.data.stackoverflow.decompress_database('{d}'))"),
    (("stackoverflow.sqlite",), False, "missing stackoverflow.sqlite in {d}: expected TFF's stackoverflow.sqlite "
     "(decompressed from its stackoverflow.sqlite.lzma) and stackoverflow.word_count (TFF publishes "
     "stackoverflow.sqlite.lzma"),
    (("stackoverflow.word_count",), False, "missing stackoverflow.word_count in {d}: "),
])
def test_a_stackoverflow_data_dir_without_its_files_is_named_before_any_job(stackoverflow_dir, remove, compressed,
                                                                            says):
    # Prepare: TFF's files as the reader opens them, less those removed (the compressed database left beside them)
    for name in remove:
        (stackoverflow_dir / name).unlink()
    if compressed:
        (stackoverflow_dir / "stackoverflow.sqlite.lzma").write_bytes(b"")

    # Execute
    problems = data_layout_problems("stackoverflow", str(stackoverflow_dir), {"data_dir": str(stackoverflow_dir)})

    # Assert: what the reader would miss, named before the first job; a complete folder reads
    if says is None:
        assert problems == []
        assert len(load_source("stackoverflow", data_dir=str(stackoverflow_dir)).labels)
    else:
        assert len(problems) == 1 and problems[0].startswith(says.format(d=stackoverflow_dir)), problems
        with pytest.raises(FileNotFoundError):
            load_source("stackoverflow", data_dir=str(stackoverflow_dir))


@pytest.mark.parametrize("vocab_at", [None, "reddit/vocab", "reddit/data/vocab", "reddit/data"])
def test_a_reddit_data_dir_without_its_vocabulary_is_named_before_any_job(reddit_dir, vocab_at):
    # Prepare: LEAF's layout, its vocabulary moved to another place the reader looks in, or removed
    written = reddit_dir / "reddit" / "vocab" / "reddit_vocab.pck"
    if vocab_at is None:
        written.unlink()
    else:
        (reddit_dir / vocab_at).mkdir(parents=True, exist_ok=True)
        written.replace(reddit_dir / vocab_at / "reddit_vocab.pck")

    # Execute
    problems = data_layout_problems("reddit", str(reddit_dir), {"data_dir": str(reddit_dir)})

    # Assert: the places the reader looks in are named; where the file is in one of them, the data reads
    data = reddit_dir / "reddit" / "data"
    if vocab_at is None:
        assert problems == [f"no reddit_vocab.pck in {data}/vocab, {reddit_dir}/reddit/vocab, {data}: reddit's token "
                            "ids are those of LEAF's vocabulary pickle; make it with LEAF's data/reddit/build_vocab.py "
                            "--data-dir ./data/train --target-dir vocab"]
        with pytest.raises(FileNotFoundError, match="reddit_vocab.pck not found"):
            load_source("reddit", data_dir=str(reddit_dir))
    else:
        assert problems == []
        assert len(load_source("reddit", data_dir=str(reddit_dir)).labels)


@pytest.mark.parametrize(("options", "refused"), [({}, True), ({"source": "raw"}, False)])
def test_classes_per_client_is_checked_against_the_classes_the_data_set_is_read_with(options, refused):
    # 85 characters per client: more than LEAF's Shakespeare has (80), fewer than its raw texts (96)
    problems = check_partition_dataset("lab", {"kind": "classes", "classes_per_client": 85}, "shakespeare", options)

    assert bool(problems) == refused
    if refused:
        assert "shakespeare has 80 classes" in problems[0]


@pytest.mark.parametrize(("num_clients", "refused"), [(100, False), (200, True)])
def test_a_writer_split_of_more_clients_than_the_writers_read_is_refused_at_planning(num_clients, refused):
    # Prepare: runs on Stack Overflow read to its first 100 writers, split by writer
    from types import SimpleNamespace

    from fedscape.plan.partition import check

    config = {"partitions": {"nat": {"kind": "natural"}}, "alphas": ["nat"], "partition": {"min_size": 1},
              "datasets": {"stackoverflow": {"max_clients": 100, "test_fraction": 0.0, "proxy_fraction": 0.0}},
              "inits": {}}
    runs = [SimpleNamespace(dataset="stackoverflow", setting="nat", num_clients=num_clients, init="random")]

    # Execute
    problems = [p for p in check(config, runs) if "max_clients" in p]

    # Assert
    assert problems == (["num_clients: 200 clients of the natural partition nat, but datasets.stackoverflow."
                         "max_clients reads the first 100 writers alone; use at most 100 clients or raise "
                         "max_clients"] if refused else [])
