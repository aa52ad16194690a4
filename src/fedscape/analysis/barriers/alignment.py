"""Weight matching modulo permutation symmetries (Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin", Algorithm 1).

Hidden units of a network can be permuted without changing its function. Each model declares which permutation
groups act on which axes of its tensors beside its definition; `fedscape.models.permutation.permutation_spec` asks
it for them (a `PermutationSpec`). This module permutes a model's state by a spec's groups and finds the
permutations of one model that best match another's weights.

Matching works on a model's state (a dict name -> tensor, e.g. ``model.state_dict()`` or
``point_state(model, point)`` for fedscape's flat vectors); batch-norm running statistics are permuted
but take no part in the matching objective (they are statistics, not weights; in the paper's code they
live in a separate collection).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from fedscape.analysis.barriers.maths import Point
from fedscape.models.params import buffer_specs, param_specs
from fedscape.models.permutation import Layout, PermutationSpec, permutation_spec

log = logging.getLogger("fedscape.barriers")

State = Mapping[str, Tensor]
Perms = dict[str, Tensor]

IMPROVEMENT_TOL = 1e-12  # relative gain a linear assignment must bring to replace the current permutation


# -- permuting -------------------------------------------------------------------------------------------------
def identity_permutation(spec: PermutationSpec) -> Perms:
    """The identity of every group (Ainsworth et al. 2023, the starting point of weight matching)."""
    return {g: torch.arange(n) for g, n in spec.group_sizes.items()}


def random_permutation(spec: PermutationSpec, seed: int) -> Perms:
    """A uniformly random permutation of every group from ``seed`` (Ainsworth et al. 2023, Sec. 2 symmetries)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.group_sizes.items()}


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Tensor], state: State) -> dict[str, Tensor]:
    """``state`` with every group permuted on every axis it acts on (Ainsworth et al. 2023, Algorithm 1's output).

    ``state`` may hold any subset of the spec's tensors (e.g. parameters only); its tensors keep their dtype.
    """
    _check_perms(spec, perms)
    _check_state(spec, state, state.keys(), "state")
    return {name: _permuted(spec, perms, name, value.reshape(spec.views[name])).reshape(value.shape)
            for name, value in state.items()}


def _check_perms(spec: PermutationSpec, perms: Mapping[str, Tensor]) -> None:
    """ValueError unless ``perms`` holds a permutation of the right size for exactly the spec's groups."""
    if set(perms) != set(spec.group_sizes):
        raise ValueError(f"permutations for groups {sorted(set(perms) ^ set(spec.group_sizes))} "
                         f"are missing or unknown")
    for group, perm in perms.items():
        n = spec.group_sizes[group]
        if perm.shape != (n,) or not torch.equal(torch.sort(perm.cpu()).values, torch.arange(n)):
            raise ValueError(f"perms[{group!r}] is not a permutation of {n} elements")


def _check_state(spec: PermutationSpec, state: State, names: Iterable[str], what: str) -> None:
    """ValueError for a tensor that is missing, unknown to the spec or of another shape."""
    for name in names:
        if name not in spec.shapes:
            raise ValueError(f"{what} holds {name!r}, which the permutation spec does not know")
        if name not in state:
            raise ValueError(f"{what} has no tensor {name!r}")
        if tuple(state[name].shape) != spec.shapes[name]:
            raise ValueError(f"{what}[{name!r}] has shape {tuple(state[name].shape)}, "
                             f"the spec expects {spec.shapes[name]} (mismatched models?)")


def _axis_index(layout: Layout, size: int, perms: Mapping[str, Tensor], device: torch.device) -> Tensor:
    """Gather index of one axis: ``index[positions[k]] = positions[perm[k]]`` for every segment."""
    index = torch.arange(size)
    for seg in layout:
        positions = torch.tensor(seg.positions)
        index[positions] = positions[perms[seg.group].cpu()]
    return index.to(device)


def _permuted(spec: PermutationSpec, perms: Mapping[str, Tensor], name: str, value: Tensor,
              skip_axis: int | None = None) -> Tensor:
    """A viewed tensor permuted on every axis (but ``skip_axis``)."""
    for axis, layout in enumerate(spec.axes_to_perm[name]):
        if layout is not None and axis != skip_axis:
            value = value.index_select(axis, _axis_index(layout, value.shape[axis], perms, value.device))
    return value


# -- weight matching ------------------------------------------------------------------------------------------
def inner_product(spec: PermutationSpec, params_a: State, params_b: State) -> float:
    """Summed inner product of the matched tensors, the objective of weight matching (Ainsworth et al. 2023, Eq. 3)."""
    _check_state(spec, params_a, spec.matched, "params_a")
    _check_state(spec, params_b, spec.matched, "params_b")
    return float(sum(torch.vdot(params_a[n].detach().double().reshape(-1), params_b[n].detach().double().reshape(-1))
                     for n in spec.matched))


def weight_matching(spec: PermutationSpec, params_a: State, params_b: State, max_iter: int = 100,
                    seed: int = 0) -> Perms:
    """Permutations of model B's groups maximising its inner product with A (Ainsworth et al. 2023, Algorithm 1).

    Coordinate descent: every sweep visits the groups in a random order drawn from ``seed``; each step
    solves the linear assignment of one group given the others and keeps it only if it raises the
    objective. Stops after a sweep that changes no permutation (or after ``max_iter`` sweeps). A group
    none of whose neighbours (groups sharing a tensor) changed since its last step is skipped: its
    assignment problem is the same, so the step would change nothing. Runs on the device of ``params_a``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    _check_state(spec, params_a, spec.matched, "params_a")
    _check_state(spec, params_b, spec.matched, "params_b")
    device = params_a[spec.matched[0]].device
    a = {n: params_a[n].detach().double().reshape(spec.views[n]) for n in spec.matched}
    b = {n: params_b[n].detach().to(device).double().reshape(spec.views[n]) for n in spec.matched}
    perms = identity_permutation(spec)
    groups = list(spec.group_sizes)
    neighbours = _neighbours(spec)
    stale = set(groups)  # groups whose assignment problem changed since their last step
    rng = np.random.default_rng(seed)
    for sweep in range(max_iter):
        changed = 0
        for group in (groups[i] for i in rng.permutation(len(groups))):
            if group in stale:
                stale.discard(group)
                if _assign(spec, group, a, b, perms):
                    stale |= neighbours[group]
                    changed += 1
        log.debug("weight matching sweep %d: %d of %d permutations changed", sweep, changed, len(groups))
        if not changed:
            log.info("weight matching converged after %d sweeps", sweep + 1)
            break
    else:
        log.warning("weight matching stopped after max_iter=%d sweeps without converging", max_iter)
    return perms


def _neighbours(spec: PermutationSpec) -> dict[str, set[str]]:
    """For every group, the other groups acting on one of its matched tensors."""
    groups_of = {name: {seg.group for layout in spec.axes_to_perm[name] if layout for seg in layout}
                 for name in spec.matched}
    return {g: set().union(*(groups_of[name] for name, _, _ in uses if name in groups_of)) - {g}
            for g, uses in spec.perm_to_axes.items()}


def _assign(spec: PermutationSpec, group: str, a: State, b: State, perms: Perms) -> bool:
    """One coordinate step: re-solve ``perms[group]`` by linear assignment; whether it changed."""
    from scipy.optimize import linear_sum_assignment  # lazy: ~0.4 s of every barrier job, needed only to align

    cost = _assignment_cost(spec, group, a, b, perms).cpu().numpy()
    _, cols = linear_sum_assignment(cost, maximize=True)
    rows = np.arange(len(cols))
    old, new = cost[rows, perms[group].numpy()].sum(), cost[rows, cols].sum()
    if new <= old + IMPROVEMENT_TOL * max(1.0, abs(old)):
        return False
    perms[group] = torch.from_numpy(cols).long()
    return True


def _assignment_cost(spec: PermutationSpec, group: str, a: State, b: State, perms: Perms) -> Tensor:
    """cost[i, j]: inner product of A's unit i with B's unit j over every matched tensor touching ``group``."""
    n = spec.group_sizes[group]
    cost = None
    for name, axis, positions in spec.perm_to_axes[group]:
        if name in spec.buffers:
            continue
        w_a = _rows(a[name], axis, positions)
        w_b = _rows(_permuted(spec, perms, name, b[name], skip_axis=axis), axis, positions)
        cost = w_a @ w_b.T if cost is None else cost.addmm_(w_a, w_b.T)
    return torch.zeros(n, n, dtype=torch.float64) if cost is None else cost


def _rows(value: Tensor, axis: int, positions: tuple[int, ...]) -> Tensor:
    """The slices of ``value`` at ``positions`` of ``axis``, flattened to rows."""
    value = value.movedim(axis, 0)
    if positions != tuple(range(value.shape[0])):  # a segment, not the whole axis in order
        value = value[torch.tensor(positions, device=value.device)]
    return value.reshape(len(positions), -1)


# -- fedscape's flat vectors ----------------------------------------------------------------------------------
def point_state(model: nn.Module, point: Point) -> dict[str, Tensor]:
    """Views of a flat point (fedscape.models.params order) by tensor name, for Git Re-Basin (Ainsworth et al. 2023)."""
    pspecs, bspecs = param_specs(model), buffer_specs(model)
    for what, vector, specs in (("parameters", point.params, pspecs), ("buffers", point.buffers, bspecs)):
        expected = sum(s.numel for s in specs)
        if vector.numel() != expected:
            raise ValueError(f"point has {vector.numel()} {what}, {type(model).__name__} has {expected}")
    state = {s.name: point.params[s.slice].view(s.shape) for s in pspecs}
    state.update({s.name: point.buffers[s.slice].view(s.shape) for s in bspecs})
    return state


def state_point(model: nn.Module, state: State) -> Point:
    """The flat point (models.params order) of a state, the inverse of ``point_state`` (Ainsworth et al. 2023)."""
    params = [state[s.name].reshape(-1) for s in param_specs(model)]
    buffers = [state[s.name].reshape(-1) for s in buffer_specs(model)]
    flat = torch.cat(params)  # (an empty CPU vector beside CUDA parameters would be refused by interpolate)
    return Point(flat, torch.cat(buffers) if buffers else torch.zeros(0, dtype=flat.dtype, device=flat.device))


def align_points(model: nn.Module, a: Point, b: Point, max_iter: int = 100, seed: int = 0) -> tuple[Point, Perms]:
    """B permuted to match A by weight matching, and the permutations (Ainsworth et al. 2023, Algorithm 1)."""
    spec = permutation_spec(model)
    state_a, state_b = point_state(model, a), point_state(model, b)
    perms = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
    return state_point(model, apply_permutation(spec, perms, state_b)), perms
