"""A synthetic CIFAR-10-shaped data set, written in the files of CIFAR-10's python version: a 32x32 run anywhere.

It is not CIFAR-10. Shapes, dtypes, file layout and sizes you choose are CIFAR's, so every job of a 32x32 config
reads, trains and evaluates the same tensors it would on CIFAR-10 and costs what it would per image; accuracies,
losses and landscapes are those of an easier problem and say nothing about CIFAR. Each class is a blocky random
colour template (8x8 upsampled to 32x32); an image is its class's template at a random contrast plus Gaussian
noise, clipped to uint8 (the generator of the GPU kit, ``synthetic_cifar.py``). The classes separate: the
nearest class mean of the train images classifies the test images far above chance.

The files are those of the official archive (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta``): pickles of protocol 2 written as Python 2 wrote them (every string a Python 2 ``str``, the
arrays rebuilt by numpy 1.x's ``numpy.core.multiarray._reconstruct``), so any reader of the real files
(``fedscape.data.sources``, torchvision) reads them. ``synthetic.json`` beside the folder records the settings.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedscape.core.io import atomic_path, write_json
from fedscape.data.sources import cifar_spec

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

SETTINGS_FILE = "synthetic.json"
# The official batches.meta's label_names: the synthetic classes borrow them (a template per name).
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 32
TEMPLATE_SIZE = 8  # a class template is 8x8 colour blocks of 4x4 pixels: a 4-pixel random crop shifts it by a
# block at most, so the standard augmentation keeps the class visible
MEAN = 128.0  # mid-grey: the images sit in the middle of the uint8 range, rarely clipped
AMPLITUDE = 40.0  # template scale (pixel values): with the contrast and the noise below (the kit's values) the
# images' per-channel std is 0.24 after clipping, close to CIFAR's published 0.25 that 32x32 runs normalise with
CONTRAST = (0.5, 1.5)  # uniform per-image contrast of the template: images of a class differ in more than noise
NOISE_STD = 50.0  # Gaussian pixel noise, above the template's amplitude: no single pixel gives the class away


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing every ``str`` and ``bytes`` as a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING)
    and numpy's array rebuilder under numpy 1.x's name, as the official CIFAR files hold them.

    Python 3 writes ``str`` as unicode and ``bytes`` as a call to ``_codecs.encode`` under protocol 2; the C
    pickler's opcodes cannot be changed, hence the pure-Python one.
    """

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _reconstruct:  # numpy 2 names it numpy._core.multiarray, which numpy 1.x cannot import
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_py2_pickle(path: Path, obj: dict) -> None:
    """`obj` pickled as the official CIFAR archives hold their batches (`Py2Pickler`), written atomically."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def class_templates(seed: int) -> np.ndarray:
    """The float64 class templates [10, 3, 32, 32] (unit scale, before AMPLITUDE and contrast) of ``seed``."""
    low = np.random.default_rng([seed, 0]).normal(0.0, 1.0, (len(CLASS_NAMES), 3, TEMPLATE_SIZE, TEMPLATE_SIZE))
    block = IMAGE_SIZE // TEMPLATE_SIZE
    return np.kron(low, np.ones((1, 1, block, block)))


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels as balanced as n allows (CIFAR's classes are exactly balanced), in random order."""
    return rng.permutation(np.arange(n) % len(CLASS_NAMES))


def _images(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images [n, 3072] (R, G, B planes of 32x32, row-major: CIFAR's rows) of the given labels."""
    n = len(labels)
    contrast = rng.uniform(*CONTRAST, (n, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32) * np.float32(NOISE_STD)
    x = MEAN + AMPLITUDE * templates[labels].astype(np.float32) * contrast + noise
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, 3 * IMAGE_SIZE * IMAGE_SIZE)


def _batch(batch_label: str, images: np.ndarray, labels: np.ndarray, first: int) -> dict:
    """One batch file's dict, with the official keys."""
    return {"batch_label": batch_label, "labels": [int(v) for v in labels], "data": images,
            "filenames": [f"synthetic_{CLASS_NAMES[v]}_s_{first + i:06d}.png" for i, v in enumerate(labels)]}


def _settings(n_train: int, n_test: int, seed: int) -> dict:
    return {"what": "synthetic CIFAR-10-shaped data (fedscape.data.synthetic), not CIFAR-10",
            "n_train": n_train, "n_test": n_test, "seed": seed}


def write_synthetic_cifar10(root: str | Path, n_train: int, n_test: int, seed: int) -> Path:
    """Write ``root/cifar-10-batches-py/`` (``n_train`` images in 5 batches, ``n_test`` test images, the meta file)
    and ``root/synthetic.json``; return ``root``: the config's ``datasets.cifar10.data_dir``.

    The same arguments give bit-equal files. Every file is written atomically, the settings file last.
    """
    spec = cifar_spec("cifar10")
    if min(n_train, n_test) < len(CLASS_NAMES):
        raise ValueError(f"n_train and n_test must be at least {len(CLASS_NAMES)} (every class in both parts), got "
                         f"{n_train} and {n_test}")
    root = Path(root)
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    templates = class_templates(seed)
    # A stream per use: a file's images never depend on how many the other files hold.
    train_labels = _balanced_labels(n_train, np.random.default_rng([seed, 1]))
    first = 0
    for i, (file, labels) in enumerate(zip(spec.train_files, np.array_split(train_labels, len(spec.train_files)),
                                           strict=True)):
        images = _images(templates, labels, np.random.default_rng([seed, 2, i]))
        write_py2_pickle(folder / file, _batch(f"training batch {i + 1} of {len(spec.train_files)}", images, labels,
                                            first))
        first += len(labels)
    test_rng = np.random.default_rng([seed, 3])
    test_labels = _balanced_labels(n_test, test_rng)
    test_images = _images(templates, test_labels, test_rng)
    write_py2_pickle(folder / spec.test_file, _batch("testing batch 1 of 1", test_images, test_labels, 0))
    write_py2_pickle(folder / spec.meta_file, {"num_cases_per_batch": -(-n_train // len(spec.train_files)),
                                            spec.names_key: list(CLASS_NAMES), "num_vis": 3 * IMAGE_SIZE**2})
    write_json(root / SETTINGS_FILE, _settings(n_train, n_test, seed))
    return root


def synthetic_cifar10_written(root: str | Path, n_train: int, n_test: int, seed: int) -> bool:
    """Whether ``root`` holds every file of ``write_synthetic_cifar10(root, n_train, n_test, seed)``."""
    spec = cifar_spec("cifar10")
    root = Path(root)
    try:
        settings = json.loads((root / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return settings == _settings(n_train, n_test, seed) and all((root / spec.folder / f).is_file() for f in spec.files)
