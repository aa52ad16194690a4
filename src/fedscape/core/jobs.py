"""Typed job contracts: one frozen dataclass per job kind, and the one rule that turns it into a job's settings.

`plan/` builds a job kind's dataclass (a `JobSettings` subclass, declared torch-free beside the stage that runs
it) and hands Snakemake `job_params(job, version)`, its `to_settings(job)` with the kind's result version; the
stage reads it back with `<Kind>.from_settings(settings)`. The dataclass is the one declared shape of the job: a
field without a default is required, and a stage reads attributes, not string keys.

Finished jobs keep their settings. Snakemake reruns a job when its params change, so a field added after results
existed must not change the settings of the jobs that computed without it: every field added later has a default,
the behaviour every job had before the field (its baseline, never the current config default, which may change), and
`to_settings` leaves out every field equal to its declared default. `from_settings` restores it. No list of late keys
and no "only when set" branch is needed: a field that only some jobs use (a seed of random orders) defaults to None
and appears only in their settings.

Some fields change how a job computes, not what: how much device memory it takes (a batch size of evaluation, how
many clients train at once), which its results follow only to float rounding. A job kind names them (`neutral`).
Some values are written as the config gives them, and the job resolves what is left out itself: an algorithm's
hyperparameters, a model's options. Written at the default the job takes anyway, or deleted, they change the text but
not the job. A job kind's `meaning` leaves out both, and a finished job whose settings have the meaning of those
Snakemake recorded for it keeps its recorded params (`kept_record`): lowering a memory setting so that a job fits its
card, or spelling out a default, reruns none of the jobs already finished. Which card a job computes on is no part of
its meaning either: `meaning` reads a device `cuda:<i>` as `cuda` (`device_kind`), so that moving jobs to a free card
reruns nothing; the device's kind (cpu, cuda, auto) stays meaning.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from fedscape.core.config import RESULT_VERSION, canonical, with_result_version
from fedscape.core.names import suggest

J = TypeVar("J", bound="JobSettings")


class JobSettingsError(ValueError):
    """Settings that do not fit their job kind's declared shape (an unknown or a missing key)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSettings:
    """Base of every job kind's settings: subclass it with `@dataclass(frozen=True, kw_only=True)`.

    `rule` names the Snakemake rule whose jobs take these settings. Fields hold plain values (numbers, text, None,
    tuples, mappings) or nested `JobSettings` (their own defaults left out the same way) or other dataclasses
    (written in full, with `dataclasses.asdict`).
    """

    rule: ClassVar[str]
    # The fields that change how the job computes, not what (its results agree to float rounding): dotted paths into
    # its settings (`training.eval_batch_size` in a nested field). See `kept_record`.
    neutral: ClassVar[tuple[str, ...]] = ()
    # The fields that hold a config's values as given where another field holds what they resolve to (a warm-up's
    # training overrides, a continue init's run selector): left out of the job's `meaning` whole.
    restated: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def meaning(cls, settings: Mapping[str, Any]) -> dict:
        """What a job of `settings` computes, as data to compare: its settings less the `neutral` and `restated`
        fields, each device as its `device_kind` (less the card's index); a kind whose settings hold values as the
        config gives them also leaves out those at the defaults the job takes anyway.
        Never raises on settings of an older or unknown shape (a record): what it cannot resolve it keeps. The
        defaults are today's: a new default changes what the jobs that left it out compute, so it comes with a new
        result version (`core.config.with_result_version`)."""
        return with_device_kinds(without_paths(settings, (*cls.neutral, *cls.restated)), device_paths(cls))

    @classmethod
    def from_settings(cls: type[J], settings: Mapping[str, Any]) -> J:
        """The job of `settings` as `to_settings` wrote them (a result version among them is not a field): an omitted
        field takes its declared default; an unknown key or a missing required one is a JobSettingsError naming it."""
        declared = {f.name: f for f in dataclasses.fields(cls)}
        given = {k: v for k, v in settings.items() if k != RESULT_VERSION}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise JobSettingsError(
                f"{cls.__name__} (rule {getattr(cls, 'rule', '?')}) has no field {', '.join(map(repr, unknown))}."
                f"{suggest(unknown[0], declared)} Its fields are {', '.join(declared)}. Settings written by a newer "
                "fedscape? Update this checkout.")
        missing = [name for name, f in declared.items() if name not in given and not _has_default(f)]
        if missing:
            raise JobSettingsError(f"{cls.__name__} (rule {getattr(cls, 'rule', '?')}) settings lack the required "
                                   f"{', '.join(map(repr, missing))}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _typed(hints.get(name), value) for name, value in given.items()})


def to_settings(job: JobSettings) -> dict:
    """The settings of `job` as its rule's `params` carry them: every field, less those equal to their declared
    default, in the order the fields are declared.

    Snakemake records params as text, key order included, and reruns a job whose text changed: a job kind declares
    its fields in the order its settings have always had (new fields last), and the builder passes mappings read from
    the config through `core.config.canonical` (keys sorted), so that reordering YAML keys reruns nothing.
    `benchmarks/compare_plans.py` compares that text.
    """
    if not isinstance(job, JobSettings):
        raise TypeError(f"to_settings takes a JobSettings, got {type(job).__name__}")
    out = {}
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if _has_default(f) and value == _default(f):
            continue
        out[f.name] = _plain(value)
    return out


class RecordedSettings(dict):
    """A job's settings whose params text is the one Snakemake recorded for its outputs (`kept_record`): the mapping
    holds the settings of now, which the job computes with when it runs; `repr`, which Snakemake records and compares
    (its params trigger), gives the recorded text, which has their meaning (`JobSettings.meaning`)."""

    def __init__(self, settings: Mapping[str, Any], text: str):
        super().__init__(settings)
        self.text = text

    def __repr__(self) -> str:
        return self.text


def without_paths(settings: Mapping[str, Any], paths: Iterable[str]) -> dict:
    """A copy of `settings` less the fields at `paths` (dotted: `training.eval_batch_size` is the key
    `eval_batch_size` of the mapping `training`), the other keys in their order; a path not there is skipped."""
    if isinstance(paths, str):  # one path, whose letters would each be taken for one
        raise TypeError(f"without_paths takes a collection of dotted paths, got the string {paths!r}")
    return _at_paths(settings, paths, lambda out, key: out.pop(key, None))


def _at_paths(settings: Mapping[str, Any], paths: Iterable[str], change: Callable[[dict, str], Any]) -> dict:
    """A copy of `settings` (its nested mappings copied where a path goes through them) with `change(mapping, key)`
    applied at each of the dotted `paths`; a path through a missing or non-mapping field is skipped."""
    out = dict(settings)
    for path in paths:
        head, _, rest = path.partition(".")
        if rest:
            if isinstance(out.get(head), Mapping):
                out[head] = _at_paths(out[head], [rest], change)
        else:
            change(out, head)
    return out


# The name of every job field that says where the job computes (`training.device`: auto, cpu, cuda or cuda:<i>).
DEVICE_FIELD = "device"


def device_kind(device: Any) -> Any:
    """`device` less its card index: `cuda:<i>` is `cuda`, any other value as it is. The index says which of the
    machine's cards the job takes, not what it computes: under `cuda` the same job takes the card that
    CUDA_VISIBLE_DEVICES lists first, and a cluster job sees the card it was given as cuda:0."""
    return "cuda" if isinstance(device, str) and re.fullmatch(r"cuda:\d+", device) else device


@functools.cache
def device_paths(cls: type) -> tuple[str, ...]:
    """The dotted paths of the fields of the job kind `cls` named DEVICE_FIELD, those of its nested JobSettings
    included (a train job's `training.device`)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if f.name == DEVICE_FIELD:
            paths.append(f.name)
        hint = hints.get(f.name)
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        for nested in options:
            if isinstance(nested, type) and issubclass(nested, JobSettings):
                paths.extend(f"{f.name}.{path}" for path in device_paths(nested))
    return tuple(paths)


def with_device_kinds(settings: Mapping[str, Any], paths: Iterable[str]) -> dict:
    """A copy of `settings` with the value at each of `paths` (dotted, as `without_paths` reads them) as its
    `device_kind`; a path not there is skipped."""
    def to_kind(out: dict, key: str) -> None:
        if key in out:
            out[key] = device_kind(out[key])

    return _at_paths(settings, paths, to_kind)


def kept_record(settings: dict, recorded: Iterable[str] | None,
                meaning: Callable[[Mapping[str, Any]], dict] = dict) -> dict:
    """`settings` (a job's params), kept at the text Snakemake recorded for the job where they have its `meaning`
    (`JobSettings.meaning`: less the neutral fields and the defaults written out): a `RecordedSettings` then, else
    `settings` itself.

    `recorded`: the params texts Snakemake keeps for the job's outputs (each param's `repr`; None without a record).
    Snakemake reruns a job whose params text changed, so a setting that changes how a job computes, not what (an
    evaluation batch size lowered to fit a card), or a hyperparameter written at its default, would rerun every
    finished job that carries it, and everything made from them. Compared by meaning, the rest by its text (key order
    included, as Snakemake does), so that every other change still reruns the job, which then records the settings of
    now. A job that runs for another reason (a missing output, `--forcerun`) computes with the settings of now;
    Snakemake's record then keeps the recorded text, and the job's own outputs say which it used where they record its
    settings (a run's meta.json, a Hessian job's hessian.json, its manifest record).
    """
    if not recorded:
        return settings
    text_now = repr(settings)
    now = None
    for text in recorded:
        if text == text_now:
            return settings
        value = recorded_settings(text)
        if value is None:
            continue
        now = repr(meaning(settings)) if now is None else now
        if repr(meaning(value)) == now:
            return RecordedSettings(settings, text)
    return settings


def recorded_settings(text: str) -> dict | None:
    """The settings a params text Snakemake recorded holds (its `repr` of a job's settings), None where the text is
    no dict literal (a path's text is not; an unrepresentable param is not recorded)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def job_params(job: JobSettings, version: int, recorded: Iterable[str] | None = None, *, sort: bool = False) -> dict:
    """The settings of `job` as its rule's params carry them: `to_settings`, every level's keys sorted with `sort`
    (`canonical`: the partition, init and train jobs have always had them so), its job kind's result `version`
    (`with_result_version`), and kept at Snakemake's `recorded` text where they have its meaning (`kept_record`
    with the kind's `JobSettings.meaning`)."""
    settings = to_settings(job)
    return kept_record(with_result_version(canonical(settings) if sort else settings, version), recorded,
                       type(job).meaning)


def declared_defaults(cls: type[JobSettings]) -> dict[str, Any]:
    """The declared default of every field of `cls` that has one: the baselines of its late fields."""
    return {f.name: _default(f) for f in dataclasses.fields(cls) if _has_default(f)}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _plain(value: Any) -> Any:
    """`value` as JSON-like data: nested JobSettings through `to_settings`, other dataclasses in full, tuples as
    lists (YAML and Snakemake's params text know lists)."""
    if isinstance(value, JobSettings):
        return to_settings(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):  # as given: the builder decides (canonical for what comes from the config)
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _typed(hint: Any, value: Any) -> Any:
    """`value` (read from settings) as the field's declared type: a nested JobSettings or dataclass rebuilt from its
    mapping, a list as a tuple where the field is a tuple; anything else as it is."""
    if value is None or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            if _matches(option, value):
                return _typed(option, value)
        return value
    if isinstance(hint, type) and issubclass(hint, JobSettings) and isinstance(value, Mapping):
        return hint.from_settings(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return hint(**value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        return tuple(_typed(item, v) for v in value)
    return value


def _matches(hint: Any, value: Any) -> bool:
    """Whether `value` (plain settings data) can be read as `hint`: a mapping for a dataclass, a list for a tuple."""
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return isinstance(value, Mapping)
    if origin is tuple:
        return isinstance(value, list | tuple)
    return isinstance(origin, type) and isinstance(value, origin)
