"""The own proxy split of the data sets with writers (`datasets.<name>.proxy_split`): samples of every writer, as
before, or whole writers, so that a pretrained init sees none of the clients' writers (Nguyen et al. 2022)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import SCHEMA, TINY, problems_of
from helpers.leaf import write_femnist, write_shakespeare
from helpers.papers import load, runs_of
from helpers.words import write_reddit, write_stackoverflow

from fedscape.data.leaf import read_leaf, read_reddit
from fedscape.data.sources import load_source, source_from_options
from fedscape.data.specs import DATASET_BASELINES, DATASETS, PROXY_SPLITS, dataset_option_problems, dataset_settings
from fedscape.data.stackoverflow import read_stackoverflow

WRITER_DATASETS = ("femnist", "shakespeare", "stackoverflow", "reddit")
WORDS = ["the", "is", "code", "a", "bug"] + [f"w{i}" for i in range(9995)]  # TFF's vocabulary: 10,000 words
REDDIT_VOCAB = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "<BOS>": 4, "<EOS>": 5, "ok": 6}


def _write(name: str, root: Path, writers: int) -> Path:
    """A data_dir of data set `name` with `writers` writers, each with a few training and test samples."""
    if name == "femnist":
        write_femnist(root, sizes=tuple(4 + w % 5 for w in range(writers)), files=2)
    elif name == "shakespeare":
        write_shakespeare(root, sizes=tuple(3 + w % 4 for w in range(writers)), files=2)
    elif name == "stackoverflow":
        rows = [("train", f"{c:03d}", " ".join(WORDS[:1 + (c + k) % 5])) for c in range(writers)
                for k in range(1 + c % 3)]
        rows += [("test", f"{c:03d}", "the code") for c in range(writers)]
        write_stackoverflow(root, rows, WORDS)
    else:
        users = {"train": {f"u{u:02d}": [["hi", "there"]] * (1 + u % 3) for u in range(writers)},
                 "test": {f"u{u:02d}": [["hi", "ok"]] for u in range(writers)}}
        write_reddit(root, users, REDDIT_VOCAB, size=DATASETS["reddit"].num_classes)
    return root


def _load(name: str, data_dir: Path, **options):
    return source_from_options(name, {"data_dir": str(data_dir), **options})


def _writers(src, index: np.ndarray) -> list[str]:
    """The writer of every training row of `index`."""
    return [src.writer_names[w] for w in src.train_writers[index]]


def _test_writers(name: str, data_dir: Path, src, max_clients: int | None = None) -> list[str]:
    """The writer of every test row `src` keeps, from its reader's test part (read as `src` read it)."""
    if name in ("femnist", "shakespeare"):
        test = read_leaf(name, str(data_dir))[1]
    else:
        test = (read_stackoverflow if name == "stackoverflow" else read_reddit)(str(data_dir), max_clients)[1]
    assert len(test.y) == len(src.test_labels)
    return [test.writer_names[w] for w in test.writers[src.test_index]]


# -- proxy_split: writers --------------------------------------------------------------------------
@pytest.mark.parametrize("name", WRITER_DATASETS)
@pytest.mark.parametrize(("writers", "fraction", "seed"), [(12, 0.25, 0), (12, 0.25, 7), (9, 0.5, 3)])
def test_a_writers_proxy_split_holds_out_whole_writers(tmp_path, name, writers, fraction, seed):
    # Prepare
    data_dir = _write(name, tmp_path / name, writers)
    whole = _load(name, data_dir, proxy_fraction=0.0)

    # Execute
    src = _load(name, data_dir, proxy_fraction=fraction, split_seed=seed, proxy_split="writers")
    again = _load(name, data_dir, proxy_fraction=fraction, split_seed=seed, proxy_split="writers")

    # Assert: round(fraction x writers) writers hold all their rows, the pool every other row, and none is shared
    pool, proxy = set(_writers(src, src.train_index)), set(_writers(src, src.proxy_index))
    assert len(proxy) == round(fraction * writers) and len(pool) == writers - len(proxy)
    assert not pool & proxy
    assert np.array_equal(np.sort(np.concatenate([src.train_index, src.proxy_index])), np.arange(len(src.train_labels)))
    # the test part: the test rows of the pool's writers, every one of them
    kept = _test_writers(name, data_dir, src)
    assert set(kept) == pool
    assert len(kept) == sum(w in pool for w in _test_writers(name, data_dir, whole))
    # the same writers for the same seed
    for key in ("train_index", "proxy_index", "test_index"):
        assert np.array_equal(getattr(src, key), getattr(again, key))


@pytest.mark.parametrize("name", WRITER_DATASETS)
def test_the_split_seed_draws_the_proxy_s_writers(tmp_path, name):
    # Prepare
    data_dir = _write(name, tmp_path / name, 12)

    # Execute
    drawn = [frozenset(_writers(src, src.proxy_index)) for src in
             (_load(name, data_dir, proxy_fraction=0.25, split_seed=seed, proxy_split="writers") for seed in range(4))]

    # Assert: three whole writers each time (a quarter of 12), a seeded draw of them, not the first or last ones
    assert {len(writers) for writers in drawn} == {3} and len(set(drawn)) > 1


@pytest.mark.parametrize("name", ["stackoverflow", "reddit"])
@pytest.mark.parametrize(("max_clients", "fraction", "after"), [(6, 0.25, 2), (4, 0.5, 4), (9, 0.25, 3)])
def test_with_max_clients_the_proxy_is_the_writers_after_them(tmp_path, name, max_clients, fraction, after):
    # Prepare: 12 writers in the files; the clients' pool as a read of max_clients without a proxy split has it
    data_dir = _write(name, tmp_path / name, 12)
    configured = _load(name, data_dir, max_clients=max_clients, proxy_fraction=0.0)

    # Execute
    src = _load(name, data_dir, max_clients=max_clients, proxy_fraction=fraction, proxy_split="writers")

    # Assert: the pool keeps the first max_clients writers whole, with their test rows alone; the proxy is the
    # round(fraction x max_clients / (1 - fraction)) writers after them (`after`)
    assert _writers(src, src.train_index) == _writers(configured, configured.train_index)
    assert np.array_equal(src.labels, configured.labels)
    assert np.array_equal(src.test_labels[src.test_index], configured.test_labels[configured.test_index])
    assert sorted(set(_writers(src, src.proxy_index))) == sorted(src.writer_names[max_clients:])
    assert len(src.writer_names) == max_clients + after
    assert set(_test_writers(name, data_dir, src, max_clients + after)) == set(configured.writer_names)


@pytest.mark.parametrize("name", ["stackoverflow", "reddit"])
def test_a_max_clients_that_reads_every_writer_draws_them_as_without_it(tmp_path, name):
    # Prepare
    data_dir = _write(name, tmp_path / name, 8)

    # Execute
    capped = _load(name, data_dir, max_clients=8, proxy_fraction=0.25, split_seed=5, proxy_split="writers")
    whole = _load(name, data_dir, proxy_fraction=0.25, split_seed=5, proxy_split="writers")

    # Assert
    assert np.array_equal(capped.proxy_index, whole.proxy_index) and len(set(_writers(whole, whole.proxy_index))) == 2


# -- proxy_split: samples, the baseline -----------------------------------------------------------
# The proxy rows of each writer data set's fixture at split_seed 3 and proxy_fraction 0.25 as the code before
# proxy_split drew them (commit 2ffe16a), and the pool's and the test part's row counts
SAMPLES_SPLIT_BEFORE = {
    "femnist": ([0, 1, 4, 7, 9, 16, 20, 28], 23, 14),
    "shakespeare": ([10, 13, 14, 17, 18, 21], 18, 12),
    "stackoverflow": ([2, 9, 11, 14], 11, 8),
    "reddit": ([2, 9, 11, 14], 11, 8),
}


@pytest.mark.parametrize("name", WRITER_DATASETS)
@pytest.mark.parametrize("options", [{}, {"proxy_split": "samples"}])
def test_a_samples_proxy_split_draws_the_rows_it_drew_before(tmp_path, name, options):
    # Prepare
    data_dir = _write(name, tmp_path / name, 8)
    proxy, pool, tests = SAMPLES_SPLIT_BEFORE[name]

    # Execute
    src = _load(name, data_dir, proxy_fraction=0.25, split_seed=3, **options)

    # Assert: the same rows bit for bit, the pool every other row, the whole test part
    assert src.proxy_index.tolist() == proxy
    assert len(src.train_index) == pool and np.array_equal(src.test_index, np.arange(tests))
    assert len(src.test_labels) == tests


@pytest.mark.parametrize("name", WRITER_DATASETS)
def test_a_job_at_the_samples_split_keeps_its_settings_and_a_writers_one_names_it(name):
    # Prepare
    options = {"test_fraction": 0.25, "proxy_fraction": 0.1, "data_dir": None, "download": False}

    # Execute
    before = dataset_settings(name, options)
    samples = dataset_settings(name, {**options, "proxy_split": "samples"})
    writers = dataset_settings(name, {**options, "proxy_split": "writers"})

    # Assert: the same text at the baseline; the key after every earlier one (a reader version stays last)
    assert repr(samples) == repr(before)
    assert [k for k in writers if k != "reader_version"][-1] == "proxy_split" and writers["proxy_split"] == "writers"


def test_the_schema_offers_the_splits_with_the_baseline_as_default():
    proxy_split = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]["proxy_split"]

    assert tuple(proxy_split["enum"]) == PROXY_SPLITS
    assert proxy_split["default"] == DATASET_BASELINES["proxy_split"] == PROXY_SPLITS[0]


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "problem"), [
    ("digits", {"proxy_fraction": 0.2, "proxy_split": "writers"},
     "datasets.digits.proxy_split: writers holds out whole writers, but the samples of digits name no writer (those "
     "of femnist, shakespeare, stackoverflow, reddit do); use proxy_split: samples"),
    ("cifar10", {"proxy_fraction": 0.2, "proxy_split": "writers"}, "datasets.cifar10.proxy_split: writers"),
    ("imagenet200", {"proxy_fraction": 0.2, "proxy_split": "writers"}, "datasets.imagenet200.proxy_split: writers"),
    ("femnist", {"proxy_fraction": 0.0, "proxy_split": "writers"},
     "datasets.femnist.proxy_split: writers chooses how the proxy split holds data out, but proxy_fraction is 0 "
     "(no proxy split); set proxy_fraction above 0 or proxy_split: samples"),
    ("femnist", {"proxy_fraction": 0.1, "proxy_split": "writers"}, None),
    ("reddit", {"proxy_fraction": 0.1, "proxy_split": "writers", "max_clients": 10}, None),
    ("digits", {"proxy_fraction": 0.0, "proxy_split": "samples"}, None),
])
def test_a_writers_split_is_refused_where_it_cannot_hold(name, options, problem):
    # Execute
    problems = dataset_option_problems(name, options)

    # Assert
    assert len(problems) == (problem is not None) and all(p.startswith(problem) for p in problems)


@pytest.mark.parametrize(("proxy_split", "match"), [("writers", "the samples of digits name no writer"),
                                                    ("rows", "proxy_split must be one of samples, writers")])
def test_the_reader_refuses_a_split_it_cannot_make(proxy_split, match):
    with pytest.raises(ValueError, match=match):
        load_source("digits", proxy_fraction=0.2, proxy_split=proxy_split)


@pytest.mark.parametrize(("proxy_split", "refused"), [("writers", "datasets.digits.proxy_split: writers holds out"),
                                                      ("samples", "")])
def test_the_config_check_refuses_a_writers_split_of_digits(proxy_split, refused):
    # Prepare
    config = copy.deepcopy(TINY)
    config["datasets"]["digits"]["proxy_split"] = proxy_split

    # Execute
    problems = problems_of(config)

    # Assert
    assert (refused in problems) if refused else problems == ""


# -- the paper config that pretrains on its own proxy split of writer data ------------------------
def test_meta_pretrains_on_writers_the_clients_do_not_hold():
    # Prepare: the data sets whose runs start from a pretrained init on their own proxy split
    config = load("meta")
    own = {label for label, spec in config["inits"].items()
           if spec["kind"] == "pretrained" and not spec.get("proxy_dataset") and not spec.get("proxy_dir")}
    datasets = {run.dataset for run in runs_of("meta") if run.init in own}

    # Assert: Nguyen et al. 2022 pretrain on data disjoint from the clients': whole writers
    assert datasets == {"femnist", "stackoverflow", "reddit"}
    assert all(config["datasets"][d]["proxy_split"] == "writers" for d in datasets)
