"""Flat views of a model's parameters and floating buffers.

Every stage moves models around as flat vectors: checkpoints store one row per round, planes are
directions in parameter space, aggregation is a weighted mean of rows. `FlatParams` binds the
parameters of a module to one contiguous buffer so that loading a vector is a single copy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and position of one tensor inside a flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def param_specs(model: nn.Module) -> list[TensorSpec]:
    """Specs of the parameters, in `named_parameters()` (forward) order."""
    return _specs((n, p) for n, p in model.named_parameters())


def buffer_specs(model: nn.Module) -> list[TensorSpec]:
    """Specs of the floating-point buffers (e.g. batch-norm running statistics)."""
    return _specs((n, b) for n, b in model.named_buffers() if b.is_floating_point())


def _specs(named) -> list[TensorSpec]:
    specs, offset = [], 0
    for name, t in named:
        specs.append(TensorSpec(name, tuple(t.shape), offset))
        offset += t.numel()
    return specs


def flatten_params(model: nn.Module) -> torch.Tensor:
    """A detached copy of all parameters as one vector in their dtype (float32 for the workflow's models;
    checkpoints store float32 either way): a float64 model stays float64, as float64 runs are compared to float64
    rounding."""
    return _flatten((p for p in model.parameters()), _device(model))


def flatten_buffers(model: nn.Module) -> torch.Tensor:
    """A detached copy of the floating buffers as one vector in their dtype (empty when there are none, on the
    model's device: an empty CPU vector beside a model's CUDA parameters is refused by every operation on both)."""
    return _flatten((b for b in model.buffers() if b.is_floating_point()), _device(model))


def _device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _flatten(tensors, device: torch.device) -> torch.Tensor:
    parts = [t.detach().reshape(-1) for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(0, device=device)


@torch.no_grad()
def load_params(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters."""
    _load((p for p in model.parameters()), vector, "parameters")


@torch.no_grad()
def load_buffers(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a flat vector into the model's floating buffers."""
    _load((b for b in model.buffers() if b.is_floating_point()), vector, "buffers")


def _load(tensors, vector: torch.Tensor, what: str) -> None:
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    if vector.numel() != total:
        raise ValueError(f"flat vector has {vector.numel()} entries but the model has {total} {what}")
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(vector[offset : offset + n].view_as(t))
        offset += n


class FlatParams:
    """Binds a module's parameters to views of one contiguous buffer.

    After binding, `flat.vector` and the parameters share storage: `set(v)` loads a whole model in
    one copy and optimiser steps on the parameters show up in `vector` without flattening.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters")
        device, dtype = params[0].device, params[0].dtype
        self.vector = torch.cat([p.detach().reshape(-1) for p in params]).to(device=device, dtype=dtype)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.vector[offset : offset + n].view_as(p)
            offset += n

    @torch.no_grad()
    def set(self, vector: torch.Tensor) -> None:
        if vector.numel() != self.vector.numel():
            raise ValueError(f"flat vector has {vector.numel()} entries, the model {self.vector.numel()}")
        self.vector.copy_(vector)

    def get(self) -> torch.Tensor:
        """A detached copy of the current parameters."""
        return self.vector.detach().clone()
