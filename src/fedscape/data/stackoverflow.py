"""Torch-free reading of the federated Stack Overflow dataset as TensorFlow Federated publishes it.

TFF's ``tff.simulation.datasets.stackoverflow.load_data`` (tensorflow_federated/python/simulation/datasets/
stackoverflow.py) reads one SQLite file, ``stackoverflow.sqlite`` (published compressed as
``stackoverflow.sqlite.lzma``), through ``SqlClientData`` (sql_client_data.py): a table ``examples`` with the
columns ``split_name`` (``train``, ``heldout`` or ``test``), ``client_id`` and ``serialized_example_proto`` (one
serialized ``tf.train.Example`` per question or answer, with the features ``creation_date``, ``score``, ``tags``,
``title``, ``tokens`` and ``type``), and a table ``client_metadata`` (``client_id``, ``split_name``,
``num_examples``) whose sorted client ids are the clients of a split. The word vocabulary is TFF's word-count file
``stackoverflow.word_count`` (``load_word_counts``: one ``word count`` line per word, the most frequent first),
whose first 10,000 words are the vocabulary of Reddi et al. 2021 (Adaptive Federated Optimization).

The samples are next-word prediction sequences as TFF's baseline builds them (Reddi et al. 2021;
tensorflow_federated/python/simulation/baselines/stackoverflow/word_prediction_preprocessing.py
``build_to_ids_fn`` and ``batch_and_split``): an example's ``tokens`` split on single spaces (an empty text is one
empty word, out of the vocabulary, as TensorFlow splits it), its first ``seq_len`` words kept, each word's id its
vocabulary position + 1 (0 is padding) or the out-of-vocabulary id,
an end-of-sentence id appended when fewer than ``seq_len`` words remain, a beginning-of-sentence id in front, the
whole padded to ``seq_len + 1``; the input is the first ``seq_len`` ids and the targets the last ``seq_len``. A
padded target is -100 here (torch's ignore index: the position does not count), where TFF keeps it as the pad id
0 and masks it in its accuracy.

The accuracy fedscape reports on it is therefore Reddi et al. 2021's ``accuracy_with_oov`` (their code,
google-research/federated optimization/stackoverflow/federated_stackoverflow.py: a
``keras_metrics.MaskedCategoricalAccuracy`` masking the pad id alone): every counted target counts, out-of-vocabulary
and end-of-sentence ones included, and a prediction of either is right where it is the target. Their
``accuracy_no_oov`` and ``accuracy_no_oov_or_eos`` mask those targets too (out of the denominator, not counted wrong);
fedscape reports neither. (Reddit's accuracy is LEAF's, which counts a prediction of <PAD> or <UNK> wrong:
`fedscape.data.leaf.RedditVocab.never_correct`.)

Nothing here needs TensorFlow: the SQLite file is read with the standard library's sqlite3 and the protos with a
small decoder of the protobuf wire format (`decode_example`).
"""

from __future__ import annotations

import lzma
import shutil
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedscape.data.leaf import IGNORE, LeafPart
from fedscape.data.specs import STACKOVERFLOW_DATABASE as DATABASE
from fedscape.data.specs import STACKOVERFLOW_SEQ_LEN as SEQ_LEN
from fedscape.data.specs import STACKOVERFLOW_VOCAB_SIZE as VOCAB_SIZE
from fedscape.data.specs import STACKOVERFLOW_WORD_COUNT_FILE as WORD_COUNT_FILE

SPLITS = ("train", "heldout", "test")
# Tables and columns SqlClientData requires (sql_client_data.py REQUIRED_TABLES, REQUIRED_EXAMPLES_COLUMNS).
REQUIRED_COLUMNS = {"examples": ("split_name", "client_id", "serialized_example_proto"),
                    "client_metadata": ("client_id", "split_name")}
_QUERY_CHUNK = 500  # client ids per SQL query (SQLite's default limit of bound parameters is 999)


@dataclass(frozen=True)
class SpecialTokens:
    """The ids TFF's next-word preprocessing adds around a vocabulary of `V` words (`get_special_tokens`, one
    out-of-vocabulary bucket): padding 0, the words 1..V, out-of-vocabulary V+1, beginning V+2, end V+3."""

    pad: int
    oov: int
    bos: int
    eos: int

    @classmethod
    def of(cls, vocab_size: int) -> SpecialTokens:
        return cls(pad=0, oov=vocab_size + 1, bos=vocab_size + 2, eos=vocab_size + 3)


def token_names(words: tuple[str, ...]) -> tuple[str, ...]:
    """The name of every id of the model's vocabulary (len(words) + 4 ids): what each logit predicts."""
    return ("<PAD>", *words, "<OOV>", "<BOS>", "<EOS>")


# ---------------------------------------------------------------------------------------------------------------
# tf.train.Example, protobuf wire format (example.proto and feature.proto of TensorFlow):
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }       a map entry: { string key = 1; Feature value = 2; }
#   Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one message: varints as int, 64- and 32-bit fields and
    length-delimited ones as bytes."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at:at + size], at + size
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if at > len(data):
            raise ValueError("truncated protobuf field")
        yield number, wire, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(data: bytes) -> list:
    """The values of one Feature: bytes, float or int (int64, two's complement) values."""
    values: list = []
    for kind, wire, payload in _fields(data):
        if wire != 2 or kind not in (1, 2, 3):
            continue
        for number, item_wire, item in _fields(payload):
            if number != 1:
                continue
            if kind == 1:
                values.append(bytes(item))
            elif kind == 2:  # packed (wire 2) or one float per field (wire 5)
                values.extend(struct.unpack(f"<{len(item) // 4}f", item) if item_wire == 2 else
                              struct.unpack("<f", item))
            elif item_wire == 2:  # packed int64s
                at = 0
                while at < len(item):
                    v, at = _varint(item, at)
                    values.append(_int64(v))
            else:
                values.append(_int64(item))
    return values


def decode_example(data: bytes) -> dict[str, list]:
    """The features of a serialized tf.train.Example: name -> its values (bytes, float or int).

    ValueError for bytes that are not a protobuf message.
    """
    features: dict[str, list] = {}
    for number, wire, payload in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(payload):
            if entry_number != 1 or entry_wire != 2:
                continue
            key, value = None, b""
            for n, w, v in _fields(entry):
                if n == 1 and w == 2:
                    key = bytes(v).decode("utf-8")
                elif n == 2 and w == 2:
                    value = v
            if key is None:
                raise ValueError("a feature map entry without a key")
            features[key] = _feature(value)
    return features


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and next-word sequences


def read_vocabulary(path: Path, size: int = VOCAB_SIZE) -> tuple[str, ...]:
    """The first `size` words of TFF's word-count file (its words are sorted by decreasing count).

    ValueError naming the file and line for a line that is not ``word count``, or for a file with fewer words.
    """
    words: list[str] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{number}: expected 'word count', got {line.rstrip()!r}")
            words.append(parts[0])
            if len(words) == size:
                return tuple(words)
    raise ValueError(f"{path}: {len(words)} words, fewer than the vocabulary's {size}")


def word_sequences(sentences: list[str], words: tuple[str, ...], seq_len: int = SEQ_LEN
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets, int32 [N, seq_len] and int64 [N, seq_len], of TFF's next-word preprocessing (module
    docstring); a padded target is IGNORE."""
    special = SpecialTokens.of(len(words))
    ids = {w: i + 1 for i, w in enumerate(words)}
    rows = np.zeros((len(sentences), seq_len + 1), dtype=np.int64)  # 0: padding
    for r, sentence in enumerate(sentences):
        # TFF's build_to_ids_fn splits with tf.strings.split(sep=' '), TensorFlow's StringSplitV2, which splits as
        # python's str.split does (string_split_op.cc SplitV2): every single space splits, and an empty text is one
        # empty word, [''], out of the vocabulary
        kept = sentence.split(" ")[:seq_len]
        tokens = [special.bos, *(ids.get(w, special.oov) for w in kept)]
        if len(kept) < seq_len:
            tokens.append(special.eos)
        rows[r, :len(tokens)] = tokens
    x, y = rows[:, :-1].astype(np.int32), rows[:, 1:].copy()
    y[y == special.pad] = IGNORE
    return x, y


# ---------------------------------------------------------------------------------------------------------------
# The SQLite file


def database_path(data_dir: str | None) -> Path:
    """``data_dir/stackoverflow.sqlite``; FileNotFoundError saying how to get it (and how to decompress TFF's
    ``.lzma`` with `decompress_database` when only that is there)."""
    if data_dir is not None and (Path(data_dir) / DATABASE).is_file():
        return Path(data_dir) / DATABASE
    where = "no data_dir was given" if data_dir is None else f"no {DATABASE} in {data_dir}"
    compressed = data_dir is not None and (Path(data_dir) / f"{DATABASE}.lzma").is_file()
    hint = (f"{data_dir}/{DATABASE}.lzma is there: decompress it once with python -c \"from fedscape.data."
            f"stackoverflow import decompress_database; decompress_database('{data_dir}')\"" if compressed else
            f"download TFF's https://storage.googleapis.com/tff-datasets-public/{DATABASE}.lzma and "
            f"{WORD_COUNT_FILE} (from {WORD_COUNT_FILE}.tar.bz2 of the same place) into it, then decompress the "
            f"database with fedscape.data.stackoverflow.decompress_database(data_dir)")
    raise FileNotFoundError(f"stackoverflow not found ({where}). datasets.stackoverflow.data_dir must hold "
                            f"TensorFlow Federated's {DATABASE} and {WORD_COUNT_FILE}; {hint}. fedscape does not "
                            f"download it.")


def decompress_database(data_dir: str) -> Path:
    """Write ``data_dir/stackoverflow.sqlite`` from TFF's ``stackoverflow.sqlite.lzma`` beside it (streamed; the
    finished file appears at once, by a rename)."""
    source = Path(data_dir) / f"{DATABASE}.lzma"
    target = Path(data_dir) / DATABASE
    partial = target.with_suffix(".sqlite.partial")
    with lzma.open(source) as f_in, partial.open("wb") as f_out:
        shutil.copyfileobj(f_in, f_out, length=1 << 24)
    partial.replace(target)
    return target


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection; ValueError naming what SqlClientData's layout lacks."""
    # a file: URI of the absolute path, percent-encoded: a '#', '?' or '%' in a folder name is part of the path
    connection = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise ValueError(f"{path}: not an SQLite database ({exc})") from None
    for table, columns in REQUIRED_COLUMNS.items():
        have = {r[1] for r in connection.execute(f"PRAGMA table_info({table})")} if table in tables else set()
        missing = [c for c in columns if c not in have]
        if missing:
            connection.close()
            raise ValueError(f"{path}: TFF's SqlClientData layout needs table {table} with columns "
                             f"{', '.join(columns)}; missing {', '.join(missing) if have else 'the table'}")
    return connection


def client_ids(connection: sqlite3.Connection, split: str) -> list[str]:
    """The sorted client ids of `split` (SqlClientData sorts those of client_metadata)."""
    rows = connection.execute("SELECT DISTINCT client_id FROM client_metadata WHERE split_name = ?", (split,))
    return sorted(r[0] for r in rows)


def _split_sentences(connection: sqlite3.Connection, split: str, clients: list[str], path: Path
                     ) -> dict[str, list[str]]:
    """Each client's ``tokens`` in `split`, in the file's row order."""
    sentences: dict[str, list[str]] = {c: [] for c in clients}
    for start in range(0, len(clients), _QUERY_CHUNK):
        chunk = clients[start:start + _QUERY_CHUNK]
        rows = connection.execute(
            f"SELECT client_id, serialized_example_proto FROM examples WHERE split_name = ? AND client_id IN "
            f"({', '.join('?' * len(chunk))}) ORDER BY rowid", (split, *chunk))
        for client, proto in rows:
            try:
                tokens = decode_example(bytes(proto)).get("tokens")
            except ValueError as exc:
                raise ValueError(f"{path}: client {client!r} ({split}): not a tf.train.Example ({exc})") from None
            if not tokens or not isinstance(tokens[0], bytes):
                raise ValueError(f"{path}: client {client!r} ({split}): an example without the bytes feature "
                                 f"'tokens'")
            try:
                sentences[client].append(tokens[0].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}: client {client!r} ({split}): 'tokens' is not UTF-8 text ({exc})") from None
    return sentences


def _part(sentences: dict[str, list[str]], words: tuple[str, ...], seq_len: int) -> LeafPart:
    names = [c for c, s in sentences.items() if s]
    flat = [s for c in names for s in sentences[c]]
    x, y = word_sequences(flat, words, seq_len)
    writers = np.repeat(np.arange(len(names), dtype=np.int64), [len(sentences[c]) for c in names])
    return LeafPart(x, y, writers, tuple(names))


def read_stackoverflow(data_dir: str | None, max_clients: int | None = None, seq_len: int = SEQ_LEN,
                       vocab_size: int = VOCAB_SIZE) -> tuple[LeafPart, LeafPart, tuple[str, ...]]:
    """Train and test parts of Stack Overflow's next-word task, and the names of the token ids.

    The clients are the train split's (sorted; the first `max_clients` of them, None: all): the train part
    holds their ``train`` examples, the test part their ``test`` ones (TFF's test split: the same users' examples
    after 2018-01-01). TFF's ``heldout`` users are not read. A client is one writer (the `natural` partition).
    """
    path = database_path(data_dir)
    vocabulary = read_vocabulary(Path(path).parent / WORD_COUNT_FILE, vocab_size)
    connection = _connect(path)
    try:
        clients = client_ids(connection, "train")
        if not clients:
            raise ValueError(f"{path}: client_metadata names no client of split 'train'")
        clients = clients[:max_clients] if max_clients is not None else clients
        train = _part(_split_sentences(connection, "train", clients, path), vocabulary, seq_len)
        test = _part(_split_sentences(connection, "test", clients, path), vocabulary, seq_len)
    finally:
        connection.close()
    if not len(train.y):
        raise ValueError(f"{path}: the {len(clients)} clients read have no train examples")
    return train, test, token_names(vocabulary)
