"""The recipes of docs/architecture.md counted against the repository: each file count the page states is what one
of the algorithms, analysis stages, figures, accuracy figure kinds and partition kinds here takes, and nothing
else in the code names it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "fedscape"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def stated(pattern: str) -> int:
    """The number the page states where `pattern` (one group: the number) matches."""
    match = re.search(pattern, DOC, flags=re.S)
    assert match, f"docs/architecture.md no longer says {pattern!r}: count the recipe again here"
    return int(match[1])


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def code_names(path: Path) -> set[str]:
    """The names the code of a module uses (identifiers, imported modules' parts, the words of its strings), not its
    comments or docstrings: what would break if a thing of that name went away."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            names.update(re.findall(r"\w+", node.value))
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update((node.module or "").split("."))
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(part for alias in node.names for part in alias.name.split("."))
    return names


def string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


CODE = {rel(p): code_names(p) for p in sorted(SRC.rglob("*.py"))}
STRINGS = {rel(p): string_constants(p) for p in sorted(SRC.rglob("*.py"))}


def naming(names: set[str]) -> set[str]:
    """The modules of src/ whose code names any of `names`."""
    return {path for path, used in CODE.items() if used & names}


# --- Add an algorithm (2 files plus its test) ---

FAMILIES = sorted(p.stem for p in (SRC / "fl" / "hparams").glob("*.py")
                  if p.stem not in {"__init__", "base", "registry"})
BASE_FAMILY = "fedavg"  # the family the others reduce to: the IID warm-up init runs it, the figures' styles name it


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != BASE_FAMILY])
def test_an_algorithm_is_its_two_modules_and_its_test(family):
    # Prepare
    specs = importlib.import_module(f"fedscape.fl.hparams.{family}").SPECS
    names = {spec.name for spec in specs}
    files = {f"src/fedscape/fl/hparams/{family}.py", f"src/fedscape/fl/strategies/{family}.py"}
    tests = "".join(p.read_text() for p in (ROOT / "tests" / "unit").glob("test_*.py"))

    # Execute
    elsewhere = naming(names | {family}) - files

    # Assert: its hyperparameters and its strategy class (which its specs name), found by the registries; nothing
    # else in the code knows its name; a test names each of its algorithms
    assert elsewhere == set()
    strategy_names = CODE[f"src/fedscape/fl/strategies/{family}.py"]
    assert {spec.strategy for spec in specs} <= {f"{family}:{name}" for name in strategy_names}
    assert len(files) == stated(r"### Add an algorithm \((\d+) files plus its test\)")
    assert {n for n in names if f'"{n}"' not in tests and f"name: {n}" not in tests} == set(), "untested"


# --- Add an analysis stage (files named after it, plus its test) ---

ANALYSES = sorted(p.name for p in (SRC / "analysis").iterdir() if (p / "__init__.py").exists())
STAGE_EXAMPLE = "client_stats"  # one job and one figure: the recipe's stage exactly
FIGURE_FILES_OF_A_STAGE = 3  # figures.py, <stage>_figure.py and the caption


def stage_files(stage: str) -> set[str]:
    """The files named after `stage` in the places the recipe lists."""
    found = [*(ROOT / "workflow" / "schemas").glob(f"{stage}.schema.yaml"), *(SRC / "plan").glob(f"{stage}.py"),
             *(ROOT / "rules").glob(f"{stage}.smk"), *(SRC / "analysis" / stage).glob("*.py"),
             *(ROOT / "workflow" / "scripts").glob(f"{stage}*.py"),
             *(ROOT / "workflow" / "report").glob(f"{stage}*.rst")]
    return {rel(p) for p in found}


def test_an_analysis_stage_is_the_files_the_recipe_lists():
    # Execute
    files = stage_files(STAGE_EXAMPLE)

    # Assert
    assert files == {
        "workflow/schemas/client_stats.schema.yaml",
        "src/fedscape/plan/client_stats.py",
        "rules/client_stats.smk",
        "src/fedscape/analysis/client_stats/__init__.py",
        "src/fedscape/analysis/client_stats/definitions.py",
        "src/fedscape/analysis/client_stats/stage.py",
        "src/fedscape/analysis/client_stats/figures.py",
        "workflow/scripts/client_stats.py",
        "workflow/scripts/client_stats_figure.py",
        "workflow/report/client_stats.rst",
    }
    assert (ROOT / "tests" / "unit" / f"test_{STAGE_EXAMPLE}.py").exists()
    assert len(files) == stated(r"The count is (\d+) files with the package's four modules")
    assert len(files) - FIGURE_FILES_OF_A_STAGE == stated(r"a stage without a figure needs (\d+)")


@pytest.mark.parametrize("stage", ANALYSES)
def test_every_analysis_stage_has_the_recipes_files(stage):
    files = stage_files(stage)

    modules = ("__init__", "definitions", "stage", "figures")
    assert {f"workflow/schemas/{stage}.schema.yaml", f"src/fedscape/plan/{stage}.py", f"rules/{stage}.smk",
            *(f"src/fedscape/analysis/{stage}/{m}.py" for m in modules)} <= files
    assert (ROOT / "tests" / "unit" / f"test_{stage}.py").exists()


@pytest.mark.parametrize("stage", ANALYSES)
def test_a_stage_is_found_not_listed(stage):
    # Prepare: the Snakefile's code (its comments aside) and the modules that find the rule files, the stage
    # modules, the schema files and the contributions to final.csv
    snakefile = {w for line in (ROOT / "Snakefile").read_text().splitlines() if not line.lstrip().startswith("#")
                 for w in re.findall(r"\w+", line)}
    finders = ["src/fedscape/plan/workflow.py", "src/fedscape/core/config.py", "src/fedscape/analysis/contributions.py"]

    # Assert
    assert stage not in snakefile
    assert [path for path in finders if stage in CODE[path]] == []


def test_the_report_names_no_analysis_that_adds_columns_to_final_csv():
    # Prepare: each analysis with headline columns of final.csv, and the report's code
    from fedscape.analysis.contributions import final_contributions

    contributions = final_contributions()
    report = [p for p in CODE if p.startswith("src/fedscape/report/")] + ["src/fedscape/plan/report.py"]
    rules = (ROOT / "rules" / "report.smk").read_text() + (ROOT / "workflow" / "scripts" / "final_table.py").read_text()
    caption = (ROOT / "workflow" / "report" / "final_table.rst").read_text()
    listed = (ROOT / "tests" / "unit" / "test_report_contributions.py").read_text()

    # Assert: the 2 shared files are the ones that name the columns
    assert contributions
    for c in contributions:
        assert [p for p in report if c.analysis in CODE[p]] == []
        assert c.analysis not in re.findall(r"\w+", rules)
        assert [col for col in c.final.columns if col not in caption or f'"{col}"' not in listed] == []


# --- Add a figure (6 files, 7 for a figure across runs) ---

def rule_blocks() -> dict[str, tuple[str, str]]:
    """rule name -> (its rule file's stem, its text)."""
    return {m[1]: (smk.stem, m[2]) for smk in sorted((ROOT / "rules").glob("*.smk"))
            for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), flags=re.M | re.S)}


def plan_aliases(stage: str) -> dict[str, str]:
    """alias -> module of the `from fedscape.plan import x as y` lines of a rule file."""
    text = (ROOT / "rules" / f"{stage}.smk").read_text()
    return {m[2]: f"fedscape.plan.{m[1]}" for m in re.finditer(r"^from fedscape\.plan import (\w+) as (\w+)$", text,
                                                                 flags=re.M)}


# The figures of a table: a figure rule whose outputs are a figure path template of core/paths.py (the accuracy
# figure, one rule for every kind of final-accuracy figure, has a recipe of its own)
FIGURE_TEMPLATE = r"RESULTS\.figure(?:_outputs)?\(\s*(?:report,\s*)?([A-Z_]+_FIGURE)\b"
FIGURE_RULES = sorted(rule for rule, (_, text) in rule_blocks().items()
                      if re.search(FIGURE_TEMPLATE, text) and rule != "accuracy_figure")
ACROSS_RUNS = "fedscape.report.figures"  # the figures across runs: the entry points here, the drawing by subject


def targets_of(module: str) -> ast.FunctionDef:
    """The `targets` function of plan module `module`."""
    return next(n for n in ast.parse((ROOT / module_file(module)).read_text()).body
                if isinstance(n, ast.FunctionDef) and n.name == "targets")


def figure_files(rule: str) -> dict[str, str]:
    """What the recipe's steps are for figure rule `rule`, found from the rule."""
    stage, text = rule_blocks()[rule]
    script = ROOT / "workflow" / "scripts" / f"{rule}.py"
    entry = next(node.module for node in ast.walk(ast.parse(script.read_text()))
                 if isinstance(node, ast.ImportFrom) and any(a.name == f"{rule}_job" for a in node.names))
    constant = re.search(FIGURE_TEMPLATE, text)[1]
    # the plan module of the rule file whose targets() asks for the figure
    (plan,) = [module for module in plan_aliases(stage).values()
               if constant in {n.id for n in ast.walk(targets_of(module)) if isinstance(n, ast.Name)}]
    caption = re.search(r'caption="\.\./(workflow/report/[^"]+)"', text)[1]
    steps = {"job": module_file(entry), "rule": f"rules/{stage}.smk", "paths": "src/fedscape/core/paths.py",
             "target": module_file(plan), "constant": constant, "script": rel(script), "caption": caption}
    if entry == ACROSS_RUNS:  # the job is the report's entry point; it draws with its subject's module
        steps["drawing"] = module_file(subject_of(f"{rule}_job"))
    return steps


def subject_of(job: str) -> str:
    """The module of `fedscape.report.figures` whose function the report's entry point `job` draws with."""
    tree = ast.parse((SRC / "report" / "figures" / "__init__.py").read_text())
    imported = {a.asname or a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == job)
    called = {n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    (subject,) = {imported[c] for c in called if imported.get(c, "").startswith(f"{ACROSS_RUNS}.")}
    return subject


def module_file(module: str) -> str:
    path = SRC.parent / Path(*module.split("."))
    return rel(path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py")


def test_the_figure_rules_are_found():
    assert {"client_stats_figure", "interpolation_figure", "layer_barrier_figures", "hessian_density_figure",
            "curves_figure", "cost_figure"} <= set(FIGURE_RULES)


@pytest.mark.parametrize("rule", FIGURE_RULES)
def test_a_figure_is_six_files_or_seven_across_runs(rule):
    # Prepare
    steps = figure_files(rule)
    files = {v for k, v in steps.items() if k != "constant"}
    paths = ast.parse((ROOT / steps["paths"]).read_text())

    # Assert: the drawing and its job in the stage's figures module, or the job in the report's entry points and the
    # drawing in the module of its subject; the figure's path template (and its log's) in core/paths.py, made by the
    # plan module's targets(); the caption exists; no other file names the rule
    across_runs = steps["job"] == module_file(ACROSS_RUNS)
    assert steps["job"].endswith("/figures.py") or across_runs
    assert steps["constant"] in {t.id for n in paths.body if isinstance(n, ast.Assign) for t in n.targets
                                 if isinstance(t, ast.Name)}
    assert (ROOT / steps["caption"]).exists()
    named = {path for path, strings in STRINGS.items() if rule in strings}
    named |= {rel(p) for p in (ROOT / "rules").glob("*.smk") if re.search(rf"^rule {rule}:", p.read_text(), re.M)}
    assert named <= files
    assert len(files) == stated(r"### Add a figure \((\d+) files, \d+ for a figure across runs\)" if not across_runs
                                else r"### Add a figure \(\d+ files, (\d+) for a figure across runs\)")


# --- A kind of final-accuracy figure (3 files, and a line of its test) ---

def accuracy_kinds() -> dict:
    from fedscape.report.figure_kinds import ACCURACY_FIGURES

    return ACCURACY_FIGURES


@pytest.mark.parametrize("kind", sorted(accuracy_kinds()))
def test_an_accuracy_figure_kind_is_three_files_and_a_line_of_its_test(kind):
    # Prepare
    subject, _, function = accuracy_kinds()[kind].draw.partition(":")
    module = f"src/fedscape/report/figures/{subject}.py"
    caption = (ROOT / "workflow" / "report" / "accuracy.rst").read_text()
    branches = re.findall(r'snakemake\.wildcards\.kind == "(\w+)"', caption)
    listed = re.search(r"ACCURACY_KINDS == tuple\(ACCURACY_FIGURES\) == \((.*?)\)",
                       (ROOT / "tests" / "unit" / "test_figures.py").read_text(), flags=re.S)[1]

    # Execute
    files = naming({function}) | {"workflow/report/accuracy.rst"}

    # Assert: its function and its entry; its caption a branch (one kind takes the caption's last, `else`, branch);
    # the test's exact list of kinds names it
    assert files == {module, "src/fedscape/report/figure_kinds.py", "workflow/report/accuracy.rst"}
    assert function in {n.name for n in ast.parse((ROOT / module).read_text()).body if isinstance(n, ast.FunctionDef)}
    assert len(set(accuracy_kinds()) - set(branches)) == 1 and "{% else %}" in caption
    assert f'"{kind}"' in listed
    assert len(files) == stated(r"A new kind of final-accuracy figure .*? \((\d+) files, and a line of its test\)")


# --- A partition kind (2 files) ---

ALPHA_KINDS = ("dirichlet", "iid")  # the settings of `alphas`, older than the kinds: the whole workflow names them
# A kind that changes the clients' inputs, not who holds which sample, applies it where their data are read.
def partition_kinds() -> dict:
    from fedscape.data.partition import PARTITION_KINDS

    return PARTITION_KINDS


@pytest.mark.parametrize("kind", sorted(set(partition_kinds()) - set(ALPHA_KINDS)))
def test_a_partition_kind_is_one_file(kind):
    # Prepare
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    entry = schema["properties"]["partitions"]["additionalProperties"]["properties"]
    spec = partition_kinds()[kind]

    # Execute: the modules whose code says the kind's name
    files = {path for path, strings in STRINGS.items() if kind in strings}

    # Assert: its writer, input transform and entry in data/partition.py, nothing else in src/; its options (the one
    # more file when an option is new) in the schema's `partitions` entry, which does not list the kinds
    assert files == {"src/fedscape/data/partition.py"}
    assert spec.make.__module__ == "fedscape.data.partition"
    assert set(spec.options) <= set(entry)
    assert kind not in re.findall(r"\w+", entry["kind"]["description"])
    assert len(files) == stated(r"### Add a partition kind \((\d+) file")
