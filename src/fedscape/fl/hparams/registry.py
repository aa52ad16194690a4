"""Every algorithm fedscape has, found in the modules of `fedscape.fl.hparams` (each lists its SPECS).

Adding an algorithm family means adding its hyperparameter module here and its strategy module in
`fedscape.fl.strategies`; no list of names is kept anywhere else.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable
from typing import Any

import fedscape.fl.hparams as _package
from fedscape.core.jobs import declared_defaults
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


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # YAML's true is a Python int


# What a value of each annotated type must be, and that type in words (the config's, not Python's).
_TYPE_CHECKS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    float: (_is_number, "a number"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a text"),
}


def _expected(annotation) -> tuple[Callable[[Any], bool], str] | None:
    """(check, words) of a hyperparameter's annotated type; None for a type this does not know (not checked)."""
    if annotation in _TYPE_CHECKS:
        return _TYPE_CHECKS[annotation]
    if typing.get_origin(annotation) is typing.Literal:  # a choice among named values (MOON's head)
        choices = typing.get_args(annotation)
        return (lambda v: isinstance(v, str) and v in choices), f"one of {', '.join(map(str, choices))}"
    if typing.get_origin(annotation) is tuple:  # tuple[float, ...]: a YAML list of such values
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = _TYPE_CHECKS.get(args[0]) if len(set(args)) == 1 else None
        if item is not None:
            words = {"a number": "numbers", "an integer": "integers", "true or false": "true/false values",
                     "a text": "texts"}[item[1]]
            return (lambda v: isinstance(v, list | tuple) and all(item[0](x) for x in v)), f"a list of {words}"
    return None


def _shown(value) -> str:
    """A default as the config would write it (a tuple as a YAML list)."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def hyperparameter_type_problems(name: str, overrides: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for every override of algorithm `name` whose value is not of its hyperparameter's type.

    The type is the annotation of the dataclass field, so that every algorithm is checked without a check of its
    own: a text where a number is expected would otherwise reach `__post_init__` as a raw comparison error, and a
    boolean (an int to Python) would be taken as 0 or 1. Unknown keys are `algorithm_config`'s to report.
    """
    cls = algorithm_spec(name).config
    hints = typing.get_type_hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        if f.name not in overrides or (expected := _expected(hints[f.name])) is None:
            continue
        check, words = expected
        if not check(overrides[f.name]):
            problems.append((f.name, f"expected {words} (e.g. its default {_shown(f.default)}), got "
                                     f"{overrides[f.name]!r}"))
    return problems


def _as_declared(annotation, value):
    """`value` as a hyperparameter annotated `annotation` takes it: an int written for a float as that float (also in
    a list of floats, which stays a list, as YAML gives it); anything else unchanged."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if annotation is float and whole:
        return float(value)
    if typing.get_origin(annotation) is tuple and set(typing.get_args(annotation)) - {Ellipsis} == {float}:
        if isinstance(value, list):
            return [_as_declared(float, v) for v in value]
    return value


def hyperparameter_settings(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of algorithm `name` as its train jobs' settings carry them: each override as its field's
    type (`_as_declared`), in the config's order.

    `mu: 0` and `mu: 0.0` are one run, but Snakemake compares settings by their text: without this, respelling one as
    the other would rerun the run. The float is the spelling kept, as the shipped configs write these numbers. A key
    written at its default stays in the settings (unlike the schema's keys): the shipped studies spell some at their
    defaults (meta's fedadam, layerwise's central_gpt), and leaving them out would change those finished runs'
    text; a finished run is compared with its recorded settings by meaning instead (`without_default_hyperparameters`),
    so writing a default or deleting it reruns nothing. Keys the algorithm has not are kept, for `algorithm_config`
    to refuse by name.
    """
    hints = typing.get_type_hints(algorithm_spec(name).config)
    return {key: _as_declared(hints[key], value) if key in hints else value for key, value in overrides.items()}


def without_default_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """`hyperparameters` (as `hyperparameter_settings` gives them) less those written at their field's declared
    default, which the algorithm takes anyway: what a run computes with, compared by meaning
    (`fedscape.stages.train_settings.TrainJob.meaning`). An unknown algorithm or key is kept as it is."""
    try:
        cls = algorithm_spec(name).config
    except ValueError:
        return dict(hyperparameters)
    hints, defaults = typing.get_type_hints(cls), declared_defaults(cls)
    return {key: value for key, value in hyperparameters.items()
            if key not in defaults or _listed(_as_declared(hints.get(key), value)) != _listed(defaults[key])}


def _listed(value: Any) -> Any:
    """`value` with its tuples as lists, at every depth: a default tuple and the list YAML gives compare equal."""
    if isinstance(value, (list, tuple)):
        return [_listed(v) for v in value]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    return value


def algorithm_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's hyperparameter dataclass with `overrides` applied; unknown keys and values of the wrong
    type fail clearly."""
    cls = algorithm_spec(name).config
    overrides = dict(overrides or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in valid:
            raise ValueError(
                f"algorithm {name!r} has no hyperparameter {key!r}.{suggest(key, valid)} "
                f"Valid: {', '.join(sorted(valid)) or '(none)'}"
            )
    wrong = hyperparameter_type_problems(name, overrides)
    if wrong:
        raise ValueError(f"algorithm {name!r}: " + "; ".join(f"{key}: {problem}" for key, problem in wrong))
    try:
        return cls(**overrides)
    except TypeError as exc:  # e.g. a list where a number is expected
        raise ValueError(f"algorithm {name!r}: {exc}") from None


def check_algorithm_model(name: str, model: str) -> None:
    """ValueError when algorithm `name` cannot train `model` (e.g. StochDepth on a plain CNN)."""
    algorithm_spec(name).check_model(model)


def check_algorithm_targets(name: str, targets: str, where: str) -> None:
    """ValueError when algorithm `name` cannot train on a data set's targets `targets` (`where`: the config key)."""
    algorithm_spec(name).check_targets(targets, where)


def display_name(name: str) -> str:
    """An algorithm as its paper writes it ('FedAvg'); labels that are no algorithm name are kept."""
    spec = ALGORITHM_SPECS.get(str(name).lower())
    return spec.display if spec else str(name)
