"""Datasets (CIFAR-10, CIFAR-100, scikit-learn digits) as in-memory tensors, plus batch augmentation.

Every loader returns a :class:`Dataset` with three disjoint parts: ``train`` (the pool the clients'
partitions index into), ``test`` and an optional held-out ``proxy`` part (e.g. for pretraining).
Splits are stratified and seeded: the same arguments give bit-identical tensors.

CIFAR is read from the python-version archives on disk with a restricted unpickler that only
rebuilds numpy arrays; nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedscape.utils import unknown_name_error

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

DATASET_NAMES = ("cifar10", "cifar100", "digits")
AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4


@dataclass(frozen=True)
class Dataset:
    """Normalised image tensors ``[N, C, H, W]`` (float32) and int64 labels for train/test/proxy.

    ``train_index``/``test_index``/``proxy_index`` give, for provenance, each row's index in the
    source data (digits: ``load_digits()`` rows; CIFAR: rows of the official train resp. test set).
    They are ``None`` for datasets built in memory.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_proxy: torch.Tensor
    y_proxy: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None
    proxy_index: np.ndarray | None = None

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor moved to ``device`` (once, up front)."""
        tensors = ("x_train", "y_train", "x_test", "y_test", "x_proxy", "y_proxy")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
    proxy_fraction: float = 0.0,
    download: bool = False,
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASET_NAMES``).

    ``test_fraction`` sets the seeded stratified test split of ``digits``; CIFAR keeps its official
    train/test split and ignores it. ``proxy_fraction`` carves a seeded stratified proxy part out of
    the train part (disjoint from train and test). ``data_dir`` and ``download`` apply to CIFAR only.
    """
    if not 0.0 <= proxy_fraction < 1.0:
        raise ValueError(f"proxy_fraction must be in [0, 1), got {proxy_fraction}")
    if name == "digits":
        return _load_digits(seed=seed, test_fraction=test_fraction, proxy_fraction=proxy_fraction)
    if name in _CIFAR:
        return _load_cifar(
            name, data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download
        )
    raise unknown_name_error("dataset", name, DATASET_NAMES)


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held-out) with ``round(fraction * N)`` held-out rows, stratified.

    Each class gives ``floor(fraction * count)`` rows; the remaining rows go to the classes with the
    largest fractional remainders (ties broken at random). Both index arrays are sorted.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    remainder = round(fraction * len(labels)) - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[:remainder]] += 1
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    held_index = np.sort(np.concatenate([np.empty(0, dtype=np.int64), *held]))
    return np.setdiff1d(np.arange(len(labels)), held_index), held_index


def _split_proxy(
    train_index: np.ndarray, labels: np.ndarray, proxy_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified proxy part out of ``train_index`` (indices into ``labels``)."""
    keep, held = stratified_split(labels[train_index], proxy_fraction, rng)
    return train_index[keep], train_index[held]


def _load_digits(*, seed: int = 0, test_fraction: float = 0.25, proxy_fraction: float = 0.0) -> Dataset:
    """8x8 handwritten digits (UCI Optical Recognition of Handwritten Digits, via scikit-learn)."""
    from sklearn.datasets import load_digits as sklearn_load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = sklearn_load_digits()
    images = np.asarray(digits.images, dtype=np.float64)[:, None]  # [N, 1, 8, 8], values 0..16
    labels = np.asarray(digits.target, dtype=np.int64)

    rng = np.random.default_rng(seed)
    train_index, test_index = stratified_split(labels, test_fraction, rng)
    train_index, proxy_index = _split_proxy(train_index, labels, proxy_fraction, rng)

    mean, std = images[train_index].mean(), images[train_index].std()

    def part(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = ((images[index] - mean) / std).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(labels[index])

    return Dataset(
        "digits",
        *part(train_index),
        *part(test_index),
        *part(proxy_index),
        num_classes=10,
        class_names=tuple(str(c) for c in range(10)),
        train_index=train_index,
        test_index=test_index,
        proxy_index=proxy_index,
    )


# ---------------------------------------------------------------------------------------------
# CIFAR


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    torchvision_class: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


_CIFAR = {
    "cifar10": _CifarSpec(
        title="CIFAR-10",
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        title="CIFAR-100",
        torchvision_class="CIFAR100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays, dicts, lists and strings, and refuses every other global.

    The CIFAR batch files are pickles; a plain ``pickle.load`` would run whatever a tampered file asks.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: CIFAR data files may only contain numpy "
                "arrays, lists, dicts and strings (the file is corrupt or has been tampered with)"
            ) from None


def _load_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        try:
            obj = ArrayOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from None
    if not isinstance(obj, dict):
        raise TypeError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _check_cifar_files(spec: _CifarSpec, data_dir: str | None) -> Path:
    """The CIFAR folder under ``data_dir``; one FileNotFoundError naming every expected file if incomplete."""
    where = Path(data_dir) / spec.folder if data_dir is not None else Path("<data_dir>", spec.folder)
    missing = spec.files if data_dir is None else tuple(f for f in spec.files if not (where / f).is_file())
    if not missing:
        return where
    reason = "no data_dir was given" if data_dir is None else f"missing {', '.join(missing)} in {where}"
    raise FileNotFoundError(
        f"{spec.title} not found ({reason}). Expected the directory {where} with the files "
        f"{', '.join(spec.files)}. To get them, either set `download: true` (download=True) with a data_dir "
        f"on a machine with internet access, or copy the extracted python-version archive ({spec.archive}) "
        f"there so that {where} holds these files."
    )


def _read_cifar_part(
    spec: _CifarSpec, directory: Path, files: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 ``[N, 3, 32, 32]``) and labels (int64) of the given batch files, concatenated."""
    images, labels = [], []
    for file in files:
        batch = _load_pickle(directory / file)
        data = np.asarray(batch["data"])
        y = np.asarray(batch[spec.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(y) != len(data):
            raise ValueError(
                f"{directory / file}: expected uint8 data of shape [n, 3072] and n labels, got "
                f"{data.dtype} {list(data.shape)} and {len(y)} labels"
            )
        if y.size and not (0 <= y.min() and y.max() < spec.num_classes):
            raise ValueError(f"{directory / file}: labels outside 0..{spec.num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _load_cifar(
    name: str, *, data_dir: str | None, seed: int = 0, proxy_fraction: float = 0.0, download: bool = False
) -> Dataset:
    """CIFAR-10/100 images (Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images)."""
    spec = _CIFAR[name]
    if download:
        if data_dir is None:
            raise ValueError(f"download=True needs a data_dir to download {spec.title} into")
        from torchvision import datasets

        # One call fetches and md5-checks the whole archive (both splits); torchvision then unpickles
        # only files whose md5 matches the official ones. We read them below with our own unpickler.
        getattr(datasets, spec.torchvision_class)(root=data_dir, train=True, download=True)
    directory = _check_cifar_files(spec, data_dir)

    class_names = tuple(str(n) for n in _load_pickle(directory / spec.meta_file)[spec.names_key])
    if len(class_names) != spec.num_classes:
        raise ValueError(f"{directory / spec.meta_file}: expected {spec.num_classes} class names")
    train_images, train_labels = _read_cifar_part(spec, directory, spec.train_files)
    test_images, test_labels = _read_cifar_part(spec, directory, (spec.test_file,))

    rng = np.random.default_rng(seed)
    train_index, proxy_index = _split_proxy(np.arange(len(train_labels)), train_labels, proxy_fraction, rng)
    test_index = np.arange(len(test_labels))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images[index]).to(torch.float32).div_(255.0).sub_(mean).div_(std)
        return x, torch.from_numpy(labels[index])

    return Dataset(
        name,
        *part(train_images, train_labels, train_index),
        *part(test_images, test_labels, test_index),
        *part(train_images, train_labels, proxy_index),
        num_classes=spec.num_classes,
        class_names=class_names,
        train_index=train_index,
        test_index=test_index,
        proxy_index=proxy_index,
    )


# ---------------------------------------------------------------------------------------------
# Augmentation


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch ``[N, C, H, W]`` on its device; ``kind`` is one of ``AUGMENTATIONS``.

    ``crop_flip`` (the CIFAR standard): pad by 4 pixels with zeros (on normalised data: the dataset
    mean), crop a random HxW window and flip it horizontally with probability 1/2, per image. The
    random numbers are drawn from ``generator`` on the CPU, so a seeded CPU generator gives the same
    result for CPU and CUDA batches.
    """
    if kind == "none":
        return x
    if kind != "crop_flip":
        raise unknown_name_error("augmentation", kind, AUGMENTATIONS)
    n, c, h, w = x.shape
    pad = CROP_PADDING
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = dy + torch.arange(h)  # [n, h] rows of the padded image
    cols = dx + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    device = x.device
    return padded[
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(c, device=device).view(1, c, 1, 1),
        rows.to(device).view(n, 1, h, 1),
        cols.to(device).view(n, 1, 1, w),
    ]
