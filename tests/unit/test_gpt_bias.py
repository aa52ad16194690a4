"""char_gpt's `bias` option: no biases by default, as the layer-wise LMC authors' GPT (epfml/llm-baselines, `--bias`
default False) and nanoGPT's train.py; `bias: true` is the model before the option, which the files and init jobs that
left the option out keep (`fedscape.models.specs.CHAR_GPT_BIAS`, `model_option_baselines`)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedscape.analysis.barriers.maths import model_layers
from fedscape.core.jobs import kept_record, to_settings
from fedscape.models.checkpoint import ModelMeta
from fedscape.models.params import flatten_params
from fedscape.models.registry import build_model
from fedscape.models.specs import model_option_defaults, model_option_problems
from fedscape.stages.init_settings import RandomInit

pytestmark = pytest.mark.usefixtures("one_thread")

# config/papers/layerwise.yaml's GPT (Fig. 12): the paper's 96 characters, 256 positions and embedding of 128; the 12
# blocks of 4 heads of the model the authors' LLMC/get_llm.py loads
LAYERWISE = {"vocab_size": 96, "seq_len": 256, "num_blocks": 12, "num_heads": 4, "embed_dim": 128}
VOCAB, SEQ = 10, 8
TINY = {"vocab_size": VOCAB, "seq_len": SEQ, "num_blocks": 2, "num_heads": 2, "embed_dim": 16}
BLOCK_BIASES = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def gpt(options: dict, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("char_gpt", options["vocab_size"], options["vocab_size"], options["seq_len"],
                       **{**options, **overrides})


def hand_count(v: int, t: int, blocks: int, d: int, bias: bool) -> int:
    """char_gpt's parameters by hand: the token and position embeddings (v x d, t x d); per block two LayerNorm gains
    (d each), the query-key-value projection (d x 3d), the attention's output projection (d x d), the MLP (d x 4d,
    4d x d), with `bias` a bias of each LayerNorm and Linear layer (d + d + 3d + d + 4d + d = 11d); ln_f's gain (and
    bias); the head (d x v, never a bias)."""
    block = 2 * d + d * 3 * d + d * d + d * 4 * d + 4 * d * d + (11 * d if bias else 0)
    return v * d + t * d + blocks * block + (2 * d if bias else d) + d * v


# -- the model --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "bias", "expected"), [
    ({}, False, 2_419_840),  # the default: the authors' llm-baselines GPT, nanoGPT's `bias = False`
    ({"bias": False}, False, 2_419_840),
    ({"bias": True}, True, 2_436_864),  # the model before the option: 12 x 11 x 128 + 128 = 17,024 more
], ids=["default", "false", "true"])
def test_char_gpt_has_biases_only_where_asked_and_the_hand_counted_parameters(options, bias, expected):
    # Prepare / Execute
    model = gpt(LAYERWISE, **options)
    names = [n for n, _ in model.named_parameters()]

    # Assert: the count by hand; a bias in every LayerNorm and Linear layer but the head where asked, else none
    assert sum(p.numel() for p in model.parameters()) == expected == hand_count(96, 256, 12, 128, bias)
    assert hand_count(96, 256, 12, 128, True) - hand_count(96, 256, 12, 128, False) == 17_024
    expected_biases = {f"blocks.{i}.{m}.bias" for i in range(12) for m in BLOCK_BIASES} | {"ln_f.bias"}
    assert {n for n in names if n.endswith(".bias")} == (expected_biases if bias else set())
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.LayerNorm)]
    assert len(layers) == 12 * 6 + 2 and model.classifier.bias is None
    assert all((m.bias is not None) is bias for m in layers if m is not model.classifier)


def untied_gpt_by_hand(seed: int, bias: bool) -> dict[str, torch.Tensor]:
    """The parameters, by name and in order, of char_gpt as it was built before its `tie_head` option (and, with
    `bias`, before its `bias` option): nanoGPT's modules, with biases where `bias`, created in the model's order under
    the seed (PyTorch's default init drawn, then overwritten), then every Linear and Embedding weight drawn N(0, 0.02)
    in that order, the residual projections N(0, 0.02 / sqrt(2 x blocks)), the Linear biases zero."""
    v, t, blocks, d = VOCAB, SEQ, TINY["num_blocks"], TINY["embed_dim"]
    torch.manual_seed(seed)
    modules = {"wte": nn.Embedding(v, d), "wpe": nn.Embedding(t, d)}
    for i in range(blocks):
        modules.update({f"blocks.{i}.ln_1": nn.LayerNorm(d, bias=bias),
                        f"blocks.{i}.attn.c_attn": nn.Linear(d, 3 * d, bias=bias),
                        f"blocks.{i}.attn.c_proj": nn.Linear(d, d, bias=bias),
                        f"blocks.{i}.ln_2": nn.LayerNorm(d, bias=bias),
                        f"blocks.{i}.mlp.c_fc": nn.Linear(d, 4 * d, bias=bias),
                        f"blocks.{i}.mlp.c_proj": nn.Linear(4 * d, d, bias=bias)})
    modules.update({"ln_f": nn.LayerNorm(d, bias=bias), "classifier": nn.Linear(d, v, bias=False)})
    for name, module in modules.items():
        if isinstance(module, nn.Linear | nn.Embedding):
            std = 0.02 / math.sqrt(2 * blocks) if name.endswith("c_proj") else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return {f"{name}.{tensor}": p for name, module in modules.items() for tensor, p in module.named_parameters()}


@pytest.mark.parametrize("seed", [0, 1])
def test_bias_true_builds_the_model_of_before_the_option_bit_for_bit(seed):
    # Prepare: char_gpt as it was built before the option, with biases
    theirs = untied_gpt_by_hand(seed, bias=True)

    # Execute
    model = gpt(TINY, seed=seed, bias=True)

    # Assert: the same parameters, by name, order and value, so its old checkpoints load into it
    ours = dict(model.named_parameters())
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


@pytest.mark.parametrize("bias", [False, True])
def test_the_layer_wise_analyses_see_the_same_layers_with_or_without_biases(bias):
    # Prepare
    model = gpt(TINY, bias=bias)
    block = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]

    # Execute
    layers = model_layers(model)

    # Assert: one layer per module, input to output, as with biases (the layer-wise mixes average each as a whole);
    # the layers tile the flat vector
    assert [la.name for la in layers] == ["wte", "wpe", *(f"blocks.{i}.{m}" for i in range(2) for m in block), "ln_f",
                                          "classifier"]
    slices = [s for la in layers for s in la.param_slices]
    assert slices[0].start == 0 and all(a.stop == b.start for a, b in zip(slices, slices[1:], strict=False))
    assert slices[-1].stop == flatten_params(model).numel()


@pytest.mark.parametrize(("written", "bias"), [({}, True), ({"bias": True}, True), ({"bias": False}, False)],
                         ids=["left_out_before_the_option", "true", "false"])
def test_a_char_gpt_file_builds_the_biases_it_was_written_with(written, bias):
    # Prepare: the meta of a file whose model was built with `bias`, recording the options as written: a file from
    # before the option leaves it out (and holds the biases), every init since writes it out (`with_new_defaults`)
    model = gpt(TINY, bias=bias)
    meta = ModelMeta("char_gpt", VOCAB, VOCAB, SEQ, {**TINY, **written}).with_layout(model)

    # Execute
    built = meta.build()

    # Assert: the layout of the model the file holds, not of today's default
    assert [n for n, _ in built.named_parameters()] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize(("options", "problem"), [
    ({"bias": True}, None),
    ({"bias": False, "num_blocks": 3}, None),
    ({"bias": 1}, "model_options.char_gpt.bias: must be true or false, got 1"),
    ({"bias": "false"}, "model_options.char_gpt.bias: must be true or false, got 'false'"),
    ({"bias": None}, "model_options.char_gpt.bias: must be true or false, got None"),
], ids=["true", "false", "one", "string", "null"])
def test_a_bias_value_is_checked_at_planning_and_build(options, problem):
    # Execute
    problems = model_option_problems("char_gpt", options)

    # Assert: a wrong value is named at planning, and again by the builder
    assert problems == ([] if problem is None else [problem])
    if problem is None:
        assert (gpt(TINY, **options).ln_f.bias is not None) is options["bias"]
    else:
        with pytest.raises(ValueError, match="bias: must be true or false"):
            gpt(TINY, **options)


# -- planning: the new default reruns the inits that left `bias` out, and none other ----------------------------------
def init_settings_of(model: str, options: dict) -> dict:
    """The settings of a random init of token model `model` on Shakespeare with `source: raw` (96 characters, 256
    positions), as the init rule's params carry them."""
    return to_settings(RandomInit(dataset="shakespeare", model=model, model_options=options, in_channels=96,
                                  image_size=256, num_classes=96, init="random", kind="random", seed=0))


@pytest.mark.parametrize(("model", "options", "reruns", "bias"), [
    ("char_gpt", {}, True, False),  # the new default
    ("char_gpt", {"bias": False}, True, False),
    ("char_gpt", {"bias": True}, False, True),  # the old model written out
    ("char_gpt", {"num_blocks": 12}, True, False),
    ("char_gpt", {"num_blocks": 12, "bias": True}, False, True),
    ("char_gpt", {"targets": "every"}, True, False),  # a sequence task's, as planning gives it
    ("char_lstm", {"cell": "torch"}, False, None),  # token models without the option
    ("word_lstm", {}, False, None),
], ids=["default", "false", "true", "blocks", "blocks-true", "every", "char_lstm", "word_lstm"])
def test_a_new_char_gpt_bias_default_reruns_exactly_the_inits_that_left_it_out(model, options, reruns, bias):
    # Prepare: the init's params as Snakemake recorded them before the option: the config's options as given
    recorded = {**init_settings_of(model, {}), "model_options": {k: v for k, v in options.items() if k != "bias"}}

    # Execute
    planned = init_settings_of(model, options)
    kept = kept_record(planned, [repr(recorded)], RandomInit.meaning)

    # Assert: a job reruns where it now builds another model than before; either way it computes with the settings
    # of now, which build the model with its biases or without
    assert (repr(kept) != repr(recorded)) is reruns
    assert kept == planned
    built = {**model_option_defaults(model, planned["model_options"]), **planned["model_options"]}
    assert built.get("bias") == bias
    if bias is not None:
        built_model = build_model(model, 96, 96, 256, **planned["model_options"])
        assert (built_model.blocks[0].attn.c_attn.bias is not None) is bias
