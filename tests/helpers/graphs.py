"""A CPU stand-in for a CUDA graph of a whole step (fedscape.fl.capture.StackedStepGraphs' graph maker).

`emulated_graph(step)` runs the step once while recording every aten op it dispatches, with the Python values of
that call (learning rate, shapes, slices) fixed as they were, then gives a replay that runs those ops again on the
very tensor objects the capture saw: the state's tensors at their addresses, fresh temporaries otherwise. So, as a
real graph, a replay reads and writes what was there at capture: a tensor the trainer replaces between rounds, or a
Python value that changes between replays, gives other results than an eager step. A host sync during the capture
(`.item()`, a data-dependent shape) raises, as capturing it on a card does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


class _Recorder(TorchDispatchMode):
    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("operation not permitted when stream is capturing (a host sync)")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def emulated_graph(step: Callable[[], None]) -> Callable[[], None]:
    """`step` recorded (it runs once, as a capture's warm-up does) and its replay."""
    ops: list = []
    with _Recorder(ops):
        step()

    def replay() -> None:
        produced: dict[int, torch.Tensor] = {}  # a recorded temporary -> its tensor in this replay

        def now(x):
            return produced.get(id(x), x) if isinstance(x, torch.Tensor) else x

        with torch.no_grad():
            for func, args, kwargs, out in ops:
                result = func(*tree_map(now, args), **tree_map(now, kwargs))
                for recorded, fresh in zip(tree_flatten(out)[0], tree_flatten(result)[0], strict=True):
                    if isinstance(recorded, torch.Tensor):
                        produced[id(recorded)] = fresh

    return replay
