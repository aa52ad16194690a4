"""The 32x32 smoke run (`make smoke32`): its synthetic CIFAR-10-shaped data (fedscape.data.synthetic), read as the
real files are, and its config (config/smoke32.yaml), the default study moved to that data."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from helpers.workflow import ROOT

from fedscape.core.runs import build_runs
from fedscape.data.datasets import load_dataset
from fedscape.data.sources import load_source
from fedscape.data.synthetic import CLASS_NAMES, synthetic_cifar10_written, write_synthetic_cifar10
from fedscape.plan.workflow import load_config

FOLDER = "cifar-10-batches-py"
FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
SMOKE = ROOT / "config" / "smoke32.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {f: (root / FOLDER / f).read_bytes() for f in FILES}


def test_written_files_are_read_by_the_cifar10_reader(tmp_path):
    # Execute
    data_dir = write_synthetic_cifar10(tmp_path, n_train=103, n_test=20, seed=0)
    source = load_source("cifar10", data_dir=str(data_dir), proxy_fraction=0.2)
    dataset = load_dataset("cifar10", data_dir=str(data_dir), proxy_fraction=0.2)

    # Assert
    assert data_dir == tmp_path
    assert source.train_images.shape == (103, 3, 32, 32) and source.test_images.shape == (20, 3, 32, 32)
    assert source.train_images.dtype == source.test_images.dtype == np.uint8
    assert source.train_labels.dtype == np.int64
    for labels in (source.train_labels, source.test_labels):
        assert set(labels.tolist()) == set(range(10))  # every class, nothing outside 0..9
    assert np.bincount(source.test_labels).tolist() == [2] * 10  # balanced, as CIFAR's classes are
    assert source.class_names == CLASS_NAMES
    assert dataset.x_train.shape[1:] == (3, 32, 32) and len(dataset.x_proxy) == round(0.2 * 103)
    assert len(np.unique(source.train_images.reshape(103, -1), axis=0)) == 103  # images, not copies


def test_files_have_the_official_archives_pickle_format(tmp_path):
    # Execute
    write_synthetic_cifar10(tmp_path, n_train=50, n_test=10, seed=0)

    # Assert: protocol 2, every string a Python 2 str, arrays rebuilt as numpy 1.x named it, the official keys
    for file in FILES:
        raw = (tmp_path / FOLDER / file).read_bytes()
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
        assert ops[0] == ("PROTO", 2)
        assert not {name for name, _ in ops} & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
        if file != "batches.meta":
            assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
        with (tmp_path / FOLDER / file).open("rb") as f:
            obj = pickle.load(f, encoding="bytes")  # as Python 3 reads a Python 2 pickle: str -> bytes
        expected = ({b"num_cases_per_batch", b"label_names", b"num_vis"} if file == "batches.meta" else
                    {b"batch_label", b"labels", b"data", b"filenames"})
        assert set(obj) == expected
        if file != "batches.meta":
            assert obj[b"data"].dtype == np.uint8 and obj[b"data"].shape == (len(obj[b"labels"]), 3072)
            assert all(isinstance(v, int) for v in obj[b"labels"])
            assert all(isinstance(v, bytes) for v in obj[b"filenames"])


def test_same_seed_gives_bit_equal_files_and_another_seed_other_data(tmp_path):
    # Execute
    first = write_synthetic_cifar10(tmp_path / "a", n_train=50, n_test=10, seed=0)
    again = write_synthetic_cifar10(tmp_path / "b", n_train=50, n_test=10, seed=0)
    other = write_synthetic_cifar10(tmp_path / "c", n_train=50, n_test=10, seed=1)

    # Assert
    assert _file_bytes(first) == _file_bytes(again)
    a = load_source("cifar10", data_dir=str(first))
    c = load_source("cifar10", data_dir=str(other))
    assert not np.array_equal(a.train_images, c.train_images)
    assert not np.array_equal(a.test_images, c.test_images)


def test_classes_separate_by_nearest_class_mean(tmp_path):
    # Prepare
    source = load_source("cifar10", data_dir=str(write_synthetic_cifar10(tmp_path, n_train=100, n_test=100, seed=3)))
    x_train = source.train_images.reshape(100, -1).astype(np.float64)
    x_test = source.test_images.reshape(100, -1).astype(np.float64)

    # Execute: each test image takes the class whose mean train image is nearest (10 train images per class)
    means = np.stack([x_train[source.train_labels == k].mean(axis=0) for k in range(10)])
    predicted = ((x_test[:, None, :] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)

    # Assert: far above chance (0.1): the class templates survive the contrast and the noise
    assert (predicted == source.test_labels).mean() >= 0.9


def test_written_is_true_only_for_the_same_complete_data(tmp_path):
    # Prepare
    before = synthetic_cifar10_written(tmp_path, 50, 10, 0)
    write_synthetic_cifar10(tmp_path, n_train=50, n_test=10, seed=0)

    # Execute / Assert
    assert not before
    assert synthetic_cifar10_written(tmp_path, 50, 10, 0)
    assert not synthetic_cifar10_written(tmp_path, 60, 10, 0)
    assert not synthetic_cifar10_written(tmp_path, 50, 10, 1)
    (tmp_path / FOLDER / "test_batch").unlink()
    assert not synthetic_cifar10_written(tmp_path, 50, 10, 0)


def test_too_few_images_for_every_class_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least 10"):
        write_synthetic_cifar10(tmp_path, n_train=50, n_test=9, seed=0)


# -- config/smoke32.yaml --------------------------------------------------------------------------------


def test_smoke32_config_is_valid_and_apart_from_the_default_run():
    # Execute
    config = load_config(SMOKE, SCHEMA)  # YAML, schema (no unknown key) and every stage's cross-key checks

    # Assert
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert config["results_dir"] == "results_smoke32" and f"/{config['results_dir']}/" in ignored
    assert list(config["datasets"]) == ["cifar10"]
    data_dir = Path(config["datasets"]["cifar10"]["data_dir"])
    assert not data_dir.is_absolute() and f"/{data_dir.parts[0]}/" in ignored
    assert config["models"] == ["resnet20"] and config["model_options"]["resnet20"]["norm"] == "batch"


def test_smoke32_config_is_the_default_study_on_32x32():
    # Prepare
    default, smoke = load_config(ROOT / "config" / "config.yaml", SCHEMA), load_config(SMOKE, SCHEMA)

    # Execute: the runs of both, with the dataset and model left out
    def grid(config):
        return [(r.init, r.algorithm, r.setting, r.num_clients, r.participation, r.seed) for r in build_runs(config)]

    # Assert: the same runs, inits, algorithms and analyses, only smaller
    assert grid(smoke) == grid(default)
    for key in ("inits", "algorithms"):
        assert smoke[key].keys() == default[key].keys()
        assert [v.get("kind", v.get("name")) for v in smoke[key].values()] == [
            v.get("kind", v.get("name")) for v in default[key].values()]
    assert [s["kind"] for s in smoke["landscapes"].values()] == [s["kind"] for s in default["landscapes"].values()]
    assert smoke["interpolation"]["pairs"] == default["interpolation"]["pairs"]
    assert smoke["interpolation"]["align"] == default["interpolation"]["align"]
    assert smoke["layer_barriers"]["pairs"] and smoke["layer_barriers"]["pairs"].keys() <= default[
        "layer_barriers"]["pairs"].keys()
    for section in ("hessian", "client_stats"):
        assert smoke[section]["enabled"] and default[section]["enabled"]
    assert smoke["hessian"]["rounds"] == default["hessian"]["rounds"]
    assert smoke["training"]["rounds"] in smoke["training"]["save_clients_at"]
    assert smoke["training"]["rounds"] < default["training"]["rounds"]
