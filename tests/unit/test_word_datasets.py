"""Readers of the word datasets in their publishers' on-disk formats: TFF's Stack Overflow SQLite file of
tf.train.Example protos, and LEAF's Reddit JSON with its vocabulary pickle."""

from __future__ import annotations

import json
import pickle
import sqlite3
import struct

import numpy as np
import pytest

from fedscape.data import stackoverflow as so
from fedscape.data.leaf import IGNORE, read_reddit


# A tiny independent protobuf encoder of tf.train.Example (example.proto / feature.proto field numbers).
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(**features) -> bytes:
    entries = b""
    for key, value in features.items():
        if isinstance(value, bytes):
            feature = _field(1, _field(1, value))  # BytesList
        elif isinstance(value, float):
            feature = _field(2, _field(1, struct.pack("<f", value)))  # FloatList, packed
        else:
            feature = _field(3, _field(1, _varint(value)))  # Int64List, packed
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))
    return _field(1, entries)


def test_decode_example_reads_every_feature_kind():
    proto = _example(tokens=b"hello world", score=-3, weight=0.5, type=b"answer")
    assert so.decode_example(proto) == {"tokens": [b"hello world"], "score": [-3], "weight": [0.5],
                                        "type": [b"answer"]}


def test_decode_example_refuses_truncated_bytes():
    with pytest.raises(ValueError, match="truncated"):
        so.decode_example(_example(tokens=b"hello")[:-2])


def test_word_sequences_follow_tff_next_word_rules():
    # Prepare: vocabulary a=1, b=2; V=2: oov 3, bos 4, eos 5
    x, y = so.word_sequences(["a b zz", "a a a a", ""], ("a", "b"), seq_len=4)
    # Assert: bos in front, eos only when shorter than seq_len, pad targets ignored
    assert x.tolist() == [[4, 1, 2, 3], [4, 1, 1, 1], [4, 5, 0, 0]]
    assert y.tolist() == [[1, 2, 3, 5], [1, 1, 1, 1], [5, IGNORE, IGNORE, IGNORE]]


def _write_stackoverflow(tmp_path, rows):
    db = sqlite3.connect(tmp_path / so.DATABASE)
    db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
               "serialized_example_proto BLOB NOT NULL)")
    db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
               "num_examples INTEGER NOT NULL)")
    for split, client, text in rows:
        db.execute("INSERT INTO examples VALUES (?, ?, ?)", (split, client, _example(tokens=text.encode(), score=1)))
    for split, client in {(s, c) for s, c, _ in rows}:
        n = sum(1 for s, c, _ in rows if (s, c) == (split, client))
        db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (client, split, n))
    db.commit()
    db.close()
    (tmp_path / so.WORD_COUNT_FILE).write_text("the 10\nis 5\ncode 2\n")


def test_read_stackoverflow_gives_each_train_client_its_sequences(tmp_path):
    # Prepare
    _write_stackoverflow(tmp_path, [("train", "20", "the code"), ("train", "10", "is the"), ("train", "20", "is"),
                                    ("test", "10", "code is"), ("heldout", "30", "the")])
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


def _reddit_user(comments):
    x, y = [], []
    for words in comments:
        inputs = ["<BOS>", *words, "<EOS>"]
        targets = [*words, "<EOS>", "<PAD>"]
        counts = [1.0] * len(inputs)
        pad = -len(inputs) % 10
        inputs += ["<PAD>"] * pad
        targets += ["<PAD>"] * pad
        counts += [0.0] * pad
        x.append([inputs[i:i + 10] for i in range(0, len(inputs), 10)])
        y.append({"target_tokens": [targets[i:i + 10] for i in range(0, len(targets), 10)],
                  "count_tokens": [counts[i:i + 10] for i in range(0, len(counts), 10)], "created_utc": 0})
    return {"x": x, "y": y}


def test_read_reddit_reads_leaf_json_and_vocabulary(tmp_path):
    # Prepare: LEAF's layout, data/reddit/{data/train,data/test,vocab}
    data = tmp_path / "reddit" / "data"
    for split, users in {"train": {"u1": [["hi", "there"]], "u2": [["hi"] * 9]}, "test": {"u2": [["odd"]]}}.items():
        (data / split).mkdir(parents=True)
        obj = {"users": list(users), "num_samples": [len(c) for c in users.values()],
               "user_data": {u: _reddit_user(c) for u, c in users.items()}}
        (data / split / f"{split}.json").write_text(json.dumps(obj))
    (tmp_path / "reddit" / "vocab").mkdir()
    vocab = {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "<BOS>": 4, "<EOS>": 5}
    with (tmp_path / "reddit" / "vocab" / "reddit_vocab.pck").open("wb") as f:
        pickle.dump({"vocab": vocab, "size": 6, "unk_symbol": 1, "pad_symbol": 0}, f)
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
