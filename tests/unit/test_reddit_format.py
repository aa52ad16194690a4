"""Tests for reading Reddit as LEAF's data/reddit/source/preprocess.py writes it: every user listed in train/, val/ and
test/ with its total comment count, and 60 % / 20 % / 20 % of its comments in each (so some users have no train
comment). The writers are the users with train comments; `max_clients` counts only those."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from helpers.words import write_reddit

from fedscape.data.leaf import read_reddit, read_reddit_vocab
from fedscape.data.sources import load_source
from fedscape.data.specs import DATASETS

VOCAB = {"<PAD>": 0, "<UNK>": 1, "a": 2, "b": 3, "c": 4, "<BOS>": 5, "<EOS>": 6}
BOS = VOCAB["<BOS>"]


def _comment(user: str, k: int) -> list[str]:
    """Comment k of `user`: as many words as 1 + the user's place in "pqrstu", so that its one input sequence
    (<BOS>, the words, <EOS>, <PAD>...) tells whose it is."""
    return [["a", "b", "c"][k % 3]] * (1 + "pqrstu".index(user))


# Comments per user, in users' order: p and r have one comment (int(0.6 * 1) == 0: none in train, one in test)
COMMENTS = {"p": 1, "q": 5, "r": 1, "s": 3, "t": 2, "u": 4}


def _leaf_splits(counts: dict[str, int]) -> dict[str, dict[str, list[list[str]]]]:
    """preprocess.py's cut of each user's comments (in time order): the first int(0.6 n), up to int(0.8 n), the rest
    (a user without comments in a split has an empty list there)."""
    splits: dict[str, dict[str, list[list[str]]]] = {"train": {}, "val": {}, "test": {}}
    for user, n in counts.items():
        comments = [_comment(user, k) for k in range(n)]
        splits["train"][user] = comments[:int(0.6 * n)]
        splits["val"][user] = comments[int(0.6 * n):int(0.8 * n)]
        splits["test"][user] = comments[int(0.8 * n):]
    return splits


def _users_of_rows(part) -> list[str]:
    """The user of each sample, read back from its input (the word repeated 1 + the user's place times)."""
    lengths = [int((row != 0).sum()) - 2 for row in part.x]  # <BOS> and <EOS> around the words
    return ["pqrstu"[n - 1] for n in lengths]


@pytest.fixture
def reddit_root(tmp_path: Path) -> Path:
    return write_reddit(tmp_path, _leaf_splits(COMMENTS), VOCAB, size=len(VOCAB))


def test_the_fixture_is_what_preprocess_py_writes(reddit_root):
    # Execute
    files = {s: json.loads((reddit_root / f"reddit/data/{s}/reddit_0_{s}.json").read_text())
             for s in ("train", "val", "test")}

    # Assert: the same users and total counts in every split; p has an empty train entry; the comments split 60/20/20
    for obj in files.values():
        assert obj["users"] == list(COMMENTS) and obj["num_samples"] == list(COMMENTS.values())
    assert files["train"]["user_data"]["p"] == {"x": [], "y": []}
    assert [len(files[s]["user_data"]["q"]["x"]) for s in ("train", "val", "test")] == [3, 1, 1]


@pytest.mark.parametrize("per_split", [False, True])
def test_the_writers_are_exactly_the_users_with_train_comments(tmp_path, per_split):
    # Prepare: preprocess.py's files (every user everywhere, total counts), or each split's own users and counts
    root = write_reddit(tmp_path, _leaf_splits(COMMENTS), VOCAB, size=len(VOCAB), per_split=per_split)

    # Execute
    train, test, _ = read_reddit(str(root))

    # Assert: p and r (one comment, none in train) are no writer and their test comments are not read; the others'
    # samples are their train comments (one sequence each) and test comments
    assert train.writer_names == ("q", "s", "t", "u")
    assert _users_of_rows(train) == ["q"] * 3 + ["s"] + ["t"] + ["u"] * 2
    assert [train.writer_names[w] for w in train.writers] == _users_of_rows(train)
    assert _users_of_rows(test) == ["q", "s", "t", "u"]
    assert (train.x[:, 0] == BOS).all() and (test.x[:, 0] == BOS).all()


@pytest.mark.parametrize(("max_clients", "writers"), [(1, ("q",)), (2, ("q", "s")), (3, ("q", "s", "t")),
                                                      (10, ("q", "s", "t", "u"))])
def test_max_clients_counts_only_users_with_train_comments(reddit_root, max_clients, writers):
    # Execute
    train, test, _ = read_reddit(str(reddit_root), max_clients=max_clients)

    # Assert: the first `max_clients` users with train comments (p and r, listed first and third, take no place),
    # and the test comments of those users alone
    assert train.writer_names == writers
    assert sorted(set(_users_of_rows(train))) == sorted(set(_users_of_rows(test))) == sorted(writers)


def test_a_user_whose_x_and_y_differ_is_named(tmp_path):
    # Prepare: one comment's label dropped from q's train y
    root = write_reddit(tmp_path, _leaf_splits(COMMENTS), VOCAB, size=len(VOCAB))
    path = root / "reddit/data/train/reddit_0_train.json"
    obj = json.loads(path.read_text())
    obj["user_data"]["q"]["y"].pop()
    path.write_text(json.dumps(obj))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"user 'q': x has 3 and y 2 entries; they must be equal"):
        read_reddit(str(root))


def test_train_files_without_a_train_comment_are_refused(tmp_path):
    # Prepare: every user has a single comment, so none has one in train
    root = write_reddit(tmp_path, _leaf_splits({"p": 1, "r": 1}), VOCAB, size=len(VOCAB))

    # Execute / Assert
    with pytest.raises(ValueError, match="train: the JSON files name no users with samples"):
        read_reddit(str(root))


def test_the_source_of_preprocess_py_files_loads_with_writers(tmp_path):
    # Prepare: the vocabulary of the data set's size, as LEAF's build_vocab.py writes it
    vocab = {**VOCAB, **{f"w{i}": 7 + i for i in range(DATASETS["reddit"].num_classes - 7)}}
    root = write_reddit(tmp_path, _leaf_splits(COMMENTS), vocab, size=DATASETS["reddit"].num_classes)

    # Execute
    src = load_source("reddit", data_dir=str(root), max_clients=2)

    # Assert: the clients' pool holds the train sequences of q and s alone
    assert src.writer_names == ("q", "s") and src.writer_ids.tolist() == [0, 0, 0, 1]
    assert len(src.test_labels) == 2


@pytest.mark.parametrize(("changes", "match"), [
    ({}, None),
    ({"unk_symbol": "1"}, r"size, unk_symbol and pad_symbol are integers in LEAF's vocabulary \(its build_vocab\.py\), "
                          r"got unk_symbol '1'$"),
    ({"size": 7.0, "pad_symbol": None}, r"got size 7\.0, pad_symbol None$"),
    ({"vocab": {**VOCAB, "d": "7"}}, r"ids outside 0\.\.6 \(size 7\), e\.g\. for \['d'\]"),
    ({"unk_symbol": 7}, r"ids outside 0\.\.6 \(size 7\), e\.g\. for unk/pad"),
])
def test_a_vocabulary_pickle_of_other_values_is_named(tmp_path, changes, match):
    # Prepare: LEAF's build_vocab.py pickle, some of its values replaced
    path = tmp_path / "reddit_vocab.pck"
    path.write_bytes(pickle.dumps({"vocab": VOCAB, "size": len(VOCAB), "unk_symbol": 1, "pad_symbol": 0, **changes}))

    # Execute / Assert: LEAF's own reads; any other names the file and the values
    if match is None:
        assert read_reddit_vocab(path).names == tuple(VOCAB)
        return
    with pytest.raises(ValueError, match=match) as excinfo:
        read_reddit_vocab(path)
    assert str(excinfo.value).startswith(f"{path}: ")
