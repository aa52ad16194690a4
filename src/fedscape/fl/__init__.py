"""Federated training: strategies (algorithms) over one engine.

The names below are imported on first use (PEP 562), so that the torch-free submodules
(`fedscape.fl.hparams`, `fedscape.fl.train_config`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedscape.fl.engine import FederatedData, RunResult, TrainConfig, run_federated
    from fedscape.fl.strategy import ALGORITHMS, Strategy, make_strategy

_LAZY = {
    "ALGORITHMS": "fedscape.fl.strategy",
    "FederatedData": "fedscape.fl.engine",
    "RunResult": "fedscape.fl.engine",
    "Strategy": "fedscape.fl.strategy",
    "TrainConfig": "fedscape.fl.engine",
    "make_strategy": "fedscape.fl.strategy",
    "run_federated": "fedscape.fl.engine",
}

__all__ = ["ALGORITHMS", "FederatedData", "RunResult", "Strategy", "TrainConfig", "make_strategy", "run_federated"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first access (keeps `import fedscape.fl.hparams` torch-free)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted({*globals(), *__all__})
