"""Write small fake CIFAR-10/100 data sets in the exact on-disk format of the python-version archives.

The official files were pickled by Python 2 with protocol 2: dicts whose keys and strings are Python 2
``str`` (which ``pickle.load(..., encoding="latin1")`` decodes to ``str``, ``encoding="bytes"`` to
``bytes``) and numpy arrays whose raw buffer is also a Python 2 ``str``. Python 3 pickles ``bytes``
under protocol 2 as a call to ``_codecs.encode`` instead, so ``fedscape.data.synthetic.Py2Pickler``
writes ``bytes`` with the Python 2 string opcodes to reproduce the originals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedscape.data.synthetic import write_py2_pickle

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
IMAGE_BYTES = 3 * 32 * 32


def _batch(n: int, first: int, num_classes: int, batch_label: str, rng: np.random.Generator) -> dict:
    """Random uint8 images [n, 3072] (R, G, B planes of 32x32, row-major) and labels ``(first + i) % K``."""
    return {
        b"batch_label": batch_label.encode(),
        b"labels": [(first + i) % num_classes for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, IMAGE_BYTES), dtype=np.uint8),
        b"filenames": [f"fake_image_{first + i:06d}.png".encode() for i in range(n)],
    }


def write_fake_cifar10(root: Path, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches, test batch, meta); return ``root`` (data_dir)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        batch = _batch(n_train_per_batch, i * n_train_per_batch, 10, f"training batch {i + 1} of 5", rng)
        write_py2_pickle(folder / f"data_batch_{i + 1}", batch)
    write_py2_pickle(folder / "test_batch", _batch(n_test, 0, 10, "testing batch 1 of 1", rng))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"num_cases_per_batch": n_train_per_batch, b"label_names": names, b"num_vis": IMAGE_BYTES}
    write_py2_pickle(folder / "batches.meta", meta)
    return Path(root)


def write_fake_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` (train, test, meta); return ``root`` (the data_dir)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR100_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for file, n, batch_label in (("train", n_train, "training"), ("test", n_test, "testing")):
        batch = _batch(n, 0, 100, f"{batch_label} batch 1 of 1", rng)
        fine = batch.pop(b"labels")
        batch[b"fine_labels"] = fine
        batch[b"coarse_labels"] = [label // 5 for label in fine]
        write_py2_pickle(folder / file, batch)
    meta = {
        b"fine_label_names": [f"fine_class_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_class_{i:02d}".encode() for i in range(20)],
    }
    write_py2_pickle(folder / "meta", meta)
    return Path(root)
