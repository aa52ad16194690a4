"""Write small word data sets exactly as their publishers' files lay them out.

Stack Overflow as TensorFlow Federated publishes it (``stackoverflow.sqlite``: tables ``examples`` of serialized
``tf.train.Example`` protos and ``client_metadata``; the word-count file ``stackoverflow.word_count``), the protos
written by a tiny encoder of their own, independent of `fedscape.data.stackoverflow`'s decoder. Reddit as LEAF's
data/reddit scripts write it (``data/{train,val,test}/*.json``, every user in every split; ``vocab/reddit_vocab.pck``).
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import struct
from pathlib import Path

from fedscape.data import stackoverflow as so


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


def example(**features) -> bytes:
    """A serialized tf.train.Example of bytes, float and int features."""
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


def write_stackoverflow(directory: Path, rows: list[tuple[str, str, str]], words: list[str]) -> Path:
    """TFF's SQLite file with one example per (split, client id, text) row, and a word-count file listing `words`
    most frequent first; returns `directory` (a data_dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(directory / so.DATABASE)
    db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
               "serialized_example_proto BLOB NOT NULL)")
    db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
               "num_examples INTEGER NOT NULL)")
    for split, client, text in rows:
        db.execute("INSERT INTO examples VALUES (?, ?, ?)", (split, client, example(tokens=text.encode(), score=1)))
    for split, client in sorted({(s, c) for s, c, _ in rows}):
        n = sum(1 for s, c, _ in rows if (s, c) == (split, client))
        db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (client, split, n))
    db.commit()
    db.close()
    counts = range(len(words) + 1, 1, -1)
    (directory / so.WORD_COUNT_FILE).write_text("".join(f"{w} {c}\n" for w, c in zip(words, counts, strict=True)))
    return directory


def reddit_user(comments: list[list[str]], seq_len: int = 10) -> dict:
    """One user's LEAF entry: per comment, its input sequences (<BOS>, words, <EOS>, <PAD> to a multiple of
    `seq_len`), target_tokens (each input shifted by one) and count_tokens (1 for the comment's positions)."""
    x, y = [], []
    for words in comments:
        inputs = ["<BOS>", *words, "<EOS>"]
        targets = [*words, "<EOS>", "<PAD>"]
        counts = [1.0] * len(inputs)
        pad = -len(inputs) % seq_len
        inputs += ["<PAD>"] * pad
        targets += ["<PAD>"] * pad
        counts += [0.0] * pad
        x.append([inputs[i:i + seq_len] for i in range(0, len(inputs), seq_len)])
        y.append({"target_tokens": [targets[i:i + seq_len] for i in range(0, len(targets), seq_len)],
                  "count_tokens": [counts[i:i + seq_len] for i in range(0, len(counts), seq_len)], "created_utc": 0})
    return {"x": x, "y": y}


def write_reddit(root: Path, users: dict[str, dict[str, list[list[str]]]], vocab: dict[str, int],
                 size: int, per_split: bool = False) -> Path:
    """LEAF's layout below `root` (reddit/data/{train,val,test}/reddit_0_<split>.json, reddit/vocab/reddit_vocab.pck)
    for users = {split: {user: comments}} (splits among train, val, test); returns `root` (a data_dir).

    As LEAF's data/reddit/source/preprocess.py writes it: every split's file lists every user (in order of first
    appearance in `users`) with ``num_samples`` its total comment count over the splits (``create_leaf_json`` copies
    the original file's), and an empty x and y where the user has no comment in that split. `per_split`: each split
    lists its own users with comments there and their counts instead (LEAF's utils/split_data.py layout, no val/)."""
    data = root / "reddit" / "data"
    everyone = list(dict.fromkeys(u for by_user in users.values() for u in by_user))
    total = {u: sum(len(by_user.get(u, [])) for by_user in users.values()) for u in everyone}
    for split in ("train", "test") if per_split else ("train", "val", "test"):
        by_user = users.get(split, {})
        listed = [u for u in by_user if by_user[u]] if per_split else everyone
        obj = {"users": listed, "num_samples": [len(by_user[u]) if per_split else total[u] for u in listed],
               "user_data": {u: reddit_user(by_user.get(u, [])) for u in listed}}
        (data / split).mkdir(parents=True, exist_ok=True)
        (data / split / f"reddit_0_{split}.json").write_text(json.dumps(obj))
    (root / "reddit" / "vocab").mkdir(parents=True, exist_ok=True)
    with (root / "reddit" / "vocab" / "reddit_vocab.pck").open("wb") as f:
        pickle.dump({"vocab": vocab, "size": size, "unk_symbol": 1, "pad_symbol": 0}, f)
    return root
