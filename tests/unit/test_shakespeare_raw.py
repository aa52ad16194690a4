"""Shakespeare cut from LEAF's raw texts by role at the layer-wise LMC paper's settings (Adilova et al., appendix:
all 96 characters, sequences of 256): its vocabulary, samples, writers, split, settings and errors."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import SCHEMA, config_with
from helpers.leaf import write_shakespeare, write_shakespeare_raw

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data.datasets import dataset_from_options, load_dataset
from fedscape.data.leaf import decode_text, encode_raw_text
from fedscape.data.partition import natural_partition
from fedscape.data.sources import load_source, source_from_options
from fedscape.data.specs import (
    DATASET_BASELINES,
    SHAKESPEARE_RAW_TEST_FRACTION,
    SHAKESPEARE_RAW_VOCAB,
    dataset_info,
    dataset_option_problems,
    dataset_settings,
    fits_dataset,
)
from fedscape.models.registry import build_model
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config

# Two roles of one play and one of another; the text as given: capitals, punctuation LEAF's 80 characters lack
# (`*`, `$`, `@`), newlines, and characters outside ASCII (a curly apostrophe, an accent) that have no token.
ROLES = {
    "THE_TEMPEST_PROSPERO": "Now does my project gather to a head:\nMy charms crack not; my spirits obey, and *time*\n"
                            "Goes upright with his carriage. How's the day? $5 @ noon.\n",
    "THE_TEMPEST_ARIEL": "On the sixth hour; at which time, my lord,\nYou said our work should cease.\n",
    "HAMLET_HAMLET": "To be, or not to be\u2019 that is the question:\n"
                     "Whether 'tis nobler in the mind to suff\u00e9r\n",
}


def _ascii(text: str) -> str:
    return "".join(c for c in text if c in SHAKESPEARE_RAW_VOCAB)


def _expected(seq_len: int, split: str) -> tuple[list[str], list[str], list[str]]:
    """Per sample of `split`, in role file order: the window, the next character and the role."""
    xs, ys, roles = [], [], []
    for role in sorted(ROLES):
        text = ROLES[role]
        cut = int((1 - SHAKESPEARE_RAW_TEST_FRACTION) * len(text))
        part = _ascii(text[:cut] if split == "train" else text[cut:])
        for start in range(len(part) - seq_len):
            xs.append(part[start:start + seq_len])
            ys.append(part[start + seq_len])
            roles.append(role)
    return xs, ys, roles


# -- the vocabulary --------------------------------------------------------------------------------
def test_raw_vocabulary_is_the_papers_96_characters() -> None:
    # Assert: the layer-wise authors' tokenizer (sorted ASCII letters, digits, punctuation, space, newline)
    assert len(SHAKESPEARE_RAW_VOCAB) == len(set(SHAKESPEARE_RAW_VOCAB)) == 96
    assert set(SHAKESPEARE_RAW_VOCAB) == set(string.ascii_letters + string.digits + string.punctuation + " \n")
    assert list(SHAKESPEARE_RAW_VOCAB) == sorted(SHAKESPEARE_RAW_VOCAB)


@pytest.mark.parametrize(("text", "kept"), [
    ("To be, or not", "To be, or not"),
    ("*$@~`|{}\n", "*$@~`|{}\n"),  # punctuation LEAF's vocabulary lacks has tokens here
    ("be\u2019 suff\u00e9r", "be suffr"),  # characters outside ASCII are dropped, as the authors' tokenizer drops them
    ("", ""),
])
def test_the_text_as_given_is_encoded_and_characters_outside_ascii_dropped(text: str, kept: str) -> None:
    # Execute
    ids = encode_raw_text(text)

    # Assert: each character's id is its position in the vocabulary
    assert ids.dtype == np.uint8 and ids.tolist() == [SHAKESPEARE_RAW_VOCAB.index(c) for c in kept]
    assert decode_text(ids, SHAKESPEARE_RAW_VOCAB) == kept


# -- samples, split and writers --------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [1, 6, 20])
@pytest.mark.parametrize("layout", ["leaf", "repo", "flat"])
def test_samples_are_every_window_of_seq_len_and_its_next_character(tmp_path: Path, seq_len: int,
                                                                    layout: str) -> None:
    # Prepare
    write_shakespeare_raw(tmp_path, ROLES, layout)
    train_x, train_y, train_roles = _expected(seq_len, "train")
    test_x, test_y, _ = _expected(seq_len, "test")

    # Execute
    src = load_source("shakespeare", data_dir=str(tmp_path), source="raw", seq_len=seq_len)
    ds = load_dataset("shakespeare", data_dir=str(tmp_path), source="raw", seq_len=seq_len)

    # Assert: int64 ids [N, seq_len] and the next character's id, per role in file order
    assert (ds.inputs, ds.in_channels, ds.image_size, ds.num_classes) == ("tokens", 96, seq_len, 96)
    assert ds.x_train.shape == (len(train_y), seq_len) and ds.x_train.dtype == torch.int64
    assert [decode_text(row, SHAKESPEARE_RAW_VOCAB) for row in ds.x_train.numpy()] == train_x
    assert ds.y_train.tolist() == [SHAKESPEARE_RAW_VOCAB.index(c) for c in train_y]
    assert [decode_text(row, SHAKESPEARE_RAW_VOCAB) for row in ds.x_test.numpy()] == test_x
    assert ds.y_test.tolist() == [SHAKESPEARE_RAW_VOCAB.index(c) for c in test_y]
    assert ds.vocabulary == SHAKESPEARE_RAW_VOCAB and ds.class_names == tuple(SHAKESPEARE_RAW_VOCAB)
    # one writer per role with a training sample
    assert [src.writer_names[w] for w in src.writer_ids] == train_roles
    assert src.writer_names == tuple(r for r in sorted(ROLES) if r in train_roles)


@pytest.mark.parametrize("source", ["raw", "preprocessed"])
def test_every_position_targets_are_each_windows_next_characters(tmp_path: Path, source: str) -> None:
    # Prepare: the same windows read once with their next character, once with every position's
    if source == "raw":
        write_shakespeare_raw(tmp_path, ROLES)
        options = {"data_dir": str(tmp_path), "source": "raw", "seq_len": 6}
    else:
        write_shakespeare(tmp_path)
        options = {"data_dir": str(tmp_path)}

    # Execute
    nxt = dataset_from_options("shakespeare", options)
    every = dataset_from_options("shakespeare", {**options, "targets": "every"})

    # Assert: targets [N, T], position t's the character t + 1 of the window and its next character, the last
    # position's the next-character label (which partitions read); the inputs are unchanged
    for x, y, y_every in ((nxt.x_train, nxt.y_train, every.y_train), (nxt.x_test, nxt.y_test, every.y_test)):
        assert y_every.shape == x.shape and y_every.dtype == torch.int64
        assert torch.equal(y_every[:, :-1], x[:, 1:]) and torch.equal(y_every[:, -1], y)
        assert torch.equal(every.sample_labels(y_every), y)
    assert torch.equal(every.x_train, nxt.x_train)
    if source == "raw":  # the windows of one role's text: the text from the second character on
        train_x, train_y, _ = _expected(6, "train")
        assert decode_text(every.y_train[0].numpy(), SHAKESPEARE_RAW_VOCAB) == (train_x[0] + train_y[0])[1:]


def test_every_position_targets_need_text() -> None:
    [problem] = dataset_option_problems("digits", {"targets": "every"})
    assert problem.startswith("datasets.digits.targets: every predicts the next token at every position")
    raw = {"source": "raw", "seq_len": 8}
    assert dataset_settings("shakespeare", {**raw, "targets": "next"}) == raw


def test_each_role_keeps_the_end_of_its_text_for_testing(tmp_path: Path) -> None:
    # Prepare: one role whose train and test parts are told apart by their letters
    text = "a" * 80 + "b" * 20
    write_shakespeare_raw(tmp_path, {"PLAY_ROLE": text})

    # Execute
    ds = load_dataset("shakespeare", data_dir=str(tmp_path), source="raw", seq_len=5)

    # Assert: the first 80 % train (75 windows of 5 with a next character), the last 20 % test (15)
    a, b = SHAKESPEARE_RAW_VOCAB.index("a"), SHAKESPEARE_RAW_VOCAB.index("b")
    assert ds.x_train.shape == (75, 5) and set(ds.x_train.unique().tolist()) == {a}
    assert ds.x_test.shape == (15, 5) and set(ds.x_test.unique().tolist()) == {b}


def test_a_natural_partition_gives_each_role_its_own_samples(tmp_path: Path) -> None:
    # Prepare
    write_shakespeare_raw(tmp_path, ROLES)
    src = load_source("shakespeare", data_dir=str(tmp_path), source="raw", seq_len=8)
    _, _, roles = _expected(8, "train")

    # Execute
    partition = natural_partition(src.writer_ids, len(src.writer_names), seed=0, min_size=1)

    # Assert: client k holds exactly the samples of role k
    for k, shard in enumerate(partition.client_indices):
        assert sorted(shard.tolist()) == [i for i, r in enumerate(roles) if r == src.writer_names[k]]


def test_a_gpt_of_the_papers_shape_reads_the_sequences(tmp_path: Path) -> None:
    # Prepare
    write_shakespeare_raw(tmp_path, {"PLAY_ROLE": ROLES["THE_TEMPEST_PROSPERO"] * 3})
    options = {"data_dir": str(tmp_path), "source": "raw", "seq_len": 64}
    ds = dataset_from_options("shakespeare", options)
    info = dataset_info("shakespeare", options)
    torch.manual_seed(0)
    model = build_model("char_gpt", num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size, vocab_size=96, seq_len=64, num_blocks=1, num_heads=2,
                        embed_dim=16)

    # Execute
    logits = model(ds.x_test)

    # Assert: the next character's logits over the 96 characters
    assert info.shape == (96, 64, 96) and logits.shape == (len(ds.y_test), 96)


def test_leafs_preprocessed_version_stays_the_default(tmp_path: Path) -> None:
    # Prepare: both layouts in one data_dir
    write_shakespeare(tmp_path, sizes=(5, 3), files=1)
    write_shakespeare_raw(tmp_path, ROLES)

    # Execute
    leaf = source_from_options("shakespeare", {"data_dir": str(tmp_path)})
    raw = source_from_options("shakespeare", {"data_dir": str(tmp_path), "source": "raw", "seq_len": 8})

    # Assert
    assert leaf.train_images.shape[1] == 80 and len(leaf.vocabulary) == 80
    assert raw.train_images.shape[1] == 8 and len(raw.vocabulary) == 96
    assert dataset_info("shakespeare").shape == dataset_info("shakespeare", {"source": "preprocessed"}).shape == (
        80, 80, 80)
    assert dataset_info("shakespeare", {"source": "raw"}).shape == (96, 80, 96)  # seq_len null: LEAF's 80
    assert dataset_info("shakespeare", {"source": "raw", "seq_len": 256}).shape == (96, 256, 96)


@pytest.mark.parametrize(("name", "shape", "fits"), [
    ("shakespeare", (80, 80, 80), True),  # LEAF's version
    ("shakespeare", (96, 96, 256), True),  # the raw texts at the paper's sequence length
    ("shakespeare", (96, 96, 7), True),
    ("shakespeare", (80, 80, 256), False),  # LEAF's vocabulary at another length: no source gives it
    ("shakespeare", (96, 80, 96), False),
    ("femnist", (62, 1, 28), True),
    ("femnist", (96, 96, 28), False),  # only shakespeare has raw texts
    ("digits", (10, 1, 8), True),
])
def test_a_checkpoints_shape_is_checked_against_each_source_of_its_dataset(name: str, shape: tuple,
                                                                           fits: bool) -> None:
    # Execute / Assert: (classes, in_channels, image_size), as a run id names no dataset settings
    assert fits_dataset(name, *shape) is fits


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["none", "empty_dir", "preprocessed_only", "roles_folder_empty"])
def test_absent_raw_files_raise_one_clear_error(tmp_path: Path, where: str) -> None:
    # Prepare
    data_dir = None if where == "none" else str(tmp_path)
    if where == "preprocessed_only":
        write_shakespeare(tmp_path)
    if where == "roles_folder_empty":
        (tmp_path / "raw_data" / "by_play_and_character").mkdir(parents=True)

    # Execute
    with pytest.raises(FileNotFoundError) as excinfo:
        load_source("shakespeare", data_dir=data_dir, source="raw", seq_len=16)

    # Assert: names the places looked in, LEAF's script that makes them and the keys to set
    message = str(excinfo.value)
    assert message.startswith("shakespeare's raw texts not found")
    assert "preprocess_shakespeare.py" in message and "datasets.shakespeare.data_dir" in message
    assert "source: preprocessed" in message
    if data_dir is None:
        assert "no data_dir was given" in message
    else:
        assert str(tmp_path / "raw_data" / "by_play_and_character") in message


def test_roles_too_short_for_a_sequence_are_an_error(tmp_path: Path) -> None:
    # Prepare
    write_shakespeare_raw(tmp_path, ROLES)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"no role's train text .* is longer than seq_len=256 characters; use a "
                                         r"smaller datasets\.shakespeare\.seq_len"):
        load_source("shakespeare", data_dir=str(tmp_path), source="raw", seq_len=256)


@pytest.mark.parametrize("source", ["raw", "preprocessed"])
def test_max_clients_is_refused_whatever_shakespeares_source(tmp_path: Path, source: str) -> None:
    # Prepare: both layouts in one data_dir
    write_shakespeare(tmp_path, sizes=(5, 3), files=1)
    write_shakespeare_raw(tmp_path, ROLES)
    options = {"data_dir": str(tmp_path), "source": source, "seq_len": 8 if source == "raw" else None}

    # Execute / Assert: a number of clients is read by the word data sets alone, and without it the texts read
    with pytest.raises(ValueError, match=r"^datasets\.shakespeare\.max_clients: only stackoverflow, reddit read a "
                                         r"number of clients; leave it null$"):
        load_source("shakespeare", **options, max_clients=2)
    assert len(load_source("shakespeare", **options, max_clients=None).writer_names) >= 2


@pytest.mark.parametrize(("name", "options", "problem"), [
    ("cifar10", {"source": "raw"}, "datasets.cifar10.source: raw builds samples from a dataset's raw texts"),
    ("shakespeare", {"seq_len": 256}, "datasets.shakespeare.seq_len: 256 characters per sequence, but only"),
    ("shakespeare", {"source": "preprocessed", "seq_len": 80}, "datasets.shakespeare.seq_len: 80 characters"),
])
def test_options_only_raw_shakespeare_takes_are_refused(name: str, options: dict, problem: str) -> None:
    # Execute
    problems = dataset_option_problems(name, options)

    # Assert
    assert len(problems) == 1 and problems[0].startswith(problem)
    assert dataset_option_problems("shakespeare", {"source": "raw", "seq_len": 256}) == []


# -- planning ----------------------------------------------------------------------------------------
def _gpt_config(data_dir: str, dataset_options: dict, gpt: dict) -> dict:
    return config_with({}, experiments=[{"dataset": "shakespeare", "model": "char_gpt", "alpha": "iid"}],
                       datasets={"shakespeare": {"data_dir": data_dir, "proxy_fraction": 0.0, **dataset_options}},
                       models=["char_gpt"], model_options={"char_gpt": gpt})


@pytest.mark.parametrize(("gpt", "match"), [
    ({"vocab_size": 80, "seq_len": 256}, r"model 'char_gpt' has vocab_size 80 but shakespeare has a vocabulary of "
                                         r"96 characters; set model_options\.char_gpt\.vocab_size: 96"),
    ({"vocab_size": 96, "seq_len": 80}, r"set model_options\.char_gpt\.seq_len: 256"),
])
def test_the_model_must_fit_the_raw_vocabulary_and_sequence_length(gpt: dict, match: str) -> None:
    # Prepare
    config = _gpt_config("/leaf", {"source": "raw", "seq_len": 256}, gpt)

    # Execute / Assert: before any job runs
    with pytest.raises(ConfigError, match=match):
        check_config(config, SCHEMA)


@pytest.mark.parametrize("gpt", [{}, {"vocab_size": 96}, {"vocab_size": 96, "seq_len": 128}])
def test_the_model_takes_the_raw_vocabulary_and_sequence_length_unless_set(gpt: dict) -> None:
    config = check_config(_gpt_config("/leaf", {"source": "raw", "seq_len": 128}, gpt), SCHEMA)

    assert config["model_options"]["char_gpt"] == gpt  # planned as written: the data's sizes are not copied in


def test_config_check_refuses_raw_for_a_dataset_without_raw_texts() -> None:
    # Prepare
    config = config_with({}, datasets={"digits": {"source": "raw"}})

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"datasets\.digits\.source: raw builds samples"):
        check_config(config, SCHEMA)


def test_jobs_carry_the_new_keys_only_off_their_baseline() -> None:
    # Prepare: LEAF's version (the schema's defaults) and the paper's
    leaf = check_config(_gpt_config("/leaf", {}, {"vocab_size": 80, "seq_len": 80}), copy.deepcopy(SCHEMA))
    paper = check_config(_gpt_config("/leaf", {"source": "raw", "seq_len": 256}, {}), copy.deepcopy(SCHEMA))
    settings = {}

    # Execute
    for name, config in (("leaf", leaf), ("paper", paper)):
        run = build_runs(config)[0]
        settings[name] = (train_settings(config, run)["dataset_options"],
                          partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed)[
                              "dataset_options"],
                          init_settings(config, [run], run.dataset, run.model, run.init))

    # Assert: LEAF's version's settings are those of before the keys existed; the paper's carry them
    assert leaf["datasets"]["shakespeare"]["source"] == "preprocessed"  # the schema fills the defaults
    assert leaf["datasets"]["shakespeare"]["seq_len"] is None
    for options in settings["leaf"][:2]:
        assert not set(DATASET_BASELINES) & set(options)
    for options in settings["paper"][:2]:
        assert (options["source"], options["seq_len"]) == ("raw", 256)
    assert (settings["leaf"][2]["in_channels"], settings["leaf"][2]["image_size"]) == (80, 80)
    assert (settings["paper"][2]["in_channels"], settings["paper"][2]["image_size"]) == (96, 256)
    leaf_options = {"proxy_fraction": 0.2, "source": "preprocessed", "seq_len": None}
    assert dataset_settings("shakespeare", leaf_options) == {"proxy_fraction": 0.2}
