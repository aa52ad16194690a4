"""Strategies built by algorithm name, from the specs of `fedscape.fl.hparams.registry`."""

from __future__ import annotations

import importlib
from typing import Any

from fedscape.fl.hparams.registry import algorithm_config, algorithm_spec
from fedscape.fl.strategies.base import Strategy


def strategy_class(name: str) -> type[Strategy]:
    """The strategy class of algorithm `name` (its spec names the module of this package and the class)."""
    module, _, cls = algorithm_spec(name).strategy.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def make_strategy(name: str, overrides: dict[str, Any] | None = None) -> Strategy:
    """Build a strategy by name with hyperparameter overrides from the config."""
    return strategy_class(name)(algorithm_config(name, overrides), name)
