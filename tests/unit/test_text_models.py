"""Token models (char_gpt, char_lstm): architecture, options, training, and every analysis on token data."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import configs
from torch import nn

from fedscape.analysis.barriers.maths import (
    Point,
    interpolation_curve,
    layer_distances,
    layerwise_barriers,
    model_layers,
)
from fedscape.analysis.hessian.maths import HessianOperator, exact_hessian, hutchinson, lanczos_eigen
from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data.federated import FederatedData
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.client_stats import round_stats
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.checkpoint import ModelMeta
from fedscape.models.evaluate import evaluate
from fedscape.models.params import FlatParams, flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.models.specs import (
    MODEL_NAMES,
    NO_DECAY_MODELS,
    TOKEN_MODEL_DEFAULTS,
    check_token_options,
    is_token_model,
    model_option_problems,
)
from fedscape.models.tokens import BasicLSTMLayer, CharGPT, CharLSTM, LSTMLayer
from fedscape.plan.barriers import check as barriers_check
from fedscape.plan.barriers import interpolation_pair
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ = 10, 8
TINY = {
    "char_gpt": {"vocab_size": VOCAB, "seq_len": SEQ, "num_blocks": 2, "num_heads": 2, "embed_dim": 16},
    "char_lstm": {"vocab_size": VOCAB, "seq_len": SEQ, "embed_dim": 4, "hidden_size": 6},
}
MODELS = sorted(TINY)


def tiny(name: str, seed: int = 0, **overrides: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, VOCAB, VOCAB, SEQ, **{**TINY[name], **overrides})


def tokens(n: int, seed: int = 0, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def pattern_data(n: int, seed: int = 0, period: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of the repeated string 0 1 2 3 4 0 1 ... at random offsets; the target is the next character."""
    offsets = torch.randint(0, period, (n,), generator=torch.Generator().manual_seed(seed))
    positions = offsets[:, None] + torch.arange(SEQ + 1)
    stream = positions % period
    return stream[:, :SEQ], stream[:, SEQ]


def point(model: nn.Module) -> Point:
    return Point(flatten_params(model), flatten_buffers(model))


# -- architecture -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_logits_are_the_last_position_of_every_positions_logits(name):
    # Prepare
    model, x = tiny(name).eval(), tokens(3)

    # Execute
    with torch.no_grad():
        last, every = model(x), model.forward_all(x)

    # Assert
    assert last.shape == (3, VOCAB) and every.shape == (3, SEQ, VOCAB)
    torch.testing.assert_close(last, every[:, -1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("changed", [2, SEQ - 1])
def test_a_future_token_never_changes_earlier_positions(name, changed):
    # Prepare: two inputs differing only at position `changed`
    model, x = tiny(name).eval(), tokens(4)
    other = x.clone()
    other[:, changed] = (x[:, changed] + 1) % VOCAB

    # Execute
    with torch.no_grad():
        a, b = model.forward_all(x), model.forward_all(other)

    # Assert: positions before it are bit-identical, the position itself differs
    assert torch.equal(a[:, :changed], b[:, :changed])
    assert (a[:, changed] - b[:, changed]).abs().max() > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_weights_are_determined_by_the_seed(name):
    # Prepare / Execute
    a, b, c = tiny(name, seed=1), tiny(name, seed=1), tiny(name, seed=2)

    # Assert
    assert torch.equal(flatten_params(a), flatten_params(b))
    assert not torch.equal(flatten_params(a), flatten_params(c))
    with torch.no_grad():
        assert torch.equal(a(tokens(2)), b(tokens(2)))


def gpt_count(v: int, t: int, blocks: int, d: int) -> int:
    """nanoGPT's parameters by hand, without biases (char_gpt's default): embeddings, per block 2 LayerNorm gains +
    qkv + proj + 4x MLP, ln_f's gain, head."""
    block = 2 * d + d * 3 * d + d * d + d * 4 * d + 4 * d * d
    return v * d + t * d + blocks * block + d + d * v


def lstm_count(v: int, e: int, h: int, biases: int = 1) -> int:
    """Embedding, two LSTM layers (4 gates: input and recurrent weights, `biases` per gate: TF's cell 1, nn.LSTM's
    2), linear head."""
    b = 4 * h * biases
    return v * e + (4 * h * e + 4 * h * h + b) + (4 * h * h + 4 * h * h + b) + (h * v + v)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("char_gpt", TINY["char_gpt"], 160 + 128 + 2 * 3104 + 16 + 160),  # 16 dims, 2 blocks: by hand
        ("char_lstm", TINY["char_lstm"], 40 + 264 + 312 + 70),  # 4-dim embedding, 6 units: by hand
        # the papers' data: 96 characters and 256 positions; LEAF's Shakespeare, 80 and 80 (LEAF's TF model: 817,872)
        ("char_gpt", {**TOKEN_MODEL_DEFAULTS["char_gpt"], "vocab_size": 96, "seq_len": 256},
         gpt_count(96, 256, 4, 128)),
        ("char_lstm", {**TOKEN_MODEL_DEFAULTS["char_lstm"], "vocab_size": 80, "seq_len": 80}, 817_872),
        # nn.LSTM's two biases per gate, the model before the `cell` option: 2 x 4 x 256 more
        ("char_lstm", {**TOKEN_MODEL_DEFAULTS["char_lstm"], "vocab_size": 80, "seq_len": 80, "cell": "torch"},
         819_920),
    ],
    ids=["gpt-tiny", "lstm-tiny", "gpt-default", "lstm-default", "lstm-torch"],
)
def test_parameter_counts_match_a_hand_computation(name, options, expected):
    # Prepare / Execute
    model = build_model(name, options["vocab_size"], options["vocab_size"], options["seq_len"], **options)

    # Assert
    assert sum(p.numel() for p in model.parameters()) == expected
    assert expected == (gpt_count(VOCAB, SEQ, 2, 16) if options is TINY["char_gpt"] else expected)
    assert expected == (lstm_count(VOCAB, 4, 6) if options is TINY["char_lstm"] else expected)
    assert expected in (gpt_count(VOCAB, SEQ, 2, 16), gpt_count(96, 256, 4, 128), lstm_count(VOCAB, 4, 6),
                        lstm_count(80, 8, 256), lstm_count(80, 8, 256, biases=2))


@pytest.mark.parametrize(("vocab", "seq"), [(96, 256), (80, 80), (65, 32)])
def test_default_models_are_built_without_options_on_the_data_s_vocabulary_and_positions(vocab, seq):
    # Prepare / Execute: the layer-wise paper's data (96, 256), LEAF's Shakespeare (80, 80), another text's
    gpt = build_model("char_gpt", vocab, vocab, seq)
    lstm = build_model("char_lstm", vocab, vocab, seq)

    # Assert: the paper's 128-dim embeddings and fedscape's default of 4 blocks (the authors' runs have 12:
    # layerwise.yaml); LEAF's 8-dim embedding and 256 units; the data's sizes
    assert gpt.wte.weight.shape == (vocab, 128) and gpt.wpe.weight.shape == (seq, 128) and len(gpt.blocks) == 4
    assert gpt.classifier.weight.shape == (vocab, 128) and gpt.seq_len == seq
    assert lstm.embedding.weight.shape == (vocab, 8) and lstm.lstm[1].weight_hh.shape == (1024, 256)
    assert lstm.classifier.weight.shape == (vocab, 256)


def test_lstm_layers_compute_what_torch_lstm_computes():
    # Prepare: a two-layer nn.LSTM with the weights of char_lstm's torch cell
    model, x = tiny("char_lstm", cell="torch").eval(), tokens(3)
    reference = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    with torch.no_grad():
        for i, layer in enumerate(model.lstm):
            for tensor in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{tensor}_l{i}").copy_(getattr(layer, tensor))

    # Execute
    with torch.no_grad():
        ours = model.hidden_states(x)
        theirs, _ = reference(model.embedding(x))

    # Assert
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert isinstance(model.lstm[0], LSTMLayer)


@pytest.mark.parametrize("name", MODELS)
def test_a_few_sgd_steps_learn_a_repeated_pattern(name):
    # Prepare
    model, (x, y) = tiny(name), pattern_data(64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    before = evaluate(model, x, y).loss

    # Execute: 80 steps (char_lstm learns it within 80 from seeds 0-2 with either cell; within 40 from some alone)
    for _ in range(80):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = evaluate(model, x, y)

    # Assert: from about ln 10 (uniform over the vocabulary) to below a tenth of it; the next characters right
    assert before == pytest.approx(math.log(VOCAB), abs=0.3)
    assert after.loss < 0.1 * before and after.acc > 0.95


def test_gpt_rejects_sequences_longer_than_its_positions():
    with pytest.raises(ValueError, match="longer than the model's seq_len 8"):
        tiny("char_gpt")(tokens(2, seq=SEQ + 1))


# -- options ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("char_gpt", {"num_heads": 3}, "embed_dim 128 is not divisible by num_heads 3"),
        ("char_gpt", {"num_blocks": 0}, r"model_options.char_gpt.num_blocks: must be a positive integer, got 0"),
        ("char_lstm", {"hidden_size": 2.5}, "hidden_size: must be a positive integer"),
        ("char_lstm", {"embed_dim": True}, "embed_dim: must be a positive integer"),
    ],
)
def test_bad_option_values_are_named(name, options, message):
    # Prepare / Execute
    problems = model_option_problems(name, options)

    # Assert: named at planning and again when building
    assert len(problems) == 1 and problems[0].find(message.replace("\\", "")) >= 0
    with pytest.raises(ValueError, match=message):
        build_model(name, 80, 80, 80, **options)


def test_good_options_have_no_problems_and_image_models_are_not_checked():
    assert model_option_problems("char_gpt", {"num_heads": 8, "embed_dim": 64}) == []
    assert model_option_problems("resnet20", {"norm": "group"}) == []


@pytest.mark.parametrize(
    ("num_classes", "vocab", "seq", "message"),
    [
        (80, 80, 80, r"vocab_size 96 but the data has a vocabulary of 80 .*model_options.char_gpt.vocab_size: 80"),
        (96, 96, 80, r"seq_len 256 but the data gives sequences of 80 .*model_options.char_gpt.seq_len: 80"),
        (80, 96, 256, r"vocab_size 96 but the data has 80 classes"),
    ],
)
def test_build_names_the_data_mismatch(num_classes, vocab, seq, message):
    # the paper's sizes, set (unset, they are the data's)
    with pytest.raises(ValueError, match=message):
        build_model("char_gpt", num_classes, vocab, seq, vocab_size=96, seq_len=256)


@pytest.mark.parametrize(
    ("name", "options", "vocab", "seq", "message"),
    [
        ("char_gpt", {"vocab_size": 96}, 80, 80,
         r"vocab_size 96 but shakespeare has a vocabulary of 80 .*vocab_size: 80"),
        ("char_gpt", {"seq_len": 256}, 80, 80, r"seq_len 256 but shakespeare gives sequences of 80 .*seq_len: 80"),
        ("char_lstm", {"seq_len": 40}, 80, 80, r"seq_len 40 but shakespeare gives sequences of 80 .*seq_len: 80"),
    ],
)
def test_model_and_data_mismatches_name_both(name, options, vocab, seq, message):
    with pytest.raises(ValueError, match=message):
        check_token_options(name, options, vocab, seq, dataset="shakespeare")


@pytest.mark.parametrize(
    ("name", "options", "vocab", "seq"),
    [("char_gpt", {"vocab_size": 80, "seq_len": 80}, 80, 80), ("char_lstm", {}, 80, 80), ("char_gpt", {}, 96, 256),
     ("char_lstm", {}, 96, 256), ("resnet20", {}, 3, 32)],
)
def test_matching_model_and_data_pass(name, options, vocab, seq):
    check_token_options(name, options, vocab, seq, dataset="shakespeare")


# -- barriers -----------------------------------------------------------------------------------------------------
def test_layers_follow_the_module_order():
    # Prepare
    gpt, lstm = tiny("char_gpt"), tiny("char_lstm")
    block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]

    # Execute
    gpt_layers, lstm_layers = model_layers(gpt), model_layers(lstm)

    # Assert: input to output, one layer per module; the layers tile the flat vector in order
    assert [la.name for la in gpt_layers] == ["wte", "wpe", *(f"blocks.{i}.{m}" for i in range(2) for m in block),
                                              "ln_f", "classifier"]
    assert [la.name for la in lstm_layers] == ["embedding", "lstm.0", "lstm.1", "classifier"]
    for layers, model in ((gpt_layers, gpt), (lstm_layers, lstm)):
        slices = [s for la in layers for s in la.param_slices]
        assert slices[0].start == 0 and all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))
        assert slices[-1].stop == flatten_params(model).numel()


@pytest.mark.parametrize("name", MODELS)
def test_barriers_of_a_model_with_itself_are_zero(name):
    # Prepare
    model = tiny(name)
    a = point(model)
    splits = {"train": pattern_data(32)}

    # Execute
    curve = interpolation_curve(model, a, a, splits, points=5)
    rows = layerwise_barriers(model, a, a, splits)

    # Assert
    assert len({round(r["loss"], 12) for r in curve}) == 1
    assert len(rows) == 3 * len(model_layers(model))
    assert all(r["barrier_loss"] == 0.0 and r["barrier_error"] == 0.0 for r in rows)


@pytest.mark.parametrize("name", MODELS)
def test_interpolation_ends_are_the_two_models_and_layer_distances_add_up(name):
    # Prepare
    model_a, model_b = tiny(name, seed=0), tiny(name, seed=1)
    a, b = point(model_a), point(model_b)
    x, y = pattern_data(32)

    # Execute
    curve = interpolation_curve(model_a, a, b, {"train": (x, y)}, points=3)
    distances = layer_distances(a, b, model_layers(model_a))

    # Assert
    assert curve[0]["loss"] == pytest.approx(evaluate(tiny(name, seed=0), x, y).loss, rel=1e-6)
    assert curve[-1]["loss"] == pytest.approx(evaluate(model_b, x, y).loss, rel=1e-6)
    per_layer = sum(r["distance"] ** 2 for r in distances if r["layer_index"] >= 0)
    assert per_layer == pytest.approx(distances[-1]["distance"] ** 2, rel=1e-9)


@pytest.mark.parametrize(("model", "align", "fails"), [("char_lstm", True, True), ("char_lstm", False, False),
                                                      ("char_gpt", True, False)])
def test_planning_refuses_to_align_a_model_without_a_permutation_spec(model, align, fails):
    # Prepare: a checked config whose runs are then given the token model (no token dataset is needed here)
    iid = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}
    config = copy.deepcopy(configs.TINY)
    config["interpolation"] = {"points": 5, "align": align, "pairs": {"p": {"a": iid, "b": {**iid, "alpha": 0.5}}}}
    config = check_config(config, configs.SCHEMA)
    runs = [dataclasses.replace(r, model=model) for r in build_runs(config)]

    # Execute / Assert
    if fails:
        with pytest.raises(ConfigError, match=r"interpolation\.pairs\.p: interpolation\.align cannot align model "
                                              r"'char_lstm': an LSTM's recurrent weights"):
            interpolation_pair(config, runs, "p")
    else:
        assert interpolation_pair(config, runs, "p").run_a.model == model



@pytest.mark.parametrize(("model", "align", "fails"), [("char_lstm", True, True), ("char_lstm", False, False),
                                                      ("char_gpt", True, False)])
@pytest.mark.parametrize("pair", [{"run": {"alpha": "iid"}, "clients": [0, 1]},
                                  {"a": {"alpha": "iid"}, "b": {"alpha": 0.5, "init": "random"}}],
                         ids=["clients", "runs"])
def test_planning_refuses_layer_barriers_align_on_a_model_without_a_permutation_spec(model, align, fails, pair):
    # Prepare: as for interpolation above, a checked config whose runs then get the token model
    config = copy.deepcopy(configs.TINY)
    config["interpolation"]["align"] = False
    config["layer_barriers"] = {**config["layer_barriers"], "align": align, "pairs": {"p": pair}}
    config = check_config(config, configs.SCHEMA)
    runs = [dataclasses.replace(r, model=model) for r in build_runs(config)]

    # Execute
    problems = barriers_check(config, runs)

    # Assert: the same refusal as interpolation.align's, naming layer_barriers.align and its fix
    if fails:
        assert problems == ["layer_barriers.pairs.p: layer_barriers.align cannot align model 'char_lstm': an LSTM's "
                            "recurrent weights weight_hh are permuted on both axes by the same hidden-unit "
                            "permutation, so the matching objective is quadratic in it and a coordinate step is no "
                            "longer a linear assignment (Ainsworth et al. 2023 match feed-forward and residual "
                            "networks only); set layer_barriers.align: false for it"]
    else:
        assert problems == []


# -- Hessian ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=MODELS)
def hessian_case(request):
    """A very small token model in float64 trained a little, its data and its exact Hessian."""
    name = request.param
    options = ({"num_blocks": 1, "num_heads": 2, "embed_dim": 4} if name == "char_gpt"
               else {"embed_dim": 2, "hidden_size": 3})
    model = tiny(name, **options)
    x, y = pattern_data(24)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model = model.double()
    return {"name": name, "model": model, "x": x, "y": y, "H": exact_hessian(model, x, y)}


def test_exact_hessian_matches_finite_differences_of_the_gradient(hessian_case):
    # Prepare: central differences of the (single-backward) gradient, an independent reference
    model, x, y = hessian_case["model"], hessian_case["x"], hessian_case["y"]
    eps = 1e-6
    with HessianOperator(model, x, y, cache_graph=False) as op:
        basis = torch.eye(op.dim, dtype=torch.float64)

        # Execute
        columns = [(op.gradient(op.center + eps * e) - op.gradient(op.center - eps * e)) / (2 * eps) for e in basis]

    # Assert: LayerNorm gains included (torch.func.hessian gets their cross terms wrong in torch 2.15)
    torch.testing.assert_close(hessian_case["H"], torch.stack(columns, dim=1), rtol=1e-5, atol=1e-6)


def test_hvp_through_the_token_models_equals_the_exact_hessian(hessian_case):
    # Prepare
    h = hessian_case["H"]
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    # Execute
    with HessianOperator(hessian_case["model"], hessian_case["x"], hessian_case["y"], batch_size=10) as op:
        hv = op.hvp(v)
    with HessianOperator(hessian_case["model"], hessian_case["x"], hessian_case["y"], batch_size=10,
                         hvp="forward") as op:
        forward = op.hvp(v)  # jvp of grad: exact here, unlike torch.func.hessian (exact_hessian's docstring)

    # Assert
    torch.testing.assert_close(hv, h @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(forward, h @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(h, h.T, rtol=1e-9, atol=1e-11)


def test_hutchinson_trace_and_lanczos_match_the_exact_hessian(hessian_case):
    # Prepare
    h = hessian_case["H"]
    exact_trace = float(h.trace())
    top = float(torch.linalg.eigvalsh(h)[-1])

    # Execute
    with HessianOperator(hessian_case["model"], hessian_case["x"], hessian_case["y"]) as op:
        trace = hutchinson(op, probes=200, seed=0)
        eigen = lanczos_eigen(op, k=1)

    # Assert: the trace within 3 standard errors (statistical), the top eigenvalue to the tolerance
    assert abs(trace.trace - exact_trace) <= 3 * trace.stderr
    assert eigen.values[0] == pytest.approx(top, rel=1e-3)


# -- landscape ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_surface_evaluation_on_token_data(name):
    # Prepare: a filter-normalised random plane around the model (embedding rows are its filters)
    model = tiny(name)
    x, y = pattern_data(20)
    centre = flatten_params(model)
    plane = random_plane(centre, flatten_buffers(model), [p.shape for p in model.parameters()], seed=0)
    coords = np.array([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0]])

    # Execute
    one = SurfaceEvaluator(tiny(name), plane, x, y).evaluate(coords)
    many = SurfaceEvaluator(tiny(name), plane, x, y, settings=SurfaceSettings(points_per_batch=3)).evaluate(coords)

    # Assert: the centre is the model; one point at a time and vmapped points agree; other points differ
    assert one[0][0] == pytest.approx(evaluate(model, x, y).loss, rel=1e-6)
    np.testing.assert_allclose(one[0], many[0], rtol=1e-5)
    np.testing.assert_allclose(one[1], many[1])
    assert abs(one[0][2] - one[0][0]) > 1e-3


# -- federated training, vectorised clients and client statistics -------------------------------------------------
def token_federation(sizes: list[int]) -> FederatedData:
    x, y = pattern_data(sum(sizes), seed=3)
    x[::3] = tokens(len(x[::3]), seed=4)  # some noise so that the clients' updates differ
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]
    return FederatedData(x, y, idx, x[:10], y[:10])


def federated_round(name: str, mode: str, monkeypatch, model_options: dict | None = None, **training):
    cfg = TrainConfig(**{"rounds": 1, "local_epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
                         "weight_decay": 1e-3, "participation": 1.0, "seed": 3, "save_clients_at": (1,),
                         "client_parallel": mode, **training})
    with monkeypatch.context() as m:
        if mode == "vectorized":
            def no_sequential(*args, **kwargs):
                raise AssertionError("the vectorised run fell back to sequential local_train")

            m.setattr(sequential_mod, "local_train", no_sequential)
        return run_federated(tiny(name, **(model_options or {})), token_federation([13, 9, 5]),
                             make_strategy("fedavg"), cfg)


@pytest.mark.parametrize(("name", "options"), [("char_gpt", {}), ("char_lstm", {}), ("char_lstm", {"cell": "torch"})],
                         ids=["char_gpt", "char_lstm", "char_lstm-torch"])
def test_vectorised_clients_train_token_models_exactly(name, options, monkeypatch):
    # Prepare
    model = tiny(name, **options)

    # Execute
    mode = resolve_client_parallel(model, make_strategy("fedavg"), TrainConfig(), device_type="cuda")
    seq = federated_round(name, "sequential", monkeypatch, options)
    vec = federated_round(name, "vectorized", monkeypatch, options)

    # Assert: 'auto' vectorises on CUDA (no buffers, every op runs under vmap) and the round equals the sequential one
    # (the torch cell's gradient of bias_ih + bias_hh is one tensor for both: vectorized.unaliased copies it)
    assert mode == "vectorized"
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= 1e-5
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= 1e-5
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", MODELS)
def test_client_statistics_of_a_token_round(name, monkeypatch):
    # Prepare
    result = federated_round(name, "sequential", monkeypatch)

    # Execute
    stats = round_stats(result.params[0], result.clients[1].params, result.params[-1])

    # Assert: finite, and the three clients' updates are not all parallel
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["gradient_diversity"] > 1 / 3


def test_model_classes_are_registered_under_their_names():
    assert type(tiny("char_gpt")) is CharGPT and type(tiny("char_lstm")) is CharLSTM


# -- weight decay: char_gpt decays its Linear weights alone, as the GPT of epfml/llm-baselines ----------------------
GPT_DECAYED = {"classifier.weight", *(f"blocks.{i}.{layer}.weight" for i in range(2)
                                      for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize(("name", "options"), [("char_gpt", {}), ("char_gpt", {"bias": True}), ("char_lstm", {})],
                         ids=["char_gpt", "char_gpt-bias", "char_lstm"])
def test_only_char_gpt_s_optimiser_leaves_its_biases_layer_norms_and_embeddings_undecayed(name, options, optimizer):
    # Prepare
    model = tiny(name, **options)
    names = {p: n for n, p in model.named_parameters()}
    cfg = TrainConfig(optimizer=optimizer, momentum=0.0, weight_decay=1e-3)

    # Execute
    opt = sequential_mod.local_optimizer(sequential_mod.decay_groups(model), cfg)

    # Assert: char_gpt's Linear weights decay, its other tensors form a group without decay; char_lstm decays all
    groups = [({names[p] for p in g["params"]}, g["weight_decay"]) for g in opt.param_groups]
    if name == "char_gpt":
        assert groups == [(GPT_DECAYED, 1e-3), (set(names.values()) - GPT_DECAYED, 0.0)]
        biases = {"ln_f.bias", "blocks.1.mlp.c_fc.bias"} if options else set()
        assert {"wte.weight", "wpe.weight", "blocks.0.ln_1.weight", *biases} <= groups[1][0]
    else:
        assert groups == [(set(names.values()), 1e-3)]


def test_a_zero_gradient_adamw_step_with_decay_moves_char_gpt_s_linear_weights_alone():
    # Prepare: every gradient zero, so that AdamW's step is its decoupled decay alone
    model = tiny("char_gpt")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = sequential_mod.local_optimizer(sequential_mod.decay_groups(model),
                                         TrainConfig(optimizer="adamw", momentum=0.0, lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    # Execute
    opt.step()

    # Assert: the LayerNorm gains, biases and embeddings stay put; a Linear weight shrinks by 1 - lr wd
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in GPT_DECAYED)
    assert torch.equal(after["ln_f.weight"], torch.ones_like(after["ln_f.weight"]))
    assert all(torch.allclose(after[n], before[n] * 0.95, rtol=0, atol=1e-7) for n in GPT_DECAYED)


@pytest.mark.parametrize("training", [{"momentum": 0.9}, {"optimizer": "adamw"}])
def test_a_char_gpt_client_trains_as_llm_baselines_groups_its_optimiser(float64_default, training):
    # Prepare: one client, three steps of its whole shard (every step the same batch), against torch's optimiser of
    # the reference's groups and of one group decaying every tensor
    data = token_federation([12])
    cfg = TrainConfig(rounds=1, local_steps=3, batch_size=12, lr=0.01, weight_decay=0.1, seed=0, **training)
    model = tiny("char_gpt")
    flat = FlatParams(model)

    # Execute
    result, _ = sequential_mod.local_train(model, flat, flat.get().clone(), torch.zeros(0), data, 0, 1, Strategy(),
                                           cfg)

    # Assert
    def reference(grouped: bool) -> torch.Tensor:
        net = tiny("char_gpt")
        named = dict(net.named_parameters())
        groups = ([{"params": [p for n, p in named.items() if n in GPT_DECAYED]},
                   {"params": [p for n, p in named.items() if n not in GPT_DECAYED], "weight_decay": 0.0}]
                  if grouped else [{"params": list(named.values())}])
        opt = (torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1) if "optimizer" in training
               else torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=0.1))
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(net(data.x_train), data.y_train).backward()
            opt.step()
        return flatten_params(net)

    assert result.params.dtype == torch.float64
    assert (result.params - reference(grouped=True)).abs().max().item() < 1e-12
    assert (result.params - reference(grouped=False)).abs().max().item() > 1e-5  # the groups matter here


def test_vectorised_adamw_clients_of_char_gpt_leave_the_same_tensors_undecayed(float64_default, monkeypatch):
    # Execute
    adamw = {"optimizer": "adamw", "momentum": 0.0, "lr": 0.01, "weight_decay": 0.5}
    seq = federated_round("char_gpt", "sequential", monkeypatch, **adamw)
    vec = federated_round("char_gpt", "vectorized", monkeypatch, **adamw)

    # Assert: float64, so that Adam's m / sqrt(v) cannot magnify rounding past the tolerance
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= 1e-10
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_only_the_models_of_no_decay_models_leave_parameters_undecayed(name):
    # Prepare: every registry model, image models on CIFAR's shape; char_gpt under MOON's projection head too
    shape = (VOCAB, SEQ) if is_token_model(name) else (3, 32)
    options = TINY.get(name, {})

    # Execute
    skipped = sequential_mod.undecayed(build_model(name, VOCAB, *shape, **options))
    projected = sequential_mod.undecayed(build_model(name, VOCAB, *shape, projection_head=True, **options))

    # Assert: the planner's list (models.specs, which reruns their runs) is the models' own; the ResNets decay all
    assert bool(skipped) == (name in NO_DECAY_MODELS)
    assert projected == {f"backbone.{n}" for n in skipped}


# -- char_lstm is LEAF's TensorFlow model: BasicLSTMCell with its forget bias and TF1's Glorot-uniform init -----------
LEAF = {"vocab_size": 80, "seq_len": 80}  # LEAF's Shakespeare: 80 characters, 80 positions
# The parameters of char_lstm before the `cell` option (nn.LSTM's two biases per gate), in order.
TORCH_CELL_NAMES = ["embedding.weight", *(f"lstm.{i}.{t}" for i in range(2)
                                          for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                    "classifier.weight", "classifier.bias"]


def basic_lstm_cell(x: torch.Tensor, c: torch.Tensor, h: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
                    forget_bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of TensorFlow 1's BasicLSTMCell.call, as written there: one [in + H, 4H] kernel over the concatenated
    input and state, gates split as (i, j, f, o), the constant forget bias inside the forget gate's sigmoid."""
    i, j, f, o = (torch.cat([x, h], dim=1) @ kernel + bias).chunk(4, dim=1)
    c = c * torch.sigmoid(f + forget_bias) + torch.sigmoid(i) * torch.tanh(j)
    return c, torch.tanh(c) * torch.sigmoid(o)


def tf_layout(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's kernel [in + H, 4H] and bias [4H] as TF holds them: gate columns (i, j, f, o) where ours are rows
    (i, f, g, o)."""
    order = [0, 2, 1, 3]  # TF's i, j (the cell input), f, o among ours
    kernel = torch.cat([layer.weight_ih, layer.weight_hh], dim=1).T
    return (torch.cat([kernel.chunk(4, dim=1)[k] for k in order], dim=1),
            torch.cat([layer.bias.chunk(4)[k] for k in order]))


# (the forget gate scales the cell state of the step before, zero at the first step: its bias shows from the second)
@pytest.mark.parametrize(("seq", "forget_bias", "equal"), [(1, 1.0, True), (SEQ, 1.0, True), (SEQ, 0.0, False)])
def test_char_lstm_computes_leaf_s_stacked_basic_lstm_cells(seq, forget_bias, equal):
    # Prepare: char_lstm in float64 with a bias off zero, and LEAF's model written as TF computes it
    # (MultiRNNCell of two BasicLSTMCells through dynamic_rnn, tf.layers.dense on the last output)
    model, x = tiny("char_lstm").double().eval(), tokens(3, seq=seq)
    with torch.no_grad():
        for layer in model.lstm:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=torch.Generator().manual_seed(2)))

    # Execute
    with torch.no_grad():
        ours = model(x)
        states = [(torch.zeros(3, 6, dtype=torch.float64),) * 2 for _ in model.lstm]
        for t in range(seq):
            h = model.embedding(x[:, t])
            for k, layer in enumerate(model.lstm):
                states[k] = basic_lstm_cell(h, *states[k], *tf_layout(layer), forget_bias)
                h = states[k][1]
        theirs = h @ model.classifier.weight.T + model.classifier.bias

    # Assert: equal with TF's forget bias of 1 (LEAF leaves it at its default); without it the logits differ
    assert isinstance(model.lstm[1], BasicLSTMLayer)
    assert [n for n, _ in model.lstm.named_parameters()] == [f"{i}.{t}" for i in range(2)
                                                            for t in ("weight_ih", "weight_hh", "bias")]
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12) is equal


def test_char_lstm_draws_tf1_s_default_init():
    # Prepare: Glorot-uniform bounds sqrt(6 / (fan in + fan out)) of LEAF's variables (TF1's default initializer of
    # a variable made without one): each cell's [in + H, 4H] kernel, the [80, 8] embedding, the dense [256, 80] kernel
    h = TOKEN_MODEL_DEFAULTS["char_lstm"]["hidden_size"]
    bounds = {"embedding.weight": math.sqrt(6 / (80 + 8)), "classifier.weight": math.sqrt(6 / (h + 80)),
              **{f"lstm.{i}.{w}": math.sqrt(6 / (n + h + 4 * h)) for i, n in enumerate((8, h))
                 for w in ("weight_ih", "weight_hh")}}

    # Execute
    torch.manual_seed(0)
    model = build_model("char_lstm", 80, 80, 80)
    params = dict(model.named_parameters())

    # Assert: every weight uniform within its bound (its std bound / sqrt(3)), every bias zero (the forget gate's
    # too: TF adds its 1 as a constant); LEAF's 817,872 parameters
    assert set(params) == {*bounds, "lstm.0.bias", "lstm.1.bias", "classifier.bias"}
    for name, bound in bounds.items():
        w = params[name]
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound, name
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
    assert all(not params[n].any() for n in ("lstm.0.bias", "lstm.1.bias", "classifier.bias"))
    assert sum(p.numel() for p in model.parameters()) == 817_872 == lstm_count(80, 8, h)


@pytest.mark.parametrize("seed", [0, 1])
def test_char_lstm_s_torch_cell_builds_the_model_of_before_the_option_bit_for_bit(seed):
    # Prepare: char_lstm as it was built before the option: an embedding, a two-layer nn.LSTM (its layers' tensors
    # drawn in the same order, at PyTorch's default) and a Linear head, created in that order under the seed
    torch.manual_seed(seed)
    embedding, lstm, head = nn.Embedding(80, 8), nn.LSTM(8, 256, num_layers=2, batch_first=True), nn.Linear(256, 80)
    theirs = [embedding.weight, *(getattr(lstm, f"{t}_l{i}") for i in range(2)
                                  for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), head.weight, head.bias]

    # Execute
    torch.manual_seed(seed)
    model = build_model("char_lstm", 80, 80, 80, cell="torch")

    # Assert: the same parameters, by name and value, so its old checkpoints load into it; the same logits
    assert [n for n, _ in model.named_parameters()] == TORCH_CELL_NAMES
    for ours, old in zip(model.parameters(), theirs, strict=True):
        assert torch.equal(ours, old)
    x = torch.randint(0, 80, (2, 5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(model(x), head(lstm(embedding(x))[0][:, -1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("written", "cell"), [({}, "torch"), ({"cell": "torch"}, "torch"), ({"cell": "leaf"}, "leaf")],
                         ids=["left_out_before_the_option", "torch", "leaf"])
def test_a_char_lstm_file_builds_the_cell_it_was_written_with(written, cell):
    # Prepare: the meta of a file whose model was built with `cell`, recording the options as written: a file from
    # before the option leaves it out (and holds the torch cell), every file since writes it out
    torch.manual_seed(0)
    model = build_model("char_lstm", 80, 80, 80, cell=cell)
    meta = ModelMeta("char_lstm", 80, 80, 80, written).with_layout(model)

    # Execute
    built = meta.build()

    # Assert: the layout of the model the file holds, not of today's default
    assert [n for n, _ in built.named_parameters()] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize(("options", "problem"), [
    ({"cell": "leaf"}, None),
    ({"cell": "torch", "hidden_size": 16}, None),
    ({"cell": "tf"}, "model_options.char_lstm.cell: 'tf' is not a cell of char_lstm. Valid: leaf, torch"),
    ({"cell": "Torch"}, "model_options.char_lstm.cell: 'Torch' is not a cell of char_lstm. Did you mean 'torch'? "
                        "Valid: leaf, torch"),
], ids=["leaf", "torch", "tf", "Torch"])
def test_a_char_lstm_cell_s_value_is_checked_at_planning_and_build(options, problem):
    # Execute
    problems = model_option_problems("char_lstm", options)

    # Assert: a wrong value is named at planning, and again by the builder
    assert problems == ([] if problem is None else [problem])
    if problem is None:
        assert type(build_model("char_lstm", 80, 80, 80, **options)) is CharLSTM
    else:
        with pytest.raises(ValueError, match=r"cell: '\w+' is not a cell of char_lstm"):
            build_model("char_lstm", 80, 80, 80, **options)
