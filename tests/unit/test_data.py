"""Tests for fedscape.data: dataset loading, splits, normalisation, safe CIFAR reading, augmentation."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.cifar import CIFAR10_DIR, CIFAR100_DIR, write_fake_cifar10, write_fake_cifar100
from sklearn.datasets import load_digits

from fedscape.data.datasets import augment_batch, host_to_device, load_dataset
from fedscape.data.sources import read_digits, stratified_split
from fedscape.data.specs import CROP_PADDING, DATASET_NAMES
from fedscape.data.synthetic import write_py2_pickle

CIFAR_CASES = {
    # name: (writer, folder, train files, test file, label key, normalisation mean, std)
    "cifar10": (
        write_fake_cifar10,
        CIFAR10_DIR,
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        write_fake_cifar100,
        CIFAR100_DIR,
        ["train"],
        "test",
        b"fine_labels",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}
CIFAR_FILES = {
    "cifar10": [*CIFAR_CASES["cifar10"][2], "test_batch", "batches.meta"],
    "cifar100": ["train", "test", "meta"],
}


@pytest.fixture(scope="module")
def digits_source() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int64)


def _read_written(root: Path, name: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels as written by the fixture (our own trusted files, so plain pickle is fine)."""
    _, folder, _, _, label_key, _, _ = CIFAR_CASES[name]
    images, labels = [], []
    for file in files:
        with (root / folder / file).open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"].reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key]))
    return np.concatenate(images), np.concatenate(labels)


def _unnormalise(x: torch.Tensor, name: str) -> np.ndarray:
    mean, std = CIFAR_CASES[name][5:]
    return (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).numpy()


@pytest.mark.parametrize(("test_fraction", "proxy_fraction"), [(0.25, 0.0), (0.2, 0.1), (0.5, 0.3)])
def test_digits_shapes_dtypes_and_split_sizes(test_fraction: float, proxy_fraction: float) -> None:
    # Execute
    ds = load_dataset("digits", seed=1, test_fraction=test_fraction, proxy_fraction=proxy_fraction)

    # Assert
    n_test = round(test_fraction * 1797)
    n_proxy = round(proxy_fraction * (1797 - n_test))
    assert ds.name == "digits"
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, 8)
    assert ds.x_test.shape == (n_test, 1, 8, 8)
    assert ds.x_proxy.shape == (n_proxy, 1, 8, 8)
    assert ds.x_train.shape == (1797 - n_test - n_proxy, 1, 8, 8)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test), (ds.x_proxy, ds.y_proxy)]:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert len(x) == len(y)
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert ds.class_names == tuple("0123456789")


@pytest.mark.parametrize("proxy_fraction", [0.0, 0.15])
def test_digits_parts_are_disjoint_cover_everything_and_match_the_source(
    digits_source: tuple[np.ndarray, np.ndarray], proxy_fraction: float
) -> None:
    # Prepare
    images, labels = digits_source

    # Execute
    ds = load_dataset("digits", seed=3, proxy_fraction=proxy_fraction)

    # Assert: the index sets partition all 1797 rows
    parts = [ds.train_index, ds.test_index, ds.proxy_index]
    assert sum(len(p) for p in parts) == 1797
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1797))
    # ... and each part's rows are the source rows at those indices (up to the train-part normalisation)
    mean, std = images[ds.train_index].mean(), images[ds.train_index].std()
    for index, x, y in [
        (ds.train_index, ds.x_train, ds.y_train),
        (ds.test_index, ds.x_test, ds.y_test),
        (ds.proxy_index, ds.x_proxy, ds.y_proxy),
    ]:
        assert np.array_equal(y.numpy(), labels[index])
        np.testing.assert_allclose(
            x.numpy().astype(np.float64) * std + mean, images[index][:, None], atol=1e-4
        )


@pytest.mark.parametrize(("test_fraction", "proxy_fraction"), [(0.25, 0.2), (0.1, 0.5)])
def test_digits_splits_are_stratified(
    digits_source: tuple[np.ndarray, np.ndarray], test_fraction: float, proxy_fraction: float
) -> None:
    # Prepare
    _, labels = digits_source
    class_counts = np.bincount(labels, minlength=10)

    # Execute
    ds = load_dataset("digits", seed=0, test_fraction=test_fraction, proxy_fraction=proxy_fraction)

    # Assert: every class is held out in proportion, up to rounding (< 1 row per class)
    test_counts = np.bincount(ds.y_test.numpy(), minlength=10)
    proxy_counts = np.bincount(ds.y_proxy.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - test_fraction * class_counts) < 1)
    assert np.all(np.abs(proxy_counts - proxy_fraction * (class_counts - test_counts)) < 1)


def test_digits_is_deterministic_per_seed() -> None:
    # Execute
    a = load_dataset("digits", seed=7, proxy_fraction=0.1)
    b = load_dataset("digits", seed=7, proxy_fraction=0.1)
    c = load_dataset("digits", seed=8, proxy_fraction=0.1)

    # Assert
    for field in ("x_train", "y_train", "x_test", "y_test", "x_proxy", "y_proxy"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert np.array_equal(a.train_index, b.train_index)
    assert not np.array_equal(a.test_index, c.test_index)
    assert not np.array_equal(a.proxy_index, c.proxy_index)


@pytest.mark.parametrize("seed", [0, 5])
def test_digits_is_normalised_with_the_train_statistics(seed: int) -> None:
    # Execute
    ds = load_dataset("digits", seed=seed, proxy_fraction=0.2)

    # Assert: train mean 0, std 1; the other parts use the same (train) statistics, so only close to it
    assert abs(ds.x_train.double().mean().item()) < 1e-5
    assert abs(ds.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    for x in (ds.x_test, ds.x_proxy):
        assert abs(x.double().mean().item()) < 0.1
        assert abs(x.double().std().item() - 1) < 0.1


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_the_written_files(tmp_path: Path, name: str) -> None:
    # Prepare
    writer, _, train_files, test_file, *_ = CIFAR_CASES[name]
    root = writer(tmp_path)
    train_images, train_labels = _read_written(root, name, train_files)
    test_images, test_labels = _read_written(root, name, [test_file])
    num_classes = 10 if name == "cifar10" else 100

    # Execute
    ds = load_dataset(name, data_dir=str(root), test_fraction=0.9)  # test_fraction is ignored for CIFAR

    # Assert
    assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == (name, num_classes, 3, 32)
    assert ds.x_train.shape == (len(train_images), 3, 32, 32)
    assert ds.x_test.shape == (len(test_images), 3, 32, 32)
    assert ds.x_proxy.shape == (0, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64
    assert len(ds.class_names) == num_classes
    assert np.array_equal(ds.y_train.numpy(), train_labels)
    assert np.array_equal(ds.y_test.numpy(), test_labels)
    assert set(ds.y_train.tolist()) == set(range(num_classes))
    # pixel values round-trip through the per-channel normalisation
    np.testing.assert_allclose(_unnormalise(ds.x_train, name), train_images / 255.0, atol=1e-5)
    np.testing.assert_allclose(_unnormalise(ds.x_test, name), test_images / 255.0, atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_proxy_split_is_disjoint_stratified_and_seeded(tmp_path: Path, name: str) -> None:
    # Prepare
    writer, _, train_files, *_ = CIFAR_CASES[name]
    root = writer(tmp_path)
    train_images, train_labels = _read_written(root, name, train_files)
    n = len(train_labels)

    # Execute
    ds = load_dataset(name, data_dir=str(root), seed=2, proxy_fraction=0.5)
    same = load_dataset(name, data_dir=str(root), seed=2, proxy_fraction=0.5)
    other = load_dataset(name, data_dir=str(root), seed=3, proxy_fraction=0.5)

    # Assert
    assert len(ds.proxy_index) == n // 2
    assert np.intersect1d(ds.train_index, ds.proxy_index).size == 0
    assert np.array_equal(np.sort(np.concatenate([ds.train_index, ds.proxy_index])), np.arange(n))
    assert np.array_equal(ds.y_proxy.numpy(), train_labels[ds.proxy_index])
    np.testing.assert_allclose(
        _unnormalise(ds.x_proxy, name), train_images[ds.proxy_index] / 255.0, atol=1e-5
    )
    assert set(ds.y_proxy.tolist()) == set(ds.y_train.tolist())  # every class on both sides
    assert torch.equal(ds.x_proxy, same.x_proxy)
    assert not np.array_equal(ds.proxy_index, other.proxy_index)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("where", ["none", "empty_dir", "one_file_missing"])
def test_missing_cifar_files_raise_one_clear_error(tmp_path: Path, name: str, where: str) -> None:
    # Prepare
    writer, folder, *_ = CIFAR_CASES[name]
    data_dir: str | None = None
    if where != "none":
        data_dir = str(tmp_path)
    if where == "one_file_missing":
        writer(tmp_path)
        (tmp_path / folder / CIFAR_FILES[name][0]).unlink()

    # Execute
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset(name, data_dir=data_dir)

    # Assert
    message = str(excinfo.value)
    assert folder in message
    for file in CIFAR_FILES[name]:
        assert file in message
    assert "download: true" in message
    assert "python-version archive" in message
    if where == "one_file_missing":
        assert f"missing {CIFAR_FILES[name][0]} in {tmp_path / folder}" in message


class _Exploit:
    """A pickle payload that calls ``func(*args)`` when loaded."""

    def __init__(self, func: Any, *args: str) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_restricted_unpickler_refuses_malicious_batch_files(tmp_path: Path, payload: str) -> None:
    # Prepare: a valid fake CIFAR-10 whose first batch is replaced by a pickle that would create a file
    root = write_fake_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    exploit = {
        "os.system": _Exploit(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.exec": _Exploit(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }[payload]
    batch_path = root / CIFAR10_DIR / "data_batch_1"
    batch_path.write_bytes(pickle.dumps({"data": exploit}, protocol=2))

    # Execute
    with pytest.raises(
        pickle.UnpicklingError, match=r"refusing to unpickle global \w+\.(system|exec)"
    ) as excinfo:
        load_dataset("cifar10", data_dir=str(root))

    # Assert
    assert str(batch_path) in str(excinfo.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_empty_or_truncated_cifar_batch_is_named(tmp_path: Path, damage: str) -> None:
    # Prepare: a fake CIFAR-10 whose third training batch is empty, or cut in half
    root = write_fake_cifar10(tmp_path / "data")
    batch_path = root / CIFAR10_DIR / "data_batch_3"
    whole = batch_path.read_bytes()
    batch_path.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])

    # Execute
    with pytest.raises(pickle.UnpicklingError) as excinfo:
        load_dataset("cifar10", data_dir=str(root))

    # Assert: the file is named (pickle's own EOFError says "Ran out of input" and nothing else)
    assert str(batch_path) in str(excinfo.value)
    if damage == "empty":
        assert "0 bytes: empty or truncated" in str(excinfo.value)


@pytest.mark.parametrize(("name", "file", "dropped"), [
    ("cifar10", "data_batch_3", b"labels"),
    ("cifar10", "data_batch_2", b"data"),
    ("cifar10", "batches.meta", b"label_names"),
    ("cifar100", "train", b"fine_labels"),
])
def test_a_cifar_file_without_its_key_names_the_file_and_the_keys_it_has(
    tmp_path: Path, name: str, file: str, dropped: bytes
) -> None:
    # Prepare: one file of a fake CIFAR written again without one key, in CIFAR's own pickle format
    writer, folder = CIFAR_CASES[name][:2]
    root = writer(tmp_path / "data")
    path = root / folder / file
    with path.open("rb") as f:
        content = pickle.load(f, encoding="bytes")
    del content[dropped]
    write_py2_pickle(path, content)

    # Execute
    with pytest.raises(ValueError, match="in this CIFAR file") as excinfo:
        load_dataset(name, data_dir=str(root))

    # Assert: the file, the key it lacks and those it has (not KeyError: 'labels')
    message = str(excinfo.value)
    assert str(path) in message
    assert f"no {dropped.decode()!r}" in message
    assert all(repr(k.decode()) in message for k in content)


def test_download_fetches_with_torchvision_then_reads_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: stand in for torchvision's downloader (no network here)
    calls: list[dict[str, Any]] = []

    def fake_cifar10(**kwargs: Any) -> None:
        calls.append(kwargs)
        write_fake_cifar10(Path(kwargs["root"]))

    monkeypatch.setattr("torchvision.datasets.CIFAR10", fake_cifar10)

    # Execute
    ds = load_dataset("cifar10", data_dir=str(tmp_path), download=True)

    # Assert
    assert calls == [{"root": str(tmp_path), "train": True, "download": True}]
    assert ds.x_train.shape == (100, 3, 32, 32)


@pytest.mark.parametrize(
    ("name", "closest"), [("cifar-10", "cifar10"), ("cifar_100", "cifar100"), ("digit", "digits")]
)
def test_unknown_dataset_name_suggests_the_closest(name: str, closest: str) -> None:
    # Execute
    with pytest.raises(ValueError, match="unknown dataset") as excinfo:
        load_dataset(name)

    # Assert
    assert f"Did you mean {closest!r}?" in str(excinfo.value)
    for valid in DATASET_NAMES:
        assert valid in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"proxy_fraction": -0.1}, "proxy_fraction"),
        ({"proxy_fraction": 1.0}, "proxy_fraction"),
    ],
)
def test_invalid_fractions_are_rejected(kwargs: dict[str, float], match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", **kwargs)


def test_download_needs_a_data_dir() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("cifar100", download=True)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3, 0.9])
def test_stratified_split_holds_out_the_rounded_fraction_of_each_class(fraction: float) -> None:
    # Prepare: unbalanced classes with 3, 10 and 30 rows
    labels = np.repeat(np.array([2, 0, 1]), [3, 10, 30])
    rng = np.random.default_rng(0)

    # Execute
    keep, held = stratified_split(labels, fraction, rng)

    # Assert
    assert len(held) == round(fraction * len(labels))
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    for c in range(3):
        count = np.sum(labels == c)
        assert abs(np.sum(labels[held] == c) - fraction * count) < 1


def test_dataset_to_moves_every_tensor_and_keeps_the_rest() -> None:
    # Prepare
    ds = load_dataset("digits", proxy_fraction=0.1)

    # Execute
    moved = ds.to("cpu")

    # Assert
    assert moved.x_train.device.type == "cpu"
    assert torch.equal(moved.x_proxy, ds.x_proxy)
    assert moved.num_classes == ds.num_classes
    assert moved.train_index is ds.train_index


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_none_is_identity() -> None:
    # Prepare
    x = torch.randn(4, 3, 8, 8)

    # Execute
    out = augment_batch(x, "none", _seeded(0))

    # Assert
    assert out is x


def test_crop_flip_keeps_shape_and_is_seeded() -> None:
    # Prepare
    x = torch.randn(32, 3, 32, 32)

    # Execute
    a = augment_batch(x, "crop_flip", _seeded(1))
    b = augment_batch(x, "crop_flip", _seeded(1))
    c = augment_batch(x, "crop_flip", _seeded(2))

    # Assert
    assert a.shape == x.shape
    assert a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_crop_flip_outputs_shifted_or_flipped_copies_with_zero_padding() -> None:
    # Prepare: distinct positive pixel values, so every crop window (overlapping the image by >= 2
    # pixels per axis) and its mirror image are distinguishable from each other and from the zero padding
    n, c, size, pad = 24, 2, 6, CROP_PADDING
    x = torch.arange(1, n * c * size * size + 1, dtype=torch.float32).view(n, c, size, size)

    # Execute
    out = augment_batch(x, "crop_flip", _seeded(0))

    # Assert: each output is exactly one window of the zero-padded input, possibly mirrored
    seen = set()
    for i in range(n):
        padded = F.pad(x[i], (pad, pad, pad, pad))
        matches = []
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[:, dy : dy + size, dx : dx + size]
                if torch.equal(out[i], crop):
                    matches.append((dy, dx, False))
                if torch.equal(out[i], torch.flip(crop, [-1])):
                    matches.append((dy, dx, True))
        assert len(matches) == 1, f"image {i}: {matches}"
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5


def test_unknown_augmentation_suggests_the_closest() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="Did you mean 'crop_flip'"):
        augment_batch(torch.zeros(1, 1, 4, 4), "cropflip", _seeded(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_cpu_for_the_same_seed() -> None:
    # Prepare
    x = torch.randn(16, 3, 32, 32)

    # Execute
    cpu = augment_batch(x, "crop_flip", _seeded(4))
    cuda = augment_batch(x.cuda(), "crop_flip", _seeded(4))

    # Assert
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_host_to_device_copies_values_and_keeps_the_source(device) -> None:
    # Prepare: batch indices as the local plan draws them, on the CPU
    src = torch.randperm(100, generator=_seeded(0))
    before = src.clone()

    # Execute
    out = host_to_device(src, device)

    # Assert: the same values on the device (read after the queued copy), the source untouched
    assert out.device.type == device
    assert torch.equal(out.cpu(), before) and torch.equal(src, before)


def test_digits_are_read_exactly_as_scikit_learn_loads_them():
    from sklearn.datasets import load_digits  # lazy: the reference loader, only in this test

    images, labels = read_digits()
    reference = load_digits()

    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float64
    assert np.array_equal(images[:, 0], reference.images)
    assert np.array_equal(labels, reference.target)
