"""The init stage: random, pretrained, IID warm-up and continue inits, their config checks and the DAG."""

from __future__ import annotations

import copy
import errno
import logging
import math
import re
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.cifar import write_fake_cifar10, write_fake_cifar100
from helpers.configs import SCHEMA, config_with, problems_of
from helpers.imagenet import write_imagenet32
from helpers.papers import load
from helpers.words import write_reddit

from fedscape.core import manifest
from fedscape.core.config import ConfigError
from fedscape.core.jobs import to_settings
from fedscape.core.runs import build_runs
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData
from fedscape.data.partition import load_partition, make_partition, save_partition
from fedscape.data.sources import load_source, proxy_writers_after, source_from_options
from fedscape.data.specs import DATASETS, held_out_count
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import MEMORY_KEYS, TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import ModelMeta, load_trajectory, save_trajectory
from fedscape.models.evaluate import evaluate
from fedscape.models.params import flatten_params
from fedscape.plan.init import (
    init_settings,
    proxy_split_problem,
    proxy_split_size,
    unread_proxy_split_warnings,
)
from fedscape.plan.workflow import check_config, config_warnings
from fedscape.stages import init as inits_mod
from fedscape.stages import progress as progress_mod
from fedscape.stages.init import ProxyData, init_job, pretrain, proxy_data
from fedscape.stages.init_settings import KIND_KEYS, InitJob, PretrainConfig, PretrainedInit, RandomInit

DIGITS = {"dataset": "digits", "model": "cnn_small", "model_options": {}, "in_channels": 1, "image_size": 8,
          "num_classes": 10}
OPTIONS = {"test_fraction": 0.25, "proxy_fraction": 0.2}
NO_PROXY = {"proxy_dataset": None, "proxy_data_dir": None, "proxy_dir": None, "max_samples": None}


def random_job(**kw) -> RandomInit:
    return RandomInit(**{**DIGITS, "init": "r", "kind": "random", "seed": 0, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


# -- random ----------------------------------------------------------------------------------------
def test_random_init_is_seeded(tmp_path):
    paths = [tmp_path / f"{i}.pt" for i in range(3)]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        init_job({**DIGITS, "init": "r", "kind": "random", "seed": seed}, path)

    a, b, c = (load_trajectory(p).params[0] for p in paths)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_init_settings_ignore_other_kinds_keys():
    config = check_config(config_with({}), SCHEMA)

    settings = init_settings(config, build_runs(config), "digits", "cnn_small", "random")

    assert {k for k in settings if k not in DIGITS} == {"init", "kind", "seed"}


# -- pretrained ------------------------------------------------------------------------------------
def pretrained_job(**kw):
    return InitJob.from_settings({**DIGITS, "init": "pre", "kind": "pretrained", "seed": 0, "epochs": 8, "lr": 0.05,
                                  "batch_size": 16, "momentum": 0.9, "weight_decay": 5e-4, **NO_PROXY,
                                  "dataset_options": OPTIONS, "device": "cpu", **kw})


@pytest.mark.parametrize("interval, expect_lines", [(0.0, True), (3600.0, False)])
def test_pretraining_logs_where_it_is_within_an_epoch_at_most_every_interval(monkeypatch, caplog, interval,
                                                                              expect_lines):
    # Prepare
    from fedscape.stages import init as init_mod

    monkeypatch.setattr(init_mod, "EPOCH_LOG_SECONDS", interval)

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.init"):
        pretrain(pretrained_job(epochs=1))

    # Assert: lines that count the epoch's samples so far, and the epoch's own line
    within = [r.getMessage() for r in caplog.records if " samples, loss " in r.getMessage()]
    assert bool(within) == expect_lines
    counts = [int(m.split(": ")[1].split(" of ")[0]) for m in within]
    assert counts == sorted(counts) and all(c % 16 == 0 for c in counts)
    assert any(r.getMessage().startswith("pretraining epoch 1/1: loss ") for r in caplog.records)


def test_init_settings_of_an_unknown_kind_fail_naming_the_kinds():
    with pytest.raises(ValueError, match=r"unknown kind 'pretrain'\. Did you mean 'pretrained'.*Valid: random, "):
        init_job({**DIGITS, "init": "p", "kind": "pretrain", "seed": 0}, "unused.pt")


def test_init_settings_must_carry_their_kind_s_keys():
    settings = {**DIGITS, "init": "p", "kind": "pretrained", "seed": 0, "epochs": 1, "lr": 0.1, "batch_size": 4,
                "momentum": 0.0, "weight_decay": 0.0, **NO_PROXY, "dataset_options": OPTIONS, "device": "cpu"}
    del settings["proxy_dir"]

    with pytest.raises(ValueError, match=r"PretrainedInit \(rule init\) settings lack the required 'proxy_dir'"):
        init_job(settings, "unused.pt")


def test_pretrained_init_starts_above_chance_on_the_clients_data():
    model, meta = pretrain(pretrained_job())

    ds = load_dataset("digits", proxy_fraction=0.2)
    clients = evaluate(model, ds.x_train, ds.y_train)
    assert clients.acc > 0.5  # chance: 0.1; the proxy split is disjoint from the clients' pool
    assert meta["clients_pool_acc"] == pytest.approx(clients.acc)
    assert meta["proxy_acc"] > 0.5 and not meta["head_reinitialised"]
    assert (meta["epochs"], meta["lr"], meta["batch_size"]) == (8, 0.05, 16)
    assert set(ds.proxy_index).isdisjoint(ds.train_index)


@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
def test_char_gpt_pretraining_leaves_its_biases_layer_norms_and_embeddings_undecayed(monkeypatch, float64_default,
                                                                                     weight_decay):
    # Prepare: a tiny char_gpt on token windows, each epoch one batch of them all, so that torch's SGD over the
    # reference's groups (epfml/llm-baselines: Linear weights decay, nothing else) takes the same steps
    vocab, seq = 10, 8
    options = {"vocab_size": vocab, "seq_len": seq, "num_blocks": 1, "num_heads": 2, "embed_dim": 8}
    x = torch.randint(0, vocab, (12, seq), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, vocab, (12,), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(inits_mod, "proxy_data", lambda job, device="cpu": ProxyData(y, vocab, "dataset:tokens", x=x))
    job = pretrained_job(dataset="shakespeare", model="char_gpt", model_options=options, in_channels=vocab,
                         image_size=seq, num_classes=vocab, epochs=3, lr=0.1, batch_size=12,
                         weight_decay=weight_decay, dataset_options={})

    # Execute
    model, _ = pretrain(job)

    # Assert: every tensor but the re-initialised head is the grouped reference's
    def reference(grouped: bool) -> dict[str, torch.Tensor]:
        net = inits_mod.random_model(job, seed=0)
        named = dict(net.named_parameters())
        decayed = {"classifier.weight", *(f"blocks.0.{layer}.weight"
                                          for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))}
        groups = ([{"params": [p for n, p in named.items() if n in decayed]},
                   {"params": [p for n, p in named.items() if n not in decayed], "weight_decay": 0.0}]
                  if grouped else [{"params": list(named.values())}])
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=weight_decay)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return {n: p.detach() for n, p in named.items() if not n.startswith("classifier.")}

    def gap(expected: dict[str, torch.Tensor]) -> float:
        params = dict(model.named_parameters())
        return max((params[n] - p).abs().max().item() for n, p in expected.items())

    assert gap(reference(grouped=True)) < 1e-12
    assert (gap(reference(grouped=False)) > 1e-5) == (weight_decay > 0)  # without decay the groups are one SGD


def test_pretraining_resumes_after_a_kill(tmp_path, monkeypatch):
    settings = pretrained_job(epochs=4)
    reference, _ = pretrain(settings)

    real_atomic = inits_mod.atomic_path
    saves = []

    def killed_after_two_epochs(path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_atomic(path, *args, **kwargs)

    monkeypatch.setattr(inits_mod, "atomic_path", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        pretrain(settings, tmp_path)
    monkeypatch.setattr(inits_mod, "atomic_path", real_atomic)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["epoch"] == 2

    resumed, _ = pretrain(settings, tmp_path)

    assert torch.equal(flatten_params(resumed), flatten_params(reference))


def _another_group(state: dict) -> None:
    # another number of parameter groups than the optimiser's, as a char_gpt pretraining's progress saved before
    # b9bb17f gave its undecayed parameters a group of their own
    state["opt"]["param_groups"].append({**state["opt"]["param_groups"][-1], "params": []})


def _a_tensor_missing(state: dict) -> None:
    # torch copies every other tensor before it refuses the missing one
    del state["model"][list(state["model"])[-1]]


@pytest.mark.parametrize(("damage", "resumed"), [
    (None, True),
    (_another_group, False),
    (_a_tensor_missing, False),
])
def test_a_pretraining_whose_progress_does_not_load_starts_afresh_from_the_seeded_init(
        tmp_path, monkeypatch, caplog, damage, resumed):
    # Prepare: a 3-epoch pretraining, unbroken (the reference), and killed after its first epoch with its progress
    # under the job's key, as saved or with a model or optimiser that does not load
    from helpers.resume import killed_at_call

    monkeypatch.setattr(manifest, "_NOTES", {})  # the job's notes, gone with the test
    settings = pretrained_job(epochs=3)
    reference, _ = pretrain(settings)
    killed_at_call(monkeypatch, inits_mod, "atomic_path", 2, lambda: pretrain(settings, tmp_path))
    if damage is not None:
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        damage(state)
        torch.save(state, tmp_path / "state.pt")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.init"):
        model, _ = pretrain(settings, tmp_path)

    # Assert: the weights of the unbroken pretraining, resumed after epoch 1 or with every epoch trained again from
    # the seeded init and recorded as a fresh start (one attempt: none in the record)
    assert torch.equal(flatten_params(model), flatten_params(reference))
    assert ("resuming pretraining after epoch 1/3" in caplog.text) == resumed
    assert ("starting afresh" in caplog.text) == (not resumed)
    assert [a["from_epoch"] for a in manifest.noted("attempts") or []] == ([1, 2] if resumed else [])


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   OSError(errno.EIO, "Input/output error"), MemoryError()],
                         ids=lambda e: type(e).__name__)
def test_a_card_that_fails_while_a_pretraining_resumes_fails_the_job_and_keeps_its_progress(tmp_path, monkeypatch,
                                                                                            error):
    # Prepare: a pretraining killed after its first epoch; loading its progress then fails as a card fails (out of
    # memory while the state is loaded onto it, a device error): the progress is sound
    from helpers.resume import killed_at_call

    monkeypatch.setattr(manifest, "_NOTES", {})
    settings = pretrained_job(epochs=3)
    killed_at_call(monkeypatch, inits_mod, "atomic_path", 2, lambda: pretrain(settings, tmp_path))
    saved = (tmp_path / "state.pt").read_bytes()

    def failing(*args, **kwargs):
        raise error

    # Execute / Assert: the error reaches the job and the progress is as it was (started afresh, the first epoch's
    # save would have replaced it)
    with monkeypatch.context() as patch:
        patch.setattr(inits_mod.torch, "load", failing)
        with pytest.raises(type(error)):
            pretrain(settings, tmp_path)
    assert (tmp_path / "state.pt").read_bytes() == saved


def pretrained_settings(**kw) -> dict:
    return {**DIGITS, "init": "pre", "kind": "pretrained", "seed": 0, "epochs": 2, "lr": 0.05, "batch_size": 32,
            "momentum": 0.9, "weight_decay": 5e-4, **NO_PROXY, "dataset_options": OPTIONS, "device": "cpu", **kw}


def test_a_pretraining_that_diverges_fails_naming_its_lr_and_writes_nothing(tmp_path):
    # Execute / Assert: refused at the first epoch whose loss is not finite, naming the key to lower
    with pytest.raises(RuntimeError, match=r"pretraining of init pre diverged by epoch 1/2: its loss is nan; lower "
                                           r"its learning rate \(inits\.pre\.lr, now 10000\)"):
        init_job(pretrained_settings(lr=1e4), tmp_path / "init.pt", {}, tmp_path / "progress")

    # no init, and no progress that a rerun would resume from
    assert not (tmp_path / "init.pt").exists()
    assert not (tmp_path / "progress" / "state.pt").exists()


def test_a_pretraining_resumed_after_its_last_epoch_does_not_save_weights_that_are_not_finite(tmp_path):
    # Prepare: the progress of a pretraining killed after its last epoch, whose weights are not finite
    settings = pretrained_settings()
    job = InitJob.from_settings(settings)
    model = inits_mod.random_model(job)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    opt = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=job.momentum)
    key = inits_mod.progress_key(inits_mod.resume_settings(settings, type(job)))
    (tmp_path / "progress").mkdir()
    torch.save({"key": key, "epoch": job.epochs, "model": model.state_dict(), "opt": opt.state_dict()},
               tmp_path / "progress" / "state.pt")

    # Execute / Assert: it trains no epoch, and still refuses to save them
    with pytest.raises(RuntimeError, match=r"diverged by epoch 2/2: tensors not finite: features\.0\.weight;"):
        init_job(settings, tmp_path / "init.pt", {}, tmp_path / "progress")
    assert not (tmp_path / "init.pt").exists()


def test_imagenet32_proxy_reinitialises_the_classifier(tmp_path):
    write_imagenet32(tmp_path / "imagenet32", sizes=(40, 40))
    settings = pretrained_job(dataset="cifar10", model="resnet20", in_channels=3, image_size=32, seed=3, epochs=1,
                              lr=0.01, weight_decay=0.0, proxy_dir=str(tmp_path / "imagenet32"), max_samples=50,
                              dataset_options={})

    model, meta = pretrain(settings)

    assert meta["proxy_samples"] == 50 and meta["head_reinitialised"]
    assert model.classifier.out_features == 10
    fresh = inits_mod.random_model(settings, seed=inits_mod.derive_seed(3, inits_mod._HEAD_STREAM))
    assert torch.equal(model.classifier.weight, fresh.classifier.weight)
    untrained = inits_mod.random_model(settings, num_classes=1000, seed=3)
    assert not torch.equal(model.stem.weight, untrained.stem.weight)  # the body was pretrained


def test_imagenet32_proxy_is_streamed_and_normalised_with_the_clients_statistics(tmp_path):
    write_imagenet32(tmp_path / "in32", sizes=(5, 5))
    settings = pretrained_job(dataset="cifar10", in_channels=3, image_size=32, proxy_dir=str(tmp_path / "in32"),
                              dataset_options={})
    written = np.concatenate([np.load(tmp_path / "in32" / f"train_data_batch_{i}.npz")["data"] for i in (1, 2)])
    mean, std = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1), torch.tensor((0.2470, 0.2435, 0.2616))

    proxy = proxy_data(settings)

    assert proxy.x is None and proxy.stream is not None  # nothing held in memory but the labels
    assert len(proxy) == 10 and proxy.num_classes == 1000 and 0 <= int(proxy.y.min()) and int(proxy.y.max()) <= 999
    expected = (torch.from_numpy(written).float().view(10, 3, 32, 32) / 255 - mean) / std.view(1, 3, 1, 1)
    assert torch.allclose(proxy.batch(torch.tensor([7, 0, 3])), expected[[7, 0, 3]], atol=1e-6)


def test_streamed_imagenet32_pretraining_equals_pretraining_on_the_images_held_in_memory(tmp_path, monkeypatch):
    write_imagenet32(tmp_path / "in32", sizes=(24, 24))
    settings = pretrained_job(dataset="cifar10", in_channels=3, image_size=32, seed=1, epochs=2, lr=0.01,
                              batch_size=8, weight_decay=0.0, proxy_dir=str(tmp_path / "in32"), max_samples=40,
                              dataset_options={"augment": "crop_flip"})
    streamed_model, streamed_meta = pretrain(settings)
    streamed = proxy_data(settings)
    held = ProxyData(streamed.y, streamed.num_classes, streamed.source,
                     x=streamed.batch(torch.arange(len(streamed))))
    monkeypatch.setattr(inits_mod, "proxy_data", lambda s, device="cpu": held)

    model, meta = pretrain(settings)

    assert torch.equal(flatten_params(streamed_model), flatten_params(model))
    assert streamed_meta["proxy_samples"] == meta["proxy_samples"] == 40
    assert streamed_meta["proxy_loss"] == pytest.approx(meta["proxy_loss"], rel=1e-6)
    assert streamed_meta["proxy_acc"] == meta["proxy_acc"]


def test_streamed_proxy_evaluation_in_batches_equals_one_pass(tmp_path):
    write_imagenet32(tmp_path / "in32", sizes=(12, 12))
    proxy = proxy_data(pretrained_job(dataset="cifar10", in_channels=3, image_size=32,
                                      proxy_dir=str(tmp_path / "in32"), dataset_options={}))
    torch.manual_seed(0)
    model = inits_mod.build_model("mlp", num_classes=1000, in_channels=3, image_size=32)

    batched = proxy.evaluate(model, batch_size=5)  # 24 samples: batches of 5, 5, 5, 5, 4
    whole = evaluate(model, proxy.batch(torch.arange(24)), proxy.y)

    assert batched.n == whole.n == 24
    assert batched.loss == pytest.approx(whole.loss, rel=1e-6) and batched.acc == pytest.approx(whole.acc)


CIFAR_STD = [0.2023, 0.1994, 0.2010]  # the flatness paper's code's std (config/papers/flatness.yaml)


def cifar_init_settings(dataset: str, spec: dict, channel_std: list[float] | None = None) -> dict:
    """The planned settings of init `pre` (`spec`) for runs on `dataset`, whose `datasets` entry holds `channel_std`."""
    options = {"proxy_fraction": 0.2, **({"channel_std": channel_std} if channel_std else {})}
    defaults = {"init": "random", "algorithm": "fedavg", "dataset": dataset}
    config = check_config(config_with({"pre": {"kind": "pretrained", "epochs": 1, **spec}},
                                      [{"alpha": "iid"}, {"alpha": "iid", "init": "pre"}], datasets={dataset: options},
                                      experiment_defaults=defaults), SCHEMA)
    return init_settings(config, build_runs(config), dataset, "cnn_small", "pre")


@pytest.mark.parametrize(("dataset", "proxy", "channel_std", "expected_mean", "expected_std"), [
    # the clients' override of the std, with CIFAR-10's published mean (not CIFAR-100's statistics)
    ("cifar10", "cifar100", CIFAR_STD, (0.4914, 0.4822, 0.4465), CIFAR_STD),
    ("cifar10", "cifar100", None, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ("cifar100", "cifar10", None, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
])
def test_a_proxy_dataset_is_normalised_with_the_clients_statistics(tmp_path, dataset, proxy, channel_std,
                                                                    expected_mean, expected_std):
    # Prepare: a planned pretrained init on another data set, read from the folder of both
    write_fake_cifar10(tmp_path)
    write_fake_cifar100(tmp_path)
    settings = cifar_init_settings(dataset, {"proxy_dataset": proxy}, channel_std)
    settings["dataset_options"]["data_dir"] = str(tmp_path)  # where the job reads (with_data_locations)
    source = load_source(proxy, data_dir=str(tmp_path))
    pixels = torch.from_numpy(source.train_images[source.train_index]).float() / 255

    # Execute
    proxy_x = proxy_data(InitJob.from_settings(settings)).x

    # Assert: the clients' pixel-to-input map, as a proxy_dir's images get (the body sees the clients' scale)
    mean, std = torch.tensor(expected_mean).view(1, 3, 1, 1), torch.tensor(expected_std).view(1, 3, 1, 1)
    assert torch.allclose(proxy_x, (pixels - mean) / std, atol=1e-5)


def test_a_proxy_dataset_init_planned_before_the_clients_normalisation_keeps_the_proxy_s_own(tmp_path):
    # Prepare: a finished job's settings, from before the field (its baseline: the proxy's own statistics)
    write_fake_cifar10(tmp_path)
    write_fake_cifar100(tmp_path)
    settings = cifar_init_settings("cifar10", {"proxy_dataset": "cifar100"}, CIFAR_STD)
    settings.pop("proxy_normalisation")
    settings["dataset_options"]["data_dir"] = str(tmp_path)
    source = load_source("cifar100", data_dir=str(tmp_path))
    pixels = torch.from_numpy(source.train_images[source.train_index]).float() / 255

    # Execute
    proxy_x = proxy_data(InitJob.from_settings(settings)).x

    # Assert: CIFAR-100's published statistics, as the job computed with
    mean, std = torch.tensor((0.5071, 0.4865, 0.4409)).view(1, 3, 1, 1), torch.tensor((0.2673, 0.2564, 0.2762))
    assert torch.allclose(proxy_x, (pixels - mean) / std.view(1, 3, 1, 1), atol=1e-5)


@pytest.mark.parametrize(("dataset", "spec", "expected"), [
    ("cifar10", {"proxy_dataset": "cifar100"}, "clients"),
    ("cifar100", {"proxy_dataset": "cifar10"}, "clients"),
    ("cifar10", {}, None),  # the clients' own proxy split: their statistics already
    ("cifar10", {"proxy_dir": "/data/imagenet32"}, None),  # normalised with the clients' statistics already
])
def test_only_a_proxy_dataset_init_s_settings_carry_the_clients_normalisation(dataset, spec, expected):
    # Execute
    settings = cifar_init_settings(dataset, spec)

    # Assert: the field off its baseline reruns those inits alone; the others' settings are as before it
    assert settings.get("proxy_normalisation") == expected


def test_a_pretrained_init_with_another_proxy_normalisation_is_refused():
    with pytest.raises(ValueError, match=r"proxy_normalisation must be one of clients, own, got 'proxy'"):
        PretrainedInit.from_settings({**to_settings(pretrained_job()), "proxy_normalisation": "proxy"})


def test_pretrain_defaults_match_the_schema():
    props = SCHEMA["properties"]["inits"]["additionalProperties"]["properties"]
    defaults = PretrainConfig()

    for key in ("epochs", "lr", "batch_size", "momentum", "weight_decay", "seed"):
        assert props[key]["default"] == getattr(defaults, key)
    assert set(props) == {k for keys in KIND_KEYS.values() for k in keys}
    assert all("description" in v and "default" in v for v in props.values())


# -- iid_warmup ------------------------------------------------------------------------------------
def warmup_settings(tmp_path, rounds: int = 1, **training) -> dict:
    """An IID warm-up init's settings over 4 digits clients, its partition written to tmp_path."""
    ds = load_dataset("digits", proxy_fraction=0.2)
    labels = ds.y_train.numpy()
    part = make_partition(labels, 4, float("inf"), 0, 10, 1000)
    save_partition(tmp_path / "partition.npz", part, labels, 10, {"dataset": "digits"})
    training = {"rounds": 30, "local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
                "save_clients_at": [1], "eval_batch_size": 1024, "device": "cpu", "client_parallel": "auto",
                "client_chunk_size": 64, "bf16_autocast": False, **training}
    return {**DIGITS, "init": "warm", "kind": "iid_warmup", "seed": 0, "rounds": rounds, "num_clients": 4,
            "partition_seed": 0, "training": {}, "dataset_options": OPTIONS,
            "partition": {"min_size": 10, "max_tries": 1000}, "warmup_training": training, "device": "cpu"}


def test_iid_warmup_is_fedavg_rounds_on_the_iid_split(tmp_path):
    ds = load_dataset("digits", proxy_fraction=0.2)
    labels = ds.y_train.numpy()
    settings = warmup_settings(tmp_path)

    init_job(settings, tmp_path / "init.pt", {"partition": str(tmp_path / "partition.npz")}, tmp_path / "prog")

    init = load_trajectory(tmp_path / "init.pt")
    split = load_partition(tmp_path / "partition.npz", labels)
    data = FederatedData(ds.x_train, ds.y_train, [torch.as_tensor(i) for i in split.client_indices], ds.x_test,
                         ds.y_test)
    model = inits_mod.random_model(InitJob.from_settings(settings))
    start = flatten_params(model)
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=32, lr=0.05, momentum=0.9, seed=0)
    expected = run_federated(model, data, make_strategy("fedavg"), cfg)
    assert torch.equal(init.params[0], expected.params[-1])
    assert not torch.equal(init.params[0], start)
    assert init.meta["kind"] == "iid_warmup" and init.meta["rounds"] == 1 and init.meta["test_acc"] > 0
    assert not (tmp_path / "prog").exists()



@pytest.mark.parametrize(("client_parallel", "capture", "execution"), [
    ("sequential", None, "sequential"),  # a CPU's: no step captured, no `capture`
    ("vectorized", None, "vectorized"),
    # a card's captured steps, as run_federated reports them there (`fl.engine.capture_of`)
    ("vectorized", {"graphs": 1, "replays": 3, "eager_steps": 1, "evictions": 0, "refusals": 0},
     "vectorized, captured"),
])
def test_an_iid_warmup_records_how_its_rounds_trained_as_a_run_does(tmp_path, monkeypatch, client_parallel, capture,
                                                                    execution):
    # Prepare: an unbroken warm-up; where a card would have captured, its result says so
    settings = warmup_settings(tmp_path, client_parallel=client_parallel)
    real = inits_mod.run_federated

    def federated(*args, **kwargs):
        result = real(*args, **kwargs)
        assert result.capture is None and result.execution == client_parallel  # what the CPU did
        return result if capture is None else replace(result, capture=capture, execution=execution)

    monkeypatch.setattr(inits_mod, "run_federated", federated)
    manifest.start_notes()

    # Execute
    init_job(settings, tmp_path / "init.pt", {"partition": str(tmp_path / "partition.npz")}, tmp_path / "prog")

    # Assert: in the job's record, not in the init's meta, and without attempts (an unbroken job lists none)
    init = load_trajectory(tmp_path / "init.pt")
    assert manifest.noted("execution") == execution and manifest.noted("capture") == capture
    assert manifest.noted("attempts") is None and not {"execution", "capture"} & set(init.meta)

# -- attempts of a resumed init --------------------------------------------------------------------
ANOTHER_CPU = "another CPU"
A, B = "a" * 40, "b" * 40  # the codes of the killed attempt and of the one that resumed it (a `git pull` between)


def _killed(monkeypatch, kind: str, when: str, run) -> None:
    """Call `run()` (an init job) and kill it after its first epoch or round is kept, or after its last, before its
    model file is written."""
    from helpers.resume import killed_after_round, killed_at_call

    if when == "after_last":
        killed_at_call(monkeypatch, inits_mod, "_save", 1, run)
    elif kind == "pretrained":
        killed_at_call(monkeypatch, inits_mod, "atomic_path", 2, run)  # at the second epoch's progress
    else:
        killed_after_round(monkeypatch, 1, run)


@pytest.mark.parametrize(("kind", "when", "expected", "codes"), [
    ("pretrained", None, [], None),  # unbroken: no attempts and no codes, its meta as before
    ("pretrained", "after_first", [(1, "here", A), (2, ANOTHER_CPU, B)], [A, B]),
    # the resumed call trains none: where and by which code the epochs trained; it wrote the model by B
    ("pretrained", "after_last", [(1, "here", A)], [A, B]),
    # progress saved before attempts were kept: its epochs by an attempt of unknown compute and code
    ("pretrained", "old_progress", [(1, None, None), (2, ANOTHER_CPU, B)], ["unrecorded", B]),
    ("iid_warmup", None, [], None),
    ("iid_warmup", "after_first", [(1, "here", A), (2, ANOTHER_CPU, B)], [A, B]),
    ("iid_warmup", "after_last", [(1, "here", A)], [A, B]),
])
def test_an_init_resumed_on_another_device_records_each_attempt_and_the_weights_of_an_unbroken_one(
        tmp_path, monkeypatch, kind, when, expected, codes):
    # Prepare: a 2-epoch pretraining or 3-round warm-up, unbroken (the reference); killed while running code A, and
    # resumed by code B where describe_compute names another device
    monkeypatch.setattr(manifest, "_NOTES", {})  # the jobs' notes, gone with the test
    settings, inputs, first = ((pretrained_settings(), {}, "from_epoch") if kind == "pretrained" else
                               (warmup_settings(tmp_path, rounds=3), {"partition": str(tmp_path / "partition.npz")},
                                "from_round"))
    here = inits_mod.describe_compute(torch.device("cpu"), "fp32")["device_name"]
    init_job(settings, tmp_path / "reference.pt", inputs, tmp_path / "reference")
    reference = load_trajectory(tmp_path / "reference.pt")
    if when is not None:
        monkeypatch.setattr(progress_mod, "code_version_label", lambda: A)
        _killed(monkeypatch, kind, when, lambda: init_job(settings, tmp_path / "init.pt", inputs, tmp_path / "prog"))
        if when == "old_progress":
            state = torch.load(tmp_path / "prog" / "state.pt", weights_only=True)
            del state["attempts"]
            torch.save(state, tmp_path / "prog" / "state.pt")
        real = inits_mod.describe_compute
        monkeypatch.setattr(inits_mod, "describe_compute",
                            lambda device, precision: {**real(device, precision), "device_name": ANOTHER_CPU})
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: B)
    manifest.start_notes()

    # Execute: unbroken, or resumed
    init_job(settings, tmp_path / "init.pt", inputs, tmp_path / "prog")
    init = load_trajectory(tmp_path / "init.pt")

    # Assert: the job's record holds each attempt's first epoch or round, device and code (an unbroken init: none),
    # and every code where they differ, the init's meta none of them; the meta's compute that of the last call, and
    # the weights of the unbroken init bit for bit
    attempts = manifest.noted("attempts") or []
    assert (manifest.noted("attempts") is not None) == bool(expected) and "attempts" not in init.meta
    assert [(a[first], a.get("device_name"), a.get("code")) for a in attempts] == [
        (n, here if d == "here" else d, code) for n, d, code in expected]
    assert manifest.noted("codes") == codes
    assert all((a["device"], a["precision_used"]) == ("cpu", "fp32") for a in attempts if "device_name" in a)
    if kind == "iid_warmup":  # a train job's attempt: its memory settings too
        assert all({k: a[k] for k in MEMORY_KEYS} == {k: settings["warmup_training"][k] for k in MEMORY_KEYS}
                   for a in attempts)
    assert init.meta["device_name"] == (here if when is None else ANOTHER_CPU)
    assert torch.equal(init.params, reference.params) and torch.equal(init.buffers, reference.buffers)
    assert (init.meta["kind"], init.meta["init"]) == (kind, settings["init"])


@pytest.mark.parametrize("kind", ["pretrained", "iid_warmup"])
@pytest.mark.parametrize(("killed_after", "attempts"), [
    (2, [1, 3]),
    (3, [1]),  # after its last epoch or round, before its model file: the resumed call trains none
])
def test_an_init_resumed_after_a_kill_writes_the_bytes_of_an_unbroken_one(tmp_path, monkeypatch, kind, killed_after,
                                                                          attempts):
    # Prepare: a 3-epoch pretraining or 3-round warm-up, unbroken (the reference); killed after its second epoch or
    # round, or after its last before its model file is written
    from helpers.resume import killed_after_round, killed_at_call

    monkeypatch.setattr(manifest, "_NOTES", {})  # the jobs' notes, gone with the test
    settings, inputs = ((pretrained_settings(epochs=3), {}) if kind == "pretrained" else
                        (warmup_settings(tmp_path, rounds=3), {"partition": str(tmp_path / "partition.npz")}))
    init_job(settings, tmp_path / "reference.pt", inputs, tmp_path / "reference")

    def run():
        init_job(settings, tmp_path / "init.pt", inputs, tmp_path / "progress")

    if kind == "iid_warmup":
        killed_after_round(monkeypatch, killed_after, run)
    elif killed_after < 3:  # at the progress of the epoch after it
        killed_at_call(monkeypatch, inits_mod, "atomic_path", killed_after + 1, run)
    else:
        killed_at_call(monkeypatch, inits_mod, "_save", 1, run)
    manifest.start_notes()

    # Execute
    run()

    # Assert: init.pt holds the bytes of the unbroken init, which the progress keys of the runs from it hold
    # (`stages.progress.progress_key`); the job's record the epoch or round each attempt began at
    assert (tmp_path / "init.pt").read_bytes() == (tmp_path / "reference.pt").read_bytes()
    first = "from_epoch" if kind == "pretrained" else "from_round"
    assert [a[first] for a in manifest.noted("attempts")] == attempts


# -- continue --------------------------------------------------------------------------------------
def test_continue_starts_from_the_final_global_model(tmp_path):
    model = inits_mod.random_model(random_job())
    meta = inits_mod.model_meta_for(random_job(), model)
    params = torch.randn(4, flatten_params(model).numel(), generator=torch.Generator().manual_seed(0))
    save_trajectory(tmp_path / "trajectory.pt", params, torch.zeros(4, 0), torch.arange(4), meta,
                    {"status": "ok", "seed": 7})
    settings = {**DIGITS, "init": "cont", "kind": "continue", "run": {"alpha": 1.0}, "source_run_id": "x/y"}

    init_job(settings, tmp_path / "init.pt", {"trajectory": str(tmp_path / "trajectory.pt")})

    init = load_trajectory(tmp_path / "init.pt")
    assert torch.equal(init.params[0], params[3])
    assert init.meta["source_round"] == 3 and init.meta["source_run_id"] == "x/y"


def swa_source(path) -> tuple[torch.Tensor, dict]:
    """A source run's trajectory at `path` that keeps an SWA model (rounds 2 and 3) beside its 4 global models:
    (the global models, the SWA model)."""
    model = inits_mod.random_model(random_job())
    meta = inits_mod.model_meta_for(random_job(), model)
    params = torch.randn(4, flatten_params(model).numel(), generator=torch.Generator().manual_seed(0))
    swa = {"params": params[2:].mean(0), "buffers": torch.zeros(0), "rounds": (2, 3)}
    save_trajectory(path, params, torch.zeros(4, 0), torch.arange(4), meta, {"status": "ok", "seed": 7}, swa=swa)
    return params, swa


@pytest.mark.parametrize("source_swa", [False, True])
def test_continue_from_a_run_with_swa_starts_from_its_final_global_model_not_its_swa_average(tmp_path, source_swa):
    # Prepare: a source run that keeps an SWA model beside its global models
    params, swa = swa_source(tmp_path / "trajectory.pt")
    settings = {**DIGITS, "init": "cont", "kind": "continue", "run": {"alpha": 1.0}, "source_run_id": "x/y",
                **({"source_swa": True} if source_swa else {})}

    # Execute
    init_job(settings, tmp_path / "init.pt", {"trajectory": str(tmp_path / "trajectory.pt")})

    # Assert: the global model of the last round, as the schema promises, and the record says which model it is
    init = load_trajectory(tmp_path / "init.pt")
    assert torch.equal(init.params[0], params[3]) and not torch.equal(init.params[0], swa["params"])
    assert init.meta["source_model"] == "global"


def test_continue_with_source_model_swa_starts_from_the_swa_average(tmp_path):
    # Prepare
    params, swa = swa_source(tmp_path / "trajectory.pt")
    settings = {**DIGITS, "init": "cont", "kind": "continue", "run": {"alpha": 1.0}, "source_run_id": "x/y",
                "source_swa": True, "source_model": "swa"}

    # Execute
    init_job(settings, tmp_path / "init.pt", {"trajectory": str(tmp_path / "trajectory.pt")})

    # Assert: the SWA average (the mean of rounds 2 and 3), not the last global model, and the record says so
    init = load_trajectory(tmp_path / "init.pt")
    assert torch.equal(init.params[0], swa["params"]) and not torch.equal(init.params[0], params[3])
    assert init.meta["source_model"] == "swa" and init.meta["swa_rounds"] == [2, 3]


def test_continue_from_the_swa_average_of_a_run_without_one_is_refused(tmp_path):
    # Prepare: a source run without SWA
    model = inits_mod.random_model(random_job())
    meta = inits_mod.model_meta_for(random_job(), model)
    save_trajectory(tmp_path / "t.pt", flatten_params(model).repeat(2, 1), torch.zeros(2, 0), torch.arange(2), meta,
                    {"status": "ok"})

    # Execute / Assert: refused, naming the option to use, and nothing written
    with pytest.raises(ValueError, match=r"SWA average of run x/y, but .*t\.pt holds none.*source_model: global"):
        init_job({**DIGITS, "init": "cont", "kind": "continue", "run": {}, "source_run_id": "x/y",
                  "source_model": "swa"}, tmp_path / "i.pt", {"trajectory": tmp_path / "t.pt"})
    assert not (tmp_path / "i.pt").exists()


def test_continue_refuses_a_diverged_source_run(tmp_path):
    # Prepare: a source run that diverged (its last kept model is not finite)
    model = inits_mod.random_model(random_job())
    meta = inits_mod.model_meta_for(random_job(), model)
    params = torch.randn(3, flatten_params(model).numel())
    params[2] = float("nan")
    save_trajectory(tmp_path / "t.pt", params, torch.zeros(3, 0), torch.arange(3), meta, {"status": "diverged"})

    # Execute / Assert: refused before any file is written, naming the run and its status
    with pytest.raises(ValueError, match=r"source run x/y of init cont has status diverged"):
        init_job({**DIGITS, "init": "cont", "kind": "continue", "run": {}, "source_run_id": "x/y"},
                 tmp_path / "i.pt", {"trajectory": tmp_path / "t.pt"})
    assert not (tmp_path / "i.pt").exists()


def test_continue_refuses_another_model(tmp_path):
    model = inits_mod.random_model(random_job(model="mlp"))
    meta = ModelMeta("mlp", 10, 1, 8, {}, (), ())
    save_trajectory(tmp_path / "t.pt", flatten_params(model)[None], torch.zeros(1, 0), torch.zeros(1), meta, {})

    with pytest.raises(ValueError, match="holds a mlp"):
        init_job({**DIGITS, "init": "cont", "kind": "continue", "run": {}, "source_run_id": "x/y"}, tmp_path / "i.pt",
                 {"trajectory": tmp_path / "t.pt"})


# -- config checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("inits", "experiments", "extra", "match"), [
    ({"cont": {"kind": "continue", "run": {"alpha": 0.5}}}, [{"alpha": "iid"}, {"alpha": 0.5, "init": "cont"}], {},
     r"inits\.cont\.run: continue chain forms a cycle"),
    ({"cont": {"kind": "continue", "run": {"alpha": 0.5}}}, [{"alpha": "iid"}, {"alpha": 0.5},
                                                              {"alpha": 0.5, "init": "cont"}], {},
     r"inits\.cont\.run: 2 runs match .*add one of \['init'\]"),
    ({"cont": {"kind": "continue", "run": {"alpha": 1.0}}}, [{"alpha": "iid"}, {"alpha": 0.5, "init": "cont"}], {},
     r"inits\.cont\.run: no run of the config matches"),
    ({"cont": {"kind": "continue"}}, [{"alpha": "iid"}, {"alpha": 0.5, "init": "cont"}], {},
     r"inits\.cont\.run: a continue init needs a run selector"),
    ({"pre": {"kind": "pretrained"}}, [{"alpha": "iid"}, {"init": "pre"}],
     {"datasets": {"digits": {"proxy_fraction": 0.0}}}, r"inits\.pre: .*needs datasets\.digits\.proxy_fraction > 0"),
    ({"pre": {"kind": "pretrained", "proxy_dataset": "digits"}}, [{"alpha": "iid"}, {"init": "pre"}], {},
     r"inits\.pre\.proxy_dataset: digits is the clients' own dataset"),
    ({"pre": {"kind": "pretrained", "proxy_dataset": "cifar100"}}, [{"alpha": "iid"}, {"init": "pre"}], {},
     r"inits\.pre\.proxy_dataset: cifar100 gives 3x32x32 images, which do not fit digits models \(1x8x8 images\)"),
    ({"pre": {"kind": "pretrained", "proxy_dir": "/x"}}, [{"alpha": "iid"}, {"init": "pre"}], {},
     r"inits\.pre\.proxy_dir: down-sampled ImageNet is 3x32x32"),
    ({"warm": {"kind": "iid_warmup", "training": {"lrr": 0.1}}}, [{"alpha": "iid"}, {"init": "warm"}], {},
     r"inits\.warm\.training: unknown training key 'lrr'"),
    ({"w": {"kind": "warmup"}}, None, {}, r"inits\.w\.kind: 'warmup' is not valid"),
    # the proxy split's size is the dataset's proxy_fraction: a subset of it was silently ignored
    ({"pre": {"kind": "pretrained", "max_samples": 50}}, [{"alpha": "iid"}, {"init": "pre"}], {},
     r"inits\.pre\.max_samples: a subset of proxy_dataset's or proxy_dir's images"),
    ({"warm": {"kind": "iid_warmup", "training": {"swa": {"cycle": 2}}}}, [{"alpha": "iid"}, {"init": "warm"}], {},
     r"inits\.warm\.training\.swa: an IID warm-up is plain FedAvg and keeps its last global model"),
    # another kind's key written at its schema default is ignored all the same
    ({"warm": {"kind": "iid_warmup", "lr": 0.05}}, [{"alpha": "iid"}, {"init": "warm"}], {},
     r"inits\.warm: kind iid_warmup does not read lr \(the warm-up's own training keys, such as lr, go in its "),
    ({"r": {"kind": "random", "seed": 0, "lr": 0.05, "epochs": 20}}, [{"alpha": "iid"}, {"init": "r"}], {},
     r"inits\.r: kind random does not read lr, epochs; the kinds that do: lr: pretrained; epochs: pretrained"),
    ({"pre": {"kind": "pretrained", "rounds": 1}}, [{"alpha": "iid"}, {"init": "pre"}], {},
     r"inits\.pre: kind pretrained does not read rounds; the kinds that do: rounds: iid_warmup"),
])
def test_bad_inits_fail_at_config_check(inits, experiments, extra, match):
    with pytest.raises(ConfigError, match=match):
        check_config(config_with(inits, experiments, **extra), SCHEMA)


@pytest.mark.parametrize(("test_fraction", "proxy_fraction", "problem"), [
    (0.25, 0.0001, r"holds 0 samples \(proxy_fraction 0\.0001 of 1348 training samples\), fewer than its 10 "
                   r"classes, which a split stratified by class cannot all hold; set datasets\.digits\.proxy_fraction "
                   r"to at least 0\.0075, or set proxy_dataset / proxy_dir"),
    (0.25, 0.001, r"holds 1 samples \(proxy_fraction 0\.001 of 1348 training samples\).*at least 0\.0075,"),
    (0.25, 0.007, r"holds 9 samples"),
    (0.3, 0.0075, r"holds 9 samples \(proxy_fraction 0\.0075 of 1258 training samples\).*at least 0\.008,"),
    (0.25, 0.0075, None),
    (0.3, 0.008, None),
    (0.25, 0.2, None),
])
def test_a_proxy_split_with_fewer_samples_than_classes_fails_at_config_check(test_fraction, proxy_fraction, problem):
    # Prepare: a pretrained init on digits' own proxy split, round(proxy_fraction x its training pool) samples
    options = {"test_fraction": test_fraction, "proxy_fraction": proxy_fraction}
    config = config_with({"pre": {"kind": "pretrained"}}, [{"alpha": "iid"}, {"init": "pre"}],
                         datasets={"digits": options})

    # Execute / Assert: refused with its size and a fraction that holds every class, or accepted
    if problem is not None:
        with pytest.raises(ConfigError, match=r"inits\.pre: the proxy split of digits " + problem):
            check_config(config, SCHEMA)
    else:
        check_config(config, SCHEMA)
        source = load_source("digits", test_fraction=test_fraction, proxy_fraction=proxy_fraction)
        assert len(np.unique(source.train_labels[source.proxy_index])) == 10


@pytest.mark.parametrize("test_fraction", [0.25, 0.3, 0.5])
@pytest.mark.parametrize("proxy_fraction", [0.0001, 0.00037, 0.001, 0.0074, 0.0075, 0.2, 0.5])
def test_the_planned_proxy_split_size_is_the_split_s(test_fraction, proxy_fraction):
    options = {"test_fraction": test_fraction, "proxy_fraction": proxy_fraction}

    source = load_source("digits", seed=3, **options)

    assert proxy_split_size("digits", options) == (len(source.proxy_index), len(source.train_index) +
                                                   len(source.proxy_index))


@pytest.mark.parametrize(("dataset", "proxy_fraction", "problem"), [
    ("cifar10", 0.0001, r"holds 5 samples \(proxy_fraction 0\.0001 of 50000 .*at least 0\.0002,"),
    ("cifar10", 0.0002, None),
    ("cifar100", 0.001, r"holds 50 samples .*fewer than its 100 classes.*at least 0\.002,"),
    # LEAF's files hold fewer samples than the data set: its size is a bound
    ("femnist", 0.00005, r"holds at most 40 samples \(proxy_fraction 5e-05 of at most 805263 .*at least 7\.7e-05,"),
    # no class per sample: a split that holds any sample will do
    ("reddit", 1e-9, r"holds at most 0 samples .*\), no sample; set datasets\.reddit\.proxy_fraction to at least "
                     r"1\.8e-08,"),
    ("reddit", 1e-7, None),
])
def test_a_proxy_split_too_small_is_found_without_the_data(dataset, proxy_fraction, problem):
    found = proxy_split_problem(dataset, {"test_fraction": 0.25, "proxy_fraction": proxy_fraction})

    if problem is None:
        assert found == ""
    else:
        assert re.match(r"the proxy split of " + dataset + " " + problem, found)


# A writers' proxy split of a `max_clients` read: the round(proxy_fraction x max_clients / (1 - proxy_fraction)) writers
# the reader reads after the first max_clients, none where that rounds to 0
WRITERS = {"test_fraction": 0.25, "proxy_split": "writers"}


@pytest.mark.parametrize(("dataset", "options", "problem"), [
    ("stackoverflow", {"max_clients": 100, "proxy_fraction": 0.001},
     r"holds no writer \(proxy_split: writers reads round\(proxy_fraction x max_clients / \(1 - proxy_fraction\)\) "
     r"writers after the first max_clients as its proxy: 0 for proxy_fraction 0\.001 and max_clients 100\), so it is "
     r"empty; set datasets\.stackoverflow\.proxy_fraction to at least 0\.005, or set proxy_dataset / proxy_dir$"),
    ("stackoverflow", {"max_clients": 100, "proxy_fraction": 0.005}, None),
    # 0.04 x 12 / 0.96 is a half, which round() takes to 0 (to even): the least fraction is the next one up
    ("reddit", {"max_clients": 12, "proxy_fraction": 0.04}, r"holds no writer .*at least 0\.041,"),
    ("reddit", {"max_clients": 12, "proxy_fraction": 0.041}, None),
    ("reddit", {"max_clients": 1, "proxy_fraction": 0.3}, r"holds no writer .*at least 0\.34,"),
    # the samples split holds rows of the writers read, however few the writers
    ("stackoverflow", {"max_clients": 100, "proxy_fraction": 0.001, "proxy_split": "samples"}, None),
])
def test_a_writers_proxy_split_of_no_writer_is_found_without_the_data(dataset, options, problem):
    # Execute
    found = proxy_split_problem(dataset, {**WRITERS, **options})

    # Assert
    if problem is None:
        assert found == ""
    else:
        assert re.match(r"the proxy split of " + dataset + " " + problem, found)


def test_the_least_fraction_named_is_the_least_two_digit_one_that_holds_a_writer():
    # Prepare: every max_clients to 2,000, and one whose bound 1 / (2 max_clients + 1) has two significant digits
    # where float arithmetic does not step over it (7,812: 0.000064)
    counts = [*range(1, 2001), 7812]

    # Execute: the fraction each refusal names, and the two-digit fraction below it
    wrong = []
    for max_clients in counts:
        found = proxy_split_problem("reddit", {**WRITERS, "max_clients": max_clients, "proxy_fraction": 1e-9})
        least = float(re.search(r"at least ([0-9.e-]+),", found).group(1))
        below = least - 10 ** (math.floor(math.log10(least) - 1e-9) - 1)
        if proxy_writers_after(max_clients, least) < 1 or proxy_writers_after(max_clients, below) != 0:
            wrong.append((max_clients, least))

    # Assert: the reader reads a proxy writer at the fraction named, none at the one below
    assert wrong == []


@pytest.mark.parametrize(("proxy_fraction", "refused"), [(0.1, True), (0.11, True), (0.12, False), (0.25, False)])
def test_planning_refuses_exactly_the_writers_split_the_reader_leaves_empty(tmp_path, proxy_fraction, refused):
    # Prepare: 12 users in Reddit's files, the first 4 read for the clients (the proxy's users read after them)
    users = {"train": {f"u{u:02d}": [["hi", "there"]] for u in range(12)},
             "test": {f"u{u:02d}": [["hi", "ok"]] for u in range(12)}}
    root = write_reddit(tmp_path / "reddit", users, {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "ok": 4},
                        size=DATASETS["reddit"].num_classes)
    options = {**WRITERS, "data_dir": str(root), "max_clients": 4, "proxy_fraction": proxy_fraction}

    # Execute
    problem = proxy_split_problem("reddit", options)
    source = source_from_options("reddit", options)

    # Assert: refused where the proxy holds no row (at least 0.12 the message says), else a whole user's rows
    assert bool(problem) == refused == (len(source.proxy_index) == 0)
    assert not refused or "at least 0.12," in problem


@pytest.mark.parametrize(("proxy_fraction", "refused"), [(0.0003, True), (0.00034, False)])
def test_a_pretrained_init_on_a_writers_split_of_no_writer_fails_at_config_check(proxy_fraction, refused):
    # Prepare: meta.yaml, whose pretrained init reads Stack Overflow's writers after its first 1,500
    config = copy.deepcopy(load("meta"))
    config["datasets"]["stackoverflow"]["proxy_fraction"] = proxy_fraction

    # Execute
    problems = problems_of(config)

    # Assert: the init's entry names the empty split and the least fraction that holds a writer
    assert ("the proxy split of stackoverflow holds no writer" in problems) == refused
    assert not refused or re.search(r"inits\.\w+: the proxy split of stackoverflow holds no writer .*at least "
                                    r"0\.00034,", problems)


# Without max_clients a writers' split holds out round(proxy_fraction x writers) of the writers in the files, at most
# the writers the data set's publishers count (`DatasetInfo.published_writers`)
@pytest.mark.parametrize(("dataset", "options", "problem"), [
    ("shakespeare", {"proxy_fraction": 0.0004},
     r"holds no writer \(proxy_split: writers holds out round\(proxy_fraction x writers\) of the writers in its "
     r"files, at most the 1129 its publishers count: 0 for proxy_fraction 0\.0004\), so it is empty; set "
     r"datasets\.shakespeare\.proxy_fraction to at least 0\.00045 \(more where its files hold fewer writers\), or "
     r"set proxy_dataset / proxy_dir$"),
    # LEAF's 3,550 FEMNIST writers bound no full run's files (`DatasetInfo.published_writers` None): the job decides
    ("femnist", {"proxy_fraction": 0.0001}, None),
    ("shakespeare", {"proxy_fraction": 0.00045}, None),
    # the raw texts' role files: no published count bounds them
    ("shakespeare", {"proxy_fraction": 0.0004, "source": "raw", "seq_len": 8}, None),
    ("stackoverflow", {"proxy_fraction": 1e-6}, r"holds no writer .*the 342477 its publishers .*at least 1\.5e-06 "),
    ("stackoverflow", {"proxy_fraction": 1.5e-6}, None),
    ("reddit", {"proxy_fraction": 3e-7}, r"holds no writer .*the 1660820 its publishers .*at least 3\.1e-07 "),
    ("reddit", {"proxy_fraction": 3.1e-7}, None),
    ("femnist", {"proxy_fraction": 0.0001, "proxy_split": "samples"}, None),
])
def test_a_writers_proxy_split_of_no_published_writer_is_found_without_the_data(dataset, options, problem):
    # Execute
    found = proxy_split_problem(dataset, {**WRITERS, **options})

    # Assert
    if problem is None:
        assert found == ""
    else:
        assert re.match(r"the proxy split of " + dataset + " " + problem, found)


@pytest.mark.parametrize("dataset", ["shakespeare", "stackoverflow", "reddit"])
def test_a_fraction_refused_for_the_published_writers_holds_none_of_fewer(dataset):
    # Prepare: the least fraction named, and the two-digit fraction below it (the greatest refused)
    writers = DATASETS[dataset].published_writers
    found = proxy_split_problem(dataset, {**WRITERS, "proxy_fraction": 1e-12})
    least = float(re.search(r"at least ([0-9.e-]+) ", found).group(1))
    below = least - 10 ** (math.floor(math.log10(least) - 1e-9) - 1)

    # Execute: the writers each count of writers in the files holds out at that fraction
    held = [held_out_count(n, below) for n in range(writers + 1)]

    # Assert: none, however few the files hold (round() never rises as the count drops); one at the fraction named
    assert proxy_split_problem(dataset, {**WRITERS, "proxy_fraction": below}) != ""
    assert max(held) == 0 and held_out_count(writers, least) == 1


def test_the_least_fraction_named_for_a_published_count_is_the_least_that_holds_a_writer(monkeypatch):
    # Prepare: every published count to 2,000 (1,250's bound, 0.0004, rounds a half to 0: the next fraction up)
    wrong = []
    for writers in range(1, 2001):
        monkeypatch.setitem(DATASETS, "reddit", replace(DATASETS["reddit"], published_writers=writers))

        # Execute: the fraction each refusal names, and the two-digit fraction below it
        found = proxy_split_problem("reddit", {**WRITERS, "proxy_fraction": 1e-9})
        least = float(re.search(r"at least ([0-9.e-]+) ", found).group(1))
        below = least - 10 ** (math.floor(math.log10(least) - 1e-9) - 1)
        if held_out_count(writers, least) < 1 or held_out_count(writers, below) != 0:
            wrong.append((writers, least))

    # Assert: the files' writers give a proxy writer at the fraction named, none at the one below
    assert wrong == []


@pytest.mark.parametrize(("proxy_fraction", "refused"), [(0.04, True), (1 / 24, True), (0.042, False)])
def test_planning_refuses_exactly_the_writers_split_of_the_published_writers_the_reader_leaves_empty(
        tmp_path, monkeypatch, proxy_fraction, refused):
    # Prepare: Reddit's files holding the 12 users its publishers count (1/24 x 12 is a half, which rounds to 0)
    monkeypatch.setitem(DATASETS, "reddit", replace(DATASETS["reddit"], published_writers=12))
    users = {"train": {f"u{u:02d}": [["hi", "there"]] for u in range(12)},
             "test": {f"u{u:02d}": [["hi", "ok"]] for u in range(12)}}
    root = write_reddit(tmp_path / "reddit", users, {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "ok": 4},
                        size=DATASETS["reddit"].num_classes)
    options = {**WRITERS, "data_dir": str(root), "proxy_fraction": proxy_fraction}

    # Execute
    problem = proxy_split_problem("reddit", options)
    source = source_from_options("reddit", options)

    # Assert: refused where the proxy holds no row (at least 0.042 the message says), else a whole user's rows
    assert bool(problem) == refused == (len(source.proxy_index) == 0)
    assert not refused or "at least 0.042 " in problem


@pytest.mark.parametrize(("options", "wording"), [
    ({"proxy_split": "writers"},
     r"holds about 42 samples \(proxy_fraction 1e-05 of at most 4226158 training samples\), fewer than its 96 "
     r"classes, which it cannot all hold; set datasets\.shakespeare\.proxy_fraction to at least 2\.3e-05, or set "
     r"proxy_dataset / proxy_dir$"),
    ({"proxy_split": "samples"},
     r"holds at most 42 samples \(proxy_fraction 1e-05 of at most 4226158 training samples\), fewer than its 96 "
     r"classes, which a split stratified by class cannot all hold; set"),
])
def test_a_proxy_split_of_fewer_samples_than_classes_is_worded_as_its_split_makes_it(options, wording):
    # Prepare: Shakespeare's raw texts, whose roles no published count bounds (so the writers' split says nothing)
    options = {"test_fraction": 0.25, "proxy_fraction": 1e-5, "source": "raw", "seq_len": 8, **options}

    # Execute
    found = proxy_split_problem("shakespeare", options)

    # Assert: a writers' split holds whole writers, about their share of the rows, stratified by nothing
    assert re.match(r"the proxy split of shakespeare " + wording, found)


@pytest.mark.parametrize(("options", "message"), [
    ({"proxy_split": "writers", "proxy_fraction": 0.04},
     r"the proxy split of reddit is empty: proxy_split: writers holds out round\(proxy_fraction x writers\) of the "
     r"writers with training samples in its files \(.*\), 0 at proxy_fraction 0\.04, as its files hold too few "
     r"writers; set a higher datasets\.reddit\.proxy_fraction, proxy_split: samples, or a proxy_dataset / proxy_dir"),
    ({"proxy_split": "samples", "proxy_fraction": 0.0},
     r"the proxy split of reddit is empty: set datasets\.reddit\.proxy_fraction > 0, or a proxy_dataset"),
])
def test_an_empty_proxy_split_fails_at_the_job_start_naming_why(tmp_path, options, message):
    # Prepare: Reddit's files holding 12 users, fewer than planning counts (round(0.04 x 12) = 0 writers)
    users = {"train": {f"u{u:02d}": [["hi", "there"]] for u in range(12)},
             "test": {f"u{u:02d}": [["hi", "ok"]] for u in range(12)}}
    root = write_reddit(tmp_path / "reddit", users, {"<PAD>": 0, "<UNK>": 1, "hi": 2, "there": 3, "ok": 4},
                        size=DATASETS["reddit"].num_classes)
    job = SimpleNamespace(dataset="reddit", proxy_dir=None, proxy_dataset=None,
                          dataset_options={"test_fraction": 0.25, "data_dir": str(root), **options})

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        proxy_data(job)


def test_a_checked_config_checked_again_gives_no_key_of_another_kind():
    # Prepare: every kind, its entry filled with every kind's defaults by the first check
    inits = {"pre": {"kind": "pretrained", "lr": 0.01}, "warm": {"kind": "iid_warmup", "training": {"lr": 0.01}},
             "cont": {"kind": "continue", "run": {"alpha": 0.5, "init": "random"}}}
    config = check_config(config_with(inits, [{"alpha": "iid"}, {"alpha": 0.5}, {"init": "pre"}, {"init": "warm"},
                                              {"alpha": 0.5, "init": "cont"}]), SCHEMA)
    assert config["inits"]["random"]["lr"] == 0.05

    # Execute / Assert: accepted again, as it is
    assert check_config(config, SCHEMA) == config


def test_two_step_continue_cycle_is_detected():
    inits = {"a": {"kind": "continue", "run": {"init": "b"}}, "b": {"kind": "continue", "run": {"init": "a"}}}
    experiments = [{"alpha": "iid"}, {"alpha": 0.5, "init": "a"}, {"alpha": 0.5, "init": "b"}]

    with pytest.raises(ConfigError, match=r"inits\.a\.run: continue chain forms a cycle"):
        check_config(config_with(inits, experiments), SCHEMA)


def test_continue_settings_name_the_source_run():
    config = check_config(config_with({"cont": {"kind": "continue", "run": {"alpha": 0.5, "init": "random"}}},
                                      [{"alpha": "iid"}, {"alpha": 0.5}, {"alpha": 0.5, "init": "cont"}]), SCHEMA)

    settings = init_settings(config, build_runs(config), "digits", "cnn_small", "cont")

    source = [r for r in build_runs(config) if r.init == "random" and r.setting == "0.5"][0]
    assert settings["source_run_id"] == source.run_id
    assert set(settings) - set(DIGITS) == {"init", "kind", "run", "source_run_id"}


def test_continue_settings_mark_a_source_with_swa_only():
    # Prepare: the same continue init from a run of an algorithm with server-side SWA
    config = check_config(config_with({"cont": {"kind": "continue", "run": {"alpha": 0.5, "algorithm": "swa"}}},
                                      [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": "swa"},
                                       {"alpha": 0.5, "init": "cont"}],
                                      algorithms={"fedavg": {"name": "fedavg"},
                                                  "swa": {"name": "fedavg", "training": {"swa": {"cycle": 1}}}}),
                          SCHEMA)

    # Execute
    settings = init_settings(config, build_runs(config), "digits", "cnn_small", "cont")

    # Assert: only such an init's settings change (it took the SWA average before), so only it reruns
    assert settings["source_swa"] is True


SWA_ALGORITHMS = {"fedavg": {"name": "fedavg"},
                  "swa": {"name": "fedavg", "training": {"swa": {"cycle": 1}}},
                  "late": {"name": "fedavg", "training": {"swa": {"cycle": 1, "start_round": 99}}}}


@pytest.mark.parametrize(("source_model", "algorithm", "expected"), [
    ("global", "fedavg", {}),  # the baseline: no key, so no finished init reruns
    ("global", "swa", {"source_swa": True}),
    ("swa", "swa", {"source_swa": True, "source_model": "swa"}),
])
def test_continue_settings_carry_source_model_off_its_baseline_only(source_model, algorithm, expected):
    # Prepare
    selector = {"alpha": 0.5, "algorithm": algorithm, "init": "random"}
    config = check_config(config_with({"cont": {"kind": "continue", "run": selector, "source_model": source_model}},
                                      [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": algorithm},
                                       {"alpha": 0.5, "init": "cont"}], algorithms=SWA_ALGORITHMS), SCHEMA)

    # Execute
    settings = init_settings(config, build_runs(config), "digits", "cnn_small", "cont")

    # Assert
    assert {k: settings[k] for k in ("source_swa", "source_model") if k in settings} == expected


@pytest.mark.parametrize(("algorithm", "why"), [
    ("fedavg", r"trains without SWA \(training\.swa is null\)"),
    ("late", r"starts its SWA phase at round 99, after its last round \(\d+\)"),
])
def test_continue_from_the_swa_average_of_a_run_without_one_fails_at_config_check(algorithm, why):
    selector = {"alpha": 0.5, "algorithm": algorithm, "init": "random"}
    config = config_with({"cont": {"kind": "continue", "run": selector, "source_model": "swa"}},
                         [{"alpha": "iid"}, {"alpha": 0.5, "algorithm": algorithm}, {"alpha": 0.5, "init": "cont"}],
                         algorithms=SWA_ALGORITHMS)

    with pytest.raises(ConfigError, match=rf"inits\.cont\.source_model: swa, but \S+ {why}; continue from"):
        check_config(config, SCHEMA)


@pytest.mark.parametrize(("change", "resumes"), [({"eval_batch_size": 100, "client_chunk_size": 2}, True),
                                                ({"lr": 0.02}, False)])
def test_an_iid_warmup_killed_and_rerun_with_other_memory_settings_resumes(tmp_path, monkeypatch, caplog, change,
                                                                          resumes):
    # Prepare: a 3-round warm-up killed after round 1
    from helpers.resume import killed_after_round

    settings = warmup_settings(tmp_path, rounds=3)
    inputs = {"partition": str(tmp_path / "partition.npz")}
    killed_after_round(monkeypatch, 1, lambda: init_job(settings, tmp_path / "init.pt", inputs, tmp_path / "prog"))
    changed = {**settings, "warmup_training": {**settings["warmup_training"], **change}}

    # Execute
    with caplog.at_level(logging.INFO):
        init_job(changed, tmp_path / "init.pt", inputs, tmp_path / "prog")

    # Assert
    assert ("resuming after round 1/3" in caplog.text) == resumes


@pytest.mark.parametrize(("training", "own", "warned"), [
    ({"lr_schedule": "cosine"}, {}, True),                      # anneals over its own 1 round
    ({"lr_warmup": 2}, {}, True),                               # warms up over its own round
    ({"lr_schedule": "cosine"}, {"lr_schedule": "constant"}, False),  # its own constant lr
    ({"lr_schedule": "cosine", "lr_schedule_over": "local_steps"}, {}, False),  # restarts every round, as the runs'
    ({}, {}, False),
])
def test_an_iid_warmup_under_a_schedule_over_its_own_rounds_is_warned_about(training, own, warned):
    # Prepare: a valid config whose warm-up inherits (or overrides) the runs' lr schedule
    config = config_with({"warm": {"kind": "iid_warmup", "training": own}}, [{"alpha": "iid"}, {"init": "warm"}])
    config["training"].update(training)
    check_config(config, SCHEMA)

    # Execute
    lines = [line for line in config_warnings(config, build_runs(config)) if line.startswith("inits.")]

    # Assert: one line naming the warm-up and the setting that keeps its lr the runs' own
    assert lines == ([f"inits.warm: the IID warm-up trains its 1 round(s) under lr_schedule "
                      f"{training.get('lr_schedule', 'constant')} (lr_warmup {training.get('lr_warmup', 0)}) over "
                      "rounds, its own rounds, not the runs' 3: its lr is not the runs' first one; set "
                      "inits.warm.training: {lr_schedule: constant, lr_warmup: 0} to warm up at the runs' lr"]
                     if warned else [])


@pytest.mark.parametrize(("proxy", "warned"), [
    ({"proxy_data_dir": "/data/cifar100"}, "without proxy_dataset"),               # the own proxy split: not read
    ({"proxy_data_dir": "/data/c", "proxy_dir": "/data/imagenet32"}, "from proxy_dir"),  # ImageNet read instead
    ({"proxy_data_dir": "/data/c", "proxy_dataset": "cifar100"}, None),           # read: the proxy data set's
    ({"proxy_dataset": "cifar100"}, None),
    ({}, None),
])
def test_a_pretrained_init_s_proxy_folder_that_nothing_reads_is_warned_about(proxy, warned):
    # Prepare: the inits of runs from a pretrained init with these proxy settings (and a random one beside)
    from fedscape.plan.init import unread_proxy_folder_warnings

    config = {"inits": {"pre": {"kind": "pretrained", **NO_PROXY, **proxy}, "random": {"kind": "random"}}}
    runs = [SimpleNamespace(init="pre"), SimpleNamespace(init="random")]

    # Execute
    lines = unread_proxy_folder_warnings(config, runs)

    # Assert: one line naming the folder, why it is not read and what to change
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"inits.pre.proxy_data_dir ({proxy['proxy_data_dir']}) is not "
                                                       "read") and warned in lines[0]


def test_the_workflow_warns_of_an_unread_proxy_folder():
    # Prepare: the tiny config's pretrained init given a folder, without a proxy data set
    config = config_with({"pre": {"kind": "pretrained", "epochs": 1, "proxy_data_dir": "/data/x"}},
                         [{"alpha": "iid"}, {"init": "pre"}])
    check_config(config, SCHEMA)

    # Execute
    lines = [line for line in config_warnings(config, build_runs(config)) if line.startswith("inits.")]

    # Assert
    assert len(lines) == 1 and lines[0].startswith("inits.pre.proxy_data_dir (/data/x) is not read")


PRETRAINED = {"kind": "pretrained", **NO_PROXY}


@pytest.mark.parametrize(("inits", "fraction", "warned"), [
    # nothing reads the split: another proxy, or another kind
    ({"pre": {**PRETRAINED, "proxy_dataset": "cifar100"}}, 0.2, True),
    ({"pre": {**PRETRAINED, "proxy_dir": "/data/imagenet32"}}, 0.2, True),
    ({"warm": {"kind": "iid_warmup"}, "cont": {"kind": "continue"}}, 0.2, True),
    ({}, 0.05, True),  # the random init alone
    # read by a pretrained init on it, beside others
    ({"pre": PRETRAINED, "other": {**PRETRAINED, "proxy_dataset": "cifar100"}}, 0.2, False),
    # no split
    ({"pre": {**PRETRAINED, "proxy_dataset": "cifar100"}}, 0.0, False),
])
def test_a_proxy_split_that_no_init_reads_is_warned_about(inits, fraction, warned):
    # Prepare: runs on cifar10 from the random init and these; runs on cifar100 from a pretrained init on its split
    config = {"datasets": {"cifar10": {"proxy_fraction": fraction}, "cifar100": {"proxy_fraction": 0.2}},
              "inits": {"random": {"kind": "random"}, "split": PRETRAINED, **inits}}
    runs = [*(SimpleNamespace(dataset="cifar10", init=label) for label in ["random", *inits]),
            SimpleNamespace(dataset="cifar100", init="split")]

    # Execute
    lines = unread_proxy_split_warnings(config, runs)

    # Assert: one line for cifar10, naming the fraction, that the split is the clients' and what to set
    labels = ", ".join(sorted(["random", *inits]))
    assert lines == ([f"datasets.cifar10.proxy_fraction: a proxy split of {fraction:g} of the training samples is "
                      "held out of the clients' pool, but no init of the runs on cifar10 reads it (they start from "
                      f"{labels}; only a pretrained init without proxy_dataset or proxy_dir does); set "
                      "datasets.cifar10.proxy_fraction: 0.0 to give those samples to the clients (which reruns every "
                      "job of cifar10)"] if warned else [])
