"""Torch-free reading of the datasets' published files into numpy arrays, and their seeded splits.

Every source has three disjoint parts: ``train`` (the pool the clients' partitions index into),
``test`` and an optional held-out ``proxy`` part (e.g. for pretraining). Splits are stratified and
seeded: the same arguments give the same indices. The partition stage needs only the training labels,
so it reads them here without torch; `fedscape.data.datasets` turns a source into normalised tensors.

CIFAR is read from the python-version archives on disk with a restricted unpickler that only
rebuilds numpy arrays; nothing is downloaded unless ``download=True``. FEMNIST and Shakespeare are
read from LEAF's JSON files (`fedscape.data.leaf`) and keep LEAF's train/test split; every sample
of theirs names its writer (``writer_ids``), which a natural partition gives one client each. Shakespeare
with ``source="raw"`` is cut from LEAF's raw texts by role instead (`fedscape.data.leaf.read_shakespeare_raw`).
ImageNet-200 is read from ImageNet's class folders (`fedscape.data.imagenet200`): its images are decoded
only for the rows asked for, so its labels (what partitions need) cost a listing of the folders. The word data sets,
Stack Overflow (TFF's SQLite file, `fedscape.data.stackoverflow`) and Reddit (LEAF's JSON, `fedscape.data.leaf`),
label each sequence with its every position's next word ([N, T], -100 where nothing counts): their proxy part is
drawn at random, since there is no class to stratify by. On the data sets with writers, ``proxy_split="writers"``
holds out whole writers instead (`_split_proxy_writers`), so that the proxy shares no writer with the clients' pool.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedscape.core.names import unknown_name_error
from fedscape.data import imagenet200
from fedscape.data.leaf import LeafPart, read_leaf, read_reddit, read_shakespeare_raw
from fedscape.data.specs import (
    CIFAR_LAYOUTS,
    DATA_DIR_HOLDS,
    DATASET_BASELINES,
    DATASET_NAMES,
    DATASETS,
    FEMNIST_CLASSES,
    MANY_CLIENT_DATASETS,
    NO_DOWNLOAD,
    PROXY_SPLITS,
    RAW_SOURCE_DATASETS,
    RGB_DATASETS,
    SHAKESPEARE_RAW_VOCAB,
    SHAKESPEARE_SEQ_LEN,
    SHAKESPEARE_VOCAB,
    SOURCES,
    STORED_IMAGE_AUGMENTATIONS,
    CifarLayout,
    held_out_count,
    resolved_eval_stride,
)
from fedscape.data.stackoverflow import read_stackoverflow

DIGITS_CSV = "datasets/data/digits.csv.gz"  # inside the scikit-learn package

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


@dataclass(frozen=True)
class Source:
    """A dataset's raw images and labels with the seeded indices of its train, test and proxy parts.

    ``train_images``/``train_labels`` hold the rows the train and proxy indices point into (digits: all
    of ``load_digits()``; CIFAR: the official training set; LEAF: its train files); ``test_images``/
    ``test_labels`` the rows of the test indices (digits: the same arrays; CIFAR: the official test
    set; LEAF: its test files). Text datasets hold token ids (uint8 ``[N, T]``; words: int32) as their images and
    their ``vocabulary`` (the character of each id; words: a tuple of the word of each id); image datasets have
    ``vocabulary`` None. The word data sets' labels are every position's next word, ``[N, T]``. ImageNet-200's
    images are `fedscape.data.imagenet200.ImageFolderImages`, decoded when indexed (``images[index]``).
    ``train_writers`` (the data sets with writers: LEAF's and Stack Overflow's; else None) is the writer of every
    ``train_images`` row, an index into ``writer_names``. ``eval_rows``: the ``train_images`` rows that evaluations of
    the train part score, sorted (None: every row; Shakespeare from its raw texts: the windows at its evaluation
    stride, `fedscape.data.leaf.read_shakespeare_raw`). ``never_correct``: the classes whose prediction its accuracy
    never credits (Reddit's <PAD> and <UNK>: `fedscape.data.leaf.RedditVocab.never_correct`; none elsewhere).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    proxy_index: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    train_writers: np.ndarray | None = None
    writer_names: tuple[str, ...] | None = None
    vocabulary: str | tuple[str, ...] | None = None
    eval_rows: np.ndarray | None = None
    never_correct: tuple[int, ...] = ()

    @property
    def labels(self) -> np.ndarray:
        """The labels of the train part: what client partitions split ([N, T] for the word data sets)."""
        return self.train_labels[self.train_index]

    @property
    def writer_ids(self) -> np.ndarray | None:
        """The writer (int64 index into ``writer_names``) of each sample of ``labels``; None without writers.

        After a proxy split a writer may have no sample left in the train part.
        """
        return None if self.train_writers is None else self.train_writers[self.train_index]

    @property
    def inputs(self) -> str:
        """'tokens' for text (int token ids), 'image' otherwise."""
        return "image" if self.vocabulary is None else "tokens"


def load_source(name: str, *, data_dir: str | None = None, seed: int = 0, test_fraction: float = 0.25,
                proxy_fraction: float = 0.0, download: bool = False, source: str = "preprocessed",
                seq_len: int | None = None, augment: str = "none", max_clients: int | None = None,
                proxy_split: str = "samples", eval_stride: int = 1) -> Source:
    """Read dataset ``name`` (one of ``DATASET_NAMES``) and split it.

    ``test_fraction`` sets the seeded stratified test split of ``digits``; CIFAR keeps its official
    train/test split and ignores it. ``proxy_fraction`` carves a seeded stratified proxy part out of
    the train part (disjoint from train and test in samples, but of every writer, so that on a data set with writers
    it shares the clients' writers); ``proxy_split="writers"`` (data sets with writers only) holds out whole writers
    instead (`_split_proxy_writers`). ``data_dir`` applies to CIFAR, LEAF's datasets and ImageNet-200,
    ``download`` to CIFAR only (LEAF's are built by LEAF's own scripts: ValueError). ``source="raw"``
    (shakespeare only) cuts sequences of ``seq_len`` characters (None: 80) from LEAF's raw texts. ``augment``: the
    training augmentation; one that crops a larger stored image (``resized_crop``) has the training images read at
    the dataset's ``train_stored_size`` (ImageNet-200: 256x256). ``max_clients`` (Stack Overflow and Reddit only):
    the first that many clients of their files (None: all; a writers' proxy split reads its writers after them).
    ``eval_stride`` (``source="raw"`` only): the stride of the windows evaluations score (1: every window; its test
    part holds those alone, `fedscape.data.leaf.read_shakespeare_raw`).
    """
    if not 0.0 <= proxy_fraction < 1.0:
        raise ValueError(f"proxy_fraction must be in [0, 1), got {proxy_fraction}")
    if source not in SOURCES:
        raise ValueError(f"datasets.{name}.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if proxy_split not in PROXY_SPLITS:
        raise ValueError(f"datasets.{name}.proxy_split must be one of {', '.join(PROXY_SPLITS)}, got {proxy_split!r}")
    if proxy_split == PROXY_SPLITS[1] and name in DATASETS and not DATASETS[name].writers:
        raise ValueError(f"datasets.{name}.proxy_split: writers holds out whole writers, but the samples of {name} "
                         f"name no writer; use proxy_split: samples")
    if source == "raw" and name not in RAW_SOURCE_DATASETS:
        raise ValueError(f"datasets.{name}.source: raw texts exist for {', '.join(RAW_SOURCE_DATASETS)} only; use "
                         "source: preprocessed")
    if max_clients is not None and name not in MANY_CLIENT_DATASETS:
        raise ValueError(f"datasets.{name}.max_clients: only {', '.join(MANY_CLIENT_DATASETS)} read a number of "
                         f"clients; leave it null")
    if eval_stride != 1 and source != "raw":
        raise ValueError(f"datasets.{name}.eval_stride: only a text cut from its raw texts (source: raw) has "
                         f"overlapping windows to evaluate at a stride; leave it null")
    if source == "raw":
        return _leaf(name, data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download,
                     seq_len=seq_len or SHAKESPEARE_SEQ_LEN, proxy_split=proxy_split, eval_stride=eval_stride)
    if name in MANY_CLIENT_DATASETS:
        return _words(name, data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download,
                      max_clients=max_clients, proxy_split=proxy_split)
    if name == "digits":
        return _digits(seed=seed, test_fraction=test_fraction, proxy_fraction=proxy_fraction)
    if name in _CIFAR:
        return _cifar(name, data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download)
    if name == "imagenet200":
        stored = DATASETS[name].train_stored_size if augment in STORED_IMAGE_AUGMENTATIONS else None
        return _imagenet200(data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download,
                            train_size=stored or imagenet200.IMAGE_SIZE)
    if name in NO_DOWNLOAD:
        return _leaf(name, data_dir=data_dir, seed=seed, proxy_fraction=proxy_fraction, download=download,
                     proxy_split=proxy_split)
    raise unknown_name_error("dataset", name, DATASET_NAMES)


def source_from_options(name: str, options: dict) -> Source:
    """Dataset `name` read with a config's `datasets.<name>` settings (defaults filled by the schema)."""
    return load_source(name, data_dir=options.get("data_dir"), seed=options.get("split_seed", 0),
                       test_fraction=options.get("test_fraction", 0.25),
                       proxy_fraction=options.get("proxy_fraction", 0.0), download=options.get("download", False),
                       source=options.get("source", DATASET_BASELINES["source"]), seq_len=options.get("seq_len"),
                       augment=options.get("augment", "none"), max_clients=options.get("max_clients"),
                       proxy_split=options.get("proxy_split", DATASET_BASELINES["proxy_split"]),
                       eval_stride=resolved_eval_stride(name, options))


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
    remainder = held_out_count(len(labels), fraction) - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[:remainder]] += 1
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    held_index = np.sort(np.concatenate([np.empty(0, dtype=np.int64), *held]))
    return np.setdiff1d(np.arange(len(labels)), held_index), held_index


def _split_proxy(
    train_index: np.ndarray, labels: np.ndarray, proxy_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a proxy part out of ``train_index`` (indices into ``labels``): stratified by class, or for sequence
    labels ([N, T]: no class per sample) ``round(proxy_fraction * N)`` rows drawn at random."""
    if labels.ndim == 1:
        keep, held = stratified_split(labels[train_index], proxy_fraction, rng)
    else:
        held = np.sort(rng.permutation(len(train_index))[:held_out_count(len(train_index), proxy_fraction)])
        keep = np.setdiff1d(np.arange(len(train_index)), held)
    return train_index[keep], train_index[held]


def _split_proxy_writers(train: LeafPart, test: LeafPart, proxy_fraction: float, rng: np.random.Generator,
                         pool_writers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hold out whole writers as the proxy part (`proxy_split: writers`): (train, proxy, test) row indices, sorted.

    The writers are those with training rows, in the reader's order (their index in ``train.writer_names``: LEAF's
    file order, Stack Overflow's sorted ids). ``round(proxy_fraction x writers)`` of them, the first of their
    permutation by ``rng`` (the split's seeded generator), give the proxy all their training rows, so that the proxy
    and the clients' pool share no writer and no row; the proxy then holds about proxy_fraction of the rows, not
    stratified by class. The proxy writers' test rows leave the test part, so that no writer the pretraining saw is
    evaluated on either.

    ``pool_writers`` (a ``max_clients`` read, for which the reader read `proxy_writers_after` writers more): the first
    ``pool_writers`` writers are the pool and every writer after them the proxy, so that the clients' pool keeps the
    writers ``max_clients`` names (holding writers out of these would leave fewer than configured) and the test part
    their test rows alone. Where the files hold no more than ``pool_writers`` writers, max_clients reads them all,
    and the writers are drawn as without it.
    """
    present = np.unique(train.writers)
    if pool_writers is not None and len(present) > pool_writers:
        held = present[pool_writers:]
    else:
        held = rng.permutation(present)[:held_out_count(len(present), proxy_fraction)]
    in_proxy = np.isin(train.writers, held)
    held_names = {train.writer_names[w] for w in held}
    test_kept = np.array([name not in held_names for name in test.writer_names], dtype=bool)
    return np.flatnonzero(~in_proxy), np.flatnonzero(in_proxy), np.flatnonzero(test_kept[test.writers])


def proxy_writers_after(max_clients: int, proxy_fraction: float) -> int:
    """The writers a ``max_clients`` read of a writers' proxy split reads after the first max_clients, its proxy:
    proxy_fraction of the writers read, as a split of that many writers without max_clients holds out. Planning reads
    it too (`fedscape.plan.init.proxy_split_problem`: a split of no writer; `fedscape.plan.resources.data_bytes`: the
    writers a job decodes), so that it counts them as the reader reads them."""
    return round(proxy_fraction * max_clients / (1 - proxy_fraction))


def _split_writer_data(train: LeafPart, test: LeafPart, proxy_fraction: float, proxy_split: str,
                       rng: np.random.Generator, pool_writers: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, proxy, test) row indices of a data set with writers: its samples' proxy split (`_split_proxy`, the
    whole test part) or, for ``proxy_split="writers"``, its writers' (`_split_proxy_writers`)."""
    if proxy_split == PROXY_SPLITS[1]:
        return _split_proxy_writers(train, test, proxy_fraction, rng, pool_writers)
    train_index, proxy_index = _split_proxy(np.arange(len(train.y)), train.y, proxy_fraction, rng)
    return train_index, proxy_index, np.arange(len(test.y))


def _digits(*, seed: int = 0, test_fraction: float = 0.25, proxy_fraction: float = 0.0) -> Source:
    """8x8 handwritten digits (UCI Optical Recognition of Handwritten Digits, as scikit-learn bundles them)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = read_digits()
    rng = np.random.default_rng(seed)
    train_index, test_index = stratified_split(labels, test_fraction, rng)
    train_index, proxy_index = _split_proxy(train_index, labels, proxy_fraction, rng)
    return Source("digits", images, labels, images, labels, train_index, test_index, proxy_index, 10,
                  tuple(str(c) for c in range(10)))


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images [1797, 1, 8, 8] (float64, values 0..16) and labels of scikit-learn's bundled digits.

    Read from the CSV scikit-learn ships, exactly as `sklearn.datasets.load_digits` parses it, without
    importing scikit-learn (about 1.5 s per job otherwise).
    """
    data = np.loadtxt(digits_file(), delimiter=",")
    return data[:, :-1].reshape(-1, 1, 8, 8), data[:, -1].astype(np.int64)


def digits_file() -> Path:
    """The CSV of scikit-learn's bundled digits (inside the installed package)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the digits dataset ships with scikit-learn, which is not installed")
    return Path(spec.submodule_search_locations[0]) / DIGITS_CSV


# ---------------------------------------------------------------------------------------------
# CIFAR


@dataclass(frozen=True)
class _CifarSpec(CifarLayout):
    """A CIFAR's files (its `fedscape.data.specs.CIFAR_LAYOUTS` entry) and how to read them."""

    title: str
    torchvision_class: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR = {
    "cifar10": _CifarSpec(
        **asdict(CIFAR_LAYOUTS["cifar10"]),
        title="CIFAR-10",
        torchvision_class="CIFAR10",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        **asdict(CIFAR_LAYOUTS["cifar100"]),
        title="CIFAR-100",
        torchvision_class="CIFAR100",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}

def normalisation(name: str, options: dict | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) an RGB dataset is normalised with (ValueError for other datasets): CIFAR's published
    statistics, and ImageNet's for ImageNet-200 (the FedAlign code's), each replaced by its `datasets.<name>`
    settings' `channel_mean` / `channel_std` where set (`options`: a paper's own)."""
    if name not in RGB_DATASETS:
        raise ValueError(f"{name} is not an RGB dataset; normalisation statistics exist for "
                         f"{', '.join(RGB_DATASETS)}")
    mean, std = (imagenet200.MEAN, imagenet200.STD) if name == "imagenet200" else (_CIFAR[name].mean,
                                                                                    _CIFAR[name].std)
    options = options or {}
    return (tuple(float(v) for v in options.get("channel_mean") or mean),
            tuple(float(v) for v in options.get("channel_std") or std))


def cifar_spec(name: str) -> _CifarSpec:
    """The on-disk layout of CIFAR-10/100's python version (folder, files, keys): what a writer of such files needs."""
    if name not in _CIFAR:
        raise unknown_name_error("CIFAR dataset", name, tuple(_CIFAR))
    return _CIFAR[name]


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


_CIFAR_FILE_HINT = "copy it again from the extracted python-version archive"


def _load_pickle(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The pickled dict of a CIFAR file, with `keys` in it; an error naming the file if it is damaged (empty,
    truncated, tampered with) or lacks one of the keys (naming those it has)."""
    with path.open("rb") as f:
        try:
            obj = ArrayOnlyUnpickler(f, encoding="latin1").load()
        except EOFError:  # empty, or cut before its end (pickle's "Ran out of input" names no file)
            raise pickle.UnpicklingError(
                f"{path}: the file ends before its pickle does ({path.stat().st_size} bytes: empty or truncated); "
                f"{_CIFAR_FILE_HINT}") from None
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}; {_CIFAR_FILE_HINT}") from None
    if not isinstance(obj, dict):
        raise TypeError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        found = ", ".join(repr(k) for k in obj) or "none"
        raise ValueError(f"{path}: no {', '.join(repr(k) for k in missing)} in this CIFAR file (its keys: {found}); "
                         f"{_CIFAR_FILE_HINT}")
    return obj


def cifar_files(name: str, data_dir: str | None) -> list[Path]:
    """Every file CIFAR-10/100 `name` is read from below `data_dir` (FileNotFoundError as its reader raises it)."""
    spec = cifar_spec(name)
    directory = _check_cifar_files(spec, data_dir)
    return [directory / f for f in spec.files]


def _check_cifar_files(spec: _CifarSpec, data_dir: str | None) -> Path:
    """The CIFAR folder under ``data_dir``; one FileNotFoundError naming every expected file if incomplete."""
    where, missing = spec.where(data_dir), spec.missing(data_dir)
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
        batch = _load_pickle(directory / file, ("data", spec.label_key))
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


def _cifar(name: str, *, data_dir: str | None, seed: int = 0, proxy_fraction: float = 0.0,
           download: bool = False) -> Source:
    """CIFAR-10/100 images (Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images)."""
    spec = _CIFAR[name]
    if download:
        if data_dir is None:
            raise ValueError(f"download=True needs a data_dir to download {spec.title} into")
        from torchvision import datasets  # lazy: torchvision (and torch) only to download, never to read

        # One call fetches and md5-checks the whole archive (both splits); torchvision then unpickles
        # only files whose md5 matches the official ones. We read them below with our own unpickler.
        getattr(datasets, spec.torchvision_class)(root=data_dir, train=True, download=True)
    directory = _check_cifar_files(spec, data_dir)

    meta = _load_pickle(directory / spec.meta_file, (spec.names_key,))
    class_names = tuple(str(n) for n in meta[spec.names_key])
    if len(class_names) != spec.num_classes:
        raise ValueError(f"{directory / spec.meta_file}: expected {spec.num_classes} class names")
    train_images, train_labels = _read_cifar_part(spec, directory, spec.train_files)
    test_images, test_labels = _read_cifar_part(spec, directory, (spec.test_file,))
    rng = np.random.default_rng(seed)
    train_index, proxy_index = _split_proxy(np.arange(len(train_labels)), train_labels, proxy_fraction, rng)
    return Source(name, train_images, train_labels, test_images, test_labels, train_index,
                  np.arange(len(test_labels)), proxy_index, spec.num_classes, class_names)


# ---------------------------------------------------------------------------------------------
# LEAF (FEMNIST, Shakespeare)


def _leaf(name: str, *, data_dir: str | None, seed: int = 0, proxy_fraction: float = 0.0,
          download: bool = False, seq_len: int | None = None, proxy_split: str = "samples",
          eval_stride: int = 1) -> Source:
    """FEMNIST or Shakespeare as LEAF writes them (Caldas et al. 2018, LEAF: A Benchmark for Federated Settings);
    with `seq_len`, Shakespeare cut from LEAF's raw texts instead (`read_shakespeare_raw`, its evaluations at
    `eval_stride`)."""
    if download:
        raise ValueError(f"datasets.{name}.download: fedscape cannot download {name}: {NO_DOWNLOAD[name]}, "
                         f"which fetches the raw data and writes train/ and test/ JSON files; run it on a machine "
                         f"with internet access, copy that folder here, set data_dir to it and download: false")
    train, test = (read_leaf(name, data_dir) if seq_len is None
                   else read_shakespeare_raw(data_dir, seq_len, eval_stride=eval_stride))
    rng = np.random.default_rng(seed)
    train_index, proxy_index, test_index = _split_writer_data(train, test, proxy_fraction, proxy_split, rng)
    vocabulary = None if name != "shakespeare" else SHAKESPEARE_VOCAB if seq_len is None else SHAKESPEARE_RAW_VOCAB
    classes = vocabulary or FEMNIST_CLASSES
    return Source(name, train.x, train.y, test.x, test.y, train_index, test_index, proxy_index,
                  len(classes), tuple(classes), train_writers=train.writers, writer_names=train.writer_names,
                  vocabulary=vocabulary, eval_rows=train.eval_rows)


# ---------------------------------------------------------------------------------------------
# Word data sets (Stack Overflow, Reddit)


def _words(name: str, *, data_dir: str | None, seed: int = 0, proxy_fraction: float = 0.0, download: bool = False,
           max_clients: int | None = None, proxy_split: str = "samples") -> Source:
    """Stack Overflow as TFF publishes it or Reddit as LEAF writes it: every sequence a sample, its user the writer,
    every position's next word its label, the ids' names its vocabulary (`DatasetInfo` of `name` fixes their
    number: ValueError naming it for files with another). A writers' proxy split with `max_clients` reads the
    writers of its proxy after the first max_clients (`_split_proxy_writers`)."""
    if download:
        raise ValueError(f"datasets.{name}.download: fedscape cannot download {name} ({NO_DOWNLOAD[name]}); set "
                         f"download: false and data_dir to the folder holding {DATA_DIR_HOLDS[name]}")
    read = max_clients
    if max_clients is not None and proxy_split == PROXY_SPLITS[1]:
        read = max_clients + proxy_writers_after(max_clients, proxy_fraction)
    never_correct: tuple[int, ...] = ()  # Stack Overflow's accuracy counts every counted target (its module's docs)
    if name == "stackoverflow":
        train, test, names = read_stackoverflow(data_dir, read)
    else:
        train, test, vocab = read_reddit(data_dir, read)
        names, never_correct = vocab.names, vocab.never_correct
    info = DATASETS[name]
    if len(names) != info.num_classes:
        raise ValueError(f"datasets.{name}: the files of {data_dir} give a vocabulary of {len(names)} ids, but "
                         f"{name} has {info.num_classes} ({info.description})")
    _check_words(name, train, info.image_size)
    rng = np.random.default_rng(seed)
    train_index, proxy_index, test_index = _split_writer_data(train, test, proxy_fraction, proxy_split, rng,
                                                              max_clients)
    return Source(name, train.x, train.y, test.x, test.y, train_index, test_index, proxy_index,
                  len(names), names, train_writers=train.writers, writer_names=train.writer_names,
                  vocabulary=names, never_correct=never_correct)


def _check_words(name: str, part: LeafPart, seq_len: int) -> None:
    if part.x.ndim != 2 or part.x.shape[1] != seq_len or part.y.shape != part.x.shape:
        raise ValueError(f"datasets.{name}: sequences of {list(part.x.shape[1:])} tokens and targets of "
                         f"{list(part.y.shape[1:])}, but {name} has sequences of {seq_len}")


# ---------------------------------------------------------------------------------------------
# ImageNet-200 (FedAlign)


def _imagenet200(*, data_dir: str | None, seed: int = 0, proxy_fraction: float = 0.0, download: bool = False,
                 train_per_class: int = imagenet200.TRAIN_PER_CLASS,
                 train_size: int = imagenet200.IMAGE_SIZE) -> Source:
    """FedAlign's ImageNet-200 (Mendieta et al. 2022, Sec. 4.1): `fedscape.data.imagenet200` lists the training
    images kept of each of its 200 classes (500) and all their validation images (the test set); nothing is decoded
    here. ``train_size``: the side of the training images (the shorter side resized to 256, the centre crop of that
    side: 224, the code's evaluation transform; 256, the image `resized_crop` crops from)."""
    if download:
        raise ValueError(f"datasets.imagenet200.download: fedscape cannot download imagenet200: "
                         f"{NO_DOWNLOAD['imagenet200']}; set download: false and data_dir to the folder holding "
                         f"{DATA_DIR_HOLDS['imagenet200']}")
    if data_dir is None:
        raise FileNotFoundError(f"ImageNet-200 is read from a data_dir holding {DATA_DIR_HOLDS['imagenet200']}, "
                                "and none was given")
    train = imagenet200.list_split(data_dir, "train", train_per_class)
    test = imagenet200.list_split(data_dir, "val")
    rng = np.random.default_rng(seed)
    train_index, proxy_index = _split_proxy(np.arange(len(train.labels)), train.labels, proxy_fraction, rng)
    return Source("imagenet200", imagenet200.ImageFolderImages(train.paths, size=train_size), train.labels,
                  imagenet200.ImageFolderImages(test.paths), test.labels, train_index, np.arange(len(test.labels)),
                  proxy_index, len(imagenet200.CLASSES), imagenet200.CLASSES)
