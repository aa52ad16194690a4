"""char_gpt's `tie_head` option: the head's weight is the token embedding, one tensor, as the layer-wise LMC authors'
GPT (epfml/llm-baselines models/base.py, `wte.weight = lm_head.weight`) and nanoGPT tie them, registered once as
``classifier.weight`` at the output end, where the authors' layer-wise code averages it (their layer `lm_head`);
`tie_head: false`, the default, is the model before the option (`fedscape.models.specs.CHAR_GPT_TIE_HEAD`)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from helpers.papers import load
from torch import nn
from unit.test_gpt_bias import LAYERWISE, TINY, VOCAB, gpt, hand_count, init_settings_of, untied_gpt_by_hand

from fedscape.analysis.barriers.alignment import align_points, apply_permutation, random_permutation
from fedscape.analysis.barriers.maths import Point, mix_layers, model_layers
from fedscape.core.jobs import kept_record
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.settings import TrainConfig
from fedscape.models.checkpoint import ModelMeta
from fedscape.models.params import FlatParams, flatten_buffers, flatten_params, load_params
from fedscape.models.permutation import permutation_spec
from fedscape.models.registry import build_model
from fedscape.models.specs import model_option_problems
from fedscape.stages.init_settings import RandomInit

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, TINY["seq_len"]), generator=torch.Generator().manual_seed(seed))


def with_values(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` holding `state` (names as its parameters')."""
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other


# -- the model --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "tied", "expected"), [
    ({}, False, 2_419_840),  # the default: the model before the option
    ({"tie_head": False}, False, 2_419_840),
    ({"tie_head": True}, True, 2_407_552),  # the authors': 96 x 128 = 12,288 fewer
    ({"tie_head": True, "bias": True}, True, 2_424_576),
], ids=["default", "false", "true", "true-bias"])
def test_a_tied_head_is_the_token_embedding_and_counts_once(options, tied, expected):
    # Prepare / Execute
    model = gpt(LAYERWISE, **options)
    names = [n for n, _ in model.named_parameters()]

    # Assert: the hand count less the embedding where tied; the tensor under the head's name alone, no `wte`
    bias = options.get("bias", False)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert expected == hand_count(96, 256, 12, 128, bias) - (96 * 128 if tied else 0)
    assert ("wte.weight" in names, hasattr(model, "wte"), names[-1]) == (not tied, not tied, "classifier.weight")


@pytest.mark.parametrize("tied", [True, False])
def test_the_token_embedding_reads_the_head_s_weight_where_tied(tied):
    # Prepare: a model and a copy whose head row of character 3 is changed
    model = gpt(TINY, tie_head=tied)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.classifier.weight[3] += 1.0
    x = torch.full((1, TINY["seq_len"]), 3)

    # Execute: the residual stream before the head, which an untied head does not reach
    before, after = model.hidden_states(x), changed.hidden_states(x)

    # Assert
    assert (not torch.equal(before, after)) is tied


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("written", [{}, {"tie_head": False}], ids=["left_out", "false"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tie_head_false_builds_the_model_of_before_the_option_bit_for_bit(seed, written, bias):
    # Prepare: char_gpt as it was built before the option
    theirs = untied_gpt_by_hand(seed, bias=bias)

    # Execute
    ours = dict(gpt(TINY, seed=seed, bias=bias, **written).named_parameters())

    # Assert: the same parameters, by name, order and value, so its old checkpoints load into it
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_the_tied_tensor_gets_the_gradients_of_both_its_uses(float64_default):
    # Prepare: a tied model and an untied one whose embedding and head both hold the tied tensor's values
    tied = gpt(TINY, tie_head=True)
    untied = gpt(TINY, seed=1)
    untied.load_state_dict({**tied.state_dict(), "wte.weight": tied.classifier.weight.detach().clone()})
    x, y = tokens(4), tokens(4, seed=1)[:, -1]

    # Execute
    for model in (tied, untied):
        F.cross_entropy(model(x), y).backward()

    # Assert: the same loss surface, the tied tensor's gradient the sum of the embedding's and the head's (nanoGPT's
    # tie); the other tensors' alike
    assert torch.allclose(tied.classifier.weight.grad, untied.wte.weight.grad + untied.classifier.weight.grad,
                          rtol=0, atol=1e-12)
    untied_grads = dict(untied.named_parameters())
    assert all(torch.allclose(p.grad, untied_grads[n].grad, rtol=0, atol=1e-12)
               for n, p in tied.named_parameters() if n != "classifier.weight")


def test_an_adamw_step_with_decay_leaves_the_tied_head_alone_as_the_authors():
    # Prepare: every gradient zero, so that AdamW's step is its decoupled decay alone (their get_parameter_group_specs:
    # `decay.remove('lm_head.weight')`, the tied tensor in the no-decay group as `transformer.wte.weight`)
    model = gpt(TINY, tie_head=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = sequential_mod.local_optimizer(sequential_mod.decay_groups(model),
                                         TrainConfig(optimizer="adamw", momentum=0.0, lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    # Execute
    opt.step()

    # Assert: the head (the embedding) stays, the blocks' Linear weights shrink by 1 - lr wd
    after = dict(model.named_parameters())
    assert torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert torch.allclose(after["blocks.0.mlp.c_fc.weight"], before["blocks.0.mlp.c_fc.weight"] * 0.95, rtol=0,
                          atol=1e-7)
    assert "classifier.weight" in model.no_weight_decay()


def test_a_trained_tied_model_round_trips_through_flat_vectors():
    # Prepare: a tied model trained a step on its flat buffer (`FlatParams`, as local training binds it)
    model = gpt(TINY, tie_head=True)
    flat = FlatParams(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = tokens(4), tokens(4, seed=1)[:, -1]
    F.cross_entropy(model(x), y).backward()
    opt.step()

    # Execute: its vector into a fresh tied model
    vector = flat.get()
    fresh = gpt(TINY, seed=3, tie_head=True)
    load_params(fresh, vector)

    # Assert: one entry per tensor entry, the tied one once; the same model
    assert vector.numel() == flatten_params(model).numel() == sum(p.numel() for p in model.parameters())
    assert torch.equal(flatten_params(fresh), vector)
    assert torch.equal(fresh(x), model(x))


# -- the layer-wise analyses: the tied tensor once, as the authors' last layer ----------------------------------------
class NanoTied(nn.Module):
    """The module tree of the authors' GPT (llm-baselines GPTBase), embedding and head tied as theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(VOCAB, 4), "wpe": nn.Embedding(3, 4)})
        self.lm_head = nn.Linear(4, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight


def test_the_authors_layer_wise_code_averages_the_tied_tensor_as_its_last_layer_lm_head():
    # Prepare: two of their models and their LLMC/get_llm.py layers: state-dict keys by module path
    torch.manual_seed(0)
    a, b = NanoTied(), NanoTied()
    sa, sb = a.state_dict(), b.state_dict()
    layers = OrderedDict()
    for key in sa:
        layers.setdefault("-".join(key.split(".")[:-1]), []).append(key)

    # Execute: their interpolate_layer_state_dicts(0, ...) at 0.5 of each layer, loaded into a model as they do
    mixed = {}
    for layer, keys in layers.items():
        model = NanoTied()
        model.load_state_dict({**sa, **{k: 0.5 * (sa[k] + sb[k]) for k in keys}})
        mixed[layer] = model.lm_head.weight.detach()

    # Assert: `lm_head`, loaded last, sets the tied tensor: their `transformer-wte` changes nothing
    average = 0.5 * (a.lm_head.weight + b.lm_head.weight)
    assert list(layers) == ["transformer-wte", "transformer-wpe", "lm_head"]
    assert torch.equal(mixed["transformer-wte"], a.lm_head.weight)
    assert torch.equal(mixed["lm_head"], average)


@pytest.mark.parametrize(("tied", "first", "last"), [(True, "wpe", "classifier"), (False, "wte", "classifier")])
def test_the_layers_hold_the_tied_tensor_once_in_the_last_layer(tied, first, last):
    # Prepare
    a, b = gpt(TINY, tie_head=tied), gpt(TINY, seed=1, tie_head=tied)
    pa, pb = (Point(flatten_params(m), flatten_buffers(m)) for m in (a, b))

    # Execute: the layers, and a's model with the last layer averaged (`single` mode's mix)
    layers = model_layers(a)
    mixed, _ = mix_layers(pa, pb, layers, [len(layers) - 1])
    model = gpt(TINY, seed=2, tie_head=tied)
    load_params(model, mixed.params)

    # Assert: one layer per module, input to output, the layers tiling the flat vector; tied, the head's layer is
    # the tensor of both uses (the authors' `lm_head`), so averaging it averages the token embedding too
    names = [la.name for la in layers]
    assert names == [first, *([] if tied else ["wpe"]), *(f"blocks.{i}.{m}" for i in range(2) for m in BLOCK), "ln_f",
                     last]
    slices = [s for la in layers for s in la.param_slices]
    assert slices[0].start == 0 and all(x.stop == y.start for x, y in zip(slices, slices[1:], strict=False))
    assert slices[-1].stop == pa.params.numel() and layers[-1].numel == VOCAB * TINY["embed_dim"]
    x = torch.full((1, TINY["seq_len"]), 3)
    assert torch.equal(model.hidden_states(x), a.hidden_states(x)) is (not tied)


# -- weight matching: one tensor, permuted once --------------------------------------------------------------------
def test_a_permuted_or_aligned_tied_model_computes_the_same_function(float64_default):
    # Prepare
    model = gpt(TINY, tie_head=True)
    spec = permutation_spec(model)
    state = model.state_dict()
    other = gpt(TINY, seed=1, tie_head=True)
    x = tokens(3)

    # Execute: a random permutation; the other model aligned to this one
    permuted = with_values(model, apply_permutation(spec, random_permutation(spec, seed=1), state))
    point = Point(flatten_params(other), flatten_buffers(other))
    aligned, _ = align_points(model, Point(flatten_params(model), flatten_buffers(model)), point)
    aligned_model = gpt(TINY, seed=2, tie_head=True)
    load_params(aligned_model, aligned.params)

    # Assert: the tied tensor is permuted on its stream axis alone, the same for its two uses
    assert "wte.weight" not in spec.shapes and spec.axes_to_perm["classifier.weight"][0] is None
    assert not torch.equal(permuted.classifier.weight, model.classifier.weight)
    torch.testing.assert_close(permuted(x), model(x), rtol=1e-10, atol=1e-10)
    assert not torch.equal(aligned.params, point.params)
    torch.testing.assert_close(aligned_model(x), other(x), rtol=1e-10, atol=1e-10)


# -- vectorised training: a stacked step reads the tied tensor by its one name -----------------------------------------
def test_functional_call_with_another_head_changes_the_embedding_too():
    # Prepare
    model = gpt(TINY, tie_head=True)
    head = torch.randn_like(model.classifier.weight)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.classifier.weight.copy_(head)
    params = {**dict(model.named_parameters()), "classifier.weight": head}
    x = tokens(2)

    # Execute
    out = torch.func.functional_call(model, params, (x,))

    # Assert
    assert torch.equal(out, reference(x))


# -- options and planning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "problem"), [
    ({"tie_head": True}, None),
    ({"tie_head": False, "bias": True}, None),
    ({"tie_head": 1}, "model_options.char_gpt.tie_head: must be true or false, got 1"),
    ({"tie_head": "true"}, "model_options.char_gpt.tie_head: must be true or false, got 'true'"),
    ({"tie_head": None}, "model_options.char_gpt.tie_head: must be true or false, got None"),
], ids=["true", "false", "one", "string", "null"])
def test_a_tie_head_value_is_checked_at_planning_and_build(options, problem):
    # Execute
    problems = model_option_problems("char_gpt", options)

    # Assert: a wrong value is named at planning, and again by the builder
    assert problems == ([] if problem is None else [problem])
    if problem is None:
        assert hasattr(gpt(TINY, **options), "wte") is not options["tie_head"]
    else:
        with pytest.raises(ValueError, match="tie_head: must be true or false"):
            gpt(TINY, **options)


@pytest.mark.parametrize(("tied", "refused"), [(True, True), (False, False)])
def test_moon_s_projection_head_is_refused_on_a_tied_head(tied, refused):
    # Prepare
    build = lambda: build_model("char_gpt", VOCAB, VOCAB, TINY["seq_len"], projection_head=True,  # noqa: E731
                                **TINY, tie_head=tied)

    # Execute / Assert: the head it moves off the model is the token embedding
    if refused:
        with pytest.raises(ValueError, match="tie_head: true has its head as its token embedding"):
            build()
    else:
        assert build().classifier.weight.shape == (VOCAB, TINY["embed_dim"])


@pytest.mark.parametrize(("options", "reruns", "tied"), [
    ({}, False, False),
    ({"tie_head": False}, False, False),  # the default written out
    ({"tie_head": True}, True, True),
    ({"num_blocks": 12, "tie_head": True}, True, True),
], ids=["left_out", "false", "true", "blocks-true"])
def test_only_the_inits_that_tie_the_head_rerun(options, reruns, tied):
    # Prepare: the init's params as Snakemake recorded them before the option: of the config's options without it
    recorded = init_settings_of("char_gpt", {k: v for k, v in options.items() if k != "tie_head"})

    # Execute
    planned = init_settings_of("char_gpt", options)
    kept = kept_record(planned, [repr(recorded)], RandomInit.meaning)

    # Assert: a job reruns where it now builds another model; a file's meta builds the model it was written with
    assert (repr(kept) != repr(recorded)) is reruns
    model = build_model("char_gpt", 96, 96, 256, **planned["model_options"])
    meta = ModelMeta("char_gpt", 96, 96, 256, planned["model_options"]).with_layout(model)
    assert hasattr(meta.build(), "wte") is not tied


def test_layerwise_yaml_s_gpt_is_the_authors_tied_one_of_75_layers():
    # Prepare
    config = load("layerwise")

    # Execute
    model = build_model("char_gpt", 96, 96, 256, **config["model_options"]["char_gpt"])

    # Assert: their 76 layers less the token embedding's, which their analysis never averages (above)
    assert model.tie_head and sum(p.numel() for p in model.parameters()) == 2_407_552
    assert len(model_layers(model)) == 75 and model_layers(model)[-1].name == "classifier"


@pytest.mark.parametrize("tied", [True, False])
def test_the_config_check_refuses_moons_projection_head_on_a_tied_gpt_before_any_job(tied):
    # Prepare: layerwise.yaml with a MOON run (head: projection) of its GPT, the head tied or not
    from helpers.configs import SCHEMA

    from fedscape.core.config import ConfigError
    from fedscape.plan.workflow import check_config

    config = copy.deepcopy(load("layerwise"))
    config["model_options"]["char_gpt"]["tie_head"] = tied
    config["algorithms"]["moon_p"] = {"name": "moon", "head": "projection"}
    config["experiments"].append({"dataset": "shakespeare", "model": "char_gpt", "alpha": "iid", "num_clients": 1,
                                  "algorithm": "moon_p", "init": "random", "seed": 0})

    # Execute
    with pytest.raises(ConfigError) as err:  # (refused either way: MOON does not train every-position targets)
        check_config(config, SCHEMA)

    # Assert: the tied head named, with both ways out, only where it is tied
    line = ("algorithms.moon_p: its head: projection moves model char_gpt's head onto a projection head, but "
            "model_options.char_gpt.tie_head: true makes that head the token embedding; set "
            "model_options.char_gpt.tie_head: false, or use head: side")
    assert (f"  - {line}" in str(err.value).splitlines()) == tied
