"""The shape of the code: layers that import only downward, no cycles, torch-free planning and light jobs,
one script per rule calling its rule's `<rule>_job`, every log through `Results.job_log`, no issue numbers in
comments (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "fedscape"
# The layers of the library, bottom first: a module imports only from its own layer and the ones before it.
LAYERS = ("core", "data", "models", "fl", "outputs", "stages", "analysis", "report", "plan")
HEAVY = ("torch", "matplotlib", "pandas")
LAZY_MARK = "# lazy:"  # a deliberate import inside a function carries this comment with its reason


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def fedscape_imports(path: Path) -> list[tuple[str, ast.AST]]:
    """(imported fedscape module, node) for every import in the file (submodules of `from x import y` too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedscape"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((sub if sub in MODULES else node.module, node))
        elif isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name.startswith("fedscape")]
    return out


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_belongs_to_a_layer():
    assert [m for m in MODULES if m != "fedscape" and layer_of(m) < 0] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_downward(module):
    upward = [target for target, _ in fedscape_imports(MODULES[module]) if layer_of(target) > layer_of(module)]

    assert upward == [], f"{module} imports from a higher layer: {upward}"


def test_no_import_cycle():
    graph = {m: {t for t, _ in fedscape_imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_are_marked_lazy(module):
    path = MODULES[module]
    lines = path.read_text().splitlines()
    unmarked = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom) and LAZY_MARK not in lines[inner.lineno - 1]:
                    unmarked.append(f"{path.name}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert unmarked == []


def test_no_reexport_shims():
    """One import path per name: no module imports names only to re-export them."""
    shims = [m for m, p in MODULES.items() if "noqa: F401" in p.read_text() or "__all__" in p.read_text()]

    assert shims == []


def imported_heavy(modules: list[str]) -> list[str]:
    """The heavy libraries loaded by importing `modules` in a fresh interpreter."""
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            f"print(' '.join(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_core_and_plan_import_no_torch_matplotlib_or_pandas():
    modules = [m for m in MODULES if layer_of(m) in (LAYERS.index("core"), LAYERS.index("plan"))]

    assert imported_heavy(modules) == []


def rule_blocks() -> dict[str, str]:
    """rule name -> its text, from every rule file."""
    blocks = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S):
            blocks[match[1]] = match[2]
    return blocks


def light_rules() -> list[str]:
    return sorted(name for name, text in rule_blocks().items() if re.search(r"^\s+localrule: True", text, re.M))


def script_of(text: str) -> Path:
    return ROOT / "rules" / re.search(r'script:\s*\n\s*"([^"]+)"', text)[1]


def test_light_jobs_are_tables_gathers_and_figures():
    assert set(light_rules()) >= {"partitions_table", "rounds_table", "cost_table", "interpolation_tables",
                                  "layer_barrier_tables", "hessian_tables", "surfaces_table", "final_table",
                                  "summary_table", "landscape_gather", "landscape_figure", "curves_figure"}


@pytest.mark.parametrize("rule", light_rules())
def test_light_jobs_import_no_torch(rule):
    script = script_of(rule_blocks()[rule])
    modules = [t for t, _ in fedscape_imports(script)]

    assert "torch" not in imported_heavy(modules), f"rule {rule} ({script.name}) imports torch"


@pytest.mark.parametrize("rule", sorted(rule_blocks()))
def test_every_rule_has_a_log_an_env_and_its_script(rule):
    text = rule_blocks()[rule]

    assert re.search(r"^\s+log:", text, re.M), f"rule {rule} has no log"
    assert re.search(r"^\s+conda:", text, re.M), f"rule {rule} has no conda env"
    assert script_of(text).exists()


# The library package of each rule file's stage: an analysis stage's is its own package (fedscape.analysis.<stage>),
# found without a list; the others are named here.
STAGE_PACKAGES = {"partition": "fedscape.stages", "init": "fedscape.stages", "train": "fedscape.stages",
                  "tables": "fedscape.outputs", "cost": "fedscape.report", "report": "fedscape.report"}
# What a script may call beside its rule's entry point: the job's log, its thread count, and where its data is now
# (data.locations.with_data_locations; tests/workflow/test_reruns.py checks which scripts must).
SCRIPT_HELPERS = {"job_log", "memory_hint", "use_threads", "with_data_locations"}
def rule_files() -> dict[str, str]:
    """rule name -> the stem of its rule file (its stage)."""
    return {m[1]: smk.stem for smk in sorted((ROOT / "rules").glob("*.smk"))
            for m in re.finditer(r"^rule (\w+):", smk.read_text(), flags=re.M)}


def stage_package(stage: str) -> str:
    analysis = f"fedscape.analysis.{stage}"
    return analysis if analysis in MODULES else STAGE_PACKAGES[stage]


def top_level_functions(module: str) -> set[str]:
    return {n.name for n in ast.parse(MODULES[module].read_text()).body if isinstance(n, ast.FunctionDef)}


def entry_point_problems(rule: str) -> list[str]:
    """Why rule `rule`'s script does not call `<rule>_job` of its stage's package alone (empty when it does)."""
    script = script_of(rule_blocks()[rule])
    tree = ast.parse(script.read_text())
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedscape")
                for alias in node.names}
    called = [node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported]
    entry, package = f"{rule}_job", stage_package(rule_files()[rule])
    problems = []
    if entry not in imported:
        problems.append(f"{script.name} imports no {entry}")
    elif not (imported[entry] == package or imported[entry].startswith(f"{package}.")):
        problems.append(f"{script.name} imports {entry} from {imported[entry]}, outside {package}")
    elif entry not in top_level_functions(imported[entry]):
        problems.append(f"{imported[entry]} defines no function {entry}")
    if called.count(entry) != 1:
        problems.append(f"{script.name} calls {entry} {called.count(entry)} times")
    if set(called) - SCRIPT_HELPERS - {entry}:
        problems.append(f"{script.name} calls {sorted(set(called) - SCRIPT_HELPERS - {entry})} of the library")
    return problems


def test_every_rule_runs_its_own_script():
    # Prepare
    scripts = {rule: script_of(text).resolve() for rule, text in rule_blocks().items()}

    # Assert: workflow/scripts/<rule>.py, one per rule, and no script without its rule
    assert {rule: path.relative_to(ROOT).as_posix() for rule, path in scripts.items()
            if path != ROOT / "workflow" / "scripts" / f"{rule}.py"} == {}
    assert sorted(p.stem for p in (ROOT / "workflow" / "scripts").glob("*.py")) == sorted(scripts)


def test_every_stage_has_its_library_package():
    assert {stage: stage_package(stage) for stage in set(rule_files().values())
            if stage_package(stage) not in MODULES} == {}


@pytest.mark.parametrize("rule", sorted(rule_blocks()))
def test_every_script_calls_its_rule_job(rule):
    assert entry_point_problems(rule) == []


def test_entry_point_check_names_what_is_wrong(tmp_path, monkeypatch):
    # Prepare: a script calling another rule's entry point and a second library function
    script = tmp_path / "final_table.py"
    script.write_text("from fedscape.core.logs import job_log\n"
                      "from fedscape.report.summary import summary_table_job, final_table\n"
                      "with job_log(None, [], ''):\n    summary_table_job(1, 2)\n    final_table(3)\n")
    monkeypatch.setattr(sys.modules[__name__], "script_of", lambda text: script)

    # Execute
    problems = entry_point_problems("final_table")

    # Assert
    assert problems == ["final_table.py imports no final_table_job", "final_table.py calls final_table_job 0 times",
                        "final_table.py calls ['final_table', 'summary_table_job'] of the library"]


def log_of(text: str) -> str:
    return re.search(r"^    log:\n(.*?)(?=^    \S)", text, flags=re.M | re.S)[1].strip()


def test_every_rule_logs_through_job_log():
    # Prepare
    from fedscape.core.paths import JOB_LOGS

    # Execute
    logs = {rule: log_of(text) for rule, text in rule_blocks().items()}

    # Assert: one call of one shape, its template in the one map, one template per rule
    assert {rule: log for rule, log in logs.items() if log != f'RESULTS.job_log("{rule}"),'} == {}
    assert sorted(JOB_LOGS) == sorted(logs)
    assert len(set(JOB_LOGS.values())) == len(JOB_LOGS)


def test_no_script_dispatches_on_the_rule():
    scripts = (ROOT / "workflow" / "scripts").glob("*.py")
    dispatching = [p.name for p in scripts if re.search(r"\.rule\b", p.read_text())]

    assert dispatching == []


def test_no_rule_file_writes_into_snakemake_internals():
    writing = [p.name for p in (ROOT / "rules").glob("*.smk") if re.search(r"workflow\.rules|\.\w+ = ", p.read_text())]

    assert writing == []


def test_no_comment_cites_an_issue_number():
    files = [*SRC.rglob("*.py"), *(ROOT / "rules").glob("*.smk"), ROOT / "Snakefile",
             *(ROOT / "workflow").rglob("*.py"), *(ROOT / "workflow").rglob("*.yaml"), *(ROOT / "tests").rglob("*.py"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "config").rglob("*.yaml")]
    cited = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bissues? #?\d+", line, re.I) and p.name != "test_architecture.py"]

    assert cited == []


def _schema_defaulted_keys() -> set[str]:
    """Every config key that some schema gives a default (the validator fills it in)."""
    import yaml

    keys: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, prop in (node.get("properties") or {}).items():
                if isinstance(prop, dict) and "default" in prop:
                    keys.add(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (ROOT / "workflow" / "schemas").glob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return keys


def test_planning_reads_schema_defaults_from_the_config_not_from_literals():
    # Prepare: the keys the schema defaults: a `.get(key, default)` on them in plan/ would be a second home
    # for the default, free to drift from the schema's
    keys = _schema_defaulted_keys()

    # Execute
    found = []
    for path in sorted((SRC / "plan").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .get({node.args[0].value!r}, ...)")

    # Assert
    assert keys and not found, "index the schema-filled config instead:\n" + "\n".join(found)
