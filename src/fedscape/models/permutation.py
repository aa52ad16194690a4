"""Permutation symmetries of a network (Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin"): what each model declares.

Hidden units of a network can be permuted without changing its function. A `PermutationSpec` says which
permutation *group* acts on which axis of which tensor, as ``permutation_spec_from_axes_to_perm`` of the paper's
public code, generalised in two ways that fedscape's models need:

* an axis may be acted on by several groups, each on its own *segment* (a set of positions): an option-A
  zero-pad shortcut puts the input stream's channels in the middle of a wider stream and the padded
  channels around them, so the wider stream's permutation is the input stream's one on the middle block
  plus a free permutation of the padded channels;
* a tensor may be *viewed* in another shape: a Linear layer after a flatten has inputs ``(channels, H*W)``.

A permutation ``perm`` of a group acts on a segment as ``new[positions[k]] = old[positions[perm[k]]]``
(``jnp.take(w, perm, axis)`` of the paper's code). Group norm only allows permutations within its groups of
channels: a group whose channels are normalised by different norm groups is split into one group per norm
group (the within-group subgroup; whole norm groups are never swapped).

Each model class declares its own axes beside its definition, in a method ``permutation_axes(self, axes)`` that
fills an `Axes` (with `Axes.weights`, `Axes.norm` and `whole`); `permutation_spec` asks the model for them. A
registry model without a spec names the reason in ``no_permutation_spec`` (`fedscape.models.specs.NO_PERMUTATION_SPEC`,
which planning reads). Permuting and weight matching use the spec: `fedscape.analysis.barriers.alignment`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from fedscape.models.specs import MODEL_NAMES, NO_PERMUTATION_SPEC


class UnsupportedModelError(TypeError):
    """A model, or a module inside it, whose permutation symmetries permutation_spec does not know."""


@dataclass(frozen=True)
class Segment:
    """Positions of one axis moved by group ``group``; its element k sits at ``positions[k]`` (cf. Git Re-Basin)."""

    group: str
    positions: tuple[int, ...]


Layout = tuple[Segment, ...]  # the groups acting on one axis (positions not covered stay fixed)
AxisEntry = str | Sequence[Segment] | None  # a group on the whole axis, segments, or not permuted
Use = tuple[str, int, tuple[int, ...]]  # (tensor, axis, positions) where a group acts


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation groups act on which axis of which tensor (Ainsworth et al. 2023, Git Re-Basin code).

    ``views[name]`` is the shape the axes refer to (the tensor's own shape unless it is viewed, e.g. a
    Linear after a flatten); ``buffers`` are tensors that are permuted but not matched (running statistics).
    """

    axes_to_perm: dict[str, tuple[Layout | None, ...]]
    perm_to_axes: dict[str, tuple[Use, ...]]
    group_sizes: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    views: dict[str, tuple[int, ...]]
    buffers: frozenset[str]

    @property
    def matched(self) -> tuple[str, ...]:
        """The tensors of the matching objective, all but the buffers (Ainsworth et al. 2023, Eq. 3)."""
        return tuple(name for name in self.shapes if name not in self.buffers)


def permutation_spec_from_axes_to_perm(
    axes_to_perm: Mapping[str, Sequence[AxisEntry]],
    shapes: Mapping[str, Sequence[int]],
    views: Mapping[str, Sequence[int]] | None = None,
    buffers: Iterable[str] = (),
) -> PermutationSpec:
    """A checked PermutationSpec from per-axis groups (``permutation_spec_from_axes_to_perm``, Ainsworth et al. 2023).

    Every tensor of ``shapes`` must be described; a group may act on at most one axis of a tensor (so that
    the objective is linear in each permutation and every assignment step is exact) and always on the
    same number of positions.
    """
    if set(axes_to_perm) != set(shapes):
        raise ValueError(f"axes_to_perm and shapes name different tensors: "
                         f"{sorted(set(axes_to_perm) ^ set(shapes))}")
    views = {name: tuple((views or {}).get(name, shape)) for name, shape in shapes.items()}
    layouts = {name: _tensor_layouts(name, entries, tuple(shapes[name]), views[name])
               for name, entries in axes_to_perm.items()}
    uses: dict[str, list[Use]] = {}
    sizes: dict[str, int] = {}
    for name, tensor_layouts in layouts.items():
        for axis, layout in enumerate(tensor_layouts):
            for seg in layout or ():
                if sizes.setdefault(seg.group, len(seg.positions)) != len(seg.positions):
                    raise ValueError(f"group {seg.group!r} has {sizes[seg.group]} elements but {name} axis {axis} "
                                     f"gives it {len(seg.positions)}")
                uses.setdefault(seg.group, []).append((name, axis, seg.positions))
    buffers = frozenset(buffers)
    if not buffers <= set(shapes):
        raise ValueError(f"unknown buffers: {sorted(buffers - set(shapes))}")
    return PermutationSpec(layouts, {g: tuple(u) for g, u in uses.items()}, sizes,
                           {n: tuple(s) for n, s in shapes.items()}, views, buffers)


def _tensor_layouts(name: str, entries: Sequence[AxisEntry], shape: tuple[int, ...],
                    view: tuple[int, ...]) -> tuple[Layout | None, ...]:
    """The checked layouts of every axis of one (viewed) tensor."""
    if math.prod(view) != math.prod(shape) or len(entries) != len(view):
        raise ValueError(f"{name}: {len(entries)} axis entries for view {view} of shape {shape}")
    layouts = tuple(_layout(name, axis, entry, view[axis]) for axis, entry in enumerate(entries))
    groups = [seg.group for layout in layouts if layout for seg in layout]
    if len(groups) != len(set(groups)):
        raise ValueError(f"{name}: a permutation group acts twice on one tensor ({groups})")
    return layouts


def _layout(name: str, axis: int, entry: AxisEntry, size: int) -> Layout | None:
    """One axis entry as segments, checked against the axis length."""
    if entry is None:
        return None
    layout = (Segment(entry, tuple(range(size))),) if isinstance(entry, str) else tuple(entry)
    positions = [p for seg in layout for p in seg.positions]
    if len(positions) != len(set(positions)) or any(not 0 <= p < size for p in positions):
        raise ValueError(f"{name} axis {axis}: segments overlap or leave the axis of length {size}")
    return layout or None


# -- a model's declaration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupNormUse:
    """A GroupNorm on an axis: permutations must keep every channel in its norm group."""

    layout: Layout
    num_groups: int
    num_channels: int


@dataclass
class Axes:
    """The spec of a model while its ``permutation_axes`` declares it: each tensor's axis entries (a layout or None
    per axis of its view), the views of tensors seen in another shape, and the group norms met."""

    entries: dict[str, tuple[Layout | None, ...]] = field(default_factory=dict)
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)
    group_norms: list[GroupNormUse] = field(default_factory=list)

    def weights(self, name: str, module: nn.Conv2d | nn.Linear, out: Layout | None, inp: Layout | None) -> None:
        """Weight (out, in, ...) and bias (out,) of a Linear or ungrouped Conv2d."""
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise UnsupportedModelError(f"{name}: grouped convolutions are not supported")
        self.entries[f"{name}.weight"] = (out, inp) + (None,) * (module.weight.dim() - 2)
        if module.bias is not None:
            self.entries[f"{name}.bias"] = (out,)

    def norm(self, name: str, module: nn.Module, layout: Layout) -> None:
        """Affine parameters and running statistics of a norm layer over the channels of ``layout``."""
        if isinstance(module, nn.Identity):
            return
        if not isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            raise UnsupportedModelError(f"{name}: unsupported normalisation layer {type(module).__name__}")
        for tensor, value in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if value is not None and value.is_floating_point():
                self.entries[f"{name}.{tensor}"] = (layout,)
        if isinstance(module, nn.GroupNorm):
            self.group_norms.append(GroupNormUse(layout, module.num_groups, module.num_channels))


def whole(group: str, size: int) -> Layout:
    """A layout where ``group`` permutes the whole axis."""
    return (Segment(group, tuple(range(size))),)


def permutable_models() -> tuple[str, ...]:
    """The registry models with a permutation spec: all but those of NO_PERMUTATION_SPEC (tests/unit/test_alignment.py
    checks that every other one has its spec)."""
    return tuple(name for name in MODEL_NAMES if name not in NO_PERMUTATION_SPEC)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation symmetries of a model, as its ``permutation_axes`` declares them (Ainsworth et al. 2023, Sec. 2).

    The classifier's outputs (and the input channels) are never permuted. A model without ``permutation_axes``
    raises UnsupportedModelError: with its ``no_permutation_spec`` reason where it states one, else naming the
    models that have a spec.
    """
    describe = getattr(model, "permutation_axes", None)
    if describe is None:
        reason = getattr(model, "no_permutation_spec", None)
        if reason:
            raise UnsupportedModelError(f"no permutation spec for {type(model).__name__}: {reason}")
        raise UnsupportedModelError(f"no permutation spec for architecture {type(model).__name__}; supported: the "
                                    f"registry models {', '.join(permutable_models())} (a model class declares its "
                                    "axes in permutation_axes, fedscape.models.permutation)")
    axes = Axes()
    describe(axes)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers() if b.is_floating_point()}
    unknown = sorted((set(shapes) | set(buffers)) - set(axes.entries))
    if unknown:
        raise UnsupportedModelError(f"{type(model).__name__}: tensors outside the known structure: {unknown}")
    entries = _split_for_group_norm(axes.entries, axes.group_norms) if axes.group_norms else axes.entries
    return permutation_spec_from_axes_to_perm(entries, {**shapes, **buffers}, axes.views, buffers)


def _split_for_group_norm(entries: dict[str, tuple[Layout | None, ...]],
                          group_norms: Sequence[GroupNormUse]) -> dict[str, tuple[Layout | None, ...]]:
    """Split every group into the subsets that stay inside one norm group of every GroupNorm it meets.

    Permuting channels within a norm group keeps its mean and variance, so these subgroups are symmetries;
    swapping whole norm groups is one too but is not used.
    """
    keys: dict[str, list[tuple[tuple[int, int], ...]]] = {}
    for layout in (lay for ax in entries.values() for lay in ax if lay):
        for seg in layout:
            keys.setdefault(seg.group, [()] * len(seg.positions))
    for index, use in enumerate(group_norms):
        group_size = use.num_channels // use.num_groups
        for seg in use.layout:
            keys[seg.group] = [key + ((index, p // group_size),) for key, p in zip(keys[seg.group], seg.positions,
                                                                                  strict=True)]
    parts: dict[str, list[list[int]]] = {}
    for group, group_keys in keys.items():
        by_key: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for k, key in enumerate(group_keys):
            by_key.setdefault(key, []).append(k)
        parts[group] = list(by_key.values())

    def split(layout: Layout | None) -> Layout | None:
        if layout is None:
            return None
        return tuple(Segment(seg.group if len(parts[seg.group]) == 1 else f"{seg.group}[{j}]",
                             tuple(seg.positions[k] for k in part))
                     for seg in layout for j, part in enumerate(parts[seg.group]))

    return {name: tuple(split(layout) for layout in ax) for name, ax in entries.items()}

