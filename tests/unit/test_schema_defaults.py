"""Defaults live in the schema only: `plan/` reads a key the schema fills by indexing it (`section["resolution"]`),
never with a default of its own (`section.get("resolution", 21)`), which would be a second home of the default that
drifts from the schema's."""

from __future__ import annotations

import ast

import pytest
from helpers.workflow import ROOT

from fedscape.core.config import load_schema

PLAN = ROOT / "src" / "fedscape" / "plan"


def schema_defaulted_keys(schema) -> set[str]:
    """Every property name that the schema gives a `default` somewhere (any section, any depth)."""
    keys: set[str] = set()
    if isinstance(schema, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if isinstance(sub, dict) and "default" in sub:
                keys.add(key)
        for value in schema.values():
            keys |= schema_defaulted_keys(value)
    elif isinstance(schema, list):
        for value in schema:
            keys |= schema_defaulted_keys(value)
    return keys


def literal_default_gets(source: str, keys: set[str]) -> list[tuple[int, str]]:
    """(line, key) of every `<x>.get("<key>", <literal>)` in `source` whose key is one of `keys`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and node.args[0].value in keys):
            continue
        try:
            ast.literal_eval(node.args[1])
        except ValueError:  # a computed fallback (a name, a call): not a literal default
            continue
        found.append((node.lineno, node.args[0].value))
    return found


@pytest.fixture(scope="module")
def defaulted() -> set[str]:
    return schema_defaulted_keys(load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml"))


def test_the_schema_s_defaulted_keys_are_found(defaulted):
    # Assert: keys of the top level, of a section and of a section's nested objects and mapped entries
    assert {"alphas", "resolution", "points", "trace_probes", "lanczos_steps", "order_seed", "span"} <= defaulted


@pytest.mark.parametrize(("source", "flagged"), [
    ('spec.get("resolution", 21)', [(1, "resolution")]),
    ('spec.get("span", None)', [(1, "span")]),
    ('spec.get("modes", ["single", "shallow"])', [(1, "modes")]),
    ('spec.get("resolution")', []),  # no default given: not a second home of one
    ('spec["resolution"]', []),
    ('spec.get("resolution", fallback)', []),  # computed, not a literal
    ('spec.get("no_such_key", 3)', []),  # not a key of the schema
])
def test_a_literal_default_of_a_schema_key_is_flagged(defaulted, source, flagged):
    assert literal_default_gets(source, defaulted) == flagged


@pytest.mark.parametrize("module", sorted(PLAN.glob("*.py")), ids=lambda p: p.name)
def test_plan_repeats_no_schema_default(defaulted, module):
    # Execute
    found = literal_default_gets(module.read_text(), defaulted)

    # Assert
    where = ", ".join(f"line {line}: .get({key!r}, ...)" for line, key in found)
    assert not found, (f"{module.relative_to(ROOT)}: {where}: the schema (workflow/schemas/) fills these keys with "
                       "their defaults; index them (section[key]) instead of repeating a default")
