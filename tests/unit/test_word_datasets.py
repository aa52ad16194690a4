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


@pytest.mark.parametrize(("sentence", "x", "y"), [
    ("a b zz", [4, 1, 2, 3], [1, 2, 3, 5]),  # zz is out of the vocabulary; eos after the words
    ("a a a a", [4, 1, 1, 1], [1, 1, 1, 1]),  # seq_len words: no eos
    ("a b a b a", [4, 1, 2, 1], [1, 2, 1, 2]),  # cut to seq_len words
    # TF's StringSplitV2 with sep=' ' splits as python's str.split(' '): an empty text is one empty word, and two
    # spaces delimit one, both out of the vocabulary
    ("", [4, 3, 5, 0], [3, 5, IGNORE, IGNORE]),
    ("a  b", [4, 1, 3, 2], [1, 3, 2, 5]),
    (" ", [4, 3, 3, 5], [3, 3, 5, IGNORE]),
])
def test_word_sequences_follow_tff_next_word_rules(sentence, x, y):
    # Prepare: vocabulary a=1, b=2; V=2: pad 0, oov 3, bos 4, eos 5
    words = ("a", "b")
    # Execute
    inputs, targets = so.word_sequences([sentence], words, seq_len=4)
    # Assert: bos in front, eos only when shorter than seq_len, pad targets ignored
    assert inputs.tolist() == [x] and targets.tolist() == [y]
    assert so.SpecialTokens.of(len(words)) == so.SpecialTokens(pad=0, oov=3, bos=4, eos=5)


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


@pytest.mark.parametrize("folder", ["plain", "run#1", "%25", "what?mode=rw"])
def test_read_stackoverflow_reads_a_data_dir_whatever_its_name(tmp_path, folder):
    # Prepare: characters that a file: URI gives a meaning ('#' a fragment, '%' an escape, '?' a query)
    data_dir = write_stackoverflow(tmp_path / folder, [("train", "1", "the code"), ("test", "1", "code")],
                                   ["the", "code"])
    # Execute
    train, test, _ = so.read_stackoverflow(str(data_dir), seq_len=3, vocab_size=2)
    # Assert: the file in that folder was read (the=1 code=2, bos 4, eos 5)
    assert train.x.tolist() == [[4, 1, 2]] and test.x.tolist() == [[4, 2, 5]]


@pytest.mark.parametrize(("proto", "match"), [
    (b"\x0a\x05ab", r"client '20' \(train\): not a tf.train.Example \(truncated protobuf field\)"),
    (example(score=1), r"client '20' \(train\): an example without the bytes feature 'tokens'"),
    (example(tokens=b"caf\xe9 code"), r"client '20' \(train\): 'tokens' is not UTF-8 text \('utf-8' codec"),
], ids=["truncated", "no_tokens", "not_utf8"])
def test_a_malformed_example_names_the_file_and_client(tmp_path, proto, match):
    # Prepare: TFF's file, one of client 20's train examples replaced
    write_stackoverflow(tmp_path, [("train", "10", "the"), ("train", "20", "code")], ["the", "code"])
    db = sqlite3.connect(tmp_path / so.DATABASE)
    db.execute("UPDATE examples SET serialized_example_proto = ? WHERE client_id = '20'", (proto,))
    db.commit()
    db.close()
    # Execute / Assert
    with pytest.raises(ValueError, match=match) as excinfo:
        so.read_stackoverflow(str(tmp_path), vocab_size=2)
    assert str(excinfo.value).startswith(f"{tmp_path / so.DATABASE}: ")


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
    train, test, vocab = read_reddit(str(tmp_path))
    # Assert: one sample per sequence; u2's 11 positions make two sequences
    assert vocab.names == ("<PAD>", "<UNK>", "hi", "there", "<BOS>", "<EOS>")
    assert train.writers.tolist() == [0, 1, 1] and train.writer_names == ("u1", "u2")
    assert train.x[0].tolist() == [4, 2, 3, 5, 0, 0, 0, 0, 0, 0]
    assert train.y[0].tolist() == [2, 3, 5, 0, *[IGNORE] * 6]
    assert train.y[2].tolist() == [0, *[IGNORE] * 9]
    assert test.x.tolist() == [[4, 1, 5, 0, 0, 0, 0, 0, 0, 0]]  # "odd" is <UNK>
    assert np.issubdtype(train.x.dtype, np.integer) and train.y.dtype == np.int64
