"""The report's captions (workflow/report/*.rst) render for every shipped config as `snakemake --report` renders them
(Snakemake 9's snakemake.report: Jinja with trim_blocks and lstrip_blocks, then docutils' HTML writer), but strictly:
a name the context lacks is an error (Snakemake's Jinja renders it as nothing), so is any docutils warning, and every
path a caption names lies below the config's results_dir."""

from __future__ import annotations

import functools
import io
import itertools
import re
import types

import pytest
from docutils.core import publish_parts
from helpers.workflow import ROOT
from jinja2 import Environment, StrictUndefined, TemplateError
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, ResourceList, Snakemake, Wildcards

from fedscape.core.paths import DEFAULT_RESULTS, JOB_LOGS
from fedscape.plan.report import ACCURACY_KINDS, CURVE_METRICS
from fedscape.plan.workflow import load_config

REPORT = ROOT / "workflow" / "report"  # the captions' folder
SCHEMA_FILE = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in [ROOT / "config" / "config.yaml",
                                                          *(ROOT / "config" / "papers").glob("*.yaml"),
                                                          *(ROOT / "config").glob("smoke32.yaml")])
# Snakemake's Environment for captions, strict
ENV = Environment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
# The wildcards a caption branches on, with every value their rules' wildcard_constraints allow; any other wildcard
# is only printed, so its name stands in for its value.
BRANCHING = {"kind": ACCURACY_KINDS, "metric": CURVE_METRICS}
_CAPTION = re.compile(r'caption="\.\./workflow/report/([^"]+)"')
# The report's own description (Snakefile's `report:`): Snakemake renders it with `snakemake.config` alone
GLOBAL = re.search(r'^report: "workflow/report/([^"]+)"', (ROOT / "Snakefile").read_text(), re.M)[1]


def captioned_rules() -> dict[str, str]:
    """Caption file name -> the rule whose report output it captions (rules/*.smk)."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        blocks = re.split(r"^rule (\w+):", smk.read_text(), flags=re.M)
        for rule, block in zip(blocks[1::2], blocks[2::2], strict=True):
            rules.update(dict.fromkeys(_CAPTION.findall(block), rule))
    return rules


RULES = captioned_rules()


def rule_wildcards(rule: str) -> list[dict[str, str]]:
    """Every set of wildcard values a caption of `rule` is rendered with: its wildcards are those of its log (Snakemake
    requires a rule's outputs and log to hold the same ones: snakemake.rules.Rule.register_wildcards), each
    branching one (BRANCHING) over all its values."""
    names = re.findall(r"\{(\w+)\}", JOB_LOGS[rule])
    values = [BRANCHING.get(name, (name,)) for name in names]
    return [dict(zip(names, chosen, strict=True)) for chosen in itertools.product(*values)]


@functools.cache
def config_of(path: str) -> dict:
    """The shipped config at `path`, filled and checked as the workflow reads it (once per file)."""
    return load_config(ROOT / path, SCHEMA_FILE)


def job_context(config: dict, rule: str, wildcards: dict[str, str]) -> Snakemake:
    """The `snakemake` a caption of one of `rule`'s jobs sees (snakemake.report.FileRecord.render): the job's
    wildcards and config; its files and params are the job's too there, empty here (no caption reads them)."""
    return Snakemake(InputFiles(), OutputFiles(), Params(), Wildcards(fromdict=wildcards), 1, ResourceList(), Log(),
                     config, rule, None)


@functools.cache
def docutils_warnings(text: str) -> list[str]:
    """What docutils reports (warnings and errors, its default report_level) while writing `text` as HTML."""
    stream = io.StringIO()
    publish_parts(text, writer="html", settings_overrides={"warning_stream": stream})
    return stream.getvalue().splitlines()


def caption_problems(template: str, config: dict, snakemake) -> list[str]:
    """What is wrong with caption `template` rendered for `config` with `snakemake` as its context: a Jinja error,
    docutils' warnings, an inline literal naming a path outside results_dir, "results/" left where results_dir is
    another folder. (Snakemake appends link targets of the report's panels and files first; no caption links to
    one.)"""
    try:
        text = ENV.from_string(template).render(snakemake=snakemake, categories={}, files=[])
    except TemplateError as exc:
        return [f"Jinja: {type(exc).__name__}: {exc}"]
    root = config["results_dir"]
    problems = [f"docutils: {line}" for line in docutils_warnings(text)]
    problems += [f"not below {root}/: ``{path}``" for path in re.findall(r"``(.+?)``", text, flags=re.S)
                 if "/" in path and not path.startswith(f"{root}/")]
    if root != DEFAULT_RESULTS and f"{DEFAULT_RESULTS}/" in text.replace(root, ""):
        problems.append(f'"{DEFAULT_RESULTS}/" named, results_dir is {root}')
    return problems


def test_every_caption_is_found_and_branches_on_listed_wildcards():
    # Prepare
    texts = {p.name: p.read_text() for p in REPORT.glob("*.rst")}

    # Execute
    branching = {name for text in texts.values() for name in re.findall(r"snakemake\.wildcards\.(\w+)\s*[!=]=", text)}

    # Assert: every caption file is the report's description or a rule's caption (rendered below), and a wildcard
    # a caption compares is one whose every value is rendered
    assert sorted(texts) == sorted([GLOBAL, *RULES])
    assert branching <= set(BRANCHING)


@pytest.mark.parametrize("config_file", CONFIG_FILES)
@pytest.mark.parametrize("caption", sorted(RULES))
def test_a_rule_caption_renders_for_every_shipped_config(config_file, caption):
    # Prepare
    config, rule = config_of(config_file), RULES[caption]
    template = (REPORT / caption).read_text()

    # Execute
    problems = {str(w): caption_problems(template, config, job_context(config, rule, w)) for w in rule_wildcards(rule)}

    # Assert
    assert {w: p for w, p in problems.items() if p} == {}


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_the_report_description_renders_for_every_shipped_config(config_file):
    # Prepare
    config = config_of(config_file)

    # Execute
    problems = caption_problems((REPORT / GLOBAL).read_text(), config, types.SimpleNamespace(config=config))

    # Assert
    assert problems == []


@pytest.mark.parametrize("template, expected", [
    ('Data: ``{{ snakemake.config["results_dir"] }}/tables/final.csv``.', []),
    ('Data: ``{{ snakemake.config["no_such_key"] }}/tables/final.csv``.',
     ["Jinja: UndefinedError: 'dict object' has no attribute 'no_such_key'"]),
    ("For ``{{ snakemake.wildcards.pair }}``.",
     ["Jinja: UndefinedError: 'snakemake.iocontainers.Wildcards object' has no attribute 'pair'"]),
    ("Data: ``results/tables/final.csv``.",
     ["not below results_x/: ``results/tables/final.csv``", '"results/" named, results_dir is results_x']),
    ("Data: results/tables/final.csv.", ['"results/" named, results_dir is results_x']),
    ("Data: ``final.csv", ["docutils: <string>:1: (WARNING/2) Inline literal start-string without end-string."]),
])
def test_a_caption_problem_is_found(template, expected):
    # Prepare: a config whose results_dir is not the default, and a job of a rule with one wildcard
    config = {"results_dir": "results_x"}
    snakemake = job_context(config, "curves_figure", {"metric": "loss"})

    # Execute
    problems = caption_problems(template, config, snakemake)

    # Assert
    assert problems == expected
