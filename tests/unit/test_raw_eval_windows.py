"""Evaluations of Shakespeare cut from its raw texts score the windows at `datasets.shakespeare.eval_stride` (null:
each character's target once, the non-overlapping windows with `targets: every`), while training keeps the window
at every character: the windows per role and part, the characters scored, the old evaluation at stride 1, the
training data and rounds unchanged, the surfaces, the job settings and the config check."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.configs import SCHEMA, config_with
from helpers.leaf import write_shakespeare_raw

from fedscape.analysis.hessian.stage import client_eval_data
from fedscape.analysis.landscape.stage import surface_data
from fedscape.core.config import ConfigError
from fedscape.data.datasets import dataset_from_options
from fedscape.data.federated import federate
from fedscape.data.leaf import decode_text
from fedscape.data.partition import iid_partition, save_partition
from fedscape.data.sources import source_from_options
from fedscape.data.specs import SHAKESPEARE_RAW_TEST_FRACTION, SHAKESPEARE_RAW_VOCAB, dataset_settings
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.evaluate import evaluate
from fedscape.models.params import load_params
from fedscape.plan.partition import planned_partition
from fedscape.plan.workflow import check_config

SEQ = 8
# Roles of several lengths in the raw vocabulary alone (a part's characters are its text's): train parts of 240, 125,
# 65 and 14 characters, test parts of 60, 32, 17 and 4 (PLAY_D has no test window of 8). PLAY_C's parts end with
# their last evaluated window at the default stride (65 = 8 x 8 + 1, 17 = 2 x 8 + 1); the others leave a tail.
_RNG = np.random.default_rng(0)
ROLES = {name: "".join(_RNG.choice(list("abcdefgh ,.\n"), size=size)) for name, size in
         (("PLAY_A", 300), ("PLAY_B", 157), ("PLAY_C", 82), ("PLAY_D", 18))}


def _parts(split: str) -> list[str]:
    """Each role's text of `split`, in role file order, as the reader cuts it."""
    out = []
    for role in sorted(ROLES):
        text = ROLES[role]
        cut = int((1 - SHAKESPEARE_RAW_TEST_FRACTION) * len(text))
        out.append(text[:cut] if split == "train" else text[cut:])
    return out


def _windows(split: str, stride: int) -> list[str]:
    """The windows of `split` (with their next character) starting at 0, stride, 2 stride, ... of each role's part."""
    return [part[start:start + SEQ + 1] for part in _parts(split) for start in range(0, len(part) - SEQ, stride)]


def _options(tmp_path: Path, **extra) -> dict:
    write_shakespeare_raw(tmp_path, ROLES)
    return {"data_dir": str(tmp_path), "source": "raw", "seq_len": SEQ, "targets": "every", "eval_stride": None,
            "proxy_fraction": 0.0, **extra}


def _texts(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Each window with its next character (targets every: the input and the last target)."""
    return [decode_text(xi, SHAKESPEARE_RAW_VOCAB) + SHAKESPEARE_RAW_VOCAB[int(yi[-1])]
            for xi, yi in zip(x, y, strict=True)]


def _partition(tmp_path: Path, ds, clients: int) -> Path:
    """An IID split of the training windows among `clients`, saved as the partition job saves one."""
    labels = ds.sample_labels(ds.y_train).numpy()
    path = tmp_path / f"partition_{clients}.npz"
    save_partition(path, iid_partition(len(labels), clients, seed=0), labels, ds.num_classes, {})
    return path


# -- the windows evaluated ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("eval_stride", "stride"), [(None, SEQ), (SEQ, SEQ), (3, 3), (SEQ + 5, SEQ + 5), (1, 1)])
def test_evaluations_score_each_roles_windows_at_the_stride_of_each_part(tmp_path: Path, eval_stride, stride):
    # Prepare
    options = _options(tmp_path, eval_stride=eval_stride)

    # Execute
    ds = dataset_from_options("shakespeare", options)
    x_eval, y_eval = ds.evaluated_train()

    # Assert: per role and part the windows starting at 0, s, 2s, ..., ceil((len - L) / s) of them
    assert _texts(ds.x_test, ds.y_test) == _windows("test", stride)
    assert _texts(x_eval, y_eval) == _windows("train", stride)
    for split, rows in (("test", len(ds.y_test)), ("train", len(y_eval))):
        assert rows == sum(math.ceil((len(p) - SEQ) / stride) for p in _parts(split) if len(p) > SEQ)
    assert len(ds.y_train) == len(_windows("train", 1))  # training keeps every window


def test_each_characters_target_is_scored_once_at_the_default_stride(tmp_path: Path) -> None:
    # Prepare: every position's targets, the stride left at its default
    ds = dataset_from_options("shakespeare", _options(tmp_path))

    for split, (_, y) in (("train", ds.evaluated_train()), ("test", (ds.x_test, ds.y_test))):
        # Execute: the characters the evaluated windows' targets score, role after role
        scored = "".join(decode_text(row, SHAKESPEARE_RAW_VOCAB) for row in y)

        # Assert: each role's part from its second character on, each character once, less a tail shorter than a
        # window (none for PLAY_C)
        parts = [part for part in _parts(split) if len(part) > SEQ]
        covered = [part[1:1 + SEQ * math.ceil((len(part) - SEQ) / SEQ)] for part in parts]
        assert scored == "".join(covered)
        tails = [len(part) - 1 - len(c) for part, c in zip(parts, covered, strict=True)]
        assert all(0 <= tail < SEQ for tail in tails) and tails[2] == 0


def test_stride_one_is_the_evaluation_of_every_window(tmp_path: Path) -> None:
    # Prepare
    options = _options(tmp_path, eval_stride=1)

    # Execute
    ds = dataset_from_options("shakespeare", options)
    data = federate(ds, _partition(tmp_path, ds, 2))

    # Assert: every window evaluated, the tensors themselves (as before the key), and no job setting of it
    assert ds.eval_rows is None and data.eval_rows is None
    assert ds.evaluated_train()[0] is ds.x_train
    assert _texts(ds.x_test, ds.y_test) == _windows("test", 1)
    assert data.union()[0] is data.x_train
    assert "eval_stride" not in dataset_settings("shakespeare", options)


# -- training keeps every window ------------------------------------------------------------------------------------
class _Bigram(torch.nn.Module):
    """Every position's next-character logits [N, vocabulary, T] from its character alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(SHAKESPEARE_RAW_VOCAB), 8)
        self.out = torch.nn.Linear(8, len(SHAKESPEARE_RAW_VOCAB))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x)).transpose(1, 2)


@pytest.mark.usefixtures("one_thread")
def test_training_is_unchanged_and_its_rows_evaluate_the_strided_windows(tmp_path: Path) -> None:
    # Prepare: the same data and partition evaluated at every window and at the default stride
    options = _options(tmp_path)
    data = {stride: dataset_from_options("shakespeare", {**options, "eval_stride": stride}) for stride in (1, None)}
    path = _partition(tmp_path, data[1], 3)
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=5, lr=0.5, seed=1, participation=1.0)
    results = {}

    # Execute
    for stride, ds in data.items():
        torch.manual_seed(0)
        results[stride] = run_federated(_Bigram(), federate(ds, path), make_strategy("fedavg"), cfg)

    # Assert: the training pool, its writers and the trained models bit for bit; the rows score the strided windows
    every, strided = data[1], data[None]
    assert torch.equal(every.x_train, strided.x_train) and torch.equal(every.y_train, strided.y_train)
    assert torch.equal(results[1].params, results[None].params)
    model = _Bigram()
    load_params(model, results[None].params[-1])
    fed = federate(strided, path)
    row = results[None].rows[-1]
    assert row["train_loss"] == pytest.approx(evaluate(model, *fed.union()).loss, rel=1e-6)
    assert row["test_loss"] == pytest.approx(evaluate(model, strided.x_test, strided.y_test).loss, rel=1e-6)
    assert row["train_loss"] != results[1].rows[-1]["train_loss"]


def test_a_clients_and_the_unions_evaluated_rows_are_their_shards_rows_at_the_stride(tmp_path: Path) -> None:
    # Prepare
    ds = dataset_from_options("shakespeare", _options(tmp_path, eval_stride=3))
    data = federate(ds, _partition(tmp_path, ds, 2))
    evaluated = set(ds.eval_rows.tolist())

    # Execute / Assert: training reads the whole shards, evaluations their rows at the stride
    for m, shard in enumerate(data.client_indices):
        assert data.client_rows(m).tolist() == [i for i in shard.tolist() if i in evaluated]
        assert torch.equal(data.client(m)[0], ds.x_train[data.client_rows(m)])
    assert torch.equal(data.union()[0], ds.evaluated_train()[0])
    assert torch.equal(data.union(evaluated=False)[0], ds.x_train)


def test_a_clients_hessian_is_evaluated_on_its_shards_rows_at_the_stride(tmp_path: Path) -> None:
    # Prepare: a client's Hessian data over all its evaluated rows (eval_samples None)
    ds = dataset_from_options("shakespeare", _options(tmp_path, eval_stride=3))
    data = federate(ds, _partition(tmp_path, ds, 2))
    settings = SimpleNamespace(eval_samples=None, seed=0)

    # Execute
    x, y = client_eval_data(data, settings, 1)

    # Assert: the rows evaluations score, not every window of the shard
    assert len(y) == len(data.client_rows(1)) < len(data.client_indices[1])
    assert torch.equal(x, ds.x_train[data.client_rows(1)])


def test_a_partition_job_leaves_the_stride_out_of_its_settings() -> None:
    # Prepare: a raw text whose evaluations score every 256th window
    config = {"datasets": {"shakespeare": {"source": "raw", "seq_len": SEQ, "targets": "every", "eval_stride": None}},
              "partition": {"min_size": 1, "max_tries": 10}}

    # Execute
    job = planned_partition(config, "shakespeare", "iid", 2, 0)

    # Assert: a split draws from every training window, whatever the stride (its job does not rerun for it)
    assert "eval_stride" not in job.dataset_options
    assert dataset_settings("shakespeare", config["datasets"]["shakespeare"])["eval_stride"] == SEQ


@pytest.mark.parametrize("surface", ["train", "test", "client~1"])
def test_a_surface_scores_the_evaluated_windows(tmp_path: Path, surface: str) -> None:
    # Prepare
    options = _options(tmp_path)
    ds = dataset_from_options("shakespeare", options)
    path = _partition(tmp_path, ds, 2)
    data = federate(ds, path)

    # Execute
    x, y = surface_data("shakespeare", options, surface, str(path), None)

    # Assert
    expected = {"train": data.union(), "test": (ds.x_test, ds.y_test), "client~1": data.client(1)}[surface]
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    assert len(y) < {"train": len(ds.y_train), "test": len(_windows("test", 1)), "client~1": len(
        data.client_indices[1])}[surface]


# -- settings and checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "written"), [
    ({}, SEQ),  # null, targets every: seq_len, written out (the jobs of every window rerun)
    ({"eval_stride": SEQ}, SEQ),  # the number null stands for: the same job
    ({"eval_stride": 3}, 3),
    ({"eval_stride": 1}, None),  # every window: the job of before the key
    ({"targets": "next"}, None),  # null with targets next: each window scores the character after it, stride 1
    ({"targets": "next", "eval_stride": 4}, 4),
])
def test_jobs_carry_the_stride_as_it_resolves_and_read_it_back(tmp_path: Path, extra: dict, written) -> None:
    # Prepare
    options = _options(tmp_path, **extra)

    # Execute
    settings = dataset_settings("shakespeare", options)
    from_settings = source_from_options("shakespeare", {**settings, "data_dir": options["data_dir"]})  # a job's
    from_config = source_from_options("shakespeare", options)

    # Assert: left out at its baseline (every window), which a job's settings read as every window
    assert settings.get("eval_stride") == written
    assert len(from_settings.test_labels) == len(from_config.test_labels) == len(_windows("test", written or 1))
    assert (from_settings.eval_rows is None) == (written is None)


@pytest.mark.parametrize("options", [{"source": "preprocessed"}, {}, {"source": "raw", "eval_stride": None}])
def test_other_sources_and_a_left_out_stride_plan_no_new_setting(options: dict) -> None:
    # Execute / Assert: LEAF's files and the default of next targets keep the settings of before the key
    assert "eval_stride" not in dataset_settings("shakespeare", {**options})
    assert "eval_stride" not in dataset_settings("digits", {"eval_stride": None})


@pytest.mark.parametrize(("dataset", "options", "message"), [
    ("shakespeare", {"source": "raw", "eval_stride": 0}, r"datasets\.shakespeare\.eval_stride: 0 is less than the "
                                                         r"minimum of 1"),
    ("shakespeare", {"source": "raw", "eval_stride": 2.5}, r"datasets\.shakespeare\.eval_stride: 2\.5 is not of "
                                                           r"type 'integer', 'null'"),
    ("shakespeare", {"source": "raw", "eval_stride": True}, r"eval_stride: True is not of type 'integer'"),
    ("shakespeare", {"eval_stride": 4}, r"datasets\.shakespeare\.eval_stride: 4 evaluates the windows of a text cut "
                                        r"from its raw texts at that stride, but only shakespeare from its raw texts "
                                        r"\(source: raw\) has overlapping windows; set source: raw or leave "
                                        r"eval_stride null"),
    ("digits", {"eval_stride": 2}, r"datasets\.digits\.eval_stride: 2 evaluates"),
])
def test_the_config_check_refuses_a_bad_eval_stride(dataset: str, options: dict, message: str) -> None:
    # Prepare
    model = "char_gpt" if dataset == "shakespeare" else "cnn_small"
    config = config_with({}, experiments=[{"dataset": dataset, "model": model, "alpha": "iid"}],
                         datasets={dataset: {"data_dir": "/leaf", "proxy_fraction": 0.0, "seq_len": None, **options}},
                         models=[model])

    # Execute / Assert
    with pytest.raises(ConfigError, match=message):
        check_config(config, copy.deepcopy(SCHEMA))


@pytest.mark.parametrize("eval_stride", [0, -2, 2.0, True])
def test_the_reader_refuses_a_stride_that_is_no_positive_integer(tmp_path: Path, eval_stride) -> None:
    with pytest.raises(ValueError, match=r"datasets\.shakespeare\.eval_stride must be a positive integer"):
        source_from_options("shakespeare", _options(tmp_path, eval_stride=eval_stride))


def test_a_stride_on_another_source_is_refused_by_the_reader(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"datasets\.shakespeare\.eval_stride: only a text cut from its raw texts"):
        source_from_options("shakespeare", {**_options(tmp_path, eval_stride=4), "source": "preprocessed",
                                            "seq_len": None})
