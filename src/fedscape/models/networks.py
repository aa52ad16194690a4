"""Model registry: every network the pipeline trains, built by name.

Conventions every model follows (other stages rely on them):

- ``forward(x)`` returns logits and equals ``classifier(forward_features(x))``, where
  ``forward_features`` gives the penultimate representation ``[B, D]`` (MOON) and ``classifier`` is
  the final ``nn.Linear`` (re-initialised by pretrained init when label sets differ);
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
  ``stacked_faster_on_cpu`` (``client_parallel: auto`` vectorises on a CPU only the faster ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedscape.core.names import suggest, unknown_name_error
from fedscape.models.specs import (
    MODEL_INFOS,
    MODEL_OPTIONS,
    NORMS,
    RESNET_STEMS,
    ModelInfo,
    check_model_compatible,
    check_token_options,
    model_info,
    model_option_problems,
    token_model_options,
)

GROUP_NORM_MAX_GROUPS = 8
# The ResNet18's group norm: 32 groups at every width (64-512 channels), the group count of Wu & He 2018 (Group
# Normalization) that the Meta poster's code uses: FLSim's ResNet18 is torchvision's with opacus'
# convert_batchnorm_modules, which puts GroupNorm(min(32, C), C) in place of every batch norm.
RESNET18_GROUPS = 32

NormFactory = Callable[[int], nn.Module]


class BatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation (Ioffe & Szegedy, 2015) whose only buffers are the float running stats.

    The integer ``num_batches_tracked`` counter is dropped (it is only read when ``momentum`` is
    None), so every buffer can be averaged like a parameter.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0 and variance 1 (the parent also zeroes the dropped counter, which is None here)."""
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # Skip _NormBase's legacy hook: for state dicts without version metadata (e.g. plain dicts
        # built by averaging) it inserts a num_batches_tracked entry this module does not have.
        nn.Module._load_from_state_dict(self, *args, **kwargs)


def norm_factory(norm: str, max_groups: int = GROUP_NORM_MAX_GROUPS) -> NormFactory:
    """Normalisation layer constructor for ``norm`` in NORMS.

    "group" (Wu & He 2018) uses ``gcd(max_groups, channels)`` groups: ``max_groups`` for the usual widths
    (8 of 16/32/64/... by default), and always a divisor of the channel count.
    """
    if norm == "batch":
        return BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(max_groups, channels), channels)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise unknown_name_error("norm", norm, NORMS)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (ResNet convention)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (the bottleneck's reduce/expand and projection shortcuts)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


# -- width slicing (GradAug / FedAlign sub-networks) -------------------------------------------
# A sub-network of width w keeps the first slim_channels(C, w) channels of every sliced layer and
# shares its weights with the full network (Yang et al. 2020, GradAug; Mendieta et al. 2022,
# FedAlign). The sliced forward passes below use the weights' leading slices with F.conv2d /
# F.linear; at width 1.0 they compute exactly what the modules compute.
SLIM_DIVISOR = 8  # channel counts are rounded to multiples of 8 (make_divisible of the GradAug/FedAlign code)


def slim_channels(channels: int, width: float) -> int:
    """Channels kept at width ``width``: make_divisible(channels * width, 8) of the slimmable-network
    code (GradAug, FedAlign), at most ``channels``."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    if width == 1:
        return channels
    value = channels * width
    kept = max(1, int(value + SLIM_DIVISOR / 2) // SLIM_DIVISOR * SLIM_DIVISOR)
    if kept < 0.9 * value:  # never round down by more than 10%
        kept += SLIM_DIVISOR
    return min(channels, kept)


def sliced_conv(conv: nn.Conv2d, x: Tensor, out_channels: int) -> Tensor:
    """``conv`` applied to ``x`` (its first x.shape[1] input channels) giving its first ``out_channels`` outputs."""
    weight = conv.weight[:out_channels, : x.shape[1]]
    bias = conv.bias[:out_channels] if conv.bias is not None else None
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def sliced_norm(norm: nn.Module, x: Tensor, full_width: bool) -> Tensor:
    """A normalisation layer restricted to the first x.shape[1] channels.

    At full width it is the module itself. In a narrower sub-network batch norm normalises with
    batch statistics in training, never updating the full network's running statistics (as the
    slimmable BN of the GradAug/FedAlign code), and with the sliced running statistics in
    evaluation. Group norm keeps the full network's groups; a group that the width cuts normalises over its kept
    channels alone (GradAug and FedAlign slice batch norm only; this keeps every kept channel's group as at full
    width where the width fills whole groups, and lets any width slice a group of more than 8 channels, e.g. the
    ResNet18's 32 groups of 512 channels at FedAlign's width 0.8: 408 channels, 25 groups and a half).
    """
    c = x.shape[1]
    if isinstance(norm, nn.Identity):
        return x
    if full_width:
        return norm(x)
    if isinstance(norm, nn.BatchNorm2d):
        weight = norm.weight[:c] if norm.weight is not None else None
        bias = norm.bias[:c] if norm.bias is not None else None
        if norm.training or norm.running_mean is None:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, norm.eps)
        return F.batch_norm(x, norm.running_mean[:c], norm.running_var[:c], weight, bias, False, 0.0, norm.eps)
    if isinstance(norm, nn.GroupNorm):
        group_size = norm.num_channels // norm.num_groups
        whole = c - c % group_size  # the channels of the whole groups kept
        weight = norm.weight[:c] if norm.weight is not None else None
        bias = norm.bias[:c] if norm.bias is not None else None
        if whole == c:
            return F.group_norm(x, c // group_size, weight, bias, norm.eps)
        parts = [(x[:, :whole], whole // group_size, slice(0, whole)), (x[:, whole:], 1, slice(whole, c))]
        return torch.cat([F.group_norm(part, groups, None if weight is None else weight[kept],
                                       None if bias is None else bias[kept], norm.eps)
                          for part, groups, kept in parts if part.shape[1]], dim=1)
    raise TypeError(f"cannot slice normalisation layer {type(norm).__name__}")


def sliced_linear_in(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear`` on the first x.shape[1] input features (the rest taken as zero), all outputs."""
    return F.linear(x, linear.weight[:, : x.shape[1]], linear.bias)


def grouped_layout(x: Tensor) -> Tensor:
    """Stacked batches [K, B, C, H, W] -> [B, K*C, H, W] channels-last: client k's channels are group k.

    oneDNN's grouped convolutions and max pooling are several times faster channels-last on a CPU;
    cuDNN handles both layouts.
    """
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]).contiguous(memory_format=torch.channels_last)


def ungrouped_flat(h: Tensor, k: int) -> Tensor:
    """Grouped layout [B, K*C, H, W] -> [K, B, C*H*W], each client's features flattened channel-major."""
    b = h.shape[0]
    return h.contiguous().view(b, k, -1).transpose(0, 1)


def stacked_linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """K linear layers at once: h [K, B, in], weight [K, out, in], bias [K, out] -> [K, B, out]."""
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def stacked_layers(layers: nn.Sequential, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int) -> Tensor:
    """``layers`` (Conv2d, ReLU, MaxPool2d) of K stacked models on h in grouped layout [B, K*C, H, W].

    ``params[prefix + name]`` holds the stacked [K, *shape] parameters. A ReLU followed by a max pool
    is computed as the pool then the ReLU, on a quarter of the activations: max pooling commutes with
    a monotone function, and the gradients agree too (a window whose maximum is positive sends it to
    the same first maximum; one whose maximum is not positive sends nothing either way).
    """
    modules = list(layers.named_children())
    i = 0
    while i < len(modules):
        name, module = modules[i]
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            bias = params.get(f"{prefix}{name}.bias")
            h = F.conv2d(h, params[f"{prefix}{name}.weight"].flatten(0, 1), None if bias is None else bias.flatten(),
                         module.stride, module.padding, module.dilation, module.groups * k)
        elif isinstance(module, nn.ReLU):
            if i + 1 < len(modules) and isinstance(modules[i + 1][1], nn.MaxPool2d):
                i += 1
                h = modules[i][1](h)
            h = F.relu(h)
        elif isinstance(module, nn.MaxPool2d):  # parameter-free: the same module works on the grouped layout
            h = module(h)
        else:
            raise TypeError(f"stacked_layers has no grouped form of {type(module).__name__} ({prefix}{name})")
        i += 1
    return h


@dataclass
class StackedNorm:
    """What batch norm needs in a stacked forward besides the parameters (vectorised training).

    ``mask`` [K, B]: 1 for a real sample of client k, 0 for a padded row (None: every row is real); each
    client normalises with the batch statistics of its own real samples only. ``running``: the clients'
    running statistics by buffer name, [K, *shape] each, updated in place as torch's BatchNorm updates
    its own in training (None: normalise with batch statistics and update nothing, as a forward whose
    statistics are discarded, FedSAM's second pass, does).
    """

    mask: Tensor | None = None
    running: Mapping[str, Tensor] | None = None


def stacked_conv(conv: nn.Conv2d, params: Mapping[str, Tensor], name: str, h: Tensor, k: int) -> Tensor:
    """``conv`` of K stacked models on h in grouped layout [B, K*C, H, W] (``params[name + '.weight']``: [K, ...])."""
    if conv.padding_mode != "zeros":
        raise TypeError(f"stacked_conv has no grouped form of padding mode {conv.padding_mode!r} ({name})")
    bias = params.get(f"{name}.bias")
    return F.conv2d(h, params[f"{name}.weight"].flatten(0, 1), None if bias is None else bias.flatten(),
                    conv.stride, conv.padding, conv.dilation, conv.groups * k)


def stacked_batch_norm(h: Tensor, k: int, weight: Tensor | None, bias: Tensor | None, eps: float, momentum: float,
                       mask: Tensor | None = None, running_mean: Tensor | None = None,
                       running_var: Tensor | None = None) -> Tensor:
    """Training-mode batch norm (Ioffe & Szegedy, 2015) of K models on h in grouped layout [B, K*C, H, W].

    Each client's channel is normalised with the mean and biased variance of its own real rows (``mask``
    [K, B], None: all rows), and its running statistics [K, C] move by ``momentum`` towards that mean and
    the unbiased variance (n / (n - 1), n = real rows x H x W), as torch's BatchNorm2d does for one client.
    A client without real rows keeps its running statistics. Without a mask, torch's own batch norm over the
    K*C channels is exactly the K clients' batch norms.
    """
    flat_w = None if weight is None else weight.flatten()
    flat_b = None if bias is None else bias.flatten()
    if mask is None:
        return F.batch_norm(h, None if running_mean is None else running_mean.view(-1),
                            None if running_var is None else running_var.view(-1), flat_w, flat_b, True, momentum, eps)
    b, kc, height, width = h.shape
    c = kc // k
    # Channels last, [B, H, W, K*C]: the grouped layout's memory order, so that every op below runs over contiguous
    # memory with the channel axis innermost. Statistics in at least float32, as autocast runs torch's batch norm.
    hl = h.permute(0, 2, 3, 1).to(torch.promote_types(h.dtype, torch.float32))
    real = mask.to(hl.dtype)
    rows = real.t().repeat_interleave(c, dim=1).view(b, 1, 1, kc)  # 1 where (row, channel) is a real sample's
    n = (real.sum(1) * (height * width)).repeat_interleave(c)  # [K*C] values per channel
    count = n.clamp_min(1)  # a client without real rows: statistics 0 (its outputs are unused)
    mean = (hl * rows).sum((0, 1, 2)) / count
    centered = hl - mean
    var = (centered.square() * rows).sum((0, 1, 2)) / count  # biased: what normalises
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.flatten()
    out = centered * scale if bias is None else torch.addcmul(bias.flatten(), centered, scale)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            stepped = n > 0
            unbiased = var * n / (n - 1).clamp_min(1)
            flat_mean, flat_var = running_mean.view(-1), running_var.view(-1)
            flat_mean.copy_(torch.where(stepped, (1 - momentum) * flat_mean + momentum * mean, flat_mean))
            flat_var.copy_(torch.where(stepped, (1 - momentum) * flat_var + momentum * unbiased, flat_var))
    return out.permute(0, 3, 1, 2)


def stacked_norm(norm: nn.Module, params: Mapping[str, Tensor], name: str, h: Tensor, k: int,
                 state: StackedNorm | None) -> Tensor:
    """The normalisation layer ``norm`` (identity, group norm or batch norm in training) of K stacked models on h in
    grouped layout [B, K*C, H, W]; batch norm per client over its real rows (``state``, `StackedNorm`)."""
    if isinstance(norm, nn.Identity):
        return h
    weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    if isinstance(norm, nn.GroupNorm):  # per sample: client k's groups are groups k*G .. k*G + G - 1
        return F.group_norm(h, norm.num_groups * k, None if weight is None else weight.flatten(),
                            None if bias is None else bias.flatten(), norm.eps)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.momentum is None:
            raise TypeError(f"stacked_norm has no grouped form of a cumulative-average batch norm ({name})")
        state = state or StackedNorm()
        running = state.running or {}
        return stacked_batch_norm(h, k, weight, bias, norm.eps, norm.momentum, state.mask,
                                  running.get(f"{name}.running_mean"), running.get(f"{name}.running_var"))
    raise TypeError(f"stacked_norm has no grouped form of {type(norm).__name__} ({name})")


class ImageClassifier(nn.Module):
    """Base class: ``forward(x) == classifier(forward_features(x))``."""

    classifier: nn.Linear
    # Whether training K clients at once under vmap (no forward_stacked) was measured faster than one after another on
    # a CPU (benchmarks/README.md); `client_parallel: auto` vectorises on a CPU only such models and those with a
    # forward_stacked. False where measured slower (resnet20, char_gpt, char_lstm) or not measured.
    vmap_faster_on_cpu: bool = False
    # Whether a model's own forward_stacked trains faster than one client after another on a CPU; False where
    # measured slower (resnet20: its convolutions are already large enough one client at a time).
    stacked_faster_on_cpu: bool = True
    # Whether forward_stacked takes a `StackedNorm` (``norm=``): each client's batch norm over its own real rows,
    # updating its own running statistics, so that a model with batch norm trains vectorised exactly.
    stacks_batch_norm: bool = False

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate representation, shape [B, D]."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Logits [K, B, classes] of K models (``params[name]``: [K, *shape]) on their batches x [K, B, ...].

        Equals ``vmap(functional_call)`` over the client axis (tests/unit/test_vectorized.py checks it);
        models without a faster grouped form do not override it and are trained under ``vmap``. A model with
        batch norm computes it as in training and takes ``norm`` (`StackedNorm`: which rows are padding, the
        running statistics to update); it declares ``stacks_batch_norm``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no stacked forward")

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        """Logits of the sub-network of width ``width`` (every hidden layer sliced; GradAug, Yang et al. 2020)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable layers")

    def forward_last_block(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(input of the last block, its output, logits) of the full network (FedAlign, Mendieta et al. 2022)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable last block")

    def last_block_width(self, h: Tensor, width: float) -> tuple[Tensor, Tensor]:
        """The last block at width ``width`` on the full network's block input ``h``: (sliced input, output)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable last block")


class ProjectedClassifier(ImageClassifier):
    """A classifier on a projection head: the backbone's features -> Linear(D, D) -> ReLU -> Linear(D, D) ->
    the backbone's classifier, as MOON's code (Li et al. 2021, model-contrastive federated learning) and the
    FedAlign code's MOON build it. ``forward_features`` is the head's output (MOON's representation z).

    The backbone's classifier moves to the end (``backbone.classifier`` is removed), so parameters still run
    from input to output: ``backbone.*``, ``head.*``, ``classifier.*``.
    """

    def __init__(self, backbone: ImageClassifier) -> None:
        super().__init__()
        classifier = backbone.classifier
        dim = classifier.in_features
        del backbone.classifier
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.classifier = classifier

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.forward_features(x))


def has_forward_stacked(model: nn.Module) -> bool:
    """Whether the model has its own grouped ``forward_stacked`` (else vectorised training runs it under ``vmap``)."""
    own = getattr(type(model), "forward_stacked", None)
    return own is not None and own is not ImageClassifier.forward_stacked


class MLP(ImageClassifier):
    """Multilayer perceptron on flattened pixels, in -> 64 -> 64 -> classes with ReLU (digits baseline)."""

    vmap_faster_on_cpu = True  # 10 clients on digits: 3.0x, 50: 6.2x (one thread)

    def __init__(self, num_classes: int, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))))


class SmallCNN(ImageClassifier):
    """Small CNN for 8x8 digits with a ``last_block`` for FedAlign/GradAug (Mendieta et al., 2022).

    ``norm="batch"`` puts a batch norm (Ioffe & Szegedy, 2015) after each convolution, before its ReLU, for the
    batch-norm analyses (`bn_stats`) on the digits; ``"none"`` keeps the original layers and their names. The grouped
    `forward_stacked` has no per-client batch norm (it does not declare ``stacks_batch_norm``): with batch norm,
    vectorised training is refused (`fl.vectorized.buffer_blocker`) and `client_parallel: auto` trains the clients
    one by one.
    """

    def __init__(self, num_classes: int, in_channels: int, norm: str = "none") -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise unknown_name_error("cnn_small norm", norm, ("none", "batch"))
        bn = norm == "batch"
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            *((BatchNorm2d(16),) if bn else ()),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            *((BatchNorm2d(32),) if bn else ()),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.last_block = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), *((BatchNorm2d(32),) if bn else ()),
                                        nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 64)
        self.classifier = nn.Linear(64, num_classes)
        # He init (He et al. 2015) for the four layers followed by a ReLU. PyTorch's default,
        # kaiming_uniform_(a=sqrt(5)) with weight std 1/sqrt(3 fan_in), is sqrt(6) times too small for a
        # ReLU layer: the input-dependent signal shrinks ~3x per layer, the logits start ~40x smaller
        # (near-uniform outputs, loss ln 10) and so do the gradients, and SGD sat on a plateau for ~5
        # FedAvg rounds of the default config. The classifier, with no ReLU after it, keeps the default.
        for layer in (*self._convs(), self.fc):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def _convs(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """The three convolutions, in forward order."""
        convs = [m for m in (*self.features, *self.last_block) if isinstance(m, nn.Conv2d)]
        return convs[0], convs[1], convs[2]

    def _norm_after(self, conv: nn.Conv2d) -> nn.Module:
        """The batch norm after `conv`, or an identity without norm."""
        modules = [*self.features, *self.last_block]
        nxt = modules[next(i for i, m in enumerate(modules) if m is conv) + 1]
        return nxt if isinstance(nxt, nn.BatchNorm2d) else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool(self.last_block(self.features(x)))
        return F.relu(self.fc(torch.flatten(x, 1)))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """K stacked models: grouped channels-last convolutions, then batched matmuls (vectorised training)."""
        k = x.shape[0]
        h = stacked_layers(self.features, params, "features.", grouped_layout(x), k)
        h = ungrouped_flat(self.pool(stacked_layers(self.last_block, params, "last_block.", h, k)), k)
        h = F.relu(stacked_linear(h, params["fc.weight"], params["fc.bias"]))
        return stacked_linear(h, params["classifier.weight"], params["classifier.bias"])

    def _head(self, h: Tensor) -> Tensor:
        """Logits from a (possibly sliced) last-block output: flattening is channel-major, so the
        first k channels are the fc layer's first 4k inputs."""
        return self.classifier(F.relu(sliced_linear_in(self.fc, torch.flatten(self.pool(h), 1))))

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        conv1, conv2, _ = self._convs()
        full = width == 1
        h = F.relu(sliced_norm(self._norm_after(conv1), sliced_conv(conv1, x, slim_channels(conv1.out_channels, width)),
                               full))
        h = F.relu(sliced_norm(self._norm_after(conv2), sliced_conv(conv2, h, slim_channels(conv2.out_channels, width)),
                               full))
        return self._head(self.last_block_width(self.features[-1](h), width)[1])

    def forward_last_block(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h_in = self.features(x)
        h_out = self.last_block(h_in)
        return h_in, h_out, self.classifier(F.relu(self.fc(torch.flatten(self.pool(h_out), 1))))

    def last_block_width(self, h: Tensor, width: float) -> tuple[Tensor, Tensor]:
        conv = self._convs()[2]
        h = h[:, : slim_channels(conv.in_channels, width)]
        return h, F.relu(sliced_norm(self._norm_after(conv), sliced_conv(conv, h, slim_channels(conv.out_channels,
                                                                                                width)), width == 1))


class ConvNet(ImageClassifier):
    """ConvNet with 6 conv + 2 FC layers for 32x32 inputs (Li et al., 2022, FL loss-landscape pilot study)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),  # 32 -> 30
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 15
            nn.Conv2d(32, 64, 3),  # -> 13
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 6
            nn.Conv2d(64, 64, 3),  # -> 4
            nn.ReLU(),
            *(layer for _ in range(3) for layer in (nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())),
        )
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.classifier = nn.Linear(64, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(torch.flatten(self.features(x), 1)))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """K stacked models: grouped channels-last convolutions, then batched matmuls (vectorised training)."""
        k = x.shape[0]
        h = ungrouped_flat(stacked_layers(self.features, params, "features.", grouped_layout(x), k), k)
        h = F.relu(stacked_linear(h, params["fc.weight"], params["fc.bias"]))
        return stacked_linear(h, params["classifier.weight"], params["classifier.bias"])


class ZeroPadShortcut(nn.Module):
    """Option-A ResNet shortcut (He et al., 2016): spatial subsampling plus zero-padded extra channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        front = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, front, self.extra_channels - front))

    def forward_grouped(self, h: Tensor, k: int) -> Tensor:
        """The shortcut of K stacked models on h in grouped layout [B, K*C, H, W]: each client's channels padded."""
        h = h[:, :, :: self.stride, :: self.stride].unflatten(1, (k, -1))  # [B, K, C, H, W]
        front = self.extra_channels // 2
        h = F.pad(h, (0, 0, 0, 0, front, self.extra_channels - front))
        return h.flatten(1, 2).contiguous(memory_format=torch.channels_last)


class ResidualBlock(nn.Module):
    """What the ResNet blocks share: relu(F(x) + shortcut(x)) with their `residual_branch` F and `shortcut`."""

    shortcut: nn.Module

    def residual_branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual_branch(x) + self.shortcut(x))

    def forward_scaled(self, x: Tensor, scale: float) -> Tensor:
        """relu(scale * F(x) + shortcut(x)); scale 0 drops the residual branch (Stochastic Depth)."""
        if scale == 0:
            return F.relu(self.shortcut(x))
        return F.relu(scale * self.residual_branch(x) + self.shortcut(x))

    def stacked_projection(self, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int,
                           norm: StackedNorm | None) -> Tensor:
        """The 1x1-conv + norm shortcut of K stacked models on h in grouped layout."""
        conv, shortcut_norm = self.shortcut[0], self.shortcut[1]
        return stacked_norm(shortcut_norm, params, f"{prefix}shortcut.1",
                            stacked_conv(conv, params, f"{prefix}shortcut.0", h, k), k, norm)


class BasicBlock(ResidualBlock):
    """ResNet basic block: two 3x3 convolutions plus a shortcut (He et al., 2016)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: NormFactory, projection: bool
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.norm1 = norm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.norm2 = norm(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif projection:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )
        else:
            self.shortcut = ZeroPadShortcut(stride, out_channels - in_channels)

    @property
    def out_channels(self) -> int:
        return self.conv2.out_channels

    def residual_branch(self, x: Tensor) -> Tensor:
        """The block's residual function F(x) (before the sum with the shortcut)."""
        return self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))

    def forward_stacked(self, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int,
                        norm: StackedNorm | None) -> Tensor:
        """The block of K stacked models on h in grouped layout [B, K*C, H, W] (``params[prefix + name]``)."""
        r = stacked_conv(self.conv1, params, f"{prefix}conv1", h, k)
        r = F.relu(stacked_norm(self.norm1, params, f"{prefix}norm1", r, k, norm))
        r = stacked_norm(self.norm2, params, f"{prefix}norm2", stacked_conv(self.conv2, params, f"{prefix}conv2", r, k),
                         k, norm)
        if isinstance(self.shortcut, nn.Identity):
            skip = h
        elif isinstance(self.shortcut, ZeroPadShortcut):
            skip = self.shortcut.forward_grouped(h, k)
        else:
            skip = self.stacked_projection(params, prefix, h, k, norm)
        return F.relu(r + skip)

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        """The block at width ``width`` on an input holding the first x.shape[1] channels."""
        full = width == 1
        out_channels = slim_channels(self.conv1.out_channels, width)
        h = F.relu(sliced_norm(self.norm1, sliced_conv(self.conv1, x, out_channels), full))
        h = sliced_norm(self.norm2, sliced_conv(self.conv2, h, out_channels), full)
        if isinstance(self.shortcut, nn.Identity):
            skip = x
        elif isinstance(self.shortcut, ZeroPadShortcut):
            missing = self.conv1.in_channels - x.shape[1]  # restore the full channel layout, then slice
            skip = self.shortcut(F.pad(x, (0, 0, 0, 0, 0, missing)) if missing else x)[:, :out_channels]
        else:
            conv, norm = self.shortcut[0], self.shortcut[1]
            skip = sliced_norm(norm, sliced_conv(conv, x, out_channels), full)
        return F.relu(h + skip)


class Bottleneck(ResidualBlock):
    """ResNet bottleneck block (He et al., 2016, Sec. 4.1): 1x1 reduce to ``planes``, 3x3 (carrying the stride),
    1x1 expand to ``planes * expansion``, plus an identity shortcut or, where the shape changes, a 1x1 conv and
    norm (torchvision's block, which the FedAlign code's ResNet56 uses)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.norm1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.norm2 = norm(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.norm3 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))

    @property
    def out_channels(self) -> int:
        return self.conv3.out_channels

    def residual_branch(self, x: Tensor) -> Tensor:
        """The block's residual function F(x) (before the sum with the shortcut)."""
        h = F.relu(self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))
        return self.norm3(self.conv3(h))

    def forward_stacked(self, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int,
                        norm: StackedNorm | None) -> Tensor:
        """The block of K stacked models on h in grouped layout [B, K*C, H, W] (``params[prefix + name]``)."""
        r = h
        for i, (conv, layer) in enumerate(((self.conv1, self.norm1), (self.conv2, self.norm2),
                                           (self.conv3, self.norm3)), start=1):
            r = stacked_norm(layer, params, f"{prefix}norm{i}", stacked_conv(conv, params, f"{prefix}conv{i}", r, k),
                             k, norm)
            r = F.relu(r) if i < 3 else r
        skip = h if isinstance(self.shortcut, nn.Identity) else self.stacked_projection(params, prefix, h, k, norm)
        return F.relu(r + skip)

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        """The block at width ``width`` on an input holding the first x.shape[1] channels: every convolution keeps
        its first slim_channels outputs, as the slimmable bottleneck of the FedAlign code."""
        full = width == 1
        inner = slim_channels(self.conv1.out_channels, width)
        out_channels = slim_channels(self.out_channels, width)
        h = F.relu(sliced_norm(self.norm1, sliced_conv(self.conv1, x, inner), full))
        h = F.relu(sliced_norm(self.norm2, sliced_conv(self.conv2, h, inner), full))
        h = sliced_norm(self.norm3, sliced_conv(self.conv3, h, out_channels), full)
        if isinstance(self.shortcut, nn.Identity):
            skip = x
        else:
            conv, norm = self.shortcut[0], self.shortcut[1]
            skip = sliced_norm(norm, sliced_conv(conv, x, out_channels), full)
        return F.relu(h + skip)


RESNET_BLOCKS = ("basic", "bottleneck")
RESNET_INITS = ("kaiming", "pytorch", "torchvision")


class ResNet(ImageClassifier):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, global avg pool (He et al., 2016).

    ``blocks`` is a flat ``nn.ModuleList`` of the residual blocks in forward order; a block can be
    replaced in place (``model.blocks[i] = wrapper(model.blocks[i])``), e.g. for Stochastic Depth.
    ``block``: "basic" (`BasicBlock`, a stage of width w gives w channels; ``projection`` picks 1x1-conv
    shortcuts where the shape changes, else option A, zero padding) or "bottleneck" (`Bottleneck`: a stage of
    width w gives 4w channels, 1x1-conv shortcuts). ``init``: "kaiming" draws conv and linear weights
    Kaiming-normal (fan in), as in the common CIFAR re-implementation; "pytorch" keeps PyTorch's default init;
    "torchvision" draws the convolutions Kaiming-normal over their fan out and keeps the Linear's default, as
    torchvision's ResNet and the FedAlign code do. ``max_groups``: group norm's groups per layer (`norm_factory`).
    ``stem`` (`RESNET_STEMS`): "cifar", the 3x3 stride-1 convolution; "imagenet", He et al.'s ImageNet stem, a 7x7
    stride-2 convolution (padding 3) and, after its norm and ReLU, a 3x3 stride-2 max-pool (padding 1), as
    torchvision's ResNet and the FedAlign code's ImageNet ResNet18 (models/resnet.py) build it: 224x224 inputs reach
    the first block at 56x56.
    """

    stacks_batch_norm = True
    stacked_faster_on_cpu = False  # resnet20 0.7-0.9x of sequential speed on a CPU (benchmarks/README.md)

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        depths: Sequence[int],
        widths: Sequence[int],
        norm: str = "batch",
        projection: bool = False,
        init: str = "kaiming",
        block: str = "basic",
        max_groups: int = GROUP_NORM_MAX_GROUPS,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if block not in RESNET_BLOCKS:
            raise unknown_name_error("residual block", block, RESNET_BLOCKS)
        if init not in RESNET_INITS:
            raise unknown_name_error("init", init, RESNET_INITS)
        if stem not in RESNET_STEMS:
            raise unknown_name_error("stem", stem, RESNET_STEMS)
        make_norm = norm_factory(norm, max_groups)
        if stem == "imagenet":
            self.stem = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.stem = conv3x3(in_channels, widths[0])
        self.stem_norm = make_norm(widths[0])
        # parameter-free, so the CIFAR stem's state dict is unchanged
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                if block == "bottleneck":
                    blocks.append(Bottleneck(channels, width, stride, make_norm))
                else:
                    blocks.append(BasicBlock(channels, width, stride, make_norm, projection))
                channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if init == "kaiming" and isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)
            elif init == "torchvision" and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem_pool(F.relu(self.stem_norm(self.stem(x))))
        for block in self.blocks:
            x = block(x)
        return torch.flatten(self.pool(x), 1)

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None) -> Tensor:
        """K stacked models in training: grouped channels-last convolutions, each client's group or batch norm
        (batch norm over its real rows, updating its running statistics: ``norm``), then batched matmuls."""
        k = x.shape[0]
        h = stacked_conv(self.stem, params, "stem", grouped_layout(x), k)
        h = self.stem_pool(F.relu(stacked_norm(self.stem_norm, params, "stem_norm", h, k, norm)))
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BasicBlock | Bottleneck):  # a wrapped block (Stochastic Depth) has no stacked form
                raise TypeError(f"ResNet.forward_stacked has no grouped form of {type(block).__name__} (blocks.{i})")
            h = block.forward_stacked(params, f"blocks.{i}.", h, k, norm)
        h = ungrouped_flat(self.pool(h), k)
        return stacked_linear(h, params["classifier.weight"], params["classifier.bias"])

    @property
    def last_stage_start(self) -> int:
        """Index in ``blocks`` of the first block of the last stage (the FedAlign code's last "block" is
        the whole last stage, ``layer3`` of its ResNet56)."""
        starts = [i for i, b in enumerate(self.blocks) if not isinstance(b.shortcut, nn.Identity)]
        return starts[-1] if starts else 0

    def forward_residual_scaled(self, x: Tensor, scales: Sequence[float]) -> Tensor:
        """Logits with block i's residual branch scaled by ``scales[i]`` (0 drops it; Stochastic Depth)."""
        if len(scales) != len(self.blocks):
            raise ValueError(f"{len(scales)} scales for {len(self.blocks)} residual blocks")
        x = self.stem_pool(F.relu(self.stem_norm(self.stem(x))))
        for block, scale in zip(self.blocks, scales, strict=True):
            x = block.forward_scaled(x, scale)
        return self.classifier(torch.flatten(self.pool(x), 1))

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        x = F.relu(sliced_norm(self.stem_norm, sliced_conv(self.stem, x, slim_channels(self.stem.out_channels, width)),
                               width == 1))
        x = self.stem_pool(x)
        for block in self.blocks:
            x = block.forward_width(x, width)
        return sliced_linear_in(self.classifier, torch.flatten(self.pool(x), 1))

    def forward_last_block(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        start = self.last_stage_start
        x = self.stem_pool(F.relu(self.stem_norm(self.stem(x))))
        for block in self.blocks[:start]:
            x = block(x)
        h_in = x
        for block in self.blocks[start:]:
            x = block(x)
        return h_in, x, self.classifier(torch.flatten(self.pool(x), 1))

    def last_block_width(self, h: Tensor, width: float) -> tuple[Tensor, Tensor]:
        start = self.last_stage_start
        h = h[:, : slim_channels(self.blocks[start].conv1.in_channels, width)]
        x = h
        for block in self.blocks[start:]:
            x = block.forward_width(x, width)
        return h, x


VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(ImageClassifier):
    """VGG11 without batch norm (Simonyan & Zisserman, 2015); CIFAR variant, one Linear(512, classes) head."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)


# -- token models (character-level language models) ---------------------------------------------
# Inputs are int64 character ids [B, T]; ``forward`` returns the logits [B, vocab] of the character
# after the sequence (the last position's prediction), so training and evaluation treat them as
# classifiers over the vocabulary. ``forward_all`` gives every position's logits [B, T, vocab].
GPT_INIT_STD = 0.02  # nanoGPT / GPT-2 initialisation of every Linear and Embedding weight


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017; nanoGPT's CausalSelfAttention).

    ``c_attn`` stacks the query, key and value projections (rows q | k | v, head h at rows
    h*head_dim..(h+1)*head_dim-1 of each); ``c_proj`` mixes the concatenated heads. The attention is
    written out (no fused kernel) so that it is twice differentiable everywhere (Hessian analyses) and
    runs under vmap; the causal mask is built per call rather than kept as a buffer, so the model's
    only tensors are parameters.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim)
        self.c_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        h = self.num_heads
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // h))
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, c))


class GPTMLP(nn.Module):
    """Position-wise feed-forward network of a GPT block: Linear(d, 4d), GELU, Linear(4d, d) (nanoGPT's MLP)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(embed_dim, 4 * embed_dim)
        self.c_proj = nn.Linear(4 * embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)) (Radford et al. 2019; nanoGPT)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, num_heads)
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.mlp = GPTMLP(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharGPT(ImageClassifier):
    """Character-level GPT of the layer-wise LMC paper's appendix (Adilova et al. 2023), nanoGPT's architecture.

    Token and learned position embeddings, ``num_blocks`` pre-LayerNorm blocks, a final LayerNorm and a
    linear head without bias (``classifier``). Unlike nanoGPT the head is not tied to the token
    embedding: tied weights would be one tensor in two layers of the layer-wise analyses (the paper
    reports the embedding-to-vocabulary layer on its own) and pretrained init re-initialises the head
    alone. No dropout (fedscape's models are deterministic). Weights are drawn N(0, 0.02), the residual
    projections N(0, 0.02 / sqrt(2 num_blocks)), biases zero, as in nanoGPT.
    """

    def __init__(self, vocab_size: int, seq_len: int, num_blocks: int, num_heads: int, embed_dim: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.wte = nn.Embedding(vocab_size, embed_dim)
        self.wpe = nn.Embedding(seq_len, embed_dim)
        self.blocks = nn.ModuleList(GPTBlock(embed_dim, num_heads) for _ in range(num_blocks))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, vocab_size, bias=False)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = GPT_INIT_STD / math.sqrt(2 * num_blocks) if name.endswith("c_proj") else GPT_INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def hidden_states(self, x: Tensor) -> Tensor:
        """The residual stream after the last block, [B, T, embed_dim] (before ln_f)."""
        t = x.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.seq_len}")
        h = self.wte(x) + self.wpe(torch.arange(t, device=x.device))
        for block in self.blocks:
            h = block(h)
        return h

    def forward_features(self, x: Tensor) -> Tensor:
        return self.ln_f(self.hidden_states(x)[:, -1])

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab] (position t predicts token t + 1)."""
        return self.classifier(self.ln_f(self.hidden_states(x)))


class LSTMLayer(nn.Module):
    """One LSTM layer (Hochreiter & Schmidhuber 1997) with nn.LSTM's parameters, gates and initialisation.

    ``weight_ih`` [4H, in], ``weight_hh`` [4H, H], ``bias_ih``, ``bias_hh`` hold the gates in nn.LSTM's
    order (input, forget, cell, output) and the layer computes what a one-layer nn.LSTM computes
    (tests/unit/test_text_models.py checks it). It is written out step by step because cuDNN's fused
    LSTM has no double backward and no backward in eval mode, which the Hessian analyses need, and
    because the step-wise form runs under vmap.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs h_t of every step, [B, T, H], from zero initial states, for inputs [B, T, in]."""
        b, t, _ = x.shape
        gates_x = F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)  # every step's input part at once
        h = x.new_zeros(b, self.hidden_size)
        c = x.new_zeros(b, self.hidden_size)
        outputs = []
        for step in range(t):
            i, f, g, o = (gates_x[:, step] + F.linear(h, self.weight_hh)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class CharLSTM(ImageClassifier):
    """LEAF's Shakespeare model (Caldas et al. 2018): embedding, two stacked LSTM layers, linear head on the last step.

    The two layers are two modules (``lstm.0``, ``lstm.1``) so that each is a layer of the layer-wise
    analyses; together they compute a two-layer nn.LSTM.
    """

    def __init__(self, vocab_size: int, seq_len: int, embed_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.ModuleList([LSTMLayer(embed_dim, hidden_size), LSTMLayer(hidden_size, hidden_size)])
        self.classifier = nn.Linear(hidden_size, vocab_size)

    def hidden_states(self, x: Tensor) -> Tensor:
        """The last LSTM layer's outputs at every step, [B, T, hidden_size]."""
        h = self.embedding(x)
        for layer in self.lstm:
            h = layer(h)
        return h

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hidden_states(x)[:, -1]

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab] (position t predicts token t + 1)."""
        return self.classifier(self.hidden_states(x))


def _token_model(cls: type[ImageClassifier], name: str) -> Callable[..., ImageClassifier]:
    """Builder of a token model: its options over the defaults, checked against the data.

    Token data gives ``in_channels`` = vocabulary size and ``image_size`` = sequence length
    (fedscape.data.specs.DatasetInfo); the classes (next characters) are the vocabulary too.
    """

    def build(num_classes: int, in_channels: int, image_size: int, **options: int) -> ImageClassifier:
        problems = model_option_problems(name, options)
        if problems:
            raise ValueError("; ".join(problems))
        check_token_options(name, options, in_channels, image_size, dataset="the data")
        opts = token_model_options(name, options)
        if num_classes != opts["vocab_size"]:
            raise ValueError(f"model {name!r} has vocab_size {opts['vocab_size']} but the data has "
                             f"{num_classes} classes (next characters); they must be equal")
        return cls(**opts)

    return build


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    build: Callable[..., ImageClassifier]  # (num_classes, in_channels, image_size, **options)
    options: tuple[str, ...] = ()


def resnet18(num_classes: int, in_channels: int, norm: str = "group", stem: str = "cifar") -> ResNet:
    """ResNet18 (He et al. 2016): BasicBlock [2, 2, 2, 2], widths 64-512, 1x1-conv + norm projection shortcuts, by
    default on the CIFAR stem, a 3x3 stride-1 convolution without max-pool (the CIFAR variant of the layer-wise paper,
    Adilova et al., and of the CIFAR re-implementations), with ``norm`` after every convolution. ``stem="imagenet"``:
    He et al.'s 7x7 stride-2 convolution and 3x3 stride-2 max-pool (`ResNet`), the ResNet18 that the FedAlign code
    trains on ImageNet-200 (models/resnet.py, ``ImageNet(BasicBlock, [2, 2, 2, 2])``: torchvision's construction and
    init).

    "group": 32 groups (`RESNET18_GROUPS`), the normalisation of the ResNet18 of the FL literature (Hsieh et al.
    2020, The Non-IID Data Quagmire; Reddi et al. 2021) and of the Meta poster (Nguyen et al. 2022), and its default:
    it normalises each sample alone, so averaging clients mixes no batch statistics. With a norm, torchvision's init
    (the poster's code builds torchvision's ResNet18); "none" is `resnet18_nonorm`, with PyTorch's default init,
    which keeps the activations bounded without normalisation (Kaiming-normal init grows the logits' scale to ~10
    over the 8 unnormalised residual blocks).
    """
    return ResNet(num_classes, in_channels, (2, 2, 2, 2), (64, 128, 256, 512), norm=norm, projection=True,
                  init="pytorch" if norm == "none" else "torchvision", max_groups=RESNET18_GROUPS, stem=stem)


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
    "resnet20": _cifar_resnet(3),
    "resnet56": _cifar_resnet(9),
    # the FedAlign code's resnet56: ResNet(Bottleneck, [6, 6, 6]) with torchvision's init
    "resnet56_bottleneck": _cifar_resnet(6, block="bottleneck", init="torchvision"),
    "resnet18": lambda num_classes, in_channels, image_size, norm="group", stem="cifar": resnet18(
        num_classes, in_channels, norm, stem),
    # the layer-wise paper's ResNet18: resnet18 without norm, under its own name (its runs keep their settings)
    "resnet18_nonorm": lambda num_classes, in_channels, image_size: resnet18(num_classes, in_channels, "none"),
    "vgg11": lambda num_classes, in_channels, image_size: VGG11(num_classes, in_channels),
    "char_gpt": _token_model(CharGPT, "char_gpt"),
    "char_lstm": _token_model(CharLSTM, "char_lstm"),
}
if set(_BUILDERS) != set(MODEL_INFOS):
    raise RuntimeError("fedscape.models.networks and fedscape.models.specs name different models")

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

    Token models (char_gpt, char_lstm) read [N, image_size] int64 ids over ``in_channels`` symbols.
    ``options`` are model specific (the CIFAR ResNets: ``norm`` in NORMS, default "batch", resnet18's "group";
    cnn_small: ``norm`` none or batch, default "none"; token models: fedscape.models.specs.TOKEN_MODEL_DEFAULTS);
    an unknown option, an unknown name or an incompatible input size raises ValueError.
    ``projection_head=True`` (an option of every model, set by an algorithm rather than the config: MOON with
    ``head: projection``, `fedscape.fl.hparams.base.ServerSGDConfig.model_options`) puts the classifier on a
    projection head (`ProjectedClassifier`).
    """
    entry = _entry(name)
    projection_head = bool(options.pop("projection_head", False))
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
    model = entry.build(num_classes, in_channels, image_size, **options)
    return ProjectedClassifier(model) if projection_head else model
