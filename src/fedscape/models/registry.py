"""Model registry: every network the pipeline trains, built by name (`build_model`).

The networks live by family: `feedforward` (mlp, cnn_small, convnet, lenet5, vgg11), `resnets` (the CIFAR ResNets,
resnet18), `tokens` (char_gpt, char_lstm, word_lstm), on the shared building blocks of `layers`; their torch-free
facts are in `fedscape.models.specs`. Conventions every model follows (other stages rely on them):

- ``forward(x)`` returns logits and equals ``classifier(forward_features(x))``, where
  ``forward_features`` gives the penultimate representation ``[B, D]`` (MOON) and ``classifier`` is
  the final ``nn.Linear`` (re-initialised by pretrained init when label sets differ); a token model built
  for a sequence task (``targets="every"``) returns every position's logits ``[B, vocab, T]`` instead
  (`fedscape.models.loss`), which the algorithms reading ``forward_features`` refuse at planning;
- modules are registered in forward order, so ``named_parameters()`` runs from input to output
  (the layer-wise analyses depend on it);
- the only buffers are floating point (BatchNorm running statistics; no ``num_batches_tracked``),
  so state dicts can be averaged tensor by tensor;
- ``forward`` is deterministic: no model uses dropout or any other randomness;
- a model may add ``forward_stacked(params, x)``: K models' logits on their own batches at once,
  equal to ``vmap(functional_call)`` but written for grouped layouts that run faster (vectorised
  client training uses it where present; a model with batch norm declares ``stacks_batch_norm`` and
  normalises each client over its own real samples, updating its own running statistics); a model
  without one that trains faster under ``vmap`` than one client after another on a CPU, as measured,
  sets ``vmap_faster_on_cpu``, and one whose ``forward_stacked`` was measured slower on a CPU clears
  ``stacked_faster_on_cpu`` (``client_parallel: auto`` vectorises on a CPU only the faster ones);
- a model declares its permutation symmetries (Git Re-Basin weight matching, Ainsworth et al. 2023) in
  ``permutation_axes(self, axes)`` beside its definition (`fedscape.models.permutation`), or says in
  ``no_permutation_spec`` why it has none (its entry of `fedscape.models.specs.NO_PERMUTATION_SPEC`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedscape.core.names import suggest
from fedscape.data.specs import TARGETS
from fedscape.models.feedforward import MLP, VGG11, ConvNet, LeNet5, SmallCNN
from fedscape.models.layers import ImageClassifier, ProjectedClassifier
from fedscape.models.resnets import ResNet, resnet18
from fedscape.models.specs import (
    MODEL_INFOS,
    MODEL_OPTIONS,
    ModelInfo,
    check_model_compatible,
    check_token_options,
    is_token_model,
    model_info,
    model_option_problems,
    token_model_options,
)
from fedscape.models.tokens import CharGPT, CharLSTM, WordLSTM


def _token_model(cls: type[ImageClassifier], name: str) -> Callable[..., ImageClassifier]:
    """Builder of a token model: its options over the defaults, checked against the data.

    Token data gives ``in_channels`` = vocabulary size and ``image_size`` = sequence length
    (fedscape.data.specs.DatasetInfo); the classes (next characters) are the vocabulary too.
    """

    def build(num_classes: int, in_channels: int, image_size: int, every_position: bool = False,
              **options: int | str | bool) -> ImageClassifier:
        problems = model_option_problems(name, options)
        if problems:
            raise ValueError("; ".join(problems))
        check_token_options(name, options, in_channels, image_size, dataset="the data")
        opts = token_model_options(name, options)
        opts["vocab_size"] = opts["vocab_size"] or in_channels  # None: the data's
        opts["seq_len"] = opts["seq_len"] or image_size
        if num_classes != opts["vocab_size"]:
            raise ValueError(f"model {name!r} has vocab_size {opts['vocab_size']} but the data has "
                             f"{num_classes} classes (next characters); they must be equal")
        return cls(**opts, every_position=every_position)

    return build



@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    build: Callable[..., ImageClassifier]  # (num_classes, in_channels, image_size, **options)
    options: tuple[str, ...] = ()



def _cifar_resnet(depth_per_stage: int, **kwargs: Any) -> Callable[..., ImageClassifier]:
    def build(num_classes: int, in_channels: int, image_size: int, norm: str = "batch") -> ImageClassifier:
        depths = (depth_per_stage,) * 3
        return ResNet(num_classes, in_channels, depths, (16, 32, 64), norm=norm, **kwargs)

    return build


# The builders of the models described in fedscape.models.specs.MODEL_INFOS (same names).
_BUILDERS: dict[str, Callable[..., ImageClassifier]] = {
    "mlp": lambda num_classes, in_channels, image_size: MLP(num_classes, in_channels * image_size**2),
    "cnn_small": lambda num_classes, in_channels, image_size, norm="none": SmallCNN(num_classes, in_channels, norm),
    "convnet": lambda num_classes, in_channels, image_size: ConvNet(num_classes, in_channels),
    "lenet5": lambda num_classes, in_channels, image_size: LeNet5(num_classes, in_channels),
    "resnet20": _cifar_resnet(3),
    "resnet56": _cifar_resnet(9),
    # the FedAlign code's resnet56: ResNet(Bottleneck, [6, 6, 6]) with torchvision's init
    "resnet56_bottleneck": _cifar_resnet(6, block="bottleneck", init="torchvision"),
    "resnet18": lambda num_classes, in_channels, image_size, norm="group", stem="cifar", weight_init=None: resnet18(
        num_classes, in_channels, norm, stem, weight_init),
    # the layer-wise paper's ResNet18: resnet18 without norm, under its own name (its runs keep their settings)
    "resnet18_nonorm": lambda num_classes, in_channels, image_size, weight_init=None: resnet18(
        num_classes, in_channels, "none", weight_init=weight_init),
    "vgg11": lambda num_classes, in_channels, image_size: VGG11(num_classes, in_channels),
    "char_gpt": _token_model(CharGPT, "char_gpt"),
    "char_lstm": _token_model(CharLSTM, "char_lstm"),
    "word_lstm": _token_model(WordLSTM, "word_lstm"),
}
if set(_BUILDERS) != set(MODEL_INFOS):
    raise RuntimeError("fedscape.models.registry and fedscape.models.specs name different models")

_REGISTRY: dict[str, _Entry] = {
    name: _Entry(MODEL_INFOS[name], _BUILDERS[name], MODEL_OPTIONS.get(name, ())) for name in MODEL_INFOS
}


def _entry(name: str) -> _Entry:
    model_info(name)  # ValueError naming the valid models for an unknown name
    return _REGISTRY[name]


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, **options: Any
) -> ImageClassifier:
    """Build model ``name`` for ``num_classes`` classes and [in_channels, image_size, image_size] inputs.

    Token models (`is_token_model`) read [N, image_size] int64 ids over ``in_channels`` symbols.
    ``options`` are model specific (the CIFAR ResNets: ``norm`` in NORMS, default "batch", resnet18's "group";
    resnet18 and resnet18_nonorm: ``weight_init``, fedscape.models.specs.RESNET18_WEIGHT_INITS; cnn_small: ``norm``
    none or batch, default "none"; token models: fedscape.models.specs.TOKEN_MODEL_DEFAULTS; char_gpt also
    ``bias``, fedscape.models.specs.CHAR_GPT_BIAS, default False, and ``tie_head``, CHAR_GPT_TIE_HEAD, default False;
    char_lstm ``cell``, fedscape.models.specs.CHAR_LSTM_CELLS, default "leaf");
    an unknown option, an unknown name or an incompatible input size raises ValueError.
    ``projection_head=True`` (an option of every model, set by an algorithm rather than the config: MOON with
    ``head: projection``, `fedscape.fl.hparams.base.ServerSGDConfig.model_options`) puts the classifier on a
    projection head (`ProjectedClassifier`), whose output width is ``projection_dim`` (MOON's `projection_dim`;
    absent or 0: the feature width); a head tied to the token embedding (char_gpt's ``tie_head``) refuses it.
    ``targets`` (an option of every model, set by planning from a data
    set's `datasets.<name>.targets`, `fedscape.data.specs.TARGETS`): ``every`` builds a token model that predicts
    every position, logits [N, vocab, T] (`fedscape.models.loss`); ``next`` (the default) the last position's.
    """
    entry = _entry(name)
    projection_head = bool(options.pop("projection_head", False))
    projection_dim = int(options.pop("projection_dim", 0))
    if projection_dim and not projection_head:
        raise ValueError(f"model option projection_dim {projection_dim} sizes a projection head; set "
                         "projection_head too")
    if projection_head and options.get("tie_head"):
        raise ValueError(f"model {name!r} with tie_head: true has its head as its token embedding; MOON's projection "
                         "head (head: projection) moves the head off the model or replaces it; set "
                         f"model_options.{name}.tie_head: false, or use head: side")
    targets = options.pop("targets", TARGETS[0])
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    if targets != TARGETS[0] and not is_token_model(name):
        tokens = ", ".join(n for n in MODEL_INFOS if is_token_model(n))
        raise ValueError(f"model {name!r} predicts one class per sample; targets: {targets} (a prediction at every "
                         f"position) needs a token model: {tokens}")
    for option in options:
        if option not in entry.options:
            valid = ", ".join(entry.options) or "none"
            raise ValueError(
                f"unknown option {option!r} for model {name!r}.{suggest(option, entry.options)}"
                f" Valid options: {valid}"
            )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    check_model_compatible(name, in_channels, image_size)
    if targets != TARGETS[0]:
        options["every_position"] = True
    model = entry.build(num_classes, in_channels, image_size, **options)
    return ProjectedClassifier(model, projection_dim) if projection_head else model
