"""Tests for LEAF's FEMNIST and Shakespeare: reading LEAF's JSON layout, writers, tokens, and their checks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import SCHEMA, config_with
from helpers.leaf import VOCAB, write_femnist, write_shakespeare
from torch import nn

from fedscape.core.config import ConfigError
from fedscape.data.datasets import augment_batch, load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.leaf import decode_text, encode_text
from fedscape.data.sources import load_source
from fedscape.data.specs import SHAKESPEARE_VOCAB, dataset_info, dataset_option_problems
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.registry import check_algorithm_model
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models import specs
from fedscape.models.evaluate import evaluate
from fedscape.models.registry import build_model
from fedscape.models.specs import check_model_compatible
from fedscape.plan.workflow import check_config


# -- the vocabulary --------------------------------------------------------------------------------
def test_vocabulary_is_leafs_80_characters() -> None:
    # Assert: LEAF's ALL_LETTERS (models/utils/language_utils.py), character for character
    assert SHAKESPEARE_VOCAB == VOCAB
    assert len(SHAKESPEARE_VOCAB) == len(set(SHAKESPEARE_VOCAB)) == 80
    assert dataset_info("shakespeare").shape == (80, 80, 80)


@pytest.mark.parametrize(("text", "ids"), [("\n !", [0, 1, 2]), ("0", [11]), ("A", [25]), ("a", [53]),
                                           ("}", [79]), ("Ab}", [25, 54, 79]), ("", [])])
def test_encoding_is_the_position_in_leafs_vocabulary(text: str, ids: list[int]) -> None:
    # Execute
    encoded = encode_text(text)

    # Assert: LEAF's word_to_indices is ALL_LETTERS.find(c) for each character
    assert encoded.tolist() == ids == [VOCAB.find(c) for c in text]
    assert decode_text(encoded) == text


def test_encoding_round_trips_every_character() -> None:
    # Execute / Assert
    assert decode_text(encode_text(VOCAB[::-1])) == VOCAB[::-1]


@pytest.mark.parametrize(("text", "bad"), [("hello|", "'|'"), ("tab\there", "'\\t'"), ("café", "'é'")])
def test_characters_outside_the_vocabulary_are_named(text: str, bad: str) -> None:
    # Execute / Assert: LEAF would give them -1, which no embedding can look up
    with pytest.raises(ValueError) as excinfo:
        encode_text(text, "line 3")
    assert str(excinfo.value) == f"line 3: characters outside LEAF's Shakespeare vocabulary: {bad}"


# -- FEMNIST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "leaf"])
def test_femnist_reads_leafs_train_and_test_files(tmp_path: Path, layout: str) -> None:
    # Prepare
    fixture = write_femnist(tmp_path, sizes=(6, 4, 9), files=2, layout=layout)
    train_x, train_y, train_users = fixture.samples("train")
    test_x, test_y, _ = fixture.samples("test")

    # Execute
    src = load_source("femnist", data_dir=str(tmp_path), test_fraction=0.5)  # LEAF's split: test_fraction unused

    # Assert: LEAF's own split, with int(0.75 n) training samples per writer
    assert (len(train_y), len(test_y)) == (4 + 3 + 6, 2 + 1 + 3)
    assert src.train_images.shape == (13, 1, 28, 28) and src.train_images.dtype == np.float32
    assert src.test_images.shape == (6, 1, 28, 28)
    assert np.array_equal(src.train_labels, train_y) and np.array_equal(src.test_labels, test_y)
    np.testing.assert_array_equal(src.train_images.reshape(13, 784), np.asarray(train_x, dtype=np.float32))
    np.testing.assert_array_equal(src.test_images.reshape(6, 784), np.asarray(test_x, dtype=np.float32))
    assert np.array_equal(src.train_index, np.arange(13)) and np.array_equal(src.test_index, np.arange(6))
    assert (src.num_classes, len(src.class_names)) == (62, 62)
    assert (src.class_names[0], src.class_names[10], src.class_names[36], src.class_names[61]) == ("0", "A", "a", "z")
    # every writer of `users`, in file order; the empty user_data entry LEAF leaves for a dropped user is not one
    assert src.writer_names == ("f0000_00", "f0001_01", "f0002_02")
    assert [src.writer_names[w] for w in src.writer_ids] == train_users
    assert src.writer_ids.dtype == np.int64
    assert src.inputs == "image" and src.vocabulary is None


def test_femnist_tensors_are_standardised_with_the_train_statistics(tmp_path: Path) -> None:
    # Prepare
    write_femnist(tmp_path, sizes=(8, 8), files=1)
    src = load_source("femnist", data_dir=str(tmp_path))
    mean, std = src.train_images.astype(np.float64).mean(), src.train_images.astype(np.float64).std()

    # Execute
    ds = load_dataset("femnist", data_dir=str(tmp_path))

    # Assert
    assert (ds.in_channels, ds.image_size, ds.num_classes, ds.inputs) == (1, 28, 62, "image")
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_allclose(ds.x_train.double().numpy() * std + mean, src.train_images, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.double().numpy() * std + mean, src.test_images, atol=1e-5)
    assert abs(float(ds.x_train.double().mean())) < 1e-6


def test_femnist_proxy_split_keeps_writer_ids_aligned_with_the_labels(tmp_path: Path) -> None:
    # Prepare
    fixture = write_femnist(tmp_path, sizes=(10, 12, 14), files=2)
    _, _, users = fixture.samples("train")

    # Execute
    src = load_source("femnist", data_dir=str(tmp_path), seed=3, proxy_fraction=0.25)

    # Assert: train and proxy are disjoint and cover LEAF's train files; each pool sample keeps its writer
    n = len(users)
    assert len(src.proxy_index) == round(0.25 * n)
    assert np.array_equal(np.sort(np.concatenate([src.train_index, src.proxy_index])), np.arange(n))
    assert len(src.writer_ids) == len(src.labels) == len(src.train_index)
    assert [src.writer_names[w] for w in src.writer_ids] == [users[i] for i in src.train_index]


def test_a_model_reads_femnist_tensors(tmp_path: Path) -> None:
    # Prepare
    write_femnist(tmp_path, sizes=(3, 3), files=1)
    ds = load_dataset("femnist", data_dir=str(tmp_path))
    info = dataset_info("femnist")
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size)

    # Execute
    logits = model(ds.x_train)

    # Assert
    assert logits.shape == (len(ds.y_train), 62)


# -- Shakespeare -----------------------------------------------------------------------------------
def test_shakespeare_reads_token_ids_and_next_characters(tmp_path: Path) -> None:
    # Prepare
    fixture = write_shakespeare(tmp_path, sizes=(5, 3, 7), files=2)
    train_x, train_y, train_users = fixture.samples("train")
    test_x, test_y, _ = fixture.samples("test")

    # Execute
    ds = load_dataset("shakespeare", data_dir=str(tmp_path))
    src = load_source("shakespeare", data_dir=str(tmp_path))

    # Assert: int64 ids [N, 80], int64 targets [N]; the encoding round-trips to LEAF's strings
    assert (ds.inputs, ds.in_channels, ds.image_size, ds.num_classes) == ("tokens", 80, 80, 80)
    assert ds.x_train.shape == (len(train_y), 80) and ds.x_train.dtype == torch.int64
    assert ds.y_train.shape == (len(train_y),) and ds.y_train.dtype == torch.int64
    assert ds.x_test.shape == (len(test_y), 80)
    assert [decode_text(row) for row in ds.x_train.numpy()] == train_x
    assert [decode_text(row) for row in ds.x_test.numpy()] == test_x
    assert ds.y_train.tolist() == [VOCAB.index(c) for c in train_y]
    assert ds.y_test.tolist() == [VOCAB.index(c) for c in test_y]
    assert 0 <= int(ds.x_train.min()) and int(ds.x_train.max()) < 80
    assert ds.vocabulary == SHAKESPEARE_VOCAB and ds.class_names == tuple(SHAKESPEARE_VOCAB)
    assert [src.writer_names[w] for w in src.writer_ids] == train_users
    assert len(src.writer_names) == 3


def test_a_next_character_model_is_evaluated_on_token_inputs(tmp_path: Path) -> None:
    # Prepare: logits [N, vocabulary] from token ids [N, 80], as a text model gives them
    write_shakespeare(tmp_path, sizes=(6, 6), files=1)
    ds = load_dataset("shakespeare", data_dir=str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(80, 4), nn.Flatten(), nn.Linear(4 * 80, 80))

    # Execute
    result = evaluate(model, ds.x_test, ds.y_test, batch_size=2)

    # Assert: the same cross-entropy and accuracy as on the whole batch at once
    with torch.no_grad():
        logits = model(ds.x_test)
    assert result.n == len(ds.y_test)
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, ds.y_test)), rel=1e-5)
    assert result.acc == pytest.approx(float((logits.argmax(1) == ds.y_test).float().mean()))


def test_crop_flip_refuses_token_inputs() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="crop_flip moves pixels of images.*torch.int64.*augment to none"):
        augment_batch(torch.zeros(4, 80, dtype=torch.int64), "crop_flip", torch.Generator().manual_seed(0))
    tokens = torch.ones(2, 80, dtype=torch.int64)
    assert augment_batch(tokens, "none", torch.Generator()) is tokens


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
@pytest.mark.parametrize("where", ["none", "empty_dir", "train_only"])
def test_missing_leaf_files_raise_one_clear_error(tmp_path: Path, name: str, where: str) -> None:
    # Prepare
    data_dir = None if where == "none" else str(tmp_path)
    if where == "train_only":
        (write_femnist if name == "femnist" else write_shakespeare)(tmp_path)
        for f in (tmp_path / "test").glob("*.json"):
            f.unlink()

    # Execute
    with pytest.raises(FileNotFoundError) as excinfo:
        load_source(name, data_dir=data_dir)

    # Assert: names the folders looked in, the layout and how to make it
    message = str(excinfo.value)
    assert message.startswith(f"{name} not found")
    assert "train/*.json and test/*.json" in message and '"user_data"' in message
    assert f"data/{name}/preprocess.sh" in message
    assert f"datasets.{name}.data_dir" in message
    if data_dir is not None:
        assert f"looked in {tmp_path} and {tmp_path / name / 'data'}" in message
    else:
        assert "no data_dir was given" in message


@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
def test_download_is_refused_with_a_clear_message(tmp_path: Path, name: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=f"datasets.{name}.download: fedscape cannot download {name}: LEAF builds"):
        load_source(name, data_dir=str(tmp_path), download=True)


def _edit_first_train_file(root: Path, edit: Callable[[dict], None]) -> Path:
    path = sorted((root / "train").glob("*.json"))[0]
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))
    return path


def _set_x(obj: dict, value) -> None:
    obj["user_data"][obj["users"][0]]["x"][0] = value


def _set_y(obj: dict, value) -> None:
    obj["user_data"][obj["users"][0]]["y"][0] = value


@pytest.mark.parametrize(("name", "edit", "match"), [
    ("femnist", lambda o: o["num_samples"].__setitem__(0, 99), r"num_samples says 99, x has \d+ and y \d+"),
    ("femnist", lambda o: o.pop("user_data"), "expected LEAF's keys users, num_samples and user_data"),
    ("femnist", lambda o: o["users"].append("ghost"), "2 users but 1 num_samples|users but"),
    ("femnist", lambda o: _set_y(o, 62), r"y outside the classes 0\.\.61"),
    ("femnist", lambda o: _set_x(o, [0.5] * 783), "x must .*784"),
    ("shakespeare", lambda o: _set_x(o, "too short"), "x\\[0\\] must be a string of 80 characters"),
    ("shakespeare", lambda o: _set_y(o, "ab"), "y\\[0\\] must be one character"),
    ("shakespeare", lambda o: _set_y(o, "|"), "characters outside LEAF's Shakespeare vocabulary: '\\|'"),
])
def test_malformed_leaf_files_name_the_file_and_user(tmp_path: Path, name: str, edit: Callable[[dict], None],
                                                     match: str) -> None:
    # Prepare
    (write_femnist if name == "femnist" else write_shakespeare)(tmp_path, files=1)
    path = _edit_first_train_file(tmp_path, edit)

    # Execute / Assert
    with pytest.raises(ValueError, match=match) as excinfo:
        load_source(name, data_dir=str(tmp_path))
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
@pytest.mark.parametrize(("content", "match"), [
    (b'{"users": ["\xff"], "num_samples": [0], "user_data": {}}', r"not a LEAF JSON file \('utf-8' codec can't decode"),
    (b'{"users": [', r"not a LEAF JSON file \(Expecting value"),
    (b'{"users": 3, "num_samples": [0], "user_data": {}}', r"users is a int$"),
    (b'{"users": ["a"], "num_samples": {"a": 1}, "user_data": []}', r"num_samples is a dict, user_data is a list$"),
], ids=["not_utf8", "not_json", "users_not_a_list", "mappings_swapped"])
def test_a_file_that_is_not_json_text_is_named(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    # Prepare: the first train file replaced by bytes that are not UTF-8 (a byte 0xff) or not JSON
    (write_femnist if name == "femnist" else write_shakespeare)(tmp_path, files=1)
    path = sorted((tmp_path / "train").glob("*.json"))[0]
    path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(ValueError, match=match) as excinfo:
        load_source(name, data_dir=str(tmp_path))
    assert str(excinfo.value).startswith(f"{path}: ")


# -- what the other datasets say, and the planning checks ------------------------------------------
def test_datasets_without_writers_have_no_writer_ids() -> None:
    # Execute
    src = load_source("digits", proxy_fraction=0.1)

    # Assert
    assert src.writer_ids is None and src.writer_names is None
    assert not dataset_info("digits").writers and dataset_info("femnist").writers


@pytest.mark.parametrize(("name", "options", "problems"), [
    ("shakespeare", {"augment": "crop_flip"}, ["datasets.shakespeare.augment: crop_flip augments images, but "
                                               "shakespeare gives sequences of 80 tokens over 80 symbols; use none"]),
    ("femnist", {"download": True}, ["datasets.femnist.download: fedscape cannot download femnist"]),
    ("femnist", {"augment": "crop_flip", "download": False}, []),
    ("shakespeare", {"augment": "none"}, []),
    ("cifar10", {"augment": "crop_flip", "download": True}, []),
])
def test_dataset_option_problems(name: str, options: dict, problems: list[str]) -> None:
    # Execute
    found = dataset_option_problems(name, options)

    # Assert
    assert len(found) == len(problems)
    for got, expected in zip(found, problems, strict=True):
        assert got.startswith(expected)


@pytest.mark.parametrize(("model", "dataset", "match"), [
    ("cnn_small", "shakespeare", "model 'cnn_small' reads images; the dataset gives token sequences"),
    ("resnet20", "shakespeare", "model 'resnet20' reads images; the dataset gives token sequences"),
])
def test_image_models_refuse_token_datasets(model: str, dataset: str, match: str) -> None:
    # Prepare
    info = dataset_info(dataset)

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        check_model_compatible(model, info.in_channels, info.image_size, info.inputs)


@pytest.mark.parametrize("model", ["cnn_small", "mlp", "resnet20"])
def test_image_models_take_femnist(model: str) -> None:
    # Prepare
    info = dataset_info("femnist")

    # Execute / Assert: no error
    check_model_compatible(model, info.in_channels, info.image_size, info.inputs)


@pytest.mark.parametrize(("dataset_options", "match"), [
    ({"augment": "crop_flip"}, r"datasets\.shakespeare\.augment: crop_flip augments images"),
    ({"augment": "none"}, r"models: model 'cnn_small' reads images; the dataset gives token sequences \(text\)"),
    ({"download": True}, r"datasets\.shakespeare\.download: fedscape cannot download shakespeare"),
])
def test_config_check_rejects_what_token_data_cannot_do(dataset_options: dict, match: str) -> None:
    # Prepare: the tiny config on shakespeare (its cnn_small reads images)
    config = config_with({}, datasets={"shakespeare": {"data_dir": "/leaf", **dataset_options}})

    # Execute / Assert: before any job runs
    with pytest.raises(ConfigError, match=match):
        check_config(config, SCHEMA)


def test_mixup_needs_a_model_of_pixel_inputs() -> None:
    # Prepare: a model that reads token ids (as the text models declare it)
    text_model = dataclasses.replace(specs.MODEL_INFOS["mlp"], name="text_mlp", inputs="tokens")

    # Execute / Assert: mixup interpolates inputs, which token ids cannot be; FedAvg trains any model
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(specs.MODEL_INFOS, "text_mlp", text_model)
        with pytest.raises(ValueError, match="mixup needs a pixel-input model; text_mlp is not pixel-input"):
            check_algorithm_model("mixup", "text_mlp")
        check_algorithm_model("fedavg", "text_mlp")
    check_algorithm_model("mixup", "cnn_small")


class _NextChar(nn.Module):
    """A small next-character model: embedding, mean over the sequence, linear (logits [N, vocabulary])."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(80, 8)
        self.classifier = nn.Linear(8, 80)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x).mean(1))


@pytest.mark.usefixtures("one_thread")
def test_federated_rounds_on_writers_of_token_data_match_sequential_and_vectorized(tmp_path: Path) -> None:
    # Prepare: one client per writer (the writers' own samples), as a natural partition gives them
    write_shakespeare(tmp_path, sizes=(12, 9, 15), files=2)
    src = load_source("shakespeare", data_dir=str(tmp_path))
    ds = load_dataset("shakespeare", data_dir=str(tmp_path))
    clients = [torch.from_numpy(np.flatnonzero(src.writer_ids == w)) for w in range(len(src.writer_names))]
    data = FederatedData(ds.x_train, ds.y_train, clients, ds.x_test, ds.y_test)
    results = {}

    # Execute
    for mode in ("sequential", "vectorized"):
        torch.manual_seed(0)
        cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=4, lr=0.5, client_parallel=mode, seed=1)
        results[mode] = run_federated(_NextChar(), data, make_strategy("fedavg"), cfg)

    # Assert: both trainers take int64 token batches and agree; the model moved and the loss is finite
    seq, vec = results["sequential"], results["vectorized"]
    assert seq.status == vec.status == "ok"
    assert torch.allclose(seq.params[-1], vec.params[-1], atol=1e-5)
    assert not torch.equal(seq.params[0], seq.params[-1])
    assert [len(c) for c in clients] == [9, 6, 11]  # int(0.75 n) of each writer's samples in train/
    assert all(np.isfinite(row["train_loss"]) for row in seq.rows)
