"""Reddit's accuracy as LEAF scores it: a prediction of <PAD> or <UNK> is never right, though those targets count
(`fedscape.data.leaf.RedditVocab.never_correct`), from the data set to every evaluation; the loss is unchanged."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA
from helpers.diverged import build_diverged_runs
from helpers.tiny import tiny_data, tiny_model
from helpers.words import write_reddit, write_stackoverflow
from torch import nn

from fedscape.analysis.barriers import stage as barriers_stage
from fedscape.analysis.landscape import stage as landscape_stage
from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.core.config import validate_config
from fedscape.data.datasets import dataset_from_options, load_dataset
from fedscape.data.federated import federate
from fedscape.data.partition import make_kind_partition, save_partition
from fedscape.data.sources import source_from_options
from fedscape.data.specs import DATASETS
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.evaluate import evaluate
from fedscape.models.loss import IGNORE_INDEX, correct_count
from fedscape.models.params import flatten_buffers, flatten_params, load_params
from fedscape.models.registry import build_model
from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
from fedscape.plan.landscape import chunk_settings, landscape_plans, plane_settings
from fedscape.stages import init as inits_mod
from fedscape.stages.init import pretrain
from fedscape.stages.init_settings import InitJob

pytestmark = pytest.mark.usefixtures("one_thread")


class Oracle(nn.Module):
    """Fixed logits [N, C, T] that put each counted position's target first (<PAD>, `pad`, where none counts); its
    inputs are row indices [B, 1], so it answers for the rows of `y` it was made from."""

    def __init__(self, y: torch.Tensor, num_classes: int, pad: int) -> None:
        super().__init__()
        logits = torch.zeros(len(y), num_classes, y.shape[1])
        logits.scatter_(1, torch.where(y == IGNORE_INDEX, pad, y)[:, None], 1.0)
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.logits[rows[:, 0]]


def write_leaf_reddit(root, pad: int, unk: int):
    """One user's train comments "the cat zzz" and "cat" (zzz out of the vocabulary) and test comment "the qqq", in
    LEAF's layout, with a vocabulary pickle whose padding and unknown ids are `pad` and `unk`."""
    vocab = {"<PAD>": pad, "<UNK>": unk, "<BOS>": 2, "<EOS>": 3, "the": 4, "cat": 5}
    size = DATASETS["reddit"].num_classes
    write_reddit(root, {"train": {"u1": [["the", "cat", "zzz"], ["cat"]]}, "test": {"u1": [["the", "qqq"]]}},
                 vocab, size)
    with (root / "reddit" / "vocab" / "reddit_vocab.pck").open("wb") as f:
        pickle.dump({"vocab": vocab, "size": size, "unk_symbol": unk, "pad_symbol": pad}, f)
    return root


@pytest.mark.parametrize(("pad", "unk"), [(0, 1), (7, 6)], ids=["leaf_ids", "other_ids"])
def test_an_oracle_scores_leafs_accuracy_on_reddit_and_its_loss_is_unchanged(tmp_path, pad, unk):
    # Prepare: 8 counted positions, <BOS> the cat zzz <EOS> -> the cat <UNK> <EOS> <PAD> and <BOS> cat <EOS> ->
    # cat <EOS> <PAD>; an oracle predicts each target
    ds = dataset_from_options("reddit", {"data_dir": str(write_leaf_reddit(tmp_path, pad, unk))})
    oracle = Oracle(ds.y_train, ds.num_classes, pad)
    rows = torch.arange(len(ds.y_train))[:, None]

    # Execute
    leaf = evaluate(oracle, rows, ds.y_train, never_correct=ds.never_correct)
    every_hit = evaluate(oracle, rows, ds.y_train)

    # Assert: the pickle's <PAD> and <UNK> ids; LEAF's 5 of 8 (its right <UNK> and two <PAD> are wrong), over every
    # counted position; the loss counts every position as before
    assert ds.never_correct == (pad, unk)
    assert (leaf.n, leaf.acc) == (8, 5 / 8)
    assert every_hit.acc == 1.0 and leaf.loss == every_hit.loss


@pytest.mark.parametrize(("name", "options"), [("digits", {}), ("stackoverflow", None)])
def test_other_data_sets_credit_every_right_prediction(tmp_path, name, options):
    # Prepare: Stack Overflow's accuracy is TFF's accuracy_with_oov (out-of-vocabulary and end targets count)
    if options is None:
        words = [f"w{i}" for i in range(10_000)]
        options = {"data_dir": str(write_stackoverflow(tmp_path, [("train", "1", "w0 zz"), ("test", "1", "w1")],
                                                       words))}

    # Execute
    ds = dataset_from_options(name, options) if name == "stackoverflow" else load_dataset(name)

    # Assert
    assert ds.never_correct == ()


@pytest.mark.parametrize(("never_correct", "expected"), [((), [5, 4]), ((0,), [2, 2]), ((0, 2), [1, 1]),
                                                          ((1, 5), [5, 4])])
def test_a_never_correct_class_is_never_a_hit_of_one_or_of_stacked_models(never_correct, expected):
    # Prepare: targets [2, 3], five counted; the first model predicts every target, the second misses the last
    y = torch.tensor([[0, 2, IGNORE_INDEX], [3, 0, 0]])
    predicted = torch.stack([torch.where(y == IGNORE_INDEX, 4, y), torch.tensor([[0, 2, 0], [3, 0, 1]])])
    logits = torch.nn.functional.one_hot(predicted, 6).permute(0, 1, 3, 2).float()  # [K=2, N, C, T]

    # Execute
    stacked = correct_count(logits, y, dims=1, never_correct=never_correct)
    one = [int(correct_count(logits[k], y, never_correct=never_correct)) for k in range(2)]

    # Assert: the first model's hits are 0, 2, 3, 0, 0, the second's 0, 2, 3, 0; classes that never occur change none
    assert stacked.tolist() == one == expected


@pytest.mark.parametrize("points_per_batch", [1, 3])
def test_a_surface_s_accuracy_credits_no_never_correct_class(points_per_batch):
    # Prepare: a tiny every-position GPT on random windows, a position of each ignored
    torch.manual_seed(0)
    model = build_model("char_gpt", 5, 5, 6, targets="every", vocab_size=5, seq_len=6, num_blocks=1, num_heads=2,
                        embed_dim=8)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 5, (9, 6), generator=g), torch.randint(0, 5, (9, 6), generator=g)
    y[:, 0] = IGNORE_INDEX
    plane = random_plane(flatten_params(model), flatten_buffers(model), [p.shape for p in model.parameters()], seed=0)
    coords = np.array([[0.0, 0.0], [0.5, -0.5], [1.0, 1.0]])
    settings = SurfaceSettings(batch_size=4, points_per_batch=points_per_batch)
    top = int(torch.mode(model(x).argmax(1).flatten()).values)  # the class the centre predicts most

    # Execute
    _, acc = SurfaceEvaluator(model, plane, x, y, settings=settings, never_correct=(top,)).evaluate(coords)

    # Assert: each point's accuracy is evaluate's with the same classes
    for (a, b), got in zip(coords, acc, strict=True):
        load_params(model, plane.point(float(a), float(b)))
        assert got == evaluate(model, x, y, never_correct=(top,)).acc
    load_params(model, plane.point(0.0, 0.0))
    assert acc[0] < evaluate(model, x, y).acc


def test_a_reddit_federation_carries_its_never_correct_classes(tmp_path):
    # Prepare: the natural partition of the one user
    options = {"data_dir": str(write_leaf_reddit(tmp_path, 0, 1))}
    src = source_from_options("reddit", options)
    part = make_kind_partition({"kind": "natural"}, src.labels, 1, seed=0, min_size=1, writer_ids=src.writer_ids,
                               dataset="reddit")
    save_partition(tmp_path / "p.npz", part, src.labels, src.num_classes, {"dataset": "reddit"})

    # Execute
    data = federate(dataset_from_options("reddit", options), tmp_path / "p.npz")

    # Assert
    assert src.never_correct == data.never_correct == (0, 1)


@pytest.mark.parametrize("never_correct", [(), (0, 1, 2, 3, 4)])
def test_the_engine_s_rows_score_the_data_s_never_correct_classes(never_correct):
    # Prepare: the tiny problem, whose classes 0..4 are half its labels
    data = dataclasses.replace(tiny_data(), never_correct=never_correct)
    model = tiny_model()
    start = flatten_params(model).clone()
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=10, lr=0.1, seed=0)

    # Execute
    result = run_federated(model, data, make_strategy("fedavg"), cfg)

    # Assert: the rows of rounds 0 and 1 are evaluate's with the data's classes
    x_all, y_all = data.union()
    for row, params in zip(result.rows, (start, result.params[-1]), strict=True):
        load_params(model, params)
        assert row["train_acc"] == evaluate(model, x_all, y_all, never_correct=never_correct).acc
        assert row["test_acc"] == evaluate(model, data.x_test, data.y_test, never_correct=never_correct).acc


# -- every stage that evaluates passes the data's classes on ---------------------------------------------------
ALL_DIGITS = tuple(range(10))  # digits' classes: with all of them never correct, every accuracy is 0


def _never_right(load):
    """`load` (a data loader of a stage) whose data has every digit never correct."""
    def loader(*args, **kwargs):
        loaded = load(*args, **kwargs)
        if isinstance(loaded, tuple):  # load_test_data's (x, y, never_correct)
            return (*loaded[:2], ALL_DIGITS)
        return dataclasses.replace(loaded, never_correct=ALL_DIGITS)
    return loader


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy (and a diverged) run on digits, trained by the workflow's stage functions."""
    return build_diverged_runs(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("never_right", [False, True])
def test_the_barrier_jobs_score_the_data_s_never_correct_classes(runs, tmp_path, monkeypatch, never_right):
    # Prepare: the healthy run's round-1-to-final pair and its clients' pair of round 1
    if never_right:
        monkeypatch.setattr(barriers_stage, "load_federated_data", _never_right(barriers_stage.load_federated_data))
    both = [runs.healthy, runs.diverged]
    (pair,) = [p for p in interpolation_pairs(runs.config, both) if p.label == "ok_r1_vs_final"]
    (clients,) = [p for p in layer_pairs(runs.config, both) if p.label == "ok_clients"]
    inputs = {"trajectory_a": runs.trajectory(runs.healthy), "clients": runs.clients(runs.healthy),
              "partition": runs.partition}

    # Execute
    barriers_stage.interpolation_job(interpolation_settings(runs.config, pair), runs.trajectory(runs.healthy),
                                     runs.trajectory(runs.healthy), runs.partition, tmp_path / "curve.csv")
    barriers_stage.layer_barriers_job(layer_settings(runs.config, clients, 1), inputs, tmp_path / "layers.csv",
                                      tmp_path / "distances.csv")

    # Assert: every model errs on everything where no class is ever right, and on less otherwise
    errors = [pd.read_csv(tmp_path / "curve.csv")["error"],
              pd.read_csv(tmp_path / "layers.csv")[["end_error_a", "end_error_b"]].stack()]
    assert all(((e == 1.0) if never_right else (e < 1.0)).all() for e in errors)


@pytest.mark.parametrize("data", ["train", "test", "client"])
def test_a_landscape_chunk_scores_the_data_s_never_correct_classes(runs, tmp_path, monkeypatch, data):
    # Prepare: a random plane around the healthy run's final model
    for name in ("load_federated_data", "federate", "load_test_data"):
        monkeypatch.setattr(landscape_stage, name, _never_right(getattr(landscape_stage, name)))
    config = validate_config({**runs.config, "landscapes": {"r": {"kind": "random", "runs": [{"algorithm": "fedavg"}],
                                                                  "resolution": 3, "data": [data]}}}, SCHEMA)
    (plan,) = landscape_plans(config, [runs.healthy, runs.diverged])
    plane = {"plane": tmp_path / "plane.npz", "points": tmp_path / "points.csv", "grid": tmp_path / "grid.json"}
    landscape_stage.landscape_plane_job(plane_settings(config, plan), [runs.trajectory(runs.healthy)], None, None,
                                        plane)

    # Execute
    landscape_stage.landscape_chunk_job(chunk_settings(config, plan, plan.data[0], 0), plane["plane"], plane["grid"],
                                        runs.partition, tmp_path / "chunk.npz")

    # Assert
    chunk = np.load(tmp_path / "chunk.npz")
    assert np.isfinite(chunk["loss"]).all() and (chunk["acc"] == 0.0).all()


def test_a_pretrained_init_scores_the_data_s_never_correct_classes(monkeypatch):
    # Prepare: digits' own proxy split; every digit never correct
    job = InitJob.from_settings({"dataset": "digits", "model": "cnn_small", "model_options": {}, "in_channels": 1,
                                 "image_size": 8, "num_classes": 10, "init": "pre", "kind": "pretrained", "seed": 0,
                                 "epochs": 1, "lr": 0.05, "batch_size": 16, "momentum": 0.9, "weight_decay": 0.0,
                                 "proxy_dataset": None, "proxy_data_dir": None, "proxy_dir": None,
                                 "max_samples": None, "dataset_options": {"test_fraction": 0.25,
                                                                          "proxy_fraction": 0.2}, "device": "cpu"})
    monkeypatch.setattr(inits_mod, "dataset_from_options", _never_right(inits_mod.dataset_from_options))

    # Execute
    _, meta = pretrain(job)

    # Assert: its proxy, clients' pool and test accuracies
    assert meta["proxy_acc"] == meta["clients_pool_acc"] == meta["test_acc"] == 0.0
