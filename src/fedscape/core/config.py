"""Config validation: a JSON schema (draft 2020-12) that fills defaults, and one clear line per problem.

The schema is `workflow/schemas/config.schema.yaml` (the top level and the run grid) together with one
`<section>.schema.yaml` beside it per analysis section, so that a stage's keys live next to each other.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fedscape.core.names import get_close, suggest

if TYPE_CHECKING:
    import jsonschema

SCHEMA_FILE = "config.schema.yaml"
SECTION_SUFFIX = ".schema.yaml"


class ConfigError(ValueError):
    """A config that fails validation; the message lists every problem with its key."""


def _with_defaults(validator_class):
    import jsonschema  # lazy: ~0.1 s that every job pays through core.runs, while only validation needs it

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(_strict_integers(validator_class), {"properties": set_defaults})


def _strict_integers(validator_class):
    """`validator_class` whose integers are ints: JSON Schema's `integer` also takes 2.0, which YAML gives for
    `rounds: 2.0`, and every job that counts with it would fail (after the jobs before it ran); nor is a bool one."""
    import jsonschema  # lazy: as in _with_defaults

    integers = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(validator_class, type_checker=integers)


def _number_spellings(validator_class):
    """`validator_class` whose `number` takes floats alone, and with the keyword `whole_as_int`: its errors name every
    number spelled otherwise than its canonical spelling (`canonical_numbers`): an int where the schema means any
    number, a whole float where it says `whole_as_int: true`."""
    import jsonschema  # lazy: as in _with_defaults

    floats = validator_class.TYPE_CHECKER.redefine("number", lambda _checker, value: isinstance(value, float))

    def whole_as_int(_validator, wanted, instance, _schema):
        if wanted and isinstance(instance, float) and instance.is_integer():
            yield jsonschema.ValidationError(f"{instance!r} is spelled as an int here")

    return jsonschema.validators.extend(validator_class, {"whole_as_int": whole_as_int}, type_checker=floats)


@functools.cache
def _spelling_finder():
    import jsonschema  # lazy: as in _with_defaults

    return _number_spellings(_strict_integers(jsonschema.Draft202012Validator))


def _errors(errors):
    """Every error of `errors` and of their contexts (the branches of an anyOf or oneOf)."""
    for error in errors:
        yield error
        yield from _errors(error.context or ())


def _respelled(error):
    """The canonical spelling of the number an error of `_spelling_finder` names, or None where it names none."""
    value = error.instance
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if error.validator == "whole_as_int":
        return int(value)
    types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    if (error.validator == "type" and isinstance(value, int) and "number" in types and "integer" not in types
            and not error.schema.get("whole_as_int")):
        return float(value)
    return None


def canonical_numbers(instance, schema: dict):
    """`instance` (valid against `schema`) with every number in its canonical spelling: in place in its mappings and
    lists, and returned (a number alone is returned respelled).

    `weight_decay: 0` and `weight_decay: 0.0` are one setting, but Snakemake compares a job's settings by their text,
    where `0` and `0.0` differ: without this, rewriting one as the other would rerun every job that carries it. The
    canonical spelling is the one the shipped configs and the schema's defaults use, so that no finished job's settings
    change (`tests/unit/test_spelling.py`): a float where the schema means any number (an int there becomes its
    float), and an int where a key says `whole_as_int: true` (a whole float there becomes its int: `lr_warmup`, a
    count of rounds or steps that may be fractional, written `1` in the shipped configs). A position that also takes
    an integer (`type: [integer, number]`, or an anyOf branch that accepts it) keeps its int.
    """
    for error in _errors(_spelling_finder()(schema).iter_errors(instance)):
        value = _respelled(error)
        if value is None:
            continue
        path = list(error.absolute_path)
        if not path:
            return value
        parent = instance
        for part in path[:-1]:
            parent = parent[part]
        if parent[path[-1]] is error.instance:
            parent[path[-1]] = value
    return instance


# libyaml's parser and emitter where PyYAML was built with them (its wheels are): the same documents, read and
# written in C, with PyYAML's own safe constructors and representers. The schema's five files load in a tenth of
# the pure-Python loader's time (0.08 s against 0.75 s on a 2-core AMD EPYC), and every Snakemake call, `make
# status` and Hessian benchmark loads them. A user's config is read by the pure-Python loader (read_config_file):
# its syntax errors show the place and context.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _copy(value):
    return yaml.load(yaml.dump(value, Dumper=SAFE_DUMPER), Loader=SAFE_LOADER)


@functools.cache
def default_filling_validator():
    """JSON Schema 2020-12 validation that also fills every missing key's `default` into the instance."""
    import jsonschema  # lazy: as in _with_defaults

    return _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path) -> dict:
    """The config schema: `path` (config.schema.yaml) with the sections of every *.schema.yaml beside it."""
    path = Path(path)
    with open(path) as fh:
        schema = yaml.load(fh, Loader=SAFE_LOADER)
    for part in sorted(path.parent.glob(f"*{SECTION_SUFFIX}")):
        if part.name == path.name:
            continue
        with open(part) as fh:
            section = yaml.load(fh, Loader=SAFE_LOADER)
        for key in ("properties", "$defs"):
            clash = set(section.get(key, {})) & set(schema.get(key, {}))
            if clash:
                raise ValueError(f"{part}: {key} {sorted(clash)} are defined in another schema file too")
            schema.setdefault(key, {}).update(section.get(key, {}))
    return schema


def validate_config(config: dict, schema: dict) -> dict:
    """Fill defaults into `config` in place and raise ConfigError listing every schema violation and every number
    that is not finite."""
    errors = sorted(default_filling_validator()(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    problems = non_finite(config) + [_describe(e) for e in errors]
    if not problems:
        problems = training_override_problems(config, schema)
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
    canonical_numbers(config, schema)
    defs = schema.get("$defs", {})
    for entry in (config.get("inits") or {}).values():  # a continue init's selector, a mapping to the schema
        if isinstance(entry, dict) and isinstance(entry.get("run"), dict):
            canonical_numbers(entry["run"], {"$ref": "#/$defs/run_selector", "$defs": defs})
    keys = schema["properties"]["training"]["properties"]
    for section in TRAINING_OVERRIDES:  # each override as its `training` key's schema types it
        for entry in (config.get(section) or {}).values():
            overrides = entry.get("training") if isinstance(entry, dict) else None
            for key, value in (overrides or {}).items():
                if key in keys:
                    overrides[key] = canonical_numbers(value, {**keys[key], "$defs": defs})
    return config


# Sections whose entries may override keys of the `training` section (an algorithm's, an iid_warmup init's): the
# schema can say only that an override is a mapping, so each value is checked against its `training` key's schema.
TRAINING_OVERRIDES = ("algorithms", "inits")


def training_override_problems(config: dict, schema: dict) -> list[str]:
    """One line per override of a `training` key whose value that key's schema refuses (type, range, enum), named
    by its path (`algorithms.fedavg.training.lr`). Unknown keys are left to the training check, which names the
    nearest valid one."""
    import jsonschema  # lazy: as in _with_defaults

    keys = schema["properties"]["training"]["properties"]
    check = _strict_integers(jsonschema.Draft202012Validator)
    problems = []
    for section in TRAINING_OVERRIDES:
        for label, entry in (config.get(section) or {}).items():
            overrides = entry.get("training") if isinstance(entry, dict) else None
            for key, value in (overrides or {}).items():
                if key not in keys:
                    continue
                for error in check({**keys[key], "$defs": schema.get("$defs", {})}).iter_errors(value):
                    error.path.extendleft(reversed([section, label, "training", key]))
                    problems.append(_describe(error))
    return problems


def non_finite(value, where: tuple = ()) -> list[str]:
    """'<key>: nan is not a finite number' for every NaN or infinite number in `value` (YAML's .nan and .inf).

    A schema bound does not stop them: NaN compares false with every bound (`minimum: 0` passes it), and inf passes
    every lower bound, so a learning rate or a coefficient of .nan would train a diverging run silently."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{key_path(where)}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, (*where, k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite(v, (*where, i))]
    return []


def config_value(config: Mapping, keys: Iterable[str]):
    """The value at the key path `keys` of a nested config (`("training", "lr")`); None where a key is missing or a
    value on the way is no mapping."""
    node = config
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def key_path(parts: Iterable) -> str:
    """Dotted text of a key path: `training.lr`, `experiments[2].alpha`."""
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<top level>"


def _nested_hint(schema: dict, key: str) -> str:
    """Where `key` is a key one level down (`rounds` of `training`, often given as `--config rounds=5`), the
    sections that hold it; '' where none does."""
    sections = [name for name, sub in schema.get("properties", {}).items()
                if isinstance(sub, dict) and key in sub.get("properties", {})]
    if not sections:
        return ""
    where = " or ".join(f"{name}.{key}" for name in sections)
    return (f" It is {where}: set it inside its section (in a config file: `{sections[0]}: {{{key}: ...}}`; "
            "Snakemake's --config sets top-level keys only).")


def _unknown_key_hint(error: jsonschema.ValidationError, key: str, allowed: list[str]) -> str:
    """The closest valid key ('seed' -> 'seeds'), and at the top level the section that holds `key` one level down
    (`--config rounds=5` means training.rounds)."""
    close = suggest(key, allowed)
    nested = _nested_hint(error.schema, key) if not error.absolute_path else ""
    if not nested:
        return close
    # beside a key one level down, only the singular or plural of a top-level key is worth naming ('seed')
    match = get_close(key, allowed)
    if match is not None and (match.startswith(key) or key.startswith(match)):
        return close + nested.replace(" It is", " Or it is", 1)
    return nested


_TEXT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# The words YAML 1.1 (PyYAML, Snakemake) reads as booleans, in any case, where they are not quoted
_TEXT_BOOLEANS = ("true", "false", "yes", "no", "on", "off")


def _types(error: jsonschema.ValidationError) -> list:
    """The types a `type` error's schema names."""
    return error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]


def _text_value_hint(error: jsonschema.ValidationError) -> str:
    """For a number, or a boolean where one is wanted, that YAML read as text, why: YAML 1.1 (PyYAML, Snakemake)
    reads `1e-3` (no decimal point) and anything quoted as a string, and Snakemake's --config parses the values in a
    list or a mapping with YAML's base loader, which reads every one as text (`--config 'client_stats={enabled:
    false}'`); its top-level value is a number, True or False where it reads as one, else text (`false` too)."""
    value = error.instance
    if not isinstance(value, str):
        return ""
    if value.strip()[:1] in ("[", "{"):
        return ("; Snakemake's --config passes a list or a mapping as text: set it in a config file (--configfile) "
                "instead")
    number = _TEXT_NUMBER.fullmatch(value.strip())
    boolean = (value.strip().lower() in _TEXT_BOOLEANS and error.validator == "type"
               and "boolean" in _types(error))
    if not (number or boolean):
        return ""
    if number and "e" in value.lower() and "." not in value:
        return f"; YAML read {value!r} as text: an exponent needs a decimal point (1.0e-3, not 1e-3)"
    path = error.absolute_path
    if len(path) > 1 or path and isinstance(path[-1], int):
        came = (", or it came in a list or a mapping given to Snakemake's --config, which passes their values as text "
                "(set them in a config file)")
    elif boolean:
        came = ", or it came from Snakemake's --config, which reads True and False alone as booleans"
    else:  # (--config reads a top-level number as one)
        came = ""
    return f"; YAML read {value!r} as text: it is quoted{came}"


_YAML_KINDS = {int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}


def label_not_text(label) -> str:
    """Why a label of a section is refused when YAML read it as something other than text (`1.0:`, `2024:`, `~:`)."""
    text = "~" if label is None else str(label)
    return (f"the label {text} is read by YAML as {_YAML_KINDS.get(type(label), type(label).__name__)}, not as text; "
            f"quote it ('{text}':) or start it with a letter")


def _empty_section(error: jsonschema.ValidationError, key_schema: dict | None = None) -> str:
    """For a mapping or a list that YAML read as null (`landscapes:` with every entry commented out), that it is empty
    and what to write instead; '' where the schema wants no mapping or list there. `key_schema`: the key's schema
    where `error` is of a branch of its anyOf (`hessian.runs`: `all`, a selector or a list of them), for its
    default."""
    expected = _types(error)
    empty = "{}" if "object" in expected else "[]" if "array" in expected else None
    if empty is None or not error.absolute_path:
        return ""
    schema, key = error.schema, error.absolute_path[-1]
    written = "-" if isinstance(key, int) else f"{key}:"
    if schema.get("required"):
        fixes = [f"give its keys ({', '.join(schema['required'])})"]
    elif schema.get("minProperties", 0) or schema.get("minItems", 0):
        fixes = [f"give it at least one {'entry' if empty == '{}' else 'item'}"]
    else:  # an empty collection has no entries; an empty settings mapping leaves each key at its default
        meaning = "to set none of its keys" if "properties" in schema else "for none"
        fixes = [f"write `{written} {empty}` {meaning}"]
    defaults = schema if key_schema is None else key_schema
    if "default" in defaults and not isinstance(key, int):
        default = defaults["default"]
        flow = default if isinstance(default, str) else (  # (a text's dump ends its document: `all\n...`)
            yaml.safe_dump(default, default_flow_style=True, width=10**6).strip())
        shown = "" if default in ({}, []) else f" ({flow})"
        fixes.append(f"delete the key for its default{shown}")
    return f"empty (YAML reads `{written}` with nothing after it as null): {' or '.join(fixes)}"


# The bounds whose error adds the schema's `range_hint` (as a pattern's adds its `pattern_hint`): why the bound is
# there, where the number alone does not say it (a seed torch cannot take, a mean on the 0-255 scale)
_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _describe(error: jsonschema.ValidationError) -> str:
    return _describe_error(error) + _text_value_hint(error)


def _sentence(text: str) -> str:
    """`text` ended as a sentence."""
    return text if text.endswith((".", "?", "!")) else f"{text}."


def _did_you_mean(text: str, close: str | None) -> str:
    """`text` with ' Did you mean X?' after it (as a sentence) where `close` is a name; `text` where it is None."""
    return text if close is None else f"{_sentence(text)} Did you mean {close!r}?"


def _best_match(errors: list) -> jsonschema.ValidationError:
    """The error of `errors` that says the most (jsonschema's `best_match`)."""
    from jsonschema.exceptions import best_match  # lazy: as in _with_defaults

    return best_match(errors)


def _branch_values(error: jsonschema.ValidationError) -> list[str]:
    """The texts that the branches of an anyOf or oneOf take as such (their const and enum values): what a text
    that no branch takes was most likely meant as (`fianl`: final)."""
    values = [v for e in _errors(error.context) if e.absolute_path == error.absolute_path
              for v in ([e.validator_value] if e.validator == "const" else
                        e.validator_value if e.validator == "enum" else [])]
    return list(dict.fromkeys(v for v in values if isinstance(v, str)))


def _meant_branch_errors(error: jsonschema.ValidationError) -> list:
    """The errors of the branches of an anyOf or oneOf that take the kind of value it got (a mapping, a list): the
    branches with no error on the value's own type, const or enum (an error that says which kind of value a branch
    wants, not what is wrong in one of its kind)."""
    branches: dict = {}
    for e in error.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    return [e for errors in branches.values()
            if not any(e.validator in ("type", "const", "enum") and e.absolute_path == error.absolute_path
                       for e in errors)
            for e in errors]


def _describe_error(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "type" and "propertyNames" in error.schema_path and not isinstance(error.instance, str):
        return f"{where}: {label_not_text(error.instance)}"
    if error.validator == "type" and isinstance(error.instance, float) and error.instance.is_integer():
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if "integer" in expected:
            return f"{where}: {error.instance!r} is not an integer: write {int(error.instance)}"
    if error.validator == "type" and error.instance is None:
        empty = _empty_section(error)
        if empty:
            return f"{where}: {empty}"
    if error.validator in ("anyOf", "oneOf") and error.instance is None:
        # a key that takes a mapping or a list among other values (`hessian.runs`), read as null: what the first
        # branch that wants a mapping or a list says to write, with the key's default
        empty = next(filter(None, (_empty_section(e, error.schema) for e in error.context
                                   if e.validator == "type" and e.absolute_path == error.absolute_path)), "")
        if empty:
            return f"{where}: {empty}"
    if error.validator == "required" and isinstance(error.instance, dict):
        # a key of the entry that the schema does not know may be the missing one, misspelt (`nmae`); where the
        # schema refuses unknown keys, their own error already names the nearest valid key
        missing = next((k for k in error.validator_value if error.message == f"{k!r} is a required property"), None)
        unknown = [k for k in error.instance if k not in error.schema.get("properties", {})]
        close = (get_close(missing, unknown) if missing is not None and error.schema.get("additionalProperties")
                 is not False else None)
        meant = f"; is the entry's {close!r} meant as {missing!r}?" if close is not None else ""
        return f"{where}: {error.message}{meant}"
    if error.validator in _RANGE_KEYWORDS and "range_hint" in error.schema:  # the bound alone does not say why
        return f"{where}: {error.message}; {error.schema['range_hint']}"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        parts = [f"{key_path([*error.absolute_path, k])}: unknown key {k!r}.{_unknown_key_hint(error, k, allowed)}"
                 for k in extra]
        return "; ".join(parts) + f" Valid keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not valid.{suggest(error.instance, error.validator_value)} " \
               f"Valid values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern" and "pattern_hint" in error.schema:  # the regex itself tells a user nothing
        # the value in lower case where the pattern takes that (`All`: all, `CPU`: cpu)
        lower = error.instance.lower()
        close = lower if lower != error.instance and re.search(error.validator_value, lower) else None
        return _did_you_mean(f"{where}: {error.instance!r} is not valid: {error.schema['pattern_hint']}", close)
    if error.validator == "not" and "pattern_hint" in error.schema and "pattern" in error.validator_value:
        # a pattern the value must not contain: name the characters that match it on their own
        refused = [c for c in dict.fromkeys(str(error.instance)) if re.search(error.validator_value["pattern"], c)]
        contains = f"it contains {', '.join(map(repr, refused))}; " if refused else ""
        return f"{where}: {error.instance!r} is not valid: {contains}{error.schema['pattern_hint']}"
    if error.validator in ("anyOf", "oneOf") and isinstance(error.instance, dict | list):
        # a mapping (or a list of them) that no branch takes because of a misspelt key: that key and its suggestion
        # say the most, then the other mistakes of the branch it was meant for (the one that names the key's place)
        base = list(error.absolute_path)
        unknown = [e for e in error.context if e.validator == "additionalProperties"
                   and list(e.absolute_path)[:len(base)] == base]
        if unknown:
            branch = unknown[0].relative_schema_path[0]
            others = [e for e in error.context if e is not unknown[0] and e.relative_schema_path[0] == branch
                      and list(e.absolute_path)[:len(base)] == base]
            return "; ".join(dict.fromkeys(_describe_error(e) for e in [unknown[0], *others]))
    if error.validator in ("anyOf", "oneOf") and isinstance(error.instance, dict | list):
        # a mapping or a list that the branch meant for its kind refuses (`draw: onse` of {low, high, draw}): that
        # branch's own error, at its own key; with what the value may be where the error is of the value as a whole
        # (a list too short)
        meant = _meant_branch_errors(error)
        if meant:
            best = _best_match(meant)
            if best.absolute_path != error.absolute_path or "description" not in error.schema:
                return _describe(best)
            description = error.schema["description"]
            return f"{_sentence(_describe(best))} {description[:1].upper()}{description[1:]}"
    if error.validator in ("anyOf", "oneOf") and "description" in error.schema:
        described = f"{where}: {error.instance!r} is not valid: {error.schema['description']}"
        if isinstance(error.instance, str):
            return _did_you_mean(described, get_close(error.instance, _branch_values(error)))
        return described
    return f"{where}: {error.message}"


def canonical(value):
    """Settings with every mapping's keys sorted, so that reordering YAML keys never reruns a job
    (Snakemake compares params by their text)."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def without_baselines(settings: dict, baselines: Mapping[str, object]) -> dict:
    """`settings` less every key whose value is its baseline: what the jobs computed with before the key existed.

    Snakemake reruns a job when its params change. A key added to a job's settings therefore carries its baseline
    implicitly, so that adding it changes no finished job's settings, and appears only in the jobs that ask for
    something else. A baseline is the behaviour before the key, not the key's current default: it never changes,
    and a changed default then reruns exactly the jobs that relied on the old one.
    """
    return {k: v for k, v in settings.items() if not (k in baselines and v == baselines[k])}


# The key of a job's settings that carries the result version of its job kind, and that version's first value: the
# version of every result made before versions existed, so (a baseline) it never appears in the settings.
RESULT_VERSION = "result_version"
FIRST_RESULT_VERSION = 1


def result_version_params(version: int) -> dict:
    """The settings entry of a job kind's result version: empty at the first version, else {RESULT_VERSION: version}.

    The version of a job kind (an integer beside its settings builder in `plan/<stage>.py`, RESULT_VERSIONS) says
    what its numbers mean: a change of its computation that changes any number bumps it, a refactor does not
    (tests/workflow/test_result_numbers.py fails on numbers that moved without a bump). As part
    of the settings, a bump reruns exactly that kind's jobs and (as their inputs are remade) everything made from
    them, wherever the results were cloned or copied to; file dates of the code do not (profiles/default).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < FIRST_RESULT_VERSION:
        raise ValueError(f"a result version is an integer >= {FIRST_RESULT_VERSION}, not {version!r}")
    return {} if version == FIRST_RESULT_VERSION else {RESULT_VERSION: version}


def with_result_version(settings: dict, version: int) -> dict:
    """`settings` with its job kind's result version (`result_version_params`) as its last key; the same dict, key
    order included, at the first version (Snakemake compares params by their text)."""
    extra = result_version_params(version)
    return {**settings, **extra} if extra else settings


def digest(settings: dict) -> str:
    """A stable digest of JSON-able settings (used to refuse resuming with other settings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML (or JSON) config file; ConfigError naming the file, line and column of a syntax error.

    Snakemake's own loader reports only "Config file is not valid JSON or YAML", without the place.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = (f" ({exc.context} at line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark is not None else "")
        hint = "; YAML indents with spaces, never tabs" if "\\t" in str(exc.problem) else ""
        raise ConfigError(f"{path}: {where}YAML syntax error: {exc.problem}{context}{hint}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a YAML file ({type(exc).__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (e.g. `alphas: [iid, 0.1]`), found a "
                          f"{type(data).__name__}")
    return data


class _DuplicateKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that records every mapping key written twice (YAML keeps only the last value)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the parent's construct_mapping reports it
                continue
            first = seen.setdefault(key, line)
            if duplicate:
                self.duplicates.append(f"key {key!r} at line {line} repeats the key of line {first}: YAML would "
                                       "keep only the later value; remove or rename one")
        return super().construct_mapping(node, deep=deep)


def duplicate_keys(path: str | Path) -> list[str]:
    """'<path>: key ... at line N repeats the key of line M' for every key written twice in one mapping."""
    text = Path(path).read_text()
    loader = _DuplicateKeyLoader(text)
    try:
        loader.get_single_data()
    finally:
        loader.dispose()
    return [f"{path}: {problem}" for problem in loader.duplicates]
