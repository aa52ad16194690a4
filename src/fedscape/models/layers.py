"""What every network is built from: the `ImageClassifier` base and its projection head, batch norm and the norm
factories, the width-sliced forward passes (GradAug, FedAlign sub-networks) and the stacked forward helpers of
vectorised client training (K models at once in a grouped layout, without vmap).

The families build on it (`feedforward`, `resnets`, `tokens`); `fedscape.models.registry` builds them by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedscape.core.names import unknown_name_error
from fedscape.models.specs import NORMS

GROUP_NORM_MAX_GROUPS = 8

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


def stacked_slim_channels(channels: int, widths: float | Sequence[float]) -> int:
    """Channels of a layer sliced for stacked sub-networks at ``widths`` (one for all, or each client's): the most any
    client keeps, not those of the widest width, as `slim_channels` is not monotone in the width (16 channels keep 9
    at width 0.1 and 0.2, 8 at 0.5: the minimum of one channel rounds up to the divisor's 8 plus 1)."""
    if isinstance(widths, int | float):
        return slim_channels(channels, widths)
    return max(slim_channels(channels, w) for w in widths)


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


def width_keep(widths: Sequence[float], k: int) -> Callable[[Tensor, int], Tensor]:
    """K stacked sub-networks, client k's at ``widths[k]``, computed at a common width (each layer's most channels
    any client keeps, `stacked_slim_channels`): a function
    keep(h, channels) that zeroes, in the output h [B, K*C', H, W] (grouped layout) of a layer of ``channels``
    channels sliced to its first C', client k's channels from slim_channels(channels, widths[k]) on, which its own
    sliced forward (`forward_width`) never computes. A kept channel then holds its sliced value (a cut input channel
    adds 0 to it), and a cut one passes no gradient back. The masks are built once per layer shape."""
    masks: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}

    def keep(h: Tensor, channels: int) -> Tensor:
        c = h.shape[1] // k
        key = (channels, c, h.dtype, h.device)
        mask = masks.get(key)
        if mask is None:
            kept = torch.tensor([slim_channels(channels, w) for w in widths], device=h.device)
            mask = masks[key] = (torch.arange(c, device=h.device) < kept.unsqueeze(1)).to(h.dtype).view(1, k * c, 1, 1)
        return h * mask

    return keep


def sliced_linear_in(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear`` on the first x.shape[1] input features (the rest taken as zero), all outputs."""
    return F.linear(x, linear.weight[:, : x.shape[1]], linear.bias)


def grouped_memory_format(device: torch.device) -> torch.memory_format:
    """The memory order of the grouped layout on ``device``: channels-last on a CPU, where oneDNN's grouped
    convolutions and max pooling are several times faster in it; channels-first (contiguous) on a GPU, where cuDNN
    runs fp32 grouped convolutions channels-last group by group through slicing and transposing kernels, 1.5x
    slower over resnet20's convolutions of 50 clients x 16 images on an H200 (benchmarks/README.md)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def grouped_contiguous(h: Tensor) -> Tensor:
    """h [B, K*C, H, W] in the grouped layout's memory order on its device (`grouped_memory_format`)."""
    return h.contiguous(memory_format=grouped_memory_format(h.device))


def grouped_layout(x: Tensor) -> Tensor:
    """Stacked batches [K, B, C, H, W] -> [B, K*C, H, W]: client k's channels are group k."""
    k, b = x.shape[:2]
    return grouped_contiguous(x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]))


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
    statistics are discarded, FedSAM's second pass, does). ``single``: whether some client of the mask has exactly one
    real row, known on the host (the trainer's batch sizes), for the check of one value per channel at a 1x1 input
    (`stacked_batch_norm`); None: read from the mask there (a host sync, never inside a captured step).
    """

    mask: Tensor | None = None
    running: Mapping[str, Tensor] | None = None
    # What the mask gives each layer shape (`masked_counts`), computed once per forward, not per layer.
    counts: dict = field(default_factory=dict, repr=False, compare=False)
    single: bool | None = None


# The forms of a stacked 1x1 convolution (`pointwise_form`): one grouped convolution, as every other kernel size, or a
# batched matrix product of each client's [C', C] weights with its [C, B*H*W] pixels (`stacked_pointwise`).
POINTWISE_FORMS = ("grouped", "bmm")


def pointwise_form(device: torch.device) -> str:
    """How stacked 1x1 convolutions (half the bottleneck ResNet56's arithmetic) run on ``device``: grouped everywhere.
    The batched product lost on both devices measured (benchmarks/README.md): on a CPU it made a vectorised round 1.3x
    slower; on an H200 (`bench_vectorized.py --device cuda --pointwise grouped bmm`, FedAlign's bottleneck ResNet56,
    16 clients, batch 64) 1.25x slower, winning only at the 8x8 layers (`bench_stacked_conv.py`)."""
    return "grouped"


def stacked_pointwise(h: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], k: int) -> Tensor:
    """A 1x1 convolution (no padding) of K stacked models on h in grouped layout [B, K*C, H, W] as one batched matrix
    product per client over its batch's pixels (weight [K, C', C, 1, 1], bias [K, C'] or None), the result in h's
    memory order."""
    channels_last = h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()
    h = h[:, :, :: stride[0], :: stride[1]]  # a 1x1 convolution's stride only subsamples
    b, _, height, width = h.shape
    c, out = weight.shape[2], weight.shape[1]
    w = weight.view(k, out, c)
    if channels_last:
        # [B, H, W, K*C] in memory: each client's pixels are the rows [B*H*W, C] of a strided view, read in place
        rows = h.permute(0, 2, 3, 1).reshape(b * height * width, k, c).transpose(0, 1)  # [K, B*H*W, C]
        y = torch.bmm(rows, w.transpose(1, 2)) if bias is None else torch.baddbmm(bias.unsqueeze(1), rows,
                                                                                   w.transpose(1, 2))
        return y.transpose(0, 1).contiguous().view(b, height, width, k * out).permute(0, 3, 1, 2)
    cols = h.reshape(b, k, c, height * width).permute(1, 2, 0, 3).reshape(k, c, b * height * width)
    y = torch.bmm(w, cols) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, cols)  # [K, C', B*H*W]
    return y.view(k, out, b, height * width).permute(2, 0, 1, 3).contiguous().view(b, k * out, height, width)


def stacked_conv(conv: nn.Conv2d, params: Mapping[str, Tensor], name: str, h: Tensor, k: int) -> Tensor:
    """``conv`` of K stacked models on h in grouped layout [B, K*C, H, W] (``params[name + '.weight']``: [K, ...]); a
    1x1 convolution in the device's `pointwise_form`."""
    if conv.padding_mode != "zeros":
        raise TypeError(f"stacked_conv has no grouped form of padding mode {conv.padding_mode!r} ({name})")
    bias = params.get(f"{name}.bias")
    if (conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and pointwise_form(h.device) == "bmm"):
        return stacked_pointwise(h, params[f"{name}.weight"], bias, conv.stride, k)
    return F.conv2d(h, params[f"{name}.weight"].flatten(0, 1), None if bias is None else bias.flatten(),
                    conv.stride, conv.padding, conv.dilation, conv.groups * k)


def masked_counts(mask: Tensor, c: int, spatial: int, momentum: float, dtype: torch.dtype,
                  cache: dict | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What a mask [K, B] gives a batch norm of C channels per client over ``spatial`` positions, in grouped layout:
    rows [B, K*C] (1 where the row is a real sample of the channel's client), the values per channel n clamped to at
    least 1 [K*C], the running statistics' step weight (momentum where n > 0, else 0: a client without real rows keeps
    its statistics) and the unbiased variance's factor n / (n - 1) (1 where n <= 1; one value per channel, n = 1, never
    trains: `stacked_batch_norm` raises there, as torch does). ``cache``: the same mask's results by shape, so that a
    forward computes them once per layer shape rather than once per layer."""
    key = (c, spatial, momentum, dtype)
    if cache is not None and key in cache:
        return cache[key]
    real = mask.to(dtype)
    rows = real.t().repeat_interleave(c, dim=1)
    n = (real.sum(1) * spatial).repeat_interleave(c)
    # built in dtype itself: torch.where on Python scalars would round momentum to torch's default dtype first
    step = (n > 0).to(dtype) * momentum
    out = (rows, n.clamp_min(1), step, n / (n - 1).clamp_min(1))
    if cache is not None:
        cache[key] = out
    return out


class MaskedBatchNorm(torch.autograd.Function):
    """Training-mode batch norm over the real rows only, of h [B, S, K*C] (channels last, ``channel_dim`` 2) or
    [B, K*C, S] (channels first, ``channel_dim`` 1) over S spatial positions, in h's own memory order: forward and
    backward in a few whole-tensor passes (the autograd graph of the same formula took about 30 more kernel launches
    per layer, which bounded a vectorised step on a GPU; benchmarks/README.md).

    ``rows`` [B, K*C] is 1 where row b is a real sample of the channel's client, 0 where it is padding, and ``count``
    the real values per channel. The sums run over the positions of each row first, then over the rows weighted by
    ``rows``, so that no full-size masked copy of h is made. Forward: mean and biased variance of each channel over its
    real rows, out = (h - mean) * rsqrt(var + eps) * weight + bias on every row. Backward, with s = weight *
    rsqrt(var + eps), c = h - mean, g = the output's gradient: dh = s (g - rows (sum(g) / n + c rsqrt(var + eps)^2
    sum(g c) / n)), dweight = sum(g c) rsqrt(var + eps), dbias = sum(g), the sums over every row: torch's
    batch-norm backward with the statistics of the real rows (a padded row's output depends on its own input only: its
    gradient is s g, zero where the loss masks it). Also returns the mean and biased variance [K*C], without gradient,
    for the running statistics. Training needs first derivatives only, and only training's stacked forward uses it:
    its backward is not itself differentiable (the Hessian and sharpness code differentiate twice through models' own
    forward passes, never this Function).
    """

    @staticmethod
    def _per_channel(v: Tensor, spatial: int) -> Tensor:
        """A [K*C] vector broadcast along h's channel axis (h's positions on axis ``spatial``)."""
        return v.unsqueeze(0).unsqueeze(spatial)

    @staticmethod
    def forward(ctx, h: Tensor, rows: Tensor, count: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float, channel_dim: int) -> tuple[Tensor, Tensor, Tensor]:
        spatial = 3 - channel_dim

        def per_channel(v: Tensor) -> Tensor:
            return MaskedBatchNorm._per_channel(v, spatial)

        def real_sum(per_row: Tensor) -> Tensor:  # [B, K*C] -> the sum over each channel's real rows [K*C]
            return (per_row * rows).sum(0)

        mean = real_sum(h.sum(spatial)) / count
        centered = h - per_channel(mean)
        # |c|^2 per row in one reduction (no full-size square written)
        var = real_sum(torch.linalg.vector_norm(centered, dim=spatial).square()) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        out = (centered * per_channel(scale) if bias is None
               else torch.addcmul(per_channel(bias), centered, per_channel(scale)))
        ctx.save_for_backward(centered, rows, count, invstd, scale)
        ctx.affine = (weight is not None, bias is not None)
        ctx.spatial = spatial
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _mean: Tensor, _var: Tensor) -> tuple:
        centered, rows, count, invstd, scale = ctx.saved_tensors
        has_weight, has_bias = ctx.affine
        spatial = ctx.spatial
        # Over every row: each output row, padded ones too, depends on the real rows through the statistics
        dbias = grad.sum((0, spatial))
        dot = (grad * centered).sum((0, spatial))
        dh = None
        if ctx.needs_input_grad[0]:
            # s g - s rows sum(g) / n - (s rows rsqrt(var + eps)^2 sum(g c) / n) c, the coefficients per row [B, K*C]
            shift = (rows * (scale * dbias / count)).unsqueeze(spatial)
            slope = (rows * (scale * invstd.square() * dot / count)).unsqueeze(spatial)
            dh = torch.addcmul(shift.neg(), grad, MaskedBatchNorm._per_channel(scale, spatial)).addcmul_(
                slope, centered, value=-1)
        dweight = dot * invstd if has_weight and ctx.needs_input_grad[3] else None
        return dh, None, None, dweight, dbias if has_bias and ctx.needs_input_grad[4] else None, None, None


def stacked_batch_norm(h: Tensor, k: int, weight: Tensor | None, bias: Tensor | None, eps: float, momentum: float,
                       mask: Tensor | None = None, running_mean: Tensor | None = None,
                       running_var: Tensor | None = None, counts: dict | None = None,
                       single: bool | None = None) -> Tensor:
    """Training-mode batch norm (Ioffe & Szegedy, 2015) of K models on h in grouped layout [B, K*C, H, W].

    Each client's channel is normalised with the mean and biased variance of its own real rows (``mask``
    [K, B], None: all rows; `MaskedBatchNorm`), and its running statistics [K, C] move by ``momentum`` towards that
    mean and the unbiased variance (n / (n - 1), n = real rows x H x W), as torch's BatchNorm2d does for one client.
    A client without real rows keeps its running statistics (its step weight is 0). A padded row enters the sums as 0 x
    value, so it must be finite where the client's real rows are: the trainer's are copies of the client's own first
    sample. A client with one value per channel (one real row at 1x1) raises torch's ValueError, as torch's batch norm
    does for one client in training, so that a vectorised round fails where a sequential one does: ``single`` says
    whether some client has one real row (the trainer knows its batch sizes on the host, so that a captured step needs
    no sync; None: read from the mask, at 1x1 inputs only). Without a mask, torch's own batch norm over the K*C
    channels is exactly the K clients' batch norms, and raises itself. ``counts``: a cache of `masked_counts` for this
    mask. With a mask the output is in the statistics' dtype (float32 for a bfloat16 h under autocast), as the loss is
    taken in at least float32.
    """
    flat_w = None if weight is None else weight.flatten()
    flat_b = None if bias is None else bias.flatten()
    if mask is None:
        return F.batch_norm(h, None if running_mean is None else running_mean.view(-1),
                            None if running_var is None else running_var.view(-1), flat_w, flat_b, True, momentum, eps)
    b, kc, height, width = h.shape
    if height * width == 1 and (bool((mask.sum(1) == 1).any()) if single is None else single):
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size([1, kc // k, height, width])} (a client's batch of one sample at a 1x1 batch "
                         "norm: set training.drop_last, or a training.batch_size that leaves no client a last batch "
                         "of one, or use another norm)")
    # Statistics in at least float32, as autocast runs torch's batch norm.
    dtype = torch.promote_types(h.dtype, torch.float32)
    rows, count, step, unbiased = masked_counts(mask, kc // k, height * width, momentum, dtype, counts)
    # In the grouped layout's memory order (`grouped_memory_format`), so that every op runs over contiguous memory:
    # channels last [B, H*W, K*C], or channels first [B, K*C, H*W].
    if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        hl = h.permute(0, 2, 3, 1).reshape(b, height * width, kc).to(dtype)
        out, mean, var = MaskedBatchNorm.apply(hl, rows, count, flat_w, flat_b, eps, 2)
        out = out.view(b, height, width, kc).permute(0, 3, 1, 2)
    else:
        out, mean, var = MaskedBatchNorm.apply(h.to(dtype, memory_format=torch.contiguous_format).view(b, kc, -1),
                                               rows, count, flat_w, flat_b, eps, 1)
        out = out.view(b, kc, height, width)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():  # (1 - m) r + m x, as torch's batch norm moves them; r itself where m is 0
            running_mean.view(-1).lerp_(mean, step)
            running_var.view(-1).lerp_(var * unbiased, step)
    return out


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
                                  running.get(f"{name}.running_mean"), running.get(f"{name}.running_var"), state.counts,
                                  state.single)
    raise TypeError(f"stacked_norm has no grouped form of {type(norm).__name__} ({name})")



def sliced_stacked_conv(conv: nn.Conv2d, params: Mapping[str, Tensor], name: str, h: Tensor, k: int,
                        out_channels: int) -> Tensor:
    """`sliced_conv` of K stacked models on h in grouped layout [B, K*C', H, W]: each client's first C' input and
    ``out_channels`` output channels of its ``conv`` (``params[name + '.weight']``: [K, ...])."""
    c_in = h.shape[1] // k
    sliced = {f"{name}.weight": params[f"{name}.weight"][:, :out_channels, :c_in]}
    if f"{name}.bias" in params:
        sliced[f"{name}.bias"] = params[f"{name}.bias"][:, :out_channels]
    return stacked_conv(conv, sliced, name, h, k)


def sliced_stacked_norm(norm: nn.Module, params: Mapping[str, Tensor], name: str, h: Tensor, k: int,
                        state: StackedNorm | None, widths: float | Sequence[float] | None = None) -> Tensor:
    """`sliced_norm` in training below full width, of K stacked models on h in grouped layout [B, K*C', H, W], client
    k's sub-network at ``widths[k]`` (a float: every client at that width; None: every client keeps all C' channels):
    batch norm over each client's real rows (``state.mask``) with its first C' weights, from batch statistics, updating
    no running statistics (the slimmable BN of the GradAug and FedAlign code); group norm over each client's own kept
    channels, group by group (`sliced_stacked_group_norm`). A client's channels past its own width hold values of no
    meaning, which the caller zeroes (`width_keep`)."""
    if isinstance(norm, nn.Identity):
        return h
    c = h.shape[1] // k
    sliced = {n: params[n][:, :c] for n in (f"{name}.weight", f"{name}.bias") if n in params}
    if isinstance(norm, nn.GroupNorm):
        kept = [c] * k if widths is None or isinstance(widths, int | float) else [
            slim_channels(norm.num_channels, w) for w in widths]
        if max(kept) != c:
            raise ValueError(f"{name}: h holds {c} channels per client, not the {max(kept)} its widths keep at most")
        return sliced_stacked_group_norm(h, k, kept, norm.num_channels // norm.num_groups,
                                         sliced.get(f"{name}.weight"), sliced.get(f"{name}.bias"), norm.eps)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"sliced_stacked_norm has no grouped form of {type(norm).__name__} ({name})")
    return stacked_norm(norm, sliced, name, h, k, StackedNorm(state.mask if state else None, None,
                                                             state.counts if state else {},
                                                             state.single if state else None))


def sliced_stacked_group_norm(h: Tensor, k: int, kept: Sequence[int], group_size: int, weight: Tensor | None,
                              bias: Tensor | None, eps: float) -> Tensor:
    """`sliced_norm`'s group norm (Wu & He 2018) of K stacked models on h in grouped layout [B, K*C', H, W], client k
    keeping its first kept[k] <= C' channels, with weight and bias [K, C'] (each client's first C'): each sample's
    channels j < kept[k] of client k in groups j // ``group_size``, the last one partial where kept[k] is not a multiple
    of the group size, each group normalised with its own mean and biased variance. Client k's channels from kept[k]
    on enter no kept channel's statistics and come out as values of no meaning (`width_keep` zeroes them next).

    The first form that applies: every client keeps whole groups (`slim_channels` keeps multiples of 8, so groups of
    8 channels or fewer at most widths), torch's group norm over all K * C' / group_size groups, a cut group normalised
    on its own; every client keeps the same C' channels (FedAlign's one width), torch's group norm over the whole
    groups and over the partial ones; else the sums of each (sample, client, group) over its kept channels through a
    mask, the mean then the biased variance about it, as torch's group norm computes them, in at least float32 as
    CUDA autocast runs torch's (and returns them; under a CPU's bf16 autocast torch's returns bf16, this float32)."""
    b, kc, height, width = h.shape
    c = kc // k

    def flat(t: Tensor | None, start: int = 0, stop: int = c) -> Tensor | None:
        return None if t is None else t[:, start:stop].flatten()

    if all(n % group_size == 0 for n in kept):
        return F.group_norm(h, kc // group_size, flat(weight), flat(bias), eps)
    whole = c - c % group_size
    if all(n == c for n in kept):
        grouped = h.unflatten(1, (k, c))
        parts = [F.group_norm(grouped[:, :, start:stop].flatten(1, 2), k * groups, flat(weight, start, stop),
                              flat(bias, start, stop), eps).unflatten(1, (k, stop - start))
                 for start, stop, groups in ((0, whole, whole // group_size), (whole, c, 1)) if stop > start]
        return grouped_contiguous(torch.cat(parts, dim=2).flatten(1, 2))
    # Only clients of different widths come here (GradAug's, whose stacked steps are never captured into CUDA graphs):
    # the masks are built on the host from its counts and copied without an explicit wait for the device's queue.
    groups = -(-c // group_size)
    channels = torch.arange(c) < torch.tensor(kept).unsqueeze(1)  # [K, C']: client k's kept channels
    count = F.pad(channels, (0, groups * group_size - c)).view(k, groups, group_size).sum(-1) * (height * width)
    dtype = torch.promote_types(h.dtype, torch.float32)
    channels = channels.view(1, kc).to(h.device, non_blocking=True)
    # a group no channel of the client keeps: sums of 0 over a count of 1, finite values of no meaning
    count = count.clamp_min(1).to(h.device, dtype, non_blocking=True)

    def group_sums(per_channel: Tensor) -> Tensor:  # [B, K*C'] -> each client's groups' sums [B, K, groups]
        padded = F.pad(per_channel.view(b, k, c), (0, groups * group_size - c))
        return padded.view(b, k, groups, group_size).sum(-1)

    def per_channel(per_group: Tensor) -> Tensor:  # [B, K, groups] -> [B, K*C', 1, 1]
        return per_group.repeat_interleave(group_size, dim=2)[:, :, :c].reshape(b, kc, 1, 1)

    x = torch.where(channels.view(1, kc, 1, 1), h.to(dtype), 0)
    centered = x - per_channel(group_sums(x.sum((2, 3))) / count)
    var = group_sums(torch.where(channels, centered.square().sum((2, 3)), 0)) / count
    scale = per_channel(torch.rsqrt(var + eps))
    if weight is not None:
        scale = scale * weight.reshape(1, kc, 1, 1)
    return centered * scale if bias is None else torch.addcmul(bias.reshape(1, kc, 1, 1), centered, scale)


class ImageClassifier(nn.Module):
    """Base class: ``forward(x) == classifier(forward_features(x))``.

    A subclass with a weight-matching spec (Git Re-Basin) adds ``permutation_axes(self, axes)``, declaring which
    permutation groups act on which axes of its tensors (`fedscape.models.permutation.Axes`); one without any says
    why in ``no_permutation_spec`` (`fedscape.models.permutation.permutation_spec` reads both).
    """

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

    def forward_features_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """`forward_features` of K stacked models [K, B, D], as `forward_stacked` computes them; a model whose
        representation an algorithm reads in a stacked step (MOON's projection head) overrides it."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked features")

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        """Logits of the sub-network of width ``width`` (every hidden layer sliced; GradAug, Yang et al. 2020)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable layers")

    def forward_last_block(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(input of the last block, its output, logits) of the full network (FedAlign, Mendieta et al. 2022)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable last block")

    def last_block_width(self, h: Tensor, width: float) -> tuple[Tensor, Tensor]:
        """The last block at width ``width`` on the full network's block input ``h``: (sliced input, output)."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable last block")

    def last_stage_whole_at(self, width: float) -> bool:
        """Whether the last block at ``width`` keeps every channel (`slim_channels` rounds each back up): its
        sub-block is then the block, and FedAlign's Lipschitz term vanishes."""
        raise NotImplementedError(f"{type(self).__name__} has no width-sliceable last block")


class ProjectedClassifier(ImageClassifier):
    """A classifier on a projection head: the backbone's features -> Linear(D, D) -> ReLU -> Linear(D, O) ->
    Linear(O, classes), as MOON's code (Li et al. 2021, model-contrastive federated learning: `ModelFedCon`'s l1, l2,
    l3 with O = out_dim) and the FedAlign code's MOON build it. ``forward_features`` is the head's output (MOON's
    representation z).

    ``out_dim`` O: 0 (or D) keeps the backbone's classifier, which reads D features (the FedAlign code's CIFAR
    ResNet: D -> D -> D); another width gets a new classifier Linear(O, classes), drawn after the head (the FedAlign
    code's ImageNet ResNet18: 512 -> 512 -> 256, then fc on 256, models/resnet.py).

    The backbone's classifier moves to the end (``backbone.classifier`` is removed), so parameters still run
    from input to output: ``backbone.*``, ``head.*``, ``classifier.*``.
    """

    def __init__(self, backbone: ImageClassifier, out_dim: int = 0) -> None:
        super().__init__()
        if out_dim < 0:
            raise ValueError(f"the projection head's out_dim must be >= 0 (0: the feature width), got {out_dim}")
        classifier = backbone.classifier
        dim = classifier.in_features
        out = out_dim or dim
        del backbone.classifier
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))
        if out != dim:
            classifier = nn.Linear(out, classifier.out_features, bias=classifier.bias is not None)
        self.classifier = classifier
        # Trained vectorised as its backbone is (`has_forward_stacked`): the head and classifier are linear layers.
        self.stacks_batch_norm = backbone.stacks_batch_norm
        self.stacked_faster_on_cpu = backbone.stacked_faster_on_cpu
        self.vmap_faster_on_cpu = backbone.vmap_faster_on_cpu

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.forward_features(x))

    def forward_features_stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None
                                 ) -> Tensor:
        """The head's output z of K stacked models [K, B, O]: the backbone's stacked features (its parameters and
        running statistics under ``backbone.``), then the head's two linear layers."""
        def inner(named: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {name.removeprefix(_BACKBONE): v for name, v in named.items() if name.startswith(_BACKBONE)}

        if norm is not None:  # the rest as given: `single` above all, so that a captured step needs no host read
            norm = replace(norm, running=None if norm.running is None else inner(norm.running))
        h = self.backbone.forward_features_stacked(inner(params), x, norm=norm)
        h = F.relu(stacked_linear(h, params["head.0.weight"], params["head.0.bias"]))
        return stacked_linear(h, params["head.2.weight"], params["head.2.bias"])

    def classify_stacked(self, params: Mapping[str, Tensor], z: Tensor) -> Tensor:
        """The classifier of K stacked models on their head outputs z [K, B, O]: logits [K, B, classes]."""
        return stacked_linear(z, params["classifier.weight"], params.get("classifier.bias"))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, norm: StackedNorm | None = None) -> Tensor:
        return self.classify_stacked(params, self.forward_features_stacked(params, x, norm))


_BACKBONE = "backbone."  # the prefix of a ProjectedClassifier's backbone's parameters and buffers


def _overrides(model: nn.Module, method: str) -> bool:
    """Whether the model's class has its own ``method``, not `ImageClassifier`'s."""
    own = getattr(type(model), method, None)
    return own is not None and own is not getattr(ImageClassifier, method)


def has_forward_stacked(model: nn.Module) -> bool:
    """Whether the model has its own grouped ``forward_stacked`` (else vectorised training runs it under ``vmap``)."""
    if isinstance(model, ProjectedClassifier):  # through its backbone's stacked features
        return _overrides(model.backbone, "forward_features_stacked")
    return _overrides(model, "forward_stacked")

