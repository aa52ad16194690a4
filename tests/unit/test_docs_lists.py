"""The docs' lists of facts the code declares, which go stale silently when the code adds one: README.md's
paragraph of the settings that rerun nothing (every job kind's `JobSettings.neutral`), and docs/architecture.md's
list of the result version bumps that apply to some jobs alone (every `*_BUMPS` constant of the library)."""

from __future__ import annotations

import ast
import importlib
import re

import pytest
from helpers.workflow import ROOT

SRC = ROOT / "src" / "fedscape"
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
NEUTRAL_MARK = "each job kind's `neutral` fields"  # the README paragraph that lists them says so
BUMPS = re.compile(r"[A-Z][A-Z0-9_]*_BUMPS")


def module_of(path) -> str:
    """The dotted module of a library file below src/fedscape, without the package ("plan.train")."""
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _trees():
    return [(module_of(path), ast.parse(path.read_text())) for path in sorted(SRC.rglob("*.py"))]


def assigned(node) -> list:
    """The targets a statement assigns (`x = ...` or `x: T = ...`), none for any other statement."""
    if isinstance(node, ast.Assign):
        return node.targets
    return [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []


def declared_neutral() -> dict[str, tuple[str, ...]]:
    """"<module>.<Class>" -> its `neutral` paths, for every class whose body sets a non-empty `neutral` (read from
    the class itself, so a tuple built from other names counts as built)."""
    found = {}
    for module, tree in _trees():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any(getattr(target, "id", None) == "neutral"
                                                      for stmt in node.body for target in assigned(stmt)):
                neutral = tuple(getattr(importlib.import_module(f"fedscape.{module}"), node.name).neutral)
                if neutral:  # JobSettings' own: none
                    found[f"{module}.{node.name}"] = neutral
    return found


def declared_bumps() -> list[str]:
    """"<module>.<NAME>" of every module-level `*_BUMPS` constant of the library."""
    return sorted(f"{module}.{target.id}" for module, tree in _trees() for node in tree.body
                  for target in assigned(node) if isinstance(target, ast.Name) and BUMPS.fullmatch(target.id))


def neutral_paragraph(text: str) -> str:
    """The one paragraph of `text` that lists the `neutral` fields."""
    paragraphs = [p for p in text.split("\n\n") if NEUTRAL_MARK in p]
    assert len(paragraphs) == 1, f"expected one paragraph with {NEUTRAL_MARK!r}, found {len(paragraphs)}"
    return paragraphs[0]


def unnamed_neutral(paragraph: str, paths: tuple[str, ...]) -> list[str]:
    """The neutral `paths` whose key (the last dotted part: a job's field sits under another name than the
    config's section) the paragraph names in no code span (`key` or `section.key`)."""
    keys = {span.split(".")[-1] for span in re.findall(r"`([^`]+)`", paragraph)}
    return [path for path in paths if path.split(".")[-1] not in keys]


def unnamed_bumps(doc: str, constants: list[str]) -> list[str]:
    """The `constants` ("plan.train.X_BUMPS") that `doc` names nowhere as a code span of that dotted name."""
    return [name for name in constants if f"`{name}`" not in doc]


@pytest.mark.parametrize(("paragraph", "paths", "unnamed"), [
    ("a train job's `training.client_chunk_size` and `capture`", ("training.client_chunk_size", "training.capture"),
     []),
    ("a partition job's `partition.max_tries`", ("max_tries",), []),
    ("a train job's `training.client_chunk_size`", ("training.client_chunk_size", "max_tries"), ["max_tries"]),
    ("max_tries outside a code span", ("max_tries",), ["max_tries"]),
], ids=["named", "section-key", "one-unnamed", "plain-text"])
def test_unnamed_neutral_finds_a_key_missing_from_the_paragraph(paragraph, paths, unnamed):
    # Prepare: a paragraph and the neutral paths of a kind
    # Execute
    found = unnamed_neutral(paragraph, paths)

    # Assert
    assert found == unnamed


@pytest.mark.parametrize(("doc", "constants", "unnamed"), [
    ("`plan.train.UNDECAYED_BUMPS` (...)", ["plan.train.UNDECAYED_BUMPS"], []),
    ("`plan.train.UNDECAYED_BUMPS`", ["plan.train.UNDECAYED_BUMPS", "plan.train.THINNED_EVAL_BUMPS"],
     ["plan.train.THINNED_EVAL_BUMPS"]),
    ("`UNDECAYED_BUMPS`", ["plan.train.UNDECAYED_BUMPS"], ["plan.train.UNDECAYED_BUMPS"]),
], ids=["named", "one-unnamed", "without-its-module"])
def test_unnamed_bumps_finds_a_constant_missing_from_the_doc(doc, constants, unnamed):
    # Prepare: a doc and the constants
    # Execute
    found = unnamed_bumps(doc, constants)

    # Assert
    assert found == unnamed


def test_every_job_kind_with_neutral_fields_is_found():
    # Prepare / Execute: the kinds whose body declares `neutral`
    kinds = declared_neutral()

    # Assert: the partition and train kinds at least (a scan that found none would check nothing)
    assert {"stages.partition_settings.PartitionJob", "stages.train_settings.TrainJob"} <= set(kinds)


@pytest.mark.parametrize(("kind", "paths"), sorted(declared_neutral().items()))
def test_readme_names_every_neutral_field(kind, paths):
    # Prepare: README.md's paragraph of the settings that rerun nothing
    paragraph = neutral_paragraph(README.read_text())

    # Execute
    unnamed = unnamed_neutral(paragraph, paths)

    # Assert
    assert unnamed == [], f"README.md's paragraph of the `neutral` fields does not name {kind}'s {unnamed}"


def test_every_bumps_constant_is_found():
    # Prepare / Execute
    constants = declared_bumps()

    # Assert: the partition's at least (a scan that found none would check nothing)
    assert "plan.partition.EXACT_ZEROS_BUMPS" in constants


@pytest.mark.parametrize("constant", declared_bumps())
def test_architecture_names_every_bumps_constant(constant):
    # Prepare
    doc = ARCHITECTURE.read_text()

    # Execute
    unnamed = unnamed_bumps(doc, [constant])

    # Assert
    assert unnamed == [], f"docs/architecture.md's list of bumps applying to some jobs does not name `{constant}`"
