"""Torch-free facts about every model of the registry (what planning and config checks need).

`fedscape.models.registry` builds them; this module only describes them (ModelInfo: residual,
width-sliceable, accepted image sizes, options), so that validating a config never imports torch.
Token models (ModelInfo.inputs "tokens", `is_token_model`) take int64 token ids [N, T] (characters or words) and
return the logits of the token after the sequence (of every position's next token when built for a sequence task,
`fedscape.models.loss`); their vocabulary size and sequence length are model options, checked against the dataset's
with `check_token_options`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.core.names import suggest, unknown_name_error
from fedscape.data.specs import INPUT_KINDS

NORMS: tuple[str, ...] = ("batch", "group", "none")
# The norms each model with a `norm` option accepts, the first its default: the CIFAR ResNets normalise with batch
# norm by default; resnet18 with group norm, as the FL literature's ResNet18s do (Hsieh et al. 2020, The Non-IID Data
# Quagmire: batch norm's statistics do not survive non-IID clients; Reddi et al. 2021, whose TFF ResNet-18 takes
# tfa's GroupNormalization at its default of 2 groups; the Meta poster, Nguyen et al. 2022, whose FLSim ResNet18 has
# opacus' GroupNorm(min(32, C)): its 32 groups are resnet18's, `RESNET18_GROUPS`), the reason the model is here
# (`norm: none` is resnet18_nonorm); cnn_small has none unless asked (its runs before the option had none, and keep
# their settings).
MODEL_NORMS: dict[str, tuple[str, ...]] = {"resnet20": NORMS, "resnet56": NORMS, "resnet56_bottleneck": NORMS,
                                           "resnet18": ("group", "batch", "none"), "cnn_small": ("none", "batch")}
# The stems of the ResNets (`stem` option of resnet18), the first its default: "cifar", a 3x3 stride-1 convolution
# without max-pool (the CIFAR variant); "imagenet", He et al. 2016's 7x7 stride-2 convolution and 3x3 stride-2
# max-pool, the ResNet18 of the FedAlign code on ImageNet-200 (Mendieta et al. 2022, models/resnet.py `ImageNet`): on
# 224x224 inputs the CIFAR stem computes its blocks at 16 times as many positions.
RESNET_STEMS: tuple[str, ...] = ("cifar", "imagenet")
# How a ResNet draws its weights (`fedscape.models.resnets.ResNet`'s init; resnet18's `weight_init` option): "kaiming",
# every convolution and linear layer Kaiming-normal over its fan in (the common CIFAR re-implementation); "pytorch",
# PyTorch's default of every layer; "torchvision", every convolution Kaiming-normal over its fan out and the linear
# layer at PyTorch's default (torchvision's ResNet, the FedAlign code's); "torchvision_default_stem", torchvision's
# with the stem at PyTorch's default: torchvision's ResNet18 whose stem is replaced by the CIFAR one after it is
# built, as the layer-wise paper's code builds its ResNet18 without norm (Adilova et al. 2023, LLMC/models/
# cifar_resnet18.py: resnet18(norm_layer=nn.Identity), then a new 3x3 conv1).
RESNET_INITS: tuple[str, ...] = ("kaiming", "pytorch", "torchvision", "torchvision_default_stem")
# resnet18's `weight_init` by its norm (resnet18_nonorm's: "none"): (its default, its baseline). The default is
# torchvision's init, as the Meta poster's code and the FedAlign code build the network, and without norm the
# layer-wise paper's. The baseline is what every job that left the option out drew before it existed: without norm
# PyTorch's default, whose logits start ~24x smaller than the authors' network's (their spread on Gaussian images,
# geometric mean over seeds 0-3: tests/unit/test_models.py).
RESNET18_WEIGHT_INITS: dict[str, tuple[str, str]] = {
    "group": ("torchvision", "torchvision"),
    "batch": ("torchvision", "torchvision"),
    "none": ("torchvision_default_stem", "pytorch"),
}
# The LSTM cells of char_lstm (its `cell` option), the first its default: "leaf", LEAF's Shakespeare model as its
# TensorFlow code builds it (Caldas et al. 2018, models/shakespeare/stacked_lstm.py: tf.contrib.rnn.BasicLSTMCell, one
# bias per gate starting at zero and a constant forget bias of 1 inside the forget gate's sigmoid; TF1's Glorot-uniform
# default init of the cells' kernels, the embedding and the dense head); "torch", nn.LSTM's cell (two biases per gate,
# whose sum alone acts: 2,048 redundant parameter directions at 256 units, with equal gradients, which random
# directions and the Hessian see) at PyTorch's default init, what char_lstm was before the option.
CHAR_LSTM_CELLS: tuple[str, ...] = ("leaf", "torch")
# The cell of every job that left the option out before it existed (`model_option_baselines`).
CHAR_LSTM_CELL_BASELINE = "torch"
# Whether char_gpt's Linear layers and LayerNorms have biases (its `bias` option; the head has none either way): not by
# default, as the GPT of the layer-wise LMC authors' code (Adilova et al. 2023; epfml/llm-baselines at 61deef8,
# src/config/base.py: `--bias` default False, which their LLMC/get_llm.py leaves; models/base.py builds every Linear
# and LayerNorm with bias=config.bias) and nanoGPT's train.py (`bias = False`). With them, 11 x embed_dim a block and
# embed_dim in ln_f (17,024 parameters in layerwise.yaml's 12 blocks of 128), the model before the option, which every
# job that left it out drew (`model_option_baselines`).
CHAR_GPT_BIAS = False
CHAR_GPT_BIAS_BASELINE = True
# Whether char_gpt's head is its token embedding, one tensor (its `tie_head` option), as the GPT of the layer-wise LMC
# authors' code (epfml/llm-baselines models/base.py: `self.transformer.wte.weight = self.lm_head.weight`) and nanoGPT
# tie them: config/papers/layerwise.yaml sets it. Not by default: MOON's projection head moves the head off the model
# or replaces it (`fedscape.models.layers.ProjectedClassifier`), which a tied head refuses, and the model without it
# is the one before the option, which every job that left it out drew (so none reruns).
CHAR_GPT_TIE_HEAD = False
# The batch-norm statistics a model is evaluated with where it was never trained as such (an interpolated, mixed or
# averaged model): `stored`, the running statistics the model carries (the interpolation of its ends' statistics,
# the mixed or averaged ones), or `recomputed` from the training data in train-mode passes, as the connectivity
# literature does before it evaluates (Garipov et al. 2018 and Izmailov et al. 2018, `bn_update`; Ainsworth et al.
# 2023; Jordan et al. 2023, REPAIR). `stored` is every job's baseline: how they evaluated before the option.
BN_STATS: tuple[str, ...] = ("stored", "recomputed")
BN_STATS_BASELINE = "stored"
# The sample the statistics are recomputed from: a fixed random subset of the training data the analysis evaluates
# on, the same for every model of a job (so that the points of a path differ by their weights alone), drawn from
# BN_STATS_SEED, and the whole split where it is smaller. 2,048 samples: 16 batches of BN_STATS_BATCH_SIZE, the
# standard error of a channel's mean over 2,048 images x H x W positions is far below the gap between two models'
# statistics, and recomputing costs about what evaluating 2,048 samples does (a fraction of one evaluation on CIFAR's
# 60,000 samples at every point of a path).
BN_STATS_SAMPLES = 2048
# Train-mode batches of the recomputation: the statistics a model was trained to meet come from batches of the
# training batch size (fedscape's default 64 to Garipov et al.'s 128); 128 as in Garipov et al.'s `bn_update`
# passes over their training loader. The per-batch means and variances are averaged cumulatively (momentum None).
BN_STATS_BATCH_SIZE = 128
BN_STATS_SEED = 0
# How a job computes its float32 work (fedscape.models.device.use_precision): full float32, TF32 matmuls and
# convolutions (CUDA), or bf16 autocast of the forward passes. fp32 is every stage's default: it is what the CPU
# computes, so a run on a GPU agrees with one on a CPU to float32 rounding.
PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "fp32"


def check_precision(precision: str) -> None:
    """Refuse a `precision` that is none of PRECISIONS: the settings of every job that computes in one (a run's
    training, a pretraining, a barrier or loss-surface job) check it when made, so that a bad one fails there, not in
    the job after it may have waited for a card (`fedscape.models.device.job_precision`, which checks it too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# The format a checkpoint (fedscape.models.checkpoint) records; planning reads it without torch
# (fedscape.core.provenance.checkpoint_record).
CHECKPOINT_FORMAT = "fedscape-checkpoint-v1"
EVAL_BATCH_SIZE = 1024  # samples per forward pass of an evaluation: bounds memory, the results do not depend on it


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model before building it."""

    name: str
    residual: bool  # has residual blocks (exposed as `model.blocks`), e.g. for Stochastic Depth
    image_sizes: tuple[int, ...] | None  # accepted square input sizes; None = any size
    description: str
    paper: str
    min_image_size: int = 1  # smallest accepted size when image_sizes is None
    width_sliceable: bool = False  # has forward_width / forward_last_block / last_block_width (GradAug, FedAlign)
    # What it reads (data.specs.INPUT_KINDS): "image" float [N, C, H, W]; "tokens" int64 ids [N, T], for
    # which build_model's in_channels is the vocabulary size and image_size the sequence length.
    inputs: str = "image"
    # Linear maps (convolutions, fully connected layers, pools, eval-mode batch norm, residual sums) and ReLU /
    # max-pool between them: each logit is linear in any one parameter almost everywhere, so the Hessian's diagonal
    # is the Gauss-Newton matrix's (analysis.hessian.maths.gauss_newton_diagonal). Not with group norm
    # (`piecewise_linear`), attention, LSTMs or smooth activations.
    piecewise_linear: bool = False

    @property
    def pixel_input(self) -> bool:
        """Reads images, whose pixels an algorithm may mix or resize (mixup); token ids cannot be."""
        return self.inputs == "image"


_CIFAR_RESNET_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (CIFAR variant)"

MODEL_INFOS: dict[str, ModelInfo] = {
    "mlp": ModelInfo(
        "mlp",
        residual=False,
        piecewise_linear=True,
        image_sizes=None,
        description="MLP on flattened pixels: in -> 64 -> 64 -> classes, ReLU",
        paper="fedscape baseline (multilayer perceptron)",
    ),
    "cnn_small": ModelInfo(
        "cnn_small",
        residual=False,
        piecewise_linear=True,
        image_sizes=None,
        description="3-conv CNN for 8x8 digits (conv16-conv32-pool-last_block conv32, FC 64), no norm "
                    "(norm: batch adds batch norm after each conv)",
        paper="fedscape small CNN; last block as in FedAlign (Mendieta et al. 2022)",
        min_image_size=2,
        width_sliceable=True,
    ),
    "convnet": ModelInfo(
        "convnet",
        residual=False,
        piecewise_linear=True,
        image_sizes=(32,),
        description="ConvNet, 6 conv + 2 FC (FC 1024 -> 64 -> classes), ReLU, no normalisation",
        paper="Li et al. 2022, Understanding Federated Learning through Loss Landscape Visualizations",
    ),
    "lenet5": ModelInfo(
        "lenet5",
        residual=False,
        piecewise_linear=True,
        image_sizes=(32,),
        description="LeNet-5-like CNN: conv5-64, pool, conv5-64, pool, FC 1600 -> 384 -> 192 -> classes, ReLU, "
                    "no normalisation",
        paper="Hsu et al. 2020, Federated Visual Classification with Real-World Data Distribution; Caldarola et "
              "al. 2022, Improving Generalization in Federated Learning by Seeking Flat Minima",
    ),
    "resnet20": ModelInfo(
        "resnet20",
        residual=True,
        piecewise_linear=True,
        image_sizes=None,
        description="CIFAR ResNet20: BasicBlock [3,3,3], widths 16/32/64, option-A shortcuts",
        paper=_CIFAR_RESNET_PAPER,
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet56": ModelInfo(
        "resnet56",
        residual=True,
        piecewise_linear=True,
        image_sizes=None,
        description="CIFAR ResNet56: BasicBlock [9,9,9], widths 16/32/64, option-A shortcuts",
        paper=_CIFAR_RESNET_PAPER,
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet56_bottleneck": ModelInfo(
        "resnet56_bottleneck",
        residual=True,
        piecewise_linear=True,
        image_sizes=None,
        description="the FedAlign code's ResNet56: Bottleneck [6,6,6] (1x1-3x3-1x1, expansion 4), widths "
                    "16/32/64 -> 64/128/256 channels, 1x1-conv + norm shortcuts, torchvision's init",
        paper="Mendieta et al. 2022 (FedAlign), their code's models/resnet.py resnet56; He et al. 2016 (bottleneck)",
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet18": ModelInfo(
        "resnet18",
        residual=True,
        piecewise_linear=True,
        image_sizes=None,
        description="ResNet18 (BasicBlock [2,2,2,2], widths 64-512, 1x1-conv + norm shortcuts), 3x3 stem, no "
                    "max-pool (stem: imagenet for the 7x7 stride-2 stem and max-pool); norm: group (32 groups, the "
                    "default), batch or none (= resnet18_nonorm); weight_init: torchvision's with a norm, without "
                    "one torchvision's with the stem at PyTorch's default (RESNET18_WEIGHT_INITS)",
        paper="He et al. 2016; group norm (Wu & He 2018) with the 32 groups of the Meta poster's code (Nguyen et al. "
              "2022, FLSim's torchvision ResNet18 with opacus' GroupNorm(min(32, C))), where Reddi et al. 2021's TFF "
              "ResNet-18 has tfa's default of 2 groups (Hsieh et al. 2020 for group norm in FL); stem imagenet as "
              "the FedAlign code's ImageNet-200 ResNet18 (Mendieta et al. 2022)",
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet18_nonorm": ModelInfo(
        "resnet18_nonorm",
        residual=True,
        piecewise_linear=True,
        image_sizes=None,
        description="ResNet18 (BasicBlock [2,2,2,2], widths 64-512), 3x3 stem, no max-pool, no norm; torchvision's "
                    "init with the stem at PyTorch's default (weight_init: torchvision_default_stem)",
        paper="Adilova, Fischer, Jaggi, Layerwise Linear Mode Connectivity (their code's cifar_resnet18_nonorm: "
              "torchvision's resnet18(norm_layer=nn.Identity) with a new 3x3 stem, no max-pool); He et al. 2016",
        min_image_size=8,
        width_sliceable=True,
    ),
    "vgg11": ModelInfo(
        "vgg11",
        residual=False,
        piecewise_linear=True,
        image_sizes=(32,),
        description="VGG11 without batch norm, single Linear(512, classes) classifier (CIFAR variant): 9.2M "
                    "parameters at 10 classes",
        paper="Simonyan & Zisserman 2015, Very Deep Convolutional Networks (configuration A's 8 convolutions); not "
              "the layer-wise paper's network (Adilova et al.), whose code trains torchvision's vgg11 (LLMC/models/"
              "vgg.py): a 7x7 adaptive average pool and a 25088-4096-4096-classes head with dropout, torchvision's "
              "init, 128.8M parameters at 10 classes",
    ),
    "char_gpt": ModelInfo(
        "char_gpt",
        residual=False,
        image_sizes=None,
        description="character-level GPT: token + position embeddings (128), pre-LayerNorm blocks of causal "
                    "self-attention and a 4x GELU MLP, final LayerNorm, linear head over the vocabulary (96); no "
                    "biases (bias: true adds them to every Linear layer but the head and every LayerNorm, the model "
                    "before the option; CHAR_GPT_BIAS); the head its own (tie_head: true makes it the token "
                    "embedding, as the authors' llm-baselines GPT; CHAR_GPT_TIE_HEAD)",
        paper="Adilova, Fischer, Jaggi, Layerwise Linear Mode Connectivity (appendix); Radford et al. 2019 "
              "(GPT-2) as in Karpathy's nanoGPT",
        inputs="tokens",
    ),
    "char_lstm": ModelInfo(
        "char_lstm",
        residual=False,
        image_sizes=None,
        description="LEAF Shakespeare model: character embedding (8), two LSTM layers of 256 units, "
                    "linear head over the vocabulary (80); cell: leaf (the default), TF's BasicLSTMCell (one bias "
                    "per gate, a constant forget bias of 1) with TF's Glorot-uniform init, 817,872 parameters over "
                    "80 characters, or torch, nn.LSTM's cell (two biases per gate) at PyTorch's init, 819,920, the "
                    "model before the option (CHAR_LSTM_CELLS)",
        paper="Caldas et al. 2018, LEAF: A Benchmark for Federated Settings (their code's models/shakespeare/"
              "stacked_lstm.py: tf.contrib.rnn.BasicLSTMCell, tf.get_variable and tf.layers.dense at TF1's defaults)",
        inputs="tokens",
    ),
    "word_lstm": ModelInfo(
        "word_lstm",
        residual=False,
        image_sizes=None,
        description="Stack Overflow next-word model: word embedding (96), one LSTM layer of 670 units (Keras: one "
                    "bias per gate), dense projection to 96, dense layer to the vocabulary's logits at every "
                    "position; 4,050,748 parameters over Stack Overflow's 10,004 ids",
        paper="Reddi et al. 2021, Adaptive Federated Optimization (App. C; TFF's create_recurrent_model)",
        inputs="tokens",
    ),
}

# Defaults of the token models' options (positive integers). A vocabulary and sequence length of None are the
# data's: a model fits the data set it is planned on without options, and a value that is set must equal the data's
# (`check_token_options`).
TOKEN_MODEL_DEFAULTS: dict[str, dict[str, int | None]] = {
    # Adilova et al., appendix: 128-dim embeddings, sequence length 256, all 96 characters (the data's: Shakespeare
    # with `source: raw, seq_len: 256`). The text of the paper's appendix loses the number of blocks and heads (a
    # page break); 4 and 4 are ours.
    "char_gpt": {"vocab_size": None, "seq_len": None, "num_blocks": 4, "num_heads": 4, "embed_dim": 128},
    # LEAF's Shakespeare model (Caldas et al. 2018): 80 characters in, the next one out (the data's: LEAF's
    # preprocessed Shakespeare), embedding 8, two LSTM layers of 256 units.
    "char_lstm": {"vocab_size": None, "seq_len": None, "embed_dim": 8, "hidden_size": 256},
    # Reddi et al. 2021's Stack Overflow LSTM: embedding 96, 670 units. Its vocabulary and sequence length are the
    # data's (Stack Overflow's 10,004 ids and 20 words, LEAF Reddit's 10,000 and 10), so that one model runs on both
    # of the Meta poster's language columns.
    "word_lstm": {"vocab_size": None, "seq_len": None, "embed_dim": 96, "hidden_size": 670},
}

# The keyword options `build_model` accepts per model (the ResNets, cnn_small: `norm` in MODEL_NORMS; resnet18 also
# `stem` in RESNET_STEMS and, with resnet18_nonorm, `weight_init` in RESNET_INITS; the token models: the integer
# options of TOKEN_MODEL_DEFAULTS, char_gpt also `bias` (CHAR_GPT_BIAS) and `tie_head` (CHAR_GPT_TIE_HEAD), char_lstm
# `cell` in CHAR_LSTM_CELLS).
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    **{name: ("norm",) for name in MODEL_NORMS},
    "resnet18": ("norm", "stem", "weight_init"),
    "resnet18_nonorm": ("weight_init",),
    **{name: tuple(defaults) for name, defaults in TOKEN_MODEL_DEFAULTS.items()},
    "char_gpt": (*TOKEN_MODEL_DEFAULTS["char_gpt"], "bias", "tie_head"),
    "char_lstm": (*TOKEN_MODEL_DEFAULTS["char_lstm"], "cell"),
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(MODEL_INFOS))
# Registry models without a permutation spec (Git Re-Basin weight matching, fedscape.models.permutation), and why:
# planning refuses to align them (interpolation.align, layer_barriers.align) and the model class names the reason.
NO_PERMUTATION_SPEC: dict[str, str] = {
    "char_lstm": ("an LSTM's recurrent weights weight_hh are permuted on both axes by the same hidden-unit "
                  "permutation, so the matching objective is quadratic in it and a coordinate step is no longer "
                  "a linear assignment (Ainsworth et al. 2023 match feed-forward and residual networks only)"),
    "word_lstm": ("its LSTM's recurrent weights weight_hh are permuted on both axes by the same hidden-unit "
                  "permutation, so the matching objective is quadratic in it (as char_lstm's)"),
}
# Registry models whose weight decay leaves some parameters alone, which the model names (`no_weight_decay()`:
# char_gpt's biases, LayerNorm gains and embeddings, as its reference code groups them), in every local and
# pretraining optimiser (`fedscape.fl.sequential.decay_groups`). Every other model's decay reaches every parameter, as
# its papers' code does (the ResNets' SGD: the FedAlign code's, akamaster's). Planning reads this to rerun the runs
# and inits of these models that decay (plan.train.UNDECAYED_BUMPS), no others.
NO_DECAY_MODELS: frozenset[str] = frozenset({"char_gpt"})
if {n for n, i in MODEL_INFOS.items() if i.inputs == "tokens"} != set(TOKEN_MODEL_DEFAULTS):
    raise RuntimeError("every token model needs its option defaults in TOKEN_MODEL_DEFAULTS, and only they")


def model_info(name: str) -> ModelInfo:
    """Static facts about model ``name``; ValueError for an unknown name."""
    if name not in MODEL_INFOS:
        raise unknown_name_error("model", name, MODEL_NAMES)
    return MODEL_INFOS[name]


def is_token_model(name: str) -> bool:
    """Whether model ``name`` takes int64 token ids [N, T] rather than images: a model of MODEL_INFOS whose
    ``inputs`` is "tokens" (those of TOKEN_MODEL_DEFAULTS)."""
    return name in MODEL_INFOS and MODEL_INFOS[name].inputs == "tokens"


def token_model_options(name: str, options: dict | None = None) -> dict[str, int | None]:
    """The options of token model ``name``: its defaults updated by ``options`` (ValueError for an image model); a
    vocab_size or seq_len of None is the data's (the defaults)."""
    if not is_token_model(name):
        raise ValueError(f"model {name!r} is not a token model; token models: {', '.join(TOKEN_MODEL_DEFAULTS)}")
    return {**TOKEN_MODEL_DEFAULTS[name], **(options or {})}


def model_option_defaults(name: str, options: dict | None = None) -> dict:
    """The value `build_model` takes for each option of model ``name`` that is left out of ``options``
    (MODEL_OPTIONS): the first of its norms and stems, resnet18's `weight_init` for its norm (RESNET18_WEIGHT_INITS),
    char_gpt's `bias` (CHAR_GPT_BIAS) and `tie_head` (CHAR_GPT_TIE_HEAD), char_lstm's first cell (CHAR_LSTM_CELLS), a
    token model's fixed sizes (not its vocab_size and seq_len, the data's); empty for an unknown model. A model built
    with these options written out is the model built without them."""
    defaults: dict = {}
    if name in MODEL_NORMS:
        defaults["norm"] = MODEL_NORMS[name][0]
    if "stem" in MODEL_OPTIONS.get(name, ()):
        defaults["stem"] = RESNET_STEMS[0]
    inits = _resnet18_weight_inits(name, options)
    if inits is not None:
        defaults["weight_init"] = inits[0]
    if "bias" in MODEL_OPTIONS.get(name, ()):
        defaults["bias"] = CHAR_GPT_BIAS
    if "tie_head" in MODEL_OPTIONS.get(name, ()):
        defaults["tie_head"] = CHAR_GPT_TIE_HEAD
    if "cell" in MODEL_OPTIONS.get(name, ()):
        defaults["cell"] = CHAR_LSTM_CELLS[0]
    defaults.update({key: value for key, value in TOKEN_MODEL_DEFAULTS.get(name, {}).items() if value is not None})
    return defaults


def model_option_baselines(name: str, options: dict | None = None) -> dict:
    """What a job that left each option of model ``name`` out of ``options`` computed with: `model_option_defaults`,
    but an option whose default changed at its old one (resnet18's `weight_init` without norm: RESNET18_WEIGHT_INITS;
    char_gpt's `bias`: CHAR_GPT_BIAS_BASELINE; char_lstm's `cell`: CHAR_LSTM_CELL_BASELINE).
    An init job writes such an option out where it is left out (`with_new_defaults`), so that its settings differ
    from those of the jobs before the new default; its meaning leaves out the options at their baselines
    (`fedscape.stages.init_settings.InitJob.meaning`), so that the old default written out reruns none of them."""
    baselines = model_option_defaults(name, options)
    inits = _resnet18_weight_inits(name, options)
    if inits is not None:
        baselines["weight_init"] = inits[1]
    if "bias" in baselines:
        baselines["bias"] = CHAR_GPT_BIAS_BASELINE
    if "cell" in baselines:
        baselines["cell"] = CHAR_LSTM_CELL_BASELINE
    return baselines


def with_new_defaults(name: str, options: dict) -> dict:
    """``options`` of model ``name`` with each option left out whose default is not its baseline
    (`model_option_baselines`) written out at its default: a model option's new default reruns exactly the jobs that
    left it out."""
    return {**options, **{key: default for key, (default, _) in _changed_defaults(name, options).items()}}


def with_old_defaults(name: str, options: dict) -> dict:
    """``options`` of model ``name`` with each option left out whose default is not its baseline written out at its
    baseline: what a file written before the new default was built with (since then `with_new_defaults` writes the
    option out)."""
    return {**options, **{key: baseline for key, (_, baseline) in _changed_defaults(name, options).items()}}


def _changed_defaults(name: str, options: dict) -> dict[str, tuple]:
    """(default, baseline) of each option of model ``name`` left out of ``options`` whose default changed."""
    defaults, baselines = model_option_defaults(name, options), model_option_baselines(name, options)
    return {key: (value, baselines[key]) for key, value in defaults.items()
            if key not in options and value != baselines[key]}


def _resnet18_weight_inits(name: str, options: dict | None) -> tuple[str, str] | None:
    """(default, baseline) of the `weight_init` of model ``name`` with ``options`` (RESNET18_WEIGHT_INITS); None for a
    model without the option or with a norm it does not have (an init's meaning reads any record without raising)."""
    if "weight_init" not in MODEL_OPTIONS.get(name, ()):
        return None
    norm = "none" if name == "resnet18_nonorm" else model_norm(name, options)
    return RESNET18_WEIGHT_INITS.get(norm) if isinstance(norm, str) else None


def model_norm(name: str, options: dict | None = None) -> str | None:
    """The normalisation of model ``name`` with ``options`` (its default without them); None for a model without a
    `norm` option."""
    if name not in MODEL_NORMS:
        return None
    return (options or {}).get("norm", MODEL_NORMS[name][0])


def piecewise_linear(name: str, options: dict | None = None) -> bool:
    """Whether model `name` with `options` is piecewise linear in its parameters in eval mode (`ModelInfo.
    piecewise_linear`), so that its Hessian's diagonal is exact from per-sample gradients: not with group norm, which
    divides by a standard deviation of the sample's own activations."""
    return model_info(name).piecewise_linear and model_norm(name, options) != "group"


def uses_batch_norm(name: str, options: dict | None = None) -> bool:
    """Whether model ``name`` with ``options`` has batch norm, whose running statistics `bn_stats` may recompute."""
    return model_norm(name, options) == "batch"


def model_option_problems(name: str, options: dict | None) -> list[str]:
    """Problems of the values of a model's options: a ResNet's `stem` (RESNET_STEMS) and `weight_init`
    (RESNET_INITS), char_gpt's `bias` and `tie_head` (true or false), char_lstm's `cell` (CHAR_LSTM_CELLS), a token
    model's sizes (positive integers; char_gpt: heads divide embed_dim)."""
    for key, what, valid in (("stem", "stem", RESNET_STEMS), ("weight_init", "weight init", RESNET_INITS),
                             ("cell", "cell", CHAR_LSTM_CELLS)):
        value = (options or {}).get(key)
        if value is not None and key in MODEL_OPTIONS.get(name, ()) and value not in valid:
            return [f"model_options.{name}.{key}: {value!r} is not a {what} of {name}.{suggest(str(value), valid)} "
                    f"Valid: {', '.join(valid)}"]
    for key in ("bias", "tie_head"):
        value = (options or {}).get(key, False)
        if key in MODEL_OPTIONS.get(name, ()) and not isinstance(value, bool):
            return [f"model_options.{name}.{key}: must be true or false, got {value!r}"]
    if not is_token_model(name):
        return []
    problems = []
    given = {k: v for k, v in (options or {}).items() if k in TOKEN_MODEL_DEFAULTS[name]}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"model_options.{name}.{key}: must be a positive integer, got {value!r}")
    if problems:
        return problems
    merged = token_model_options(name, given)
    if name == "char_gpt" and merged["embed_dim"] % merged["num_heads"]:
        problems.append(f"model_options.{name}: embed_dim {merged['embed_dim']} is not divisible by "
                        f"num_heads {merged['num_heads']}")
    return problems


def check_token_options(name: str, options: dict | None, vocab_size: int, seq_len: int,
                        dataset: str = "the dataset") -> None:
    """ValueError unless token model ``name`` with ``options`` has the data's vocabulary and sequence length.

    Token data describes its samples as ``in_channels`` = vocabulary size and ``image_size`` = sequence
    length (fedscape.data.specs.DatasetInfo); the targets are next characters, so the vocabulary is also
    the number of classes. Image models are not checked here.
    """
    if not is_token_model(name):
        return
    opts = token_model_options(name, options)
    if opts["vocab_size"] is not None and opts["vocab_size"] != vocab_size:
        raise ValueError(f"model {name!r} has vocab_size {opts['vocab_size']} but {dataset} has a vocabulary of "
                         f"{vocab_size} characters; set model_options.{name}.vocab_size: {vocab_size}")
    if opts["seq_len"] is not None and opts["seq_len"] != seq_len:
        raise ValueError(f"model {name!r} has seq_len {opts['seq_len']} but {dataset} gives sequences of "
                         f"{seq_len} characters; set model_options.{name}.seq_len: {seq_len}")


def _accepts(info: ModelInfo, image_size: int) -> bool:
    """Whether a model described by `info` takes square inputs of `image_size`."""
    if info.image_sizes is None:
        return image_size >= info.min_image_size
    return image_size in info.image_sizes


def check_model_compatible(name: str, in_channels: int, image_size: int, inputs: str | None = None) -> None:
    """Raise a clear ValueError if ``name`` cannot take the dataset's inputs.

    ``inputs`` is the dataset's kind (`fedscape.data.specs.INPUT_KINDS`; None: the model's own, only
    sizes are checked); for "tokens", ``in_channels`` is the vocabulary size and ``image_size`` the
    sequence length.
    """
    info = model_info(name)
    inputs = info.inputs if inputs is None else inputs
    if inputs not in INPUT_KINDS:
        raise unknown_name_error("input kind", inputs, INPUT_KINDS)
    if info.inputs != inputs:
        what = {"image": "images", "tokens": "token sequences (text)"}
        fitting = [n for n in MODEL_NAMES if MODEL_INFOS[n].inputs == inputs]
        hint = f" Models that accept them: {', '.join(fitting)}." if fitting else " No model of the registry does."
        raise ValueError(f"model {name!r} reads {what[info.inputs]}; the dataset gives {what[inputs]}.{hint}")
    if in_channels < 1:
        raise ValueError(f"model {name!r} needs at least 1 input channel; dataset gives {in_channels}")
    if _accepts(info, image_size):
        return
    if info.image_sizes is None:
        needs = f"inputs of at least {info.min_image_size}x{info.min_image_size}"
    else:
        needs = " or ".join(f"{s}x{s}" for s in info.image_sizes) + " inputs"
    fitting = [n for n in MODEL_NAMES if MODEL_INFOS[n].inputs == inputs and _accepts(MODEL_INFOS[n], image_size)]
    hint = f" Models that accept it: {', '.join(fitting)}." if fitting else ""
    raise ValueError(f"model {name!r} needs {needs}; dataset gives {image_size}x{image_size}.{hint}")
