"""Torch-free facts about every model of the registry (what planning and config checks need).

`fedscape.models.networks` builds them; this module only describes them (ModelInfo: residual,
width-sliceable, accepted image sizes, options), so that validating a config never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.core.names import unknown_name_error
from fedscape.data.specs import INPUT_KINDS

NORMS: tuple[str, ...] = ("batch", "group", "none")
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

    @property
    def pixel_input(self) -> bool:
        """Reads images, whose pixels an algorithm may mix or resize (mixup); token ids cannot be."""
        return self.inputs == "image"


_CIFAR_RESNET_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (CIFAR variant)"

MODEL_INFOS: dict[str, ModelInfo] = {
    "mlp": ModelInfo(
        "mlp",
        residual=False,
        image_sizes=None,
        description="MLP on flattened pixels: in -> 64 -> 64 -> classes, ReLU",
        paper="fedscape baseline (multilayer perceptron)",
    ),
    "cnn_small": ModelInfo(
        "cnn_small",
        residual=False,
        image_sizes=None,
        description="3-conv CNN for 8x8 digits (conv16-conv32-pool-last_block conv32, FC 64), no norm",
        paper="fedscape small CNN; last block as in FedAlign (Mendieta et al. 2022)",
        min_image_size=2,
        width_sliceable=True,
    ),
    "convnet": ModelInfo(
        "convnet",
        residual=False,
        image_sizes=(32,),
        description="ConvNet, 6 conv + 2 FC (FC 1024 -> 64 -> classes), ReLU, no normalisation",
        paper="Li et al. 2022, Understanding Federated Learning through Loss Landscape Visualizations",
    ),
    "resnet20": ModelInfo(
        "resnet20",
        residual=True,
        image_sizes=None,
        description="CIFAR ResNet20: BasicBlock [3,3,3], widths 16/32/64, option-A shortcuts",
        paper=_CIFAR_RESNET_PAPER,
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet56": ModelInfo(
        "resnet56",
        residual=True,
        image_sizes=None,
        description="CIFAR ResNet56: BasicBlock [9,9,9], widths 16/32/64, option-A shortcuts",
        paper=_CIFAR_RESNET_PAPER,
        min_image_size=8,
        width_sliceable=True,
    ),
    "resnet18_nonorm": ModelInfo(
        "resnet18_nonorm",
        residual=True,
        image_sizes=None,
        description="ResNet18 (BasicBlock [2,2,2,2], widths 64-512), 3x3 stem, no max-pool, no norm",
        paper="Adilova, Fischer, Jaggi, Layerwise Linear Mode Connectivity; He et al. 2016",
        min_image_size=8,
        width_sliceable=True,
    ),
    "vgg11": ModelInfo(
        "vgg11",
        residual=False,
        image_sizes=(32,),
        description="VGG11 without batch norm, single Linear(512, classes) classifier (CIFAR variant)",
        paper="Simonyan & Zisserman 2015, Very Deep Convolutional Networks; Adilova et al.",
    ),
}

# The keyword options `build_model` accepts per model (resnet20/resnet56: `norm` in NORMS).
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {"resnet20": ("norm",), "resnet56": ("norm",)}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(MODEL_INFOS))


def model_info(name: str) -> ModelInfo:
    """Static facts about model ``name``; ValueError for an unknown name."""
    if name not in MODEL_INFOS:
        raise unknown_name_error("model", name, MODEL_NAMES)
    return MODEL_INFOS[name]


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
