"""Write small FEMNIST and Shakespeare data sets exactly as LEAF's preprocessing writes them.

LEAF (TalwalkarLab/leaf) writes, after its sample-wise split (data/utils/split_data.py),
``data/<name>/data/train/<stem>_train_<frac>.json`` and ``.../test/<stem>_test_<frac>.json`` with
``json.dump({"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}})``
(Shakespeare adds ``hierarchies``). A user with fewer than 2 samples is dropped from ``users`` and
``num_samples`` but keeps an empty entry in ``user_data``. FEMNIST pixels are ``uint8 / 255`` floats
(data_to_json.py); Shakespeare's x are 80-character strings and y the next character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


@dataclass
class LeafFixture:
    """What was written: per split, (user, x, y) in file order, and the folder to give as data_dir."""

    data_dir: Path
    train: list[tuple[str, list, list]] = field(default_factory=list)
    test: list[tuple[str, list, list]] = field(default_factory=list)

    def samples(self, split: str) -> tuple[list, list, list[str]]:
        """x, y and the user of every sample of `split`, in reading order."""
        xs, ys, users = [], [], []
        for user, x, y in getattr(self, split):
            xs += x
            ys += y
            users += [user] * len(y)
        return xs, ys, users


def _write(path: Path, users: list[tuple[str, list, list]], dropped: tuple[str, ...] = (),
           hierarchies: bool = False) -> None:
    obj = {"users": [u for u, _, _ in users]}
    if hierarchies:
        obj["hierarchies"] = [u.split("_")[0] for u, _, _ in users]
    obj["num_samples"] = [len(y) for _, _, y in users]
    obj["user_data"] = {u: {"x": x, "y": y} for u, x, y in users}
    obj["user_data"].update({u: {"x": [], "y": []} for u in dropped})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(obj, f)


def _split(users: dict[str, tuple[list, list]], rng: np.random.Generator, frac: float = 0.75):
    """LEAF's sample-wise split: max(1, int(frac * n)) training samples of each user (n >= 2)."""
    train, test = [], []
    for user, (x, y) in users.items():
        n = len(y)
        chosen = set(rng.choice(n, max(1, int(frac * n)), replace=False).tolist())
        train.append((user, [x[i] for i in range(n) if i in chosen], [y[i] for i in range(n) if i in chosen]))
        test.append((user, [x[i] for i in range(n) if i not in chosen], [y[i] for i in range(n) if i not in chosen]))
    return train, test


def write_femnist(root: Path, sizes: tuple[int, ...] = (6, 4, 9), files: int = 2, seed: int = 0,
                  layout: str = "flat") -> LeafFixture:
    """FEMNIST writers f0000_00, f0001_01, ... with `sizes` samples, over `files` JSON files per split.

    ``layout``: "flat" writes ``root/train`` and ``root/test``; "leaf" writes them under
    ``root/femnist/data`` as LEAF's repository does. Labels cycle through 0..61 from the writer's index.
    """
    rng = np.random.default_rng(seed)
    users = {}
    for w, n in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(n, 784))
        users[f"f{w:04d}_{w:02d}"] = ([(p / 255).tolist() for p in pixels], [int((w * 7 + i) % 62) for i in range(n)])
    return _write_splits(root, "femnist", users, files, rng, layout, dropped=("f9999_99",), hierarchies=False)


def write_shakespeare(root: Path, sizes: tuple[int, ...] = (5, 3, 7), files: int = 1, seed: int = 0,
                      layout: str = "flat") -> LeafFixture:
    """Shakespeare roles with `sizes` samples: windows of 80 characters of a random text and the next one."""
    rng = np.random.default_rng(seed)
    users = {}
    for r, n in enumerate(sizes):
        text = "".join(VOCAB[i] for i in rng.integers(0, len(VOCAB), size=n + 80))
        users[f"THE_PLAY_{r}_ROLE{r}"] = ([text[i : i + 80] for i in range(n)], [text[i + 80] for i in range(n)])
    return _write_splits(root, "shakespeare", users, files, rng, layout, dropped=("THE_PLAY_9_NOBODY",),
                         hierarchies=True)


def _write_splits(root: Path, name: str, users: dict, files: int, rng: np.random.Generator, layout: str,
                  dropped: tuple[str, ...], hierarchies: bool) -> LeafFixture:
    base = Path(root) / name / "data" if layout == "leaf" else Path(root)
    train, test = _split(users, rng)
    fixture = LeafFixture(Path(root))
    chunks = np.array_split(np.arange(len(users)), files)
    for k, chunk in enumerate(chunks):
        tr = [train[i] for i in chunk]
        te = [test[i] for i in chunk]
        _write(base / "train" / f"all_data_{k}_niid_05_keep_0_train_75.json", tr, dropped, hierarchies)
        _write(base / "test" / f"all_data_{k}_niid_05_keep_0_test_75.json", te, dropped, hierarchies)
        fixture.train += tr
        fixture.test += te
    return fixture


def write_shakespeare_raw(root: Path, roles: dict[str, str], layout: str = "leaf") -> Path:
    """LEAF's raw Shakespeare texts by speaking role, as its preprocess_shakespeare.py writes them: one
    ``<PLAY>_<ROLE>.txt`` per role in ``raw_data/by_play_and_character/``, each line of the role's speech followed
    by a newline.

    ``layout``: "leaf" writes below ``root/raw_data`` (LEAF's ``data/shakespeare/data``, the folder to give as
    data_dir); "repo" below ``root/shakespeare/data/raw_data`` (LEAF's repository); "flat" in ``root`` itself.
    Returns the folder of the role files.
    """
    base = {"leaf": Path(root) / "raw_data", "repo": Path(root) / "shakespeare" / "data" / "raw_data",
            "flat": Path(root)}[layout]
    folder = base / "by_play_and_character"
    folder.mkdir(parents=True, exist_ok=True)
    for role, text in roles.items():
        (folder / f"{role}.txt").write_text(text, encoding="utf-8")
    return folder
