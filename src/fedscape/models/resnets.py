"""Residual networks (He et al. 2016): the CIFAR ResNets (resnet20, resnet56, resnet56_bottleneck) and the
ResNet18 on the CIFAR or the ImageNet stem, their blocks and shortcuts, and their permutation spec
(`ResNet.permutation_axes`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedscape.core.names import unknown_name_error
from fedscape.models.layers import (
    GROUP_NORM_MAX_GROUPS,
    ImageClassifier,
    NormFactory,
    StackedNorm,
    grouped_contiguous,
    grouped_layout,
    norm_factory,
    sliced_conv,
    sliced_linear_in,
    sliced_norm,
    sliced_stacked_conv,
    sliced_stacked_norm,
    slim_channels,
    stacked_conv,
    stacked_linear,
    stacked_norm,
    stacked_slim_channels,
    ungrouped_flat,
    width_keep,
)
from fedscape.models.permutation import Axes, Layout, Segment, UnsupportedModelError, whole
from fedscape.models.specs import NORMS, RESNET18_WEIGHT_INITS, RESNET_INITS, RESNET_STEMS

# The ResNet18's group norm: 32 groups at every width (64-512 channels), the group count of Wu & He 2018 (Group
# Normalization) that the Meta poster's code uses: FLSim's ResNet18 is torchvision's with opacus'
# convert_batchnorm_modules, which puts GroupNorm(min(32, C), C) in place of every batch norm.
RESNET18_GROUPS = 32


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (ResNet convention)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (the bottleneck's reduce/expand and projection shortcuts)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)



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
        return grouped_contiguous(h.flatten(1, 2))

    def forward_grouped_width(self, h: Tensor, k: int, in_channels: int, out_channels: int) -> Tensor:
        """`forward_grouped` of each client's first h.shape[1] / k of ``in_channels`` input channels (the rest taken
        as zero), keeping its first ``out_channels`` outputs, as `BasicBlock.forward_width` uses the shortcut."""
        h = h.unflatten(1, (k, -1))
        h = F.pad(h, (0, 0, 0, 0, 0, in_channels - h.shape[2]))
        out = self.forward_grouped(h.flatten(1, 2), k).unflatten(1, (k, -1))[:, :, :out_channels]
        return grouped_contiguous(out.flatten(1, 2))


def scaled_branch(r: Tensor, scale: Tensor | None, k: int) -> Tensor:
    """K stacked residual branches r [B, K*C, H, W] (grouped layout), client k's times ``scale[k]`` (None: r). A
    branch at scale 0 adds exactly 0 to its block's shortcut, as `ResidualBlock.forward_scaled` skips it, and passes
    zero gradients back (the trainer keeps its parameters and statistics where the sequential step leaves them)."""
    if scale is None:
        return r
    # In at least float32, as a Python float scales one model's bfloat16 branch (autocast): a bfloat16 1 / gamma
    # would be off by up to 0.4%.
    dtype = torch.promote_types(r.dtype, torch.float32)
    return (r.to(dtype) * scale.to(dtype).repeat_interleave(r.shape[1] // k).view(1, -1, 1, 1)).to(r.dtype)


# `width_keep`'s masks of stacked sub-networks of different widths: keep(h, channels) zeroes each client's channels of
# h (a layer of `channels` channels, sliced) past its own width; None where the clients share one width.
Keep = Callable[[Tensor, int], Tensor] | None


def kept(keep: Keep, h: Tensor, channels: int) -> Tensor:
    """h, a layer of ``channels`` channels, with each stacked client's channels past its own width zeroed (``keep``);
    h itself where ``keep`` is None."""
    return h if keep is None else keep(h, channels)


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
                        norm: StackedNorm | None, scale: Tensor | None = None) -> Tensor:
        """The block of K stacked models on h in grouped layout [B, K*C, H, W] (``params[prefix + name]``); ``scale``
        [K]: each client's residual branch scaled, as `forward_scaled` scales one model's (None: unscaled)."""
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
        return F.relu(scaled_branch(r, scale, k) + skip)

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

    def forward_width_stacked(self, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int,
                              widths: float | Sequence[float], norm: StackedNorm | None, keep: Keep = None) -> Tensor:
        """`forward_width` below full width of K stacked models on h in grouped layout [B, K*C', H, W], each layer
        sliced to the most channels a client's width keeps (`stacked_slim_channels`); ``keep``: each client's own
        width within it (`width_keep`; None: every client at ``widths``, one width)."""
        channels = self.conv1.out_channels
        out_channels = stacked_slim_channels(channels, widths)
        r = sliced_stacked_conv(self.conv1, params, f"{prefix}conv1", h, k, out_channels)
        r = F.relu(kept(keep, sliced_stacked_norm(self.norm1, params, f"{prefix}norm1", r, k, norm, widths), channels))
        r = sliced_stacked_conv(self.conv2, params, f"{prefix}conv2", r, k, out_channels)
        r = kept(keep, sliced_stacked_norm(self.norm2, params, f"{prefix}norm2", r, k, norm, widths), channels)
        if isinstance(self.shortcut, nn.Identity):
            skip = h
        elif isinstance(self.shortcut, ZeroPadShortcut):
            # a narrower client's padded input reaches past its own width below width 0.5: cut as `forward_width` does
            skip = kept(keep, self.shortcut.forward_grouped_width(h, k, self.conv1.in_channels, out_channels), channels)
        else:
            skip = kept(keep, sliced_stacked_norm(self.shortcut[1], params, f"{prefix}shortcut.1",
                                                  sliced_stacked_conv(self.shortcut[0], params, f"{prefix}shortcut.0",
                                                                      h, k, out_channels), k, norm, widths), channels)
        return F.relu(r + skip)


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
                        norm: StackedNorm | None, scale: Tensor | None = None) -> Tensor:
        """The block of K stacked models on h in grouped layout [B, K*C, H, W] (``params[prefix + name]``); ``scale``
        [K]: each client's residual branch scaled, as `forward_scaled` scales one model's (None: unscaled)."""
        r = h
        for i, (conv, layer) in enumerate(((self.conv1, self.norm1), (self.conv2, self.norm2),
                                           (self.conv3, self.norm3)), start=1):
            r = stacked_norm(layer, params, f"{prefix}norm{i}", stacked_conv(conv, params, f"{prefix}conv{i}", r, k),
                             k, norm)
            r = F.relu(r) if i < 3 else r
        skip = h if isinstance(self.shortcut, nn.Identity) else self.stacked_projection(params, prefix, h, k, norm)
        return F.relu(scaled_branch(r, scale, k) + skip)

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

    def forward_width_stacked(self, params: Mapping[str, Tensor], prefix: str, h: Tensor, k: int,
                              widths: float | Sequence[float], norm: StackedNorm | None, keep: Keep = None) -> Tensor:
        """`forward_width` below full width of K stacked models on h in grouped layout [B, K*C', H, W], each layer
        sliced to the most channels a client's width keeps (`stacked_slim_channels`); ``keep``: each client's own
        width within it (`width_keep`; None: every client at ``widths``, one width)."""
        inner = stacked_slim_channels(self.conv1.out_channels, widths)
        out_channels = stacked_slim_channels(self.out_channels, widths)
        r = h
        for i, (conv, layer, out) in enumerate(((self.conv1, self.norm1, inner), (self.conv2, self.norm2, inner),
                                                (self.conv3, self.norm3, out_channels)), start=1):
            r = kept(keep, sliced_stacked_norm(layer, params, f"{prefix}norm{i}",
                                               sliced_stacked_conv(conv, params, f"{prefix}conv{i}", r, k, out), k,
                                               norm, widths), conv.out_channels)
            r = F.relu(r) if i < 3 else r
        if isinstance(self.shortcut, nn.Identity):
            skip = h
        else:
            skip = kept(keep, sliced_stacked_norm(self.shortcut[1], params, f"{prefix}shortcut.1",
                                                  sliced_stacked_conv(self.shortcut[0], params, f"{prefix}shortcut.0",
                                                                      h, k, out_channels), k, norm, widths),
                      self.out_channels)
        return F.relu(r + skip)


RESNET_BLOCKS = ("basic", "bottleneck")


class ResNet(ImageClassifier):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, global avg pool (He et al., 2016).

    ``blocks`` is a flat ``nn.ModuleList`` of the residual blocks in forward order; a block can be
    replaced in place (``model.blocks[i] = wrapper(model.blocks[i])``), e.g. for Stochastic Depth.
    ``block``: "basic" (`BasicBlock`, a stage of width w gives w channels; ``projection`` picks 1x1-conv
    shortcuts where the shape changes, else option A, zero padding) or "bottleneck" (`Bottleneck`: a stage of
    width w gives 4w channels, 1x1-conv shortcuts). ``init`` (`RESNET_INITS`): "kaiming" draws conv and linear
    weights Kaiming-normal (fan in), as in the common CIFAR re-implementation; "pytorch" keeps PyTorch's default init;
    "torchvision" draws the convolutions Kaiming-normal over their fan out and keeps the Linear's default, as
    torchvision's ResNet and the FedAlign code do; "torchvision_default_stem" so draws every convolution but the stem,
    which keeps PyTorch's default, as torchvision's ResNet whose stem is replaced after it is built (the layer-wise
    paper's code). ``max_groups``: group norm's groups per layer (`norm_factory`).
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
            elif init in ("torchvision", "torchvision_default_stem") and isinstance(module, nn.Conv2d) and (
                    init == "torchvision" or module is not self.stem):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem_pool(F.relu(self.stem_norm(self.stem(x))))
        for block in self.blocks:
            x = block(x)
        return torch.flatten(self.pool(x), 1)

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None,
                        scales: Tensor | None = None) -> Tensor:
        """K stacked models in training: grouped convolutions, each client's group or batch norm
        (batch norm over its real rows, updating its running statistics: ``norm``), then batched matmuls. ``scales``
        [K, blocks]: block i's residual branch of client k scaled by ``scales[k, i]``, as `forward_residual_scaled`
        does for one model (Stochastic Depth; None: unscaled)."""
        return self._stacked(params, x, norm, scales)[2]

    def forward_features_stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None
                                 ) -> Tensor:
        """`forward_features` of K stacked models in training, [K, B, D], as `forward_stacked` computes them (a
        projection head's input: MOON)."""
        k = x.shape[0]
        return ungrouped_flat(self.pool(self._stacked_trunk(params, x, norm, None)[1]), k)

    def forward_widths_stacked(self, params: Mapping[str, Tensor], x: Tensor, widths: Sequence[float],
                               norm: StackedNorm | None = None) -> Tensor:
        """`forward_width` of K stacked models in training, client k's sub-network at ``widths[k]`` (below 1): logits
        [K, B, classes], so that the clients' widths may differ (GradAug). Every layer is sliced to the most channels a
        client keeps (`stacked_slim_channels`) and each client's channels past its own are held at 0 (`width_keep`):
        a kept channel holds its sliced value (a cut input channel adds 0 to it), a cut one passes no gradient back.
        Its batch norms take each client's real rows (``norm.mask``), from batch statistics, updating nothing, as the
        sliced ones."""
        if any(not 0 < w < 1 for w in widths):
            raise ValueError(f"forward_widths_stacked runs sub-networks: every width must be in (0, 1), got {widths}")
        if norm is not None and norm.running is not None:
            raise ValueError("a sub-network's batch norms update no running statistics (norm.running must be None)")
        k = x.shape[0]
        if len(widths) != k:
            raise ValueError(f"{len(widths)} widths for {k} stacked models")
        keep = None if min(widths) == max(widths) else width_keep(widths, k)
        channels = self.stem.out_channels
        h = sliced_stacked_conv(self.stem, params, "stem", grouped_layout(x), k,
                                stacked_slim_channels(channels, widths))
        h = F.relu(kept(keep, sliced_stacked_norm(self.stem_norm, params, "stem_norm", h, k, norm, widths), channels))
        h = self.stem_pool(h)
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BasicBlock | Bottleneck):
                raise TypeError(f"ResNet.forward_widths_stacked has no grouped form of {type(block).__name__} "
                                f"(blocks.{i})")
            h = block.forward_width_stacked(params, f"blocks.{i}.", h, k, widths, norm, keep)
        features = ungrouped_flat(self.pool(h), k)  # [K, B, C']: the classifier reads its first C' inputs
        return stacked_linear(features, params["classifier.weight"][:, :, : features.shape[-1]],
                              params["classifier.bias"])

    def forward_stacked_last_block(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None
                                   ) -> tuple[Tensor, Tensor, Tensor]:
        """`forward_last_block` of K stacked models: the last stage's input and output in grouped layout
        [B, K*C, H, W] and the logits [K, B, classes], as `forward_stacked` computes them."""
        return self._stacked(params, x, norm, None)

    def _stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None, scales: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        k = x.shape[0]
        h_in, h = self._stacked_trunk(params, x, norm, scales)
        logits = stacked_linear(ungrouped_flat(self.pool(h), k), params["classifier.weight"], params["classifier.bias"])
        return h_in, h, logits

    def _stacked_trunk(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None,
                       scales: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the last stage's input, the last block's output) of K stacked models, in grouped layout."""
        k, start = x.shape[0], self.last_stage_start
        h = stacked_conv(self.stem, params, "stem", grouped_layout(x), k)
        h = self.stem_pool(F.relu(stacked_norm(self.stem_norm, params, "stem_norm", h, k, norm)))
        h_in = h
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BasicBlock | Bottleneck):  # a wrapped block (Stochastic Depth) has no stacked form
                raise TypeError(f"ResNet.forward_stacked has no grouped form of {type(block).__name__} (blocks.{i})")
            if i == start:
                h_in = h
            h = block.forward_stacked(params, f"blocks.{i}.", h, k, norm, None if scales is None else scales[:, i])
        return h_in, h

    @property
    def last_stage_start(self) -> int:
        """Index in ``blocks`` of the first block of the last stage (the FedAlign code's last "block" is
        the whole last stage, ``layer3`` of its ResNet56)."""
        starts = [i for i, b in enumerate(self.blocks) if not isinstance(b.shortcut, nn.Identity)]
        return starts[-1] if starts else 0

    def residual_branch_of(self, name: str) -> int | None:
        """The block whose residual branch holds the parameter or buffer ``name`` (its shortcut is not part of it),
        None for one outside every branch (the stem, the shortcuts, the classifier)."""
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or parts[2] == "shortcut":
            return None
        return int(parts[1])

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

    def last_stage_whole_at(self, width: float) -> bool:
        """Whether the last stage at ``width`` keeps every channel (`slim_channels` rounds each of its widths back up):
        its sub-network is then the full stage, and `last_block_width` computes what `forward_last_block` does."""
        start = self.last_stage_start
        channels = [self.blocks[start].conv1.in_channels]
        channels += [m.out_channels for m in self.blocks[start:].modules() if isinstance(m, nn.Conv2d)]
        return all(slim_channels(c, width) == c for c in channels)

    def last_block_width_stacked(self, params: Mapping[str, Tensor], h: Tensor, k: int, width: float,
                                 norm: StackedNorm | None = None) -> tuple[Tensor, Tensor]:
        """`last_block_width` below full width of K stacked models on the last stage's input h in grouped layout
        [B, K*C, H, W]: (each client's sliced input, the stage's output at ``width``), grouped; its batch norms over
        each client's real rows (``norm.mask``) from batch statistics, updating nothing."""
        if width >= 1:
            raise ValueError("last_block_width_stacked slims the last stage: width must be below 1")
        start = self.last_stage_start
        kept = slim_channels(self.blocks[start].conv1.in_channels, width)
        h = grouped_contiguous(h.unflatten(1, (k, -1))[:, :, :kept].flatten(1, 2))
        x = h
        for i, block in enumerate(self.blocks[start:], start=start):
            x = block.forward_width_stacked(params, f"blocks.{i}.", x, k, width, norm)
        return h, x


    def permutation_axes(self, axes: Axes) -> None:
        """Block-inner groups and residual-stream groups (Ainsworth et al. 2023, Git Re-Basin, Sec. 2, residuals).

        One group per block's inner channels (two in a bottleneck block); the residual stream shares one permutation
        across identity shortcuts, starts a new one at a projection shortcut, and grows by the padded channels at an
        option-A shortcut (`fedscape.models.permutation`).
        """
        stream = whole("stem", self.stem.out_channels)
        axes.weights("stem", self.stem, stream, None)
        axes.norm("stem_norm", self.stem_norm, stream)
        for i, block in enumerate(self.blocks):
            name = f"blocks.{i}"
            if type(block) not in (BasicBlock, Bottleneck):
                raise UnsupportedModelError(f"{name}: unsupported residual block {type(block).__name__} "
                                            "(BasicBlock, Bottleneck)")
            # every convolution inside the residual branch has its own group; the last one writes the stream
            convs = [block.conv1, block.conv2] + ([block.conv3] if type(block) is Bottleneck else [])
            inp = stream
            for j, conv in enumerate(convs[:-1], start=1):
                inner = whole(f"{name}.conv{j}", conv.out_channels)
                axes.weights(f"{name}.conv{j}", conv, inner, inp)
                axes.norm(f"{name}.norm{j}", getattr(block, f"norm{j}"), inner)
                inp = inner
            out = _block_output_axes(axes, name, block, stream)
            axes.weights(f"{name}.conv{len(convs)}", convs[-1], out, inp)
            axes.norm(f"{name}.norm{len(convs)}", getattr(block, f"norm{len(convs)}"), out)
            stream = out
        axes.weights("classifier", self.classifier, None, stream)


def _block_output_axes(axes: Axes, name: str, block: BasicBlock | Bottleneck, stream: Layout) -> Layout:
    """The residual stream after a block: unchanged (identity), new (projection) or padded (option A)."""
    c_in, c_out = block.conv1.in_channels, block.out_channels
    shortcut = block.shortcut
    if isinstance(shortcut, nn.Identity):
        if c_in != c_out:
            raise UnsupportedModelError(f"{name}: identity shortcut from {c_in} to {c_out} channels")
        return stream
    if isinstance(shortcut, ZeroPadShortcut):
        # x -> [0 (front), x, 0 (back)]: the input stream's channels keep their permutation in the middle,
        # the padded channels (only ever written by the residual branch) form a group of their own.
        if c_in + shortcut.extra_channels != c_out:
            raise UnsupportedModelError(f"{name}: zero-pad shortcut from {c_in} by {shortcut.extra_channels} "
                                        f"to {c_out} channels")
        front = shortcut.extra_channels // 2
        shifted = tuple(Segment(seg.group, tuple(p + front for p in seg.positions)) for seg in stream)
        padded = tuple(range(front)) + tuple(range(front + c_in, c_out))
        return shifted + ((Segment(f"{name}.pad", padded),) if padded else ())
    if type(shortcut) is nn.Sequential and len(shortcut) == 2 and isinstance(shortcut[0], nn.Conv2d):
        out = whole(f"{name}.shortcut", c_out)
        axes.weights(f"{name}.shortcut.0", shortcut[0], out, stream)
        axes.norm(f"{name}.shortcut.1", shortcut[1], out)
        return out
    raise UnsupportedModelError(f"{name}: unsupported shortcut {type(shortcut).__name__}")


def resnet18(num_classes: int, in_channels: int, norm: str = "group", stem: str = "cifar",
             weight_init: str | None = None) -> ResNet:
    """ResNet18 (He et al. 2016): BasicBlock [2, 2, 2, 2], widths 64-512, 1x1-conv + norm projection shortcuts, by
    default on the CIFAR stem, a 3x3 stride-1 convolution without max-pool (the CIFAR variant of the layer-wise paper,
    Adilova et al., and of the CIFAR re-implementations), with ``norm`` after every convolution. ``stem="imagenet"``:
    He et al.'s 7x7 stride-2 convolution and 3x3 stride-2 max-pool (`ResNet`), the ResNet18 that the FedAlign code
    trains on ImageNet-200 (models/resnet.py, ``ImageNet(BasicBlock, [2, 2, 2, 2])``: torchvision's construction and
    init).

    "group": 32 groups (`RESNET18_GROUPS`), those of the Meta poster's code (Nguyen et al. 2022: FLSim's torchvision
    ResNet18 with opacus' GroupNorm(min(32, C))), and the default: it normalises each sample alone, so averaging
    clients mixes no batch statistics (Hsieh et al. 2020, The Non-IID Data Quagmire; Reddi et al. 2021's TFF
    ResNet-18 takes tfa's GroupNormalization at its default, 2 groups). "none" is `resnet18_nonorm`.
    ``weight_init`` (`RESNET_INITS`; None: its norm's default, `RESNET18_WEIGHT_INITS`): with a norm torchvision's
    (the poster's code builds torchvision's ResNet18); without, "torchvision_default_stem", the layer-wise paper's
    (its code: torchvision's resnet18(norm_layer=nn.Identity), whose stem it then replaces by a 3x3 convolution at
    PyTorch's default). PyTorch's default everywhere ("pytorch", what resnet18_nonorm's runs drew before the option)
    starts the logits of the 8 unnormalised blocks ~24x below the authors' network's, fedscape's fan-in "kaiming"
    ~25x above (`RESNET18_WEIGHT_INITS`).
    """
    inits = RESNET18_WEIGHT_INITS.get(norm)
    if inits is None:
        raise unknown_name_error("norm", norm, NORMS)
    return ResNet(num_classes, in_channels, (2, 2, 2, 2), (64, 128, 256, 512), norm=norm, projection=True,
                  init=inits[0] if weight_init is None else weight_init, max_groups=RESNET18_GROUPS, stem=stem)
