"""Torch-free reading of LEAF's federated datasets (Caldas et al. 2018, LEAF: A Benchmark for Federated Settings).

LEAF's preprocessing writes ``train/*.json`` and ``test/*.json``, each file an object
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}`` (plus
``hierarchies`` for some). ``users`` is the authority: LEAF's sample-wise split leaves empty entries in
``user_data`` for the users it drops. FEMNIST's ``x`` are 784 floats in [0, 1] (a 28x28 grey image,
row-major) and ``y`` class ids 0..61; Shakespeare's ``x`` are 80-character strings and ``y`` the next
character, both encoded with LEAF's vocabulary (``SHAKESPEARE_VOCAB``).

Reddit (LEAF's data/reddit: Caldas et al. 2018, December 2017 comments of pushshift.io, tokenised) keeps the same
top-level keys; its source/preprocess.py ``create_seqs`` writes per comment: in ``x`` the comment's input sequences
(lists of REDDIT_SEQ_LEN tokens: ``<BOS>``, the words, ``<EOS>``, ``<PAD>`` to a multiple of the length), in ``y`` a
dict with ``target_tokens`` (the words, ``<EOS>``, ``<PAD>``: each input shifted by one) and ``count_tokens`` (1 for
the comment's positions, 0 for padding), beside the comment's metadata. Its splits are not made by LEAF's
utils/split_data.py (which writes each split's own ``users`` and ``num_samples``, as FEMNIST's and Shakespeare's are):
preprocess.py's ``create_leaf_json`` copies the original file's ``users`` and ``num_samples`` (each user's total
comment count) into train/, val/ and test/ alike and gives each user its first 60 % / next 20 % / last 20 % of
comments by time (``int(0.6 * n)``, ``int(0.8 * n)``), so every user is in every split and a user of one comment has
none in train/. Reddit's ``num_samples`` is therefore not read; its train writers are the users with train comments
(`read_reddit`). Its vocabulary is the pickle ``vocab/reddit_vocab.pck`` of LEAF's build_vocab.py: ``{"vocab":
{word: id}, "size": 10000, "unk_symbol": 1, "pad_symbol": 0}``. Each sequence is one sample here, with every
position's target.

Shakespeare can also be cut here from LEAF's raw texts (`read_shakespeare_raw`): LEAF's
``preprocess_shakespeare.py`` (run by its ``data_to_json.sh``, the first step of ``preprocess.sh``) splits
Project Gutenberg's complete works into ``raw_data/by_play_and_character/<PLAY>_<ROLE>.txt``, one file of lines
per speaking role, before any sampling or fixed-length cutting.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fedscape.data.specs import (
    FEMNIST_CLASSES,
    IGNORE_INDEX,
    LEAF_SPLITS,
    NO_DOWNLOAD,
    RAW_ROLES_DIR,
    REDDIT_SEQ_LEN,
    REDDIT_VOCAB_FILE,
    REDDIT_VOCAB_HOW,
    SHAKESPEARE_RAW_TEST_FRACTION,
    SHAKESPEARE_RAW_VOCAB,
    SHAKESPEARE_SEQ_LEN,
    SHAKESPEARE_VOCAB,
    leaf_folder,
    leaf_places,
    raw_roles_folder,
    raw_roles_places,
    reddit_vocab_file,
    reddit_vocab_places,
)

FEMNIST_PIXELS = 28 * 28

IGNORE = IGNORE_INDEX  # a target position that does not count (padding)


def _token_table(vocabulary: str) -> np.ndarray:
    """Byte value -> token id (-1: not in the vocabulary); the vocabularies are ASCII."""
    table = np.full(256, -1, dtype=np.int16)
    table[np.frombuffer(vocabulary.encode("ascii"), dtype=np.uint8)] = np.arange(len(vocabulary))
    return table


_TOKEN_OF_BYTE = _token_table(SHAKESPEARE_VOCAB)
_RAW_TOKEN_OF_BYTE = _token_table(SHAKESPEARE_RAW_VOCAB)


@dataclass(frozen=True)
class LeafPart:
    """One LEAF split (train or test): samples in file order, the writer of each, the writers' names."""

    x: np.ndarray  # FEMNIST: float32 [N, 1, 28, 28]; Shakespeare: uint8 token ids [N, 80]; words: int32 [N, T]
    y: np.ndarray  # int64 [N]; word datasets: [N, T], every position's next token (IGNORE: does not count)
    writers: np.ndarray  # int64 [N], index into `writer_names`
    writer_names: tuple[str, ...]
    # The rows that evaluations score, sorted (None: every row): raw Shakespeare's train windows at the evaluation
    # stride (`read_shakespeare_raw`), of which training reads every window
    eval_rows: np.ndarray | None = None


def encode_text(text: str, where: str = "text") -> np.ndarray:
    """Token ids (uint8) of the characters of `text` in LEAF's Shakespeare vocabulary.

    LEAF's `word_to_indices` gives -1 to an unknown character, which no embedding can look up; here
    it is a ValueError naming `where` and the characters.
    """
    raw = text.encode("utf-8")
    ids = _TOKEN_OF_BYTE[np.frombuffer(raw, dtype=np.uint8)]
    if len(raw) != len(text) or (ids < 0).any():
        unknown = sorted({c for c in text if c not in SHAKESPEARE_VOCAB})
        raise ValueError(f"{where}: characters outside LEAF's Shakespeare vocabulary: "
                         f"{', '.join(repr(c) for c in unknown)}")
    return ids.astype(np.uint8)


def decode_text(ids: np.ndarray, vocabulary: str = SHAKESPEARE_VOCAB) -> str:
    """The characters of token ids (inverse of `encode_text`; `encode_raw_text` with SHAKESPEARE_RAW_VOCAB)."""
    return "".join(vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))


def encode_raw_text(text: str) -> np.ndarray:
    """Token ids (uint8) of `text` in the raw vocabulary (SHAKESPEARE_RAW_VOCAB), characters outside it dropped.

    As the layer-wise authors' tokenizer does (epfml/llm-baselines, src/data/shakespeare.py `char_tknzr`): the
    raw texts are the text as given, whose rare non-ASCII characters have no token.
    """
    ids = _RAW_TOKEN_OF_BYTE[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
    return ids[ids >= 0].astype(np.uint8)  # (a multi-byte character's bytes are all >= 128: none is kept)


def leaf_directory(name: str, data_dir: str | None) -> Path:
    """The folder holding LEAF's ``train/`` and ``test/`` JSON files of dataset `name`.

    Looks in ``data_dir`` itself, then in ``data_dir/<name>/data`` (`fedscape.data.specs.leaf_places`: LEAF's own
    layout, so that one data_dir can hold several datasets). FileNotFoundError naming the folders and the layout
    otherwise.
    """
    found = leaf_folder(name, data_dir)
    if found is not None:
        return found
    looked = ("no data_dir was given" if data_dir is None else
              "looked in " + " and ".join(str(where) for where in leaf_places(name, data_dir)))
    how = NO_DOWNLOAD.get(name, f"LEAF hosts {name}'s preprocessed files (its data/{name}/README.md)")
    splits = " and ".join(f"{split}/*.json" for split in LEAF_SPLITS)
    raise FileNotFoundError(
        f"{name} not found ({looked}). Expected LEAF's preprocessed files: a folder with {splits}, each file "
        f"holding {{\"users\": [...], \"num_samples\": [...], \"user_data\": "
        f"{{user: {{\"x\": [...], \"y\": [...]}}}}}}. {how} (run with -t sample, e.g. "
        f"./preprocess.sh -s niid --sf 0.05 -k 0 -t sample); set datasets.{name}.data_dir to LEAF's "
        f"data/{name}/data folder (or to a folder holding {name}/data). fedscape does not download it."
    )


def _read_json(path: Path) -> dict:
    with path.open("rb") as f:
        try:
            obj = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # json.load decodes bytes as UTF-8 (or -16/-32)
            raise ValueError(f"{path}: not a LEAF JSON file ({exc})") from None
    missing = [k for k in ("users", "num_samples", "user_data") if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(f"{path}: expected LEAF's keys users, num_samples and user_data; missing {', '.join(missing)}")
    wrong = [f"{k} is a {type(obj[k]).__name__}" for k, kind in (("users", list), ("num_samples", list),
                                                                 ("user_data", dict)) if not isinstance(obj[k], kind)]
    if wrong:
        raise ValueError(f"{path}: LEAF's users and num_samples are lists and user_data a mapping; {', '.join(wrong)}")
    if len(obj["users"]) != len(obj["num_samples"]):
        raise ValueError(f"{path}: {len(obj['users'])} users but {len(obj['num_samples'])} num_samples")
    return obj


def _femnist_user(data: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not data["x"]:
        return np.zeros((0, 1, 28, 28), dtype=np.float32), np.zeros(0, dtype=np.int64)
    try:
        x = np.asarray(data["x"], dtype=np.float32).reshape(len(data["x"]), -1)
        y = np.asarray(data["y"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: x must be a list of {FEMNIST_PIXELS}-number lists and y of integers") from None
    if x.shape[1:] != (FEMNIST_PIXELS,):
        raise ValueError(f"{where}: x must hold images of {FEMNIST_PIXELS} pixels (28x28), got {x.shape[1]}")
    if y.size and not (y.min() >= 0 and y.max() < len(FEMNIST_CLASSES)):
        raise ValueError(f"{where}: y outside the classes 0..{len(FEMNIST_CLASSES) - 1}")
    return x.reshape(-1, 1, 28, 28), y


def _shakespeare_user(data: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = data["x"], data["y"]
    bad = next((i for i, s in enumerate(xs) if not isinstance(s, str) or len(s) != SHAKESPEARE_SEQ_LEN), None)
    if bad is not None:
        raise ValueError(f"{where}: x[{bad}] must be a string of {SHAKESPEARE_SEQ_LEN} characters, got "
                         f"{xs[bad]!r}")
    bad = next((i for i, s in enumerate(ys) if not isinstance(s, str) or len(s) != 1), None)
    if bad is not None:
        raise ValueError(f"{where}: y[{bad}] must be one character, got {ys[bad]!r}")
    x = encode_text("".join(xs), f"{where} x").reshape(len(xs), SHAKESPEARE_SEQ_LEN)
    y = encode_text("".join(ys), f"{where} y").astype(np.int64)
    return x, y


_DECODERS = {"femnist": _femnist_user, "shakespeare": _shakespeare_user}


def read_leaf_part(name: str, directory: Path, decode=None, max_writers: int | None = None,
                   only: tuple[str, ...] | None = None, split_counts: bool = True) -> LeafPart:
    """Every sample of ``directory/*.json`` (sorted file names, then each file's `users` order).

    A writer found in several files keeps one index. The writers are numbered in order of appearance. `decode`
    (data, where) -> (x, y) reads one user's data (None: the dataset's own decoder). `max_writers`: the samples of
    the first that many writers only (the files after the last one are not opened); `only`: of these writers only.
    `split_counts`: the files' ``num_samples`` count each user's entries of this split, as LEAF's split_data.py
    writes them (FEMNIST, Shakespeare), and must match; False: they do not (Reddit's preprocess.py copies each
    user's total over its splits into every split), so only ``x`` and ``y`` must match, and a user without samples
    here is not a writer of this part (it takes no index and no place of `max_writers`).
    """
    decode = decode or _DECODERS[name]
    names: dict[str, int] = {}
    xs, ys, ws = [], [], []
    wanted = None if only is None else set(only)
    for path in sorted(directory.glob("*.json")):
        if max_writers is not None and len(names) >= max_writers:
            break
        obj = _read_json(path)
        for user, count in zip(obj["users"], obj["num_samples"], strict=True):
            if wanted is not None and str(user) not in wanted:
                continue
            if max_writers is not None and len(names) >= max_writers and str(user) not in names:
                continue
            where = f"{path} user {user!r}"
            data = obj["user_data"].get(user)
            if not isinstance(data, dict) or "x" not in data or "y" not in data:
                raise ValueError(f"{where}: user_data has no x and y for this user")
            if split_counts and not len(data["x"]) == len(data["y"]) == count:
                raise ValueError(f"{where}: num_samples says {count}, x has {len(data['x'])} and y "
                                 f"{len(data['y'])} entries")
            if not split_counts and len(data["x"]) != len(data["y"]):
                raise ValueError(f"{where}: x has {len(data['x'])} and y {len(data['y'])} entries; they must be "
                                 f"equal")
            x, y = decode(data, where)
            if not split_counts and not len(y):
                continue
            index = names.setdefault(str(user), len(names))
            xs.append(x)
            ys.append(y)
            ws.append(np.full(len(y), index, dtype=np.int64))
    if not xs:
        raise ValueError(f"{directory}: the JSON files name no users" + ("" if split_counts else " with samples") +
                         ("" if only is None else " among the train part's writers"))
    return LeafPart(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), tuple(names))


def read_leaf(name: str, data_dir: str | None) -> tuple[LeafPart, LeafPart]:
    """LEAF's train and test parts of dataset `name` (``femnist`` or ``shakespeare``) from ``data_dir``."""
    directory = leaf_directory(name, data_dir)
    return read_leaf_part(name, directory / "train"), read_leaf_part(name, directory / "test")


@dataclass(frozen=True)
class RedditVocab:
    """LEAF's Reddit vocabulary pickle: word -> id, the id count, the unknown and padding ids."""

    ids: dict[str, int]
    size: int
    unk: int
    pad: int

    @property
    def names(self) -> tuple[str, ...]:
        """The name of every id 0..size-1: its words joined by '|' (LEAF's build_vocab.py numbers the counted tokens
        from 1, most frequent first, so the first counted token gets id 1 (shared with <UNK>) unless it is <PAD>, which
        keeps 0 and leaves its own place's id unused; ids are read as LEAF's model sees them), '' if unused."""
        names: list[list[str]] = [[] for _ in range(self.size)]
        for word, i in self.ids.items():
            names[i].append(word)
        return tuple("|".join(n) for n in names)

    @property
    def never_correct(self) -> tuple[int, ...]:
        """The ids whose prediction Reddit's accuracy never credits (`fedscape.models.loss.correct_count`): <PAD> and
        <UNK>, as LEAF's models/reddit/stacked_lstm.py scores a model ("this top 1 accuracy considers every pred. of
        unknown and padding as wrong": its ``correct_unk`` and ``correct_pad`` are taken off the right predictions)
        over every counted position (its denominator sums ``input_lengths``, the inputs that are not padding:
        <BOS>, the words and <EOS>, the positions ``count_tokens`` counts). So the <PAD> target after <EOS> and an
        <UNK> target count and are never hit; the loss counts them as LEAF's does. LEAF's model compares with 0 for
        padding, the ``pad_symbol`` its build_vocab.py always writes; the pickle's own ids are taken here."""
        return self.pad, self.unk


class _PlainUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numbers only: a vocabulary pickle needs no class."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: LEAF's vocabulary pickle holds "
                                     "a dict of words and numbers only (the file is corrupt or has been tampered with)")


def read_reddit_vocab(path: Path) -> RedditVocab:
    """LEAF's ``reddit_vocab.pck``; ValueError naming the file and what it lacks."""
    with path.open("rb") as f:
        try:
            obj = _PlainUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"{path}: not LEAF's Reddit vocabulary pickle ({exc})") from None
    keys = ("vocab", "size", "unk_symbol", "pad_symbol")
    if not isinstance(obj, dict) or any(k not in obj for k in keys) or not isinstance(obj["vocab"], dict):
        raise ValueError(f"{path}: LEAF's Reddit vocabulary is a dict with keys {', '.join(keys)} (vocab: word -> id)")
    not_ids = [k for k in keys[1:] if not isinstance(obj[k], int)]
    if not_ids:
        raise ValueError(f"{path}: size, unk_symbol and pad_symbol are integers in LEAF's vocabulary (its "
                         f"build_vocab.py), got {', '.join(f'{k} {obj[k]!r}' for k in not_ids)}")
    size = obj["size"]
    bad = [w for w, i in obj["vocab"].items() if not isinstance(i, int) or not 0 <= i < size]
    if bad or not 0 <= obj["unk_symbol"] < size or not 0 <= obj["pad_symbol"] < size:
        raise ValueError(f"{path}: ids outside 0..{size - 1} (size {size}), e.g. for {bad[:3] or 'unk/pad'}")
    return RedditVocab(dict(obj["vocab"]), size, int(obj["unk_symbol"]), int(obj["pad_symbol"]))


def _reddit_user(data: dict, where: str, vocab: RedditVocab) -> tuple[np.ndarray, np.ndarray]:
    """One user's sequences: input ids int32 [n, 10], target ids int64 [n, 10], IGNORE where count_tokens is 0
    (LEAF's stacked_lstm.py weights its sequence loss with count_tokens). A word outside the vocabulary is <UNK>
    (LEAF's defaultdict)."""
    xs, ts, counts = [], [], []
    for c, (comment, label) in enumerate(zip(data["x"], data["y"], strict=True)):
        if not isinstance(label, dict) or "target_tokens" not in label or "count_tokens" not in label:
            raise ValueError(f"{where}: y[{c}] must be a dict with target_tokens and count_tokens (LEAF's "
                             f"preprocess.py create_seqs)")
        if not (len(comment) == len(label["target_tokens"]) == len(label["count_tokens"])):
            raise ValueError(f"{where}: comment {c} has {len(comment)} input sequences, "
                             f"{len(label['target_tokens'])} target_tokens and {len(label['count_tokens'])} "
                             f"count_tokens; they must be equal")
        xs.extend(comment)
        ts.extend(label["target_tokens"])
        counts.extend(label["count_tokens"])
    bad = next((i for i, s in enumerate(xs + ts + counts) if not isinstance(s, list) or len(s) != REDDIT_SEQ_LEN),
               None)
    if bad is not None:
        raise ValueError(f"{where}: every sequence of x, target_tokens and count_tokens must be a list of "
                         f"{REDDIT_SEQ_LEN} entries (LEAF's SEQ_LEN)")
    lookup = vocab.ids.get
    x = np.array([[lookup(w, vocab.unk) for w in s] for s in xs], dtype=np.int32).reshape(-1, REDDIT_SEQ_LEN)
    y = np.array([[lookup(w, vocab.unk) for w in s] for s in ts], dtype=np.int64).reshape(-1, REDDIT_SEQ_LEN)
    y[np.asarray(counts, dtype=np.float64).reshape(-1, REDDIT_SEQ_LEN) == 0] = IGNORE
    return x, y


def reddit_vocab_path(directory: Path) -> Path:
    """LEAF's ``reddit_vocab.pck`` near the folder of the JSON splits: in its ``vocab/``, its parent's ``vocab/``
    (LEAF's data/reddit/ layout) or itself; FileNotFoundError naming them."""
    found = reddit_vocab_file(directory)
    if found is not None:
        return found
    raise FileNotFoundError(f"reddit: LEAF's vocabulary {REDDIT_VOCAB_FILE} not found (looked in "
                            f"{', '.join(str(p) for p in reddit_vocab_places(directory))}); {REDDIT_VOCAB_HOW}")


def read_reddit(data_dir: str | None, max_clients: int | None = None) -> tuple[LeafPart, LeafPart, RedditVocab]:
    """LEAF's Reddit train and test parts (every sequence a sample, its user the writer) and its vocabulary.

    The writers are the users with comments in the train files: LEAF's preprocess.py lists every user in every split
    with ``num_samples`` its total comment count (see the module's docstring), so that count is not checked, and a
    user whose comments all fell to val/ and test/ (one comment: ``int(0.6 * 1) == 0`` in train) has no client; its
    test comments are dropped too, so that the test part is always the test comments of the train writers (files
    that list each split's own users and counts read the same way). val/ is not read. `max_clients`: the first that
    many train writers (None: all), and the test samples of those users."""
    directory = leaf_directory("reddit", data_dir)
    vocab = read_reddit_vocab(reddit_vocab_path(directory))
    decode = partial(_reddit_user, vocab=vocab)
    train = read_leaf_part("reddit", directory / "train", decode, max_writers=max_clients, split_counts=False)
    test = read_leaf_part("reddit", directory / "test", decode, only=train.writer_names, split_counts=False)
    return train, test, vocab


def raw_roles_directory(data_dir: str | None) -> Path:
    """The folder of LEAF's raw Shakespeare texts by role (``by_play_and_character/``) below `data_dir`.

    Looks in ``data_dir`` itself, ``data_dir/raw_data`` (LEAF's ``data/shakespeare/data``) and
    ``data_dir/shakespeare/data/raw_data`` (LEAF's repository: `fedscape.data.specs.raw_roles_places`);
    FileNotFoundError naming them and how to make it.
    """
    found = raw_roles_folder(data_dir)
    if found is not None:
        return found
    looked = ("no data_dir was given" if data_dir is None else
              "looked for *.txt in " + ", ".join(str(p / RAW_ROLES_DIR) for p in raw_roles_places(data_dir)))
    raise FileNotFoundError(
        f"shakespeare's raw texts not found ({looked}). datasets.shakespeare.source: raw reads LEAF's raw texts by "
        f"speaking role, {RAW_ROLES_DIR}/<PLAY>_<ROLE>.txt, which LEAF's data/shakespeare/preprocess/"
        f"preprocess_shakespeare.py writes into data/shakespeare/data/raw_data/ from Project Gutenberg's complete "
        f"works (its data_to_json.sh, the first step of preprocess.sh, runs it); set datasets.shakespeare.data_dir "
        f"to LEAF's data/shakespeare/data folder, or use source: preprocessed for LEAF's train/ and test/ JSON. "
        f"fedscape does not download it."
    )


def _windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `seq_len`-token window of `ids` that has a next token, and that token (the target)."""
    if len(ids) <= seq_len:
        return np.zeros((0, seq_len), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    x = np.lib.stride_tricks.sliding_window_view(ids[:-1], seq_len)
    return x, ids[seq_len:].astype(np.int64)


def read_shakespeare_raw(data_dir: str | None, seq_len: int, test_fraction: float = SHAKESPEARE_RAW_TEST_FRACTION,
                         eval_stride: int = 1) -> tuple[LeafPart, LeafPart]:
    """Next-character samples of `seq_len` characters cut from LEAF's raw texts by speaking role.

    Each role (a file of ``by_play_and_character/``, in sorted name order) is one writer. Its text as given is
    encoded in the raw vocabulary (`encode_raw_text`) and cut once: the first ``1 - test_fraction`` of its
    characters are its train part, the rest its test part (the layer-wise authors cut their text at 80 %; here per
    role, so that every writer keeps the end of its own text for testing). Every window of `seq_len` characters of
    a part with a character after it is a sample, that character its target (LEAF slides its 80-character window
    the same way; the authors' model predicts the next character at every position, fedscape's after the last).
    A role too short for a window in a part has no sample there. Writers are numbered in file order, per part.

    Evaluations score per role the windows starting at 0, `eval_stride`, 2 `eval_stride`, ... of a part
    (`fedscape.data.specs.resolved_eval_stride`; 1: every window): the test part, which is only evaluated, holds
    those alone; the train part holds every window, which training draws from, and names those as its
    ``eval_rows`` (None at stride 1).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"datasets.shakespeare.seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(eval_stride, bool) or not isinstance(eval_stride, int) or eval_stride < 1:
        raise ValueError(f"datasets.shakespeare.eval_stride must be a positive integer, got {eval_stride!r}")
    directory = raw_roles_directory(data_dir)
    parts: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "test": []}
    for path in sorted(directory.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        cut = int((1 - test_fraction) * len(text))
        parts["train"].append((path.stem, encode_raw_text(text[:cut])))
        parts["test"].append((path.stem, encode_raw_text(text[cut:])))
    out = []
    for split, roles in parts.items():
        sizes = [max(len(ids) - seq_len, 0) for _, ids in roles]
        if not sum(sizes):
            raise ValueError(f"{directory}: no role's {split} text (its {'first' if split == 'train' else 'last'} "
                             f"{1 - test_fraction if split == 'train' else test_fraction:.0%}) is longer than "
                             f"seq_len={seq_len} characters; use a smaller datasets.shakespeare.seq_len")
        step = eval_stride if split == "test" else 1  # the windows kept of each role: the starts 0, step, ... below n
        kept = [-(-n // step) for n in sizes]  # ceil(n / step)
        x = np.empty((sum(kept), seq_len), dtype=np.uint8)  # filled role by role: no second copy of the windows
        y = np.empty(sum(kept), dtype=np.int64)
        writers = np.empty(sum(kept), dtype=np.int64)
        names: list[str] = []
        evaluated: list[np.ndarray] = []
        at = 0
        for (role, ids), n, k in zip(roles, sizes, kept, strict=True):
            if not n:
                continue
            windows, targets = _windows(ids, seq_len)
            x[at:at + k], y[at:at + k] = windows[::step], targets[::step]
            writers[at:at + k] = len(names)
            if split == "train" and eval_stride > 1:
                evaluated.append(at + np.arange(0, n, eval_stride))
            names.append(role)
            at += k
        eval_rows = None if split == "test" or eval_stride == 1 else np.concatenate(evaluated)
        out.append(LeafPart(x, y, writers, tuple(names), eval_rows))
    return out[0], out[1]
