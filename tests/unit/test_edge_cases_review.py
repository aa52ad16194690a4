"""Edge cases found in review: an evaluation with nothing to count, a training batch whose every position is ignored,
a final_models plane whose models do not span it, and a checkout git refuses to read."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import stat
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from fedscape.analysis.landscape.planes import load_plane
from fedscape.analysis.landscape.stage import landscape_plane_job
from fedscape.core import manifest
from fedscape.core.runs import DIVERGED
from fedscape.data.federated import FederatedData
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import ModelMeta, save_trajectory
from fedscape.models.evaluate import evaluate
from fedscape.models.loss import IGNORE_INDEX, masked_mean_loss, mean_loss, stacked_mean_loss
from fedscape.models.params import flatten_params
from fedscape.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

VOCAB, SEQ = 7, 6
TINY = {"char_gpt": {"vocab_size": VOCAB, "seq_len": SEQ, "num_blocks": 1, "num_heads": 2, "embed_dim": 8},
        "char_lstm": {"vocab_size": VOCAB, "seq_len": SEQ, "embed_dim": 3, "hidden_size": 5}}


def sequence_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, VOCAB, VOCAB, SEQ, targets="every", **TINY[name])


def sequence_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token windows [n, SEQ] and their every-position targets (the window shifted by one)."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (n, SEQ + 1), generator=g)
    return stream[:, :SEQ], stream[:, 1:].clone()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- evaluate: a split with no counted target -----------------------------------------------------------
@pytest.mark.parametrize("split", ["no samples", "every position ignored"])
def test_evaluate_of_a_split_with_nothing_to_count_is_nan_not_zero(split):
    # Prepare: an empty classifier split, or a sequence split whose every target is padding
    if split == "no samples":
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    else:
        model = sequence_model("char_lstm")
        x, y = sequence_data(5)
        y[:] = IGNORE_INDEX

    # Execute
    res = evaluate(model, x, y, batch_size=2)

    # Assert: no value, not a perfect loss and a total miss
    assert res.n == 0
    assert math.isnan(res.loss) and math.isnan(res.acc) and math.isnan(res.error)


def test_an_evaluation_batch_whose_every_position_is_ignored_weighs_nothing():
    # Prepare: 6 sequences, the last 3 all padding, evaluated in batches of 3 (one of them all padding)
    model = sequence_model("char_gpt")
    x, y = sequence_data(6, seed=1)
    y[3:] = IGNORE_INDEX

    # Execute
    padded = evaluate(model, x, y, batch_size=3)
    counted = evaluate(model, x[:3], y[:3], batch_size=3)

    # Assert
    assert padded.n == counted.n == 3 * SEQ
    assert (padded.loss, padded.acc) == pytest.approx((counted.loss, counted.acc), rel=1e-12)


# -- the training losses: a batch with no counted position ------------------------------------------------
def _losses(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of `kind` on a batch [N, C, T] (two stacked copies of it for `stacked`), summed to one number."""
    mask = torch.ones(len(y))
    if kind == "mean":  # the sequential trainer's (fl.strategies.base, fl.capture)
        return mean_loss(logits, y)
    if kind == "masked":  # the vectorised trainer's per client, vmapped
        return masked_mean_loss(logits, y, mask)
    return stacked_mean_loss(torch.stack([logits, logits]), torch.stack([y, y]), torch.stack([mask, mask])).sum()


@pytest.mark.parametrize("kind", ["mean", "masked", "stacked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_batch_whose_every_position_is_ignored_has_zero_loss_and_zero_gradient(kind, dtype):
    # Prepare
    logits = torch.randn(4, VOCAB, SEQ, dtype=dtype, requires_grad=True)
    y = torch.full((4, SEQ), IGNORE_INDEX)

    # Execute
    loss = _losses(kind, logits, y)
    (gradient,) = torch.autograd.grad(loss, logits)

    # Assert: nothing, not torch's 0 / 0
    assert float(loss.detach()) == 0.0
    assert torch.equal(gradient, torch.zeros_like(gradient))


@pytest.mark.parametrize("kind", ["mean", "masked", "stacked"])
def test_a_batch_with_counted_positions_keeps_torchs_mean_and_a_nan_logit_there_stays_nan(kind):
    # Prepare: some positions ignored, not all
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, VOCAB, SEQ, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, VOCAB, (5, SEQ), generator=g)
    y[:, :2] = IGNORE_INDEX

    # Execute
    loss = _losses(kind, logits, y) / (2 if kind == "stacked" else 1)
    (gradient,) = torch.autograd.grad(loss, logits)
    reference = F.cross_entropy(logits, y)
    (reference_gradient,) = torch.autograd.grad(reference, logits)
    broken = logits.detach().clone()
    broken[0, :, 3] = math.nan

    # Assert: the sequential loss bit for bit (the others to rounding), and divergence still shows
    if kind == "mean":
        assert torch.equal(loss, reference) and torch.equal(gradient, reference_gradient)
    torch.testing.assert_close(loss, reference, rtol=1e-14, atol=0)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-12, atol=1e-16)
    assert math.isnan(float(_losses(kind, broken, y)))


def test_per_client_losses_and_gradients_vmapped_over_a_client_with_no_counted_position():
    # Prepare: two clients' batches, the first all padding (the vectorised trainer's vmap over _client_loss)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(2, VOCAB, VOCAB, generator=g, dtype=torch.float64)  # each client's linear model of its logits
    x = torch.randn(2, 3, VOCAB, SEQ, generator=g, dtype=torch.float64)
    y = torch.randint(0, VOCAB, (2, 3, SEQ), generator=g)
    y[0] = IGNORE_INDEX
    mask = torch.ones(2, 3, dtype=torch.float64)

    def loss(wk, xk, yk, mk):
        return masked_mean_loss(torch.einsum("cd,ndt->nct", wk, xk), yk, mk)

    # Execute
    losses = vmap(loss)(w, x, y, mask)
    gradients = vmap(grad(loss))(w, x, y, mask)

    # Assert: the padded client nothing, the other its own mean's gradient
    assert float(losses[0]) == 0.0 and torch.equal(gradients[0], torch.zeros_like(gradients[0]))
    torch.testing.assert_close(gradients[1], grad(lambda wk: F.cross_entropy(
        torch.einsum("cd,ndt->nct", wk, x[1]), y[1]))(w[1]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_client_whose_every_position_is_ignored_trains_nothing_on_either_path(name, float64_default, monkeypatch):
    # Prepare: three clients (uneven: the vectorised batches pad rows), the last one's targets all padding
    x, y = sequence_data(15, seed=3)
    y[12:] = IGNORE_INDEX
    data = FederatedData(x, y, [torch.arange(0, 7), torch.arange(7, 12), torch.arange(12, 15)], x[:5], y[:5])
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=4, lr=0.1, momentum=0.9, participation=1.0, seed=3,
                      save_clients_at=(1,))

    # Execute
    runs = {}
    for mode in ("sequential", "vectorized"):
        with monkeypatch.context() as m:
            if mode == "vectorized":
                m.setattr(sequential_mod, "local_train", lambda *a, **k: pytest.fail("fell back to sequential"))
            runs[mode] = run_federated(sequence_model(name).double(), data, make_strategy("fedavg"),
                                       dataclasses.replace(cfg, client_parallel=mode))

    # Assert: no NaN anywhere; the padded client's model is the round's start, the others trained
    for run in runs.values():
        assert run.status == "ok" and bool(torch.isfinite(run.params).all())
        assert all(math.isfinite(run.rows[-1][key]) for key in ("train_loss", "test_loss"))
        clients = run.clients[1]
        start = run.params[0]
        assert torch.equal(clients.params[clients.client_ids.tolist().index(2)], start)
        assert (clients.params[0] - start).abs().max() > 1e-3
    torch.testing.assert_close(runs["vectorized"].params[-1], runs["sequential"].params[-1], rtol=0, atol=1e-10)


# -- a final_models plane whose models do not span two dimensions -------------------------------------------
def _final_models(tmp_path: Path, finals: list[torch.Tensor], status: str = "ok") -> tuple[dict, list[str]]:
    """The settings of a final_models plane `x` over one run per final model (rounds 0 and 1, from one init), and the
    runs' trajectory files; a run of `status` diverged ends at round 1, its last finite model the init."""
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    meta = ModelMeta("cnn_small", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    init = flatten_params(model)
    paths, fields = [], []
    for r, final in enumerate(finals):
        path = tmp_path / f"run{r}" / "trajectory.pt"
        save_trajectory(path, torch.stack([init, init + final]), torch.zeros(2, 0), torch.arange(2), meta,
                        {"status": status})
        paths.append(str(path))
        fields.append({"dataset": "digits", "model": "cnn_small", "init": "random", "algorithm": "fedavg",
                       "alpha": "iid", "num_clients": 3, "participation": "1.0", "seed": r})
    settings = {"label": "x", "kind": "final_models", "runs": [f"r{i}" for i in range(len(finals))],
                "run_fields": fields, "round": "final", "center": "final", "seed": 0, "resolution": 5, "span": None,
                "margin": 0.25, "client": 0, "checkpoints": []}
    return settings, paths


def _outputs(tmp_path: Path) -> dict[str, str]:
    return {k: str(tmp_path / f"out.{k}") for k in ("plane", "points", "grid")}


def _moves(num_params: int, seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.05 * torch.randn(num_params, generator=g) for _ in range(count)]


def _num_params() -> int:
    torch.manual_seed(0)
    return sum(p.numel() for p in build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).parameters())


def test_a_final_models_plane_whose_models_span_one_dimension_says_so(tmp_path, caplog):
    # Prepare: three runs, two of which trained to one model (collinear: a line, no plane)
    a, b = _moves(_num_params(), seed=1, count=2)
    settings, paths = _final_models(tmp_path, [a, b, b])
    caplog.set_level(logging.WARNING)

    # Execute
    landscape_plane_job(settings, paths, None, None, _outputs(tmp_path))

    # Assert: computed, d2 random; the warning names the plane, the plane file records it
    plane = load_plane(_outputs(tmp_path)["plane"])
    assert plane.explained_variance[1] == 0.0 and plane.extra["random_axes"] == ["d2"]
    assert any(m.startswith("plane x (final_models): its 3 models span 1 dimension") for m in warnings_of(caplog))


def test_a_final_models_plane_whose_models_span_two_dimensions_records_no_random_axis(tmp_path, caplog):
    settings, paths = _final_models(tmp_path, _moves(_num_params(), seed=1, count=3))
    caplog.set_level(logging.WARNING)

    landscape_plane_job(settings, paths, None, None, _outputs(tmp_path))

    plane = load_plane(_outputs(tmp_path)["plane"])
    assert min(plane.explained_variance) > 0 and "random_axes" not in plane.extra
    assert not any("final_models" in m for m in warnings_of(caplog))


def test_a_final_models_plane_of_runs_that_trained_to_one_model_is_refused_naming_its_runs(tmp_path):
    # Prepare: three healthy runs with one final model (an algorithm equal to another at its settings)
    (a,) = _moves(_num_params(), seed=1, count=1)
    settings, paths = _final_models(tmp_path, [a, a, a])

    # Execute / Assert: no plane of two random directions passed off as the models' plane
    with pytest.raises(ValueError, match=r"landscapes\.x: the final_models plane's models are all one model .*"
                                         r"landscapes\.x\.runs"):
        landscape_plane_job(settings, paths, None, None, _outputs(tmp_path))
    assert not Path(_outputs(tmp_path)["plane"]).exists()


def test_a_final_models_plane_of_diverged_runs_standing_in_with_one_init_is_not_computed(tmp_path, caplog):
    # Prepare: three runs from one init that diverged at round 1: their last finite models are that init
    settings, paths = _final_models(tmp_path, _moves(_num_params(), seed=1, count=3), status=DIVERGED)
    caplog.set_level(logging.WARNING)

    # Execute
    landscape_plane_job(settings, paths, None, None, _outputs(tmp_path))

    # Assert: the all-NaN plane of a diverged run, with the reason
    plane = load_plane(_outputs(tmp_path)["plane"])
    assert plane.extra["status"] == DIVERGED and "all one model" in plane.extra["reason"]
    assert bool(torch.isnan(plane.d1).all())


# -- code_version: a checkout git refuses to read -------------------------------------------------------------
DUBIOUS = "fatal: detected dubious ownership in repository at '{source}'"


def _fake_git(tmp_path: Path, monkeypatch, stderr: str) -> None:
    """A `git` first on PATH that prints `stderr` (and git's hint after it) and exits 128, as git does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "git"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"{stderr}\" 'To add an exception for this directory, call:' "
                      ">&2\nexit 128\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(manifest, "_GIT_WARNED", set(), raising=False)  # this process warned of nothing yet


@pytest.fixture
def source(tmp_path) -> Path:
    tree = tmp_path / "checkout"
    tree.mkdir()
    (tree / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tree


def test_a_checkout_git_refuses_records_why_and_warns_once(source, tmp_path, monkeypatch, caplog):
    # Prepare
    error = DUBIOUS.format(source=source)
    _fake_git(tmp_path, monkeypatch, error)
    caplog.set_level(logging.WARNING)

    # Execute: as a job does, at its start and again for its tables
    codes = [manifest.code_version(source), manifest.code_version(source)]

    # Assert
    assert all(code["commit"] is None and code["git_error"] == error for code in codes)
    warned = [m for m in warnings_of(caplog) if "dubious ownership" in m]
    assert len(warned) == 1 and f"safe.directory {source}" in warned[0]


def test_a_job_in_a_checkout_git_refuses_still_writes_its_record_with_the_reason(source, tmp_path, monkeypatch):
    # Prepare
    _fake_git(tmp_path, monkeypatch, DUBIOUS.format(source=source))
    monkeypatch.setattr(manifest, "_process_code", lambda: manifest.code_version(source))
    real = manifest.code_version
    monkeypatch.setattr(manifest, "code_version", lambda src=None: real(src or source))
    record = tmp_path / "results" / "_manifest" / "job.json"

    # Execute
    try:
        manifest.start_job()
        manifest.write_record(record, [], time.time(), root=tmp_path / "results")
    finally:
        manifest.start_notes()  # the next test's process notes nothing of this job

    # Assert
    assert json.loads(record.read_text())["code"]["git_error"].startswith("fatal: detected dubious ownership")


def test_a_source_tree_in_no_repository_records_no_git_error_and_warns_of_nothing(source, tmp_path, monkeypatch,
                                                                                   caplog):
    # Prepare: an unpacked source tree outside any checkout, as git says of it
    _fake_git(tmp_path, monkeypatch, "fatal: not a git repository (or any of the parent directories): .git")
    caplog.set_level(logging.WARNING)

    # Execute
    code = manifest.code_version(source)

    # Assert
    assert code["commit"] is None and "git_error" not in code
    assert not warnings_of(caplog)
