"""Sequence tasks (targets [N, T], logits [N, C, T]; fedscape.models.loss): every stage's loss, accuracy and counts
per counted position, ignored positions left out, classifiers' numbers unchanged."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import configs
from torch import nn

from fedscape.analysis.hessian.maths import HessianOperator, NonFiniteLoss
from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data.datasets import next_token_targets
from fedscape.data.federated import FederatedData
from fedscape.data.specs import dataset_option_problems, dataset_settings, target_model_options
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.registry import check_algorithm_targets
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.evaluate import evaluate
from fedscape.models.loss import IGNORE_INDEX, masked_mean_loss, target_count
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.init import planned_init
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ = 7, 6
TINY = {
    "char_gpt": {"vocab_size": VOCAB, "seq_len": SEQ, "num_blocks": 1, "num_heads": 2, "embed_dim": 8},
    "char_lstm": {"vocab_size": VOCAB, "seq_len": SEQ, "embed_dim": 3, "hidden_size": 5},
}
MODELS = sorted(TINY)


def sequence_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, VOCAB, VOCAB, SEQ, targets="every", **TINY[name])


def sequence_data(n: int, seed: int = 0, ignored: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token windows and their every-position targets, the first `ignored` positions of each row ignored."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (n, SEQ + 1), generator=g)
    y = stream[:, 1:].clone()
    y[:, :ignored] = IGNORE_INDEX
    return stream[:, :SEQ], y


def hand_loss_and_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """Per-position mean cross-entropy and accuracy written out position by position from forward_all."""
    with torch.no_grad():
        logits = model.forward_all(x)  # [N, T, C]
    losses, hits = [], []
    for i in range(len(x)):
        for t in range(x.shape[1]):
            if int(y[i, t]) == IGNORE_INDEX:
                continue
            row = logits[i, t].double()
            losses.append(float(torch.logsumexp(row, 0) - row[y[i, t]]))
            hits.append(int(row.argmax()) == int(y[i, t]))
    return sum(losses) / len(losses), sum(hits) / len(hits), len(losses)


@pytest.mark.parametrize("name", MODELS)
def test_every_position_logits_put_the_class_dimension_second(name):
    # Prepare: in float64, since the next-token model's head multiplies one position's features where the every-position
    # one multiplies all of them, and float32 matmuls of other shapes may round differently (3e-8 on an Intel AMX CPU)
    model = sequence_model(name).double()
    x, _ = sequence_data(4)

    # Execute
    logits = model(x)

    # Assert: [N, vocab, T], the transpose of forward_all's [N, T, vocab]; the last position is the next-token model's
    assert logits.shape == (4, VOCAB, SEQ)
    torch.testing.assert_close(logits, model.forward_all(x).transpose(1, 2), rtol=0, atol=0)
    torch.manual_seed(0)
    next_model = build_model(name, VOCAB, VOCAB, SEQ, **TINY[name]).double()
    torch.testing.assert_close(logits[:, :, -1], next_model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("ignored", [0, 2])
def test_evaluate_is_the_per_position_mean_over_counted_positions(name, ignored, float64_default):
    # Prepare
    model = sequence_model(name).double()
    x, y = sequence_data(9, ignored=ignored)
    want_loss, want_acc, want_n = hand_loss_and_acc(model, x, y)

    # Execute: batches of 4 over 9 rows (uneven)
    result = evaluate(model, x, y, batch_size=4)

    # Assert
    assert result.n == want_n == 9 * (SEQ - ignored)
    assert result.loss == pytest.approx(want_loss, rel=1e-12)
    assert result.acc == pytest.approx(want_acc, abs=1e-15)


def test_ignored_positions_do_not_count_whatever_their_logits():
    # Prepare: the same targets, once with the first two positions ignored, once with those positions cut off
    logits = torch.randn(5, VOCAB, SEQ, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, y = sequence_data(5, ignored=2)
    mask = torch.ones(5, dtype=torch.float64)

    # Execute
    with_ignored = masked_mean_loss(logits, y, mask)
    cut = F.cross_entropy(logits[:, :, 2:], y[:, 2:])

    # Assert
    torch.testing.assert_close(with_ignored, cut, rtol=1e-14, atol=0)
    assert target_count(y) == 5 * (SEQ - 2)


def test_masked_mean_loss_weights_positions_not_rows():
    # Prepare: row 0 counts 1 position, row 1 counts all; row 2 is padding (mask 0)
    logits = torch.randn(3, VOCAB, SEQ, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, y = sequence_data(3)
    y[0, 1:] = IGNORE_INDEX
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)

    # Execute
    got = masked_mean_loss(logits, y, mask)

    # Assert: the mean over the 1 + SEQ counted positions of rows 0 and 1
    ce = F.cross_entropy(logits, y, reduction="none")
    want = (ce[0, 0] + ce[1].sum()) / (1 + SEQ)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_classifier_loss_and_counts_are_per_sample():
    # Prepare
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])

    # Execute
    got = masked_mean_loss(logits, y, mask)

    # Assert: bitwise the per-sample form every classifier computed before sequence tasks
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.equal(got, (ce * mask).sum() / mask.sum())
    assert target_count(y) == 6


def test_next_token_targets_are_the_input_shifted_by_one():
    # Prepare: windows of one text, as LEAF and the raw cut make them
    text = torch.arange(20)
    x = torch.stack([text[i:i + SEQ] for i in range(5)])
    y = torch.stack([text[i + SEQ] for i in range(5)])

    # Execute
    every = next_token_targets(x, y)

    # Assert
    assert torch.equal(every, torch.stack([text[i + 1:i + SEQ + 1] for i in range(5)]))


@pytest.mark.parametrize("name", MODELS)
def test_hessian_operator_of_a_sequence_model_is_the_per_position_mean(name, float64_default):
    # Prepare
    model = sequence_model(name).double()
    x, y = sequence_data(5, ignored=1)
    want_loss, _, want_n = hand_loss_and_acc(model, x, y)

    # Execute: batches of 2 over 5 rows
    with HessianOperator(model, x, y, batch_size=2) as op:
        loss, n = op.loss(), op.n
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        hv = op.hvp(v)
    with HessianOperator(model, x, y, batch_size=5, hvp="forward") as op:
        forward = op.hvp(v)

    # Assert
    assert n == want_n
    assert loss == pytest.approx(want_loss, rel=1e-12)
    torch.testing.assert_close(hv, forward, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("ignored", "refused"), [(SEQ - 1, False), (SEQ, True)])
def test_a_hessian_subset_without_a_counted_target_is_refused_naming_the_cause(ignored, refused, float64_default):
    # Prepare: sequences whose first `ignored` positions do not count (all of them: no mean loss)
    model = sequence_model("char_gpt").double()
    x, y = sequence_data(3, ignored=ignored)

    # Execute / Assert: a ValueError that says why, not the NaN loss of 0 / 0 (read as a diverged model)
    if refused:
        with pytest.raises(ValueError, match="no counted target in the evaluation subset") as err:
            HessianOperator(model, x, y)
        assert not isinstance(err.value, NonFiniteLoss)
    else:
        with HessianOperator(model, x, y) as op:
            assert op.n == 3 and np.isfinite(op.loss())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("points_per_batch", [1, 3])
def test_landscape_surface_of_a_sequence_model(name, points_per_batch, float64_default):
    # Prepare
    model = sequence_model(name).float().double()  # float32 weights in float64: the plane's centre is float32
    x, y = sequence_data(5, ignored=1)
    plane = random_plane(flatten_params(model), flatten_buffers(model), [p.shape for p in model.parameters()], seed=0)
    coords = np.array([[0.0, 0.0], [0.3, -0.2], [-0.5, 0.1]])
    want_loss, want_acc, _ = hand_loss_and_acc(model, x, y)
    settings = SurfaceSettings(batch_size=2, points_per_batch=points_per_batch)

    # Execute
    loss, acc = SurfaceEvaluator(model, plane, x, y, settings=settings).evaluate(coords)

    # Assert: the centre is the model's own per-position loss and accuracy (the surface takes the cross-entropy of
    # float64 logits in float64: a float64 tolerance)
    assert loss[0] == pytest.approx(want_loss, rel=1e-12)
    assert acc[0] == pytest.approx(want_acc, abs=1e-15)
    assert np.isfinite(loss).all() and len(set(loss.round(12))) == 3


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("points_per_batch", [1, 3])
def test_a_surface_s_centre_is_evaluate_s_loss_in_the_model_s_precision(name, dtype, points_per_batch):
    # Prepare: float32 weights (the plane's centre is float32) in the model's dtype
    model = sequence_model(name).to(dtype)
    x, y = sequence_data(7, ignored=2)
    plane = random_plane(flatten_params(model), flatten_buffers(model), [p.shape for p in model.parameters()], seed=0)
    want = evaluate(model, x, y, batch_size=3)
    settings = SurfaceSettings(batch_size=3, points_per_batch=points_per_batch)

    # Execute
    loss, acc = SurfaceEvaluator(model, plane, x, y, settings=settings).evaluate(np.zeros((1, 2)))

    # Assert: float64 logits keep float64 (a float32 cross-entropy of them moved it by ~1e-8); a float32 model one
    # point at a time computes evaluate's numbers bit for bit, several at once its sums in another order
    assert acc[0] == want.acc
    if dtype == torch.float64:
        assert loss[0] == pytest.approx(want.loss, rel=1e-12)
    elif points_per_batch == 1:
        assert loss[0] == want.loss
    else:
        assert loss[0] == pytest.approx(want.loss, rel=1e-6)


def test_only_text_data_sets_take_every_position_targets():
    # Execute / Assert
    assert dataset_option_problems("shakespeare", {"targets": "every"}) == []
    [problem] = dataset_option_problems("digits", {"targets": "every"})
    assert "datasets.digits.targets" in problem and "leave targets null" in problem
    assert target_model_options("shakespeare", {"targets": "next"}) == {} == target_model_options("shakespeare", {})
    assert target_model_options("shakespeare", {"targets": "every"}) == {"targets": "every"}


@pytest.mark.parametrize("dataset", ["stackoverflow", "reddit"])
def test_word_data_sets_predict_every_position_and_refuse_next(dataset):
    # Execute / Assert: null (the schema's default) is the data set's own task, every; next has no target
    assert target_model_options(dataset, {"targets": None}) == {"targets": "every"}
    assert dataset_option_problems(dataset, {"targets": "every"}) == []
    [problem] = dataset_option_problems(dataset, {"targets": "next"})
    assert f"datasets.{dataset}.targets: next" in problem and "no token after the sequence" in problem


@pytest.mark.parametrize(("dataset", "options"), [
    ("shakespeare", {"targets": "next"}), ("shakespeare", {"targets": None}), ("shakespeare", {}),
    ("stackoverflow", {"targets": "every"}), ("reddit", {"targets": None}),
])
def test_a_data_sets_own_targets_leave_its_job_settings_as_null_does(dataset, options):
    # Execute / Assert: naming the data set's own targets plans the job of the default (no rerun)
    assert "targets" not in dataset_settings(dataset, options)


def test_other_targets_enter_the_job_settings():
    assert dataset_settings("shakespeare", {"targets": "every"}) == {"targets": "every"}
    with pytest.raises(ValueError, match="needs a token model"):
        build_model("mlp", 10, 1, 8, targets="every")


@pytest.mark.parametrize("algorithm", ["moon", "mixup", "fedalign", "gradaug", "stochdepth"])
def test_per_sample_algorithms_refuse_sequence_tasks(algorithm):
    with pytest.raises(ValueError, match=rf"{algorithm} cannot train a model predicting every position"):
        check_algorithm_targets(algorithm, "every", "datasets.shakespeare.targets")
    check_algorithm_targets(algorithm, "next", "datasets.shakespeare.targets")


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedsam", "scaffold", "feddyn", "fednova"])
def test_mean_loss_algorithms_take_sequence_tasks(algorithm):
    check_algorithm_targets(algorithm, "every", "datasets.shakespeare.targets")


def shakespeare_config(algorithm: str, targets: str) -> dict:
    config = copy.deepcopy(configs.TINY)
    config["datasets"] = {"shakespeare": {"data_dir": "leaf", "source": "raw", "seq_len": SEQ, "targets": targets}}
    config["models"] = ["char_gpt"]
    config["model_options"] = {"char_gpt": {**TINY["char_gpt"], "vocab_size": 96}}
    config["algorithms"] = {"algo": {"name": algorithm}}
    config["experiment_defaults"] = {"dataset": "shakespeare", "init": "random", "algorithm": "algo"}
    config["experiments"] = [{"alpha": "iid"}]
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["hessian"] = {"enabled": False}
    return config


@pytest.mark.parametrize(("algorithm", "targets", "fails"), [("moon", "every", True), ("moon", "next", False),
                                                            ("fedavg", "every", False), ("fedprox", "every", False)])
def test_planning_refuses_per_sample_algorithms_on_sequence_tasks(algorithm, targets, fails):
    # Prepare
    config = shakespeare_config(algorithm, targets)

    # Execute / Assert
    if fails:
        with pytest.raises(ConfigError, match=r"algorithms\.algo: moon cannot train a model predicting every "
                                              r"position \(datasets\.shakespeare\.targets: every\): its contrastive"):
            check_config(config, configs.SCHEMA)
    else:
        check_config(config, configs.SCHEMA)


def test_init_jobs_of_sequence_tasks_build_every_position_models():
    # Prepare
    every = check_config(shakespeare_config("fedavg", "every"), configs.SCHEMA)
    nxt = check_config(shakespeare_config("fedavg", "next"), configs.SCHEMA)

    # Execute
    job_every = planned_init(every, build_runs(every), "shakespeare", "char_gpt", "random")
    job_next = planned_init(nxt, build_runs(nxt), "shakespeare", "char_gpt", "random")

    # Assert: the option only where asked (next: the settings every init job had before targets existed)
    assert job_every.model_options == {**job_next.model_options, "targets": "every"}
    assert "targets" not in job_next.model_options
    model = build_model("char_gpt", 96, 96, SEQ, **job_every.model_options)
    assert model(torch.zeros(2, SEQ, dtype=torch.long)).shape == (2, 96, SEQ)


def sequence_federation(sizes: list[int]) -> FederatedData:
    x, y = sequence_data(sum(sizes), seed=3, ignored=1)
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]
    return FederatedData(x, y, idx, x[:5], y[:5])


@pytest.mark.parametrize("name", MODELS)
def test_vectorised_clients_train_sequence_models_as_sequential_ones(name, float64_default, monkeypatch):
    # Prepare: uneven clients (padding rows in the vectorised batches) and ignored positions
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=4, lr=0.1, momentum=0.9, participation=1.0, seed=3,
                      save_clients_at=(1,))

    # Execute
    runs = {}
    for mode in ("sequential", "vectorized"):
        with monkeypatch.context() as m:
            if mode == "vectorized":
                m.setattr(sequential_mod, "local_train", lambda *a, **k: pytest.fail("fell back to sequential"))
            runs[mode] = run_federated(sequence_model(name).double(), sequence_federation([7, 5, 3]),
                                       make_strategy("fedavg"), dataclasses.replace(cfg, client_parallel=mode))

    # Assert: float64, one computation in two layouts
    seq, vec = runs["sequential"], runs["vectorized"]
    torch.testing.assert_close(vec.params[-1], seq.params[-1], rtol=0, atol=1e-10)
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 1e-3
