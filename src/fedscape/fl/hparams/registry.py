"""Every algorithm fedscape has, found in the modules of `fedscape.fl.hparams` (each lists its SPECS).

Adding an algorithm family means adding its hyperparameter module here and its strategy module in
`fedscape.fl.strategies`; no list of names is kept anywhere else.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import fedscape.fl.hparams as _package
from fedscape.core.names import suggest, unknown_name_error
from fedscape.fl.hparams.base import AlgorithmSpec

_NOT_FAMILIES = {"base", "registry"}


def _discover() -> dict[str, AlgorithmSpec]:
    """name -> spec of every algorithm declared by a family module of this package."""
    specs: dict[str, AlgorithmSpec] = {}
    for info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda i: i.name):
        if info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"{_package.__name__}.{info.name}")
        for spec in module.SPECS:
            if spec.name in specs:
                raise ValueError(f"algorithm {spec.name!r} is declared twice ({info.name} and another family)")
            specs[spec.name] = spec
    return specs


ALGORITHM_SPECS: dict[str, AlgorithmSpec] = _discover()
ALGORITHM_NAMES: tuple[str, ...] = tuple(sorted(ALGORITHM_SPECS))


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of algorithm `name`; ValueError naming the valid ones for an unknown name."""
    if name not in ALGORITHM_SPECS:
        raise unknown_name_error("algorithm", name, ALGORITHM_NAMES)
    return ALGORITHM_SPECS[name]


def algorithm_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's hyperparameter dataclass with `overrides` applied; unknown keys fail clearly."""
    cls = algorithm_spec(name).config
    overrides = dict(overrides or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in valid:
            raise ValueError(
                f"algorithm {name!r} has no hyperparameter {key!r}.{suggest(key, valid)} "
                f"Valid: {', '.join(sorted(valid)) or '(none)'}"
            )
    try:
        return cls(**overrides)
    except TypeError as exc:  # e.g. a list where a number is expected
        raise ValueError(f"algorithm {name!r}: {exc}") from None


def check_algorithm_model(name: str, model: str) -> None:
    """ValueError when algorithm `name` cannot train `model` (e.g. StochDepth on a plain CNN)."""
    algorithm_spec(name).check_model(model)


def display_name(name: str) -> str:
    """An algorithm as its paper writes it ('FedAvg'); labels that are no algorithm name are kept."""
    spec = ALGORITHM_SPECS.get(str(name).lower())
    return spec.display if spec else str(name)
