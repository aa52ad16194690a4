"""Config validation: JSON schema (draft 2020-12) with defaults, and one clear line per problem."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jsonschema
import yaml

from fedscape.utils import suggest


class ConfigError(ValueError):
    """A config that fails validation; the message lists every problem with its key."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate_config(config: dict, schema: dict) -> dict:
    """Fill defaults into `config` in place and raise ConfigError listing every schema violation."""
    errors = sorted(DefaultFillingValidator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {_describe(e)}" for e in errors))
    return config


def key_path(parts: Iterable) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        parts = [f"{key_path([*error.absolute_path, k])}: unknown key {k!r}.{suggest(k, allowed)}" for k in extra]
        return "; ".join(parts) + f" Valid keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not valid.{suggest(error.instance, error.validator_value)} " \
               f"Valid values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "propertyNames":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"
