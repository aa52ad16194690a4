"""Readers of the word datasets in their publishers' on-disk formats: TFF's Stack Overflow SQLite file of
tf.train.Example protos, and LEAF's Reddit JSON with its vocabulary pickle."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from helpers.words import example, write_reddit, write_stackoverflow

from fedscape.data import stackoverflow as so
from fedscape.data.leaf import IGNORE, read_reddit


def test_decode_example_reads_every_feature_kind():
    proto = example(tokens=b"hello world", score=-3, weight=0.5, type=b"answer")
    assert so.decode_example(proto) == {"tokens": [b"hello world"], "score": [-3], "weight": [0.5],
                                        "type": [b"answer"]}


def test_decode_example_refuses_truncated_bytes():
    with pytest.raises(ValueError, match="truncated"):
        so.decode_example(example(tokens=b"hello")[:-2])


def test_word_sequences_follow_tff_next_word_rules():
    # Prepare: vocabulary a=1, b=2; V=2: oov 3, bos 4, eos 5
    x, y = so.word_sequences(["a b zz", "a a a a", ""], ("a", "b"), seq_len=4)
    # Assert: bos in front, eos only when shorter than seq_len, pad targets ignored
    assert x.tolist() == [[4, 1, 2, 3], [4, 1, 1, 1], [4, 5, 0, 0]]
    assert y.tolist() == [[1, 2, 3, 5], [1, 1, 1, 1], [5, IGNORE, IGNORE, IGNORE]]


def test_read_stackoverflow_gives_each_train_client_its_sequences(tmp_path):
    # Prepare
    write_stackoverflow(tmp_path, [("train", "20", "the code"), ("train", "10", "is the"), ("train", "20", "is"),
                                   ("test", "10", "code is"), ("heldout", "30", "the")], ["the", "is", "code"])
    # Execute
    train, test, names = so.read_stackoverflow(str(tmp_path), seq_len=3, vocab_size=3)
    # Assert: clients sorted ("10" before "20"), one writer each; ids the=1 is=2 code=3, bos 5, eos 6
    assert names == ("<PAD>", "the", "is", "code", "<OOV>", "<BOS>", "<EOS>")
    assert train.writer_names == ("10", "20")
    assert train.writers.tolist() == [0, 1, 1]
    assert train.x.tolist() == [[5, 2, 1], [5, 1, 3], [5, 2, 6]]
    assert train.y.tolist() == [[2, 1, 6], [1, 3, 6], [2, 6, IGNORE]]
    assert test.writer_names == ("10",) and test.x.tolist() == [[5, 3, 2]]
    first = so.read_stackoverflow(str(tmp_path), max_clients=1, seq_len=3, vocab_size=3)[0]
    assert first.writer_names == ("10",)


def test_read_stackoverflow_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="stackoverflow.sqlite.lzma"):
        so.read_stackoverflow(str(tmp_path))
    sqlite3.connect(tmp_path / so.DATABASE).execute("CREATE TABLE examples (client_id TEXT)").connection.close()
    (tmp_path / so.WORD_COUNT_FILE).write_text("a 1\n")
    with pytest.raises(ValueError, match="split_name, serialized_example_proto"):
        so.read_stackoverflow(str(tmp_path), vocab_size=1)


def test_read_reddit_reads_leaf_json_and_vocabulary(tmp_path):
    # Prepare: LEAF's layout, data/reddit/{data/train,data/test,vocab}
    users = {"train": {"u1": [["hi", "there"]], "u2": [["hi"] * 9]}, "test": {"u2": [["odd"]]}}
    vocab = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "<BOS>": 4, "<EOS>": 5}
    write_reddit(tmp_path, users, vocab, size=6)
    # Execute
    train, test, names = read_reddit(str(tmp_path))
    # Assert: one sample per sequence; u2's 11 positions make two sequences
    assert names == ("<PAD>", "<UNK>", "hi", "there", "<BOS>", "<EOS>")
    assert train.writers.tolist() == [0, 1, 1] and train.writer_names == ("u1", "u2")
    assert train.x[0].tolist() == [4, 2, 3, 5, 0, 0, 0, 0, 0, 0]
    assert train.y[0].tolist() == [2, 3, 5, 0, *[IGNORE] * 6]
    assert train.y[2].tolist() == [0, *[IGNORE] * 9]
    assert test.x.tolist() == [[4, 1, 5, 0, 0, 0, 0, 0, 0, 0]]  # "odd" is <UNK>
    assert np.issubdtype(train.x.dtype, np.integer) and train.y.dtype == np.int64
