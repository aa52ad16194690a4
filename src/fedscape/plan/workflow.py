"""The whole plan of a config: its validation, its runs and the targets of `rule all`, from the stage
modules of this package (each has `check(config, runs)` and `targets(config, runs)`).

Torch-free: `snakemake -n` imports only this package, `fedscape.core` and the torch-free declaration
modules of the lower layers (tests/unit/test_architecture.py checks it).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import pkgutil
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

import fedscape.plan as _package
from fedscape.core.config import (
    ConfigError,
    duplicate_keys,
    load_schema,
    read_config_file,
    validate_config,
)
from fedscape.core.io import remake_alone_hint, remake_hint
from fedscape.core.manifest import failed_reruns
from fedscape.core.paths import (
    DEFAULT_LOG_PARTS,
    INIT_DIR,
    LOGS,
    PARTITION_FILE,
    TRAIN_DIR,
    TRAIN_FILE_NAMES,
    Results,
    parse_path,
    run_of_path,
)
from fedscape.core.provenance import belongs_problem, checkpoint_record, table_problem
from fedscape.core.runs import WILDCARD_CONSTRAINTS, Run, build_runs, unused_grid_values
from fedscape.data.partition import kind_file_problems, partition_file_problem, split_sha256, trained_partition_problem
from fedscape.data.specs import DATASET_NAMES, DATASETS, LOCATION_BASELINES, NO_DOWNLOAD, data_layout_problems
from fedscape.fl.swa import swa_config
from fedscape.models.specs import CHECKPOINT_FORMAT, MODEL_NORMS, uses_batch_norm
from fedscape.plan import init as init_plan
from fedscape.plan import partition as partition_plan
from fedscape.plan.resources import DATA_RULES, computes_on_device, execution_problems
from fedscape.plan.train import idle_swa, misnamed_algorithm_labels, run_training

FIRST = "train"  # its checks come first: every other stage reads the run grid it checks
SCHEMA = "workflow/schemas/config.schema.yaml"  # below the workflow's root, where `make` runs
DEFAULT_CONFIG = "config/config.yaml"  # there too: the Snakefile reads it without a --configfile
# A wildcard of an output pattern as a rule's `output` gives it (its constraint, if any, left out)
_WILDCARD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RECORDS_UNREAD: list[str] = []  # the paths whose records could not be read (the warning is given once)
log = logging.getLogger(__name__)


def recorded_params(read: Callable[[str], list[str] | None], output: str,
                    wildcards: Mapping[str, str]) -> list[str] | None:
    """The params texts Snakemake recorded for the job of a rule whose first output is `output` (its pattern) with
    `wildcards`, read by `read` from the output's path (the Snakefile's READ_PARAMS); None without a record. A
    params function sees the wildcards alone: one that takes `output` is derived from it, and Snakemake leaves it out
    of the params it compares. Where the records cannot be read (another Snakemake's layout), None and a warning:
    the settings are then compared as they are, and a changed memory setting reruns the job, as before."""
    path = _WILDCARD.sub(lambda match: str(wildcards[match.group(1)]), str(output))
    return _read_record(read, path, ": a memory setting changed since a job ran reruns it")


def recorded_inputs(read: Callable[[str], list[str] | None], path: str) -> list[str] | None:
    """The input paths Snakemake recorded for the job that wrote `path`, read by `read` (the Snakefile's
    READ_INPUTS); None without a record, or where the records cannot be read (another Snakemake's layout: a warning,
    as `recorded_params`)."""
    return _read_record(read, path)


def _read_record(read: Callable[[str], list[str] | None], path: str, consequence: str = "") -> list[str] | None:
    """`read(path)`, or None and one warning (followed by `consequence`) where Snakemake's records cannot be read."""
    try:
        return read(path)
    except (AttributeError, TypeError) as exc:
        if not _RECORDS_UNREAD:
            log.warning("fedscape: cannot read Snakemake's record of %s (%s)%s", path, exc, consequence)
        _RECORDS_UNREAD.append(path)
        return None


def stage_modules() -> list[ModuleType]:
    """Every stage's plan module (train first, then alphabetically): the modules with `check` and `targets`."""
    modules = [importlib.import_module(f"{_package.__name__}.{info.name}")
               for info in pkgutil.iter_modules(_package.__path__) if info.name != "workflow"]
    stages = [m for m in modules if hasattr(m, "check") and hasattr(m, "targets")]
    return sorted(stages, key=lambda m: (m.__name__.rsplit(".", 1)[1] != FIRST, m.__name__))


def result_versions() -> dict[str, int]:
    """rule -> the result version of its jobs, from every plan module's RESULT_VERSIONS (each declared once): the
    base version of a kind whose settings add bumps of their own to some jobs (plan.partition: Dirichlet splits with
    alpha < 0.1)."""
    versions: dict[str, int] = {}
    for info in pkgutil.iter_modules(_package.__path__):
        declared = getattr(importlib.import_module(f"{_package.__name__}.{info.name}"), "RESULT_VERSIONS", {})
        for rule, version in declared.items():
            if rule in versions:
                raise ValueError(f"the result version of {rule} is declared twice")
            versions[rule] = version
    return dict(sorted(versions.items()))


def check_config(config: dict, schema: dict, files: Iterable[str | Path] = ()) -> dict:
    """Validate against the schema (filling defaults), then every stage's rules a schema cannot express.

    `files`: the YAML files the config was read from, checked for keys written twice first (the loader
    that made `config` kept only the later value, silently).
    """
    duplicates = [problem for path in files for problem in duplicate_keys(path)]
    if duplicates:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in duplicates))
    given_inits = init_plan.given_keys(config, schema)
    validate_config(config, schema)
    problems: list[str] = _results_dir_problems(config) + _directory_labels(config)
    if not problems:
        problems = init_plan.foreign_key_problems(config, given_inits)
    if problems:  # the grid and every stage look their sections up by label
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
    try:
        runs = build_runs(config)
    except ConfigError as exc:
        problems.append(str(exc))
        runs = []
    stages = stage_modules()
    problems.extend(stages[0].check(config, runs))
    if runs and not problems:  # the other stages assume a valid grid
        for stage in stages[1:]:
            problems.extend(stage.check(config, runs))
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def unused_test_fractions(config: dict, schema: dict) -> list[str]:
    """A line for each dataset with a test set of its own whose `test_fraction` is not the schema's default: nothing
    reads it, while its value is in every job's settings, so that changing it reruns them all for nothing (a warning,
    not an error: results made with it stay valid, and removing it would rerun them)."""
    default = schema["properties"]["datasets"]["additionalProperties"]["properties"]["test_fraction"]["default"]
    own = [name for name, info in DATASETS.items() if not info.fixed_test_split]
    return [f"datasets.{name}.test_fraction: {name} keeps its own test set, so nothing reads test_fraction "
            f"{options['test_fraction']} (it splits a test set off {', '.join(own)} only); changing it reruns every "
            f"job of {name} for nothing"
            for name, options in config["datasets"].items()
            if name in DATASETS and DATASETS[name].fixed_test_split and options["test_fraction"] != default]


def unread_data_locations(config: dict) -> list[str]:
    """A line for each `data_dir` or `download` set (away from its baseline, `LOCATION_BASELINES`) on a bundled data set
    (`DatasetInfo.needs_data_dir` false: digits, read from scikit-learn's copy): nothing reads it, while a user may
    take it for the data the runs train on."""
    return [f"datasets.{name}.{key}: nothing reads {key}: {json.dumps(options[key])}, since {name} is "
            f"{DATASETS[name].description}; drop it"
            for name, options in config["datasets"].items() if name in DATASETS and not DATASETS[name].needs_data_dir
            for key, baseline in LOCATION_BASELINES.items() if options[key] != baseline]


def unused_model_options(config: dict, runs: list[Run]) -> list[str]:
    """A line for each `model_options` entry of a model that no run trains: nothing reads it (its options are checked
    all the same)."""
    trained = sorted({run.model for run in runs})
    return [f"model_options.{name}: no run trains {name} (the runs train {', '.join(trained)}), so nothing reads its "
            f"options; drop the entry, or name {name} as an experiment's `model`"
            for name in config["model_options"] if name not in trained]


def unused_bn_stats(config: dict, runs: list[Run], schema: dict) -> list[str]:
    """A line for each `bn_stats` set away from its default (the schema's) where no model it applies to has batch
    norm: there are no batch-norm statistics to recompute or keep, and the value enters no job's settings
    (`plan.train.bn_stats_setting`, `fl.swa.SWASettings.of`), so it changes nothing. Where: each analysis's own (its
    stage module's `bn_stats_uses(config, runs, schema)`: where -> its value, its default and the models it applies
    to), and each `swa` setting (the models of the runs that take it: `training.swa`, or an algorithm's own)."""
    default_swa = schema["properties"]["training"]["properties"]["swa"]["properties"]["bn_stats"]["default"]
    # where -> (its value, its default, the models it applies to)
    settings: dict[str, tuple[str, str, set[str]]] = {}
    for stage in stage_modules():
        if hasattr(stage, "bn_stats_uses"):
            settings.update(stage.bn_stats_uses(config, runs, schema))
    for run in runs:
        # an algorithm's own swa (not filled by the schema: SWAConfig's defaults) replaces the training section's
        swa = swa_config(run_training(config, run).get("swa"))
        if swa is not None:
            own = "swa" in config["algorithms"][run.algorithm]["training"]
            where = f"algorithms.{run.algorithm}.training.swa" if own else "training.swa"
            settings.setdefault(where, (swa.bn_stats, default_swa, set()))[2].add(run.model)
    lines = []
    for where, (value, baseline, models) in settings.items():
        if value == baseline or any(uses_batch_norm(m, config["model_options"].get(m)) for m in models):
            continue
        names = sorted(models)
        can = [f"model_options.{m}.norm: batch" for m in names if "batch" in MODEL_NORMS.get(m, ())]
        lines.append(f"{where}.bn_stats: {value} changes nothing: {', '.join(names)} "
                     f"{'has' if len(names) == 1 else 'have'} no batch norm, so there are no batch-norm statistics to "
                     "recompute or keep; drop it" + (f", or give it batch norm ({', '.join(can)})" if can else ""))
    return lines


def _results_dir_problems(config: dict) -> list[str]:
    """A results_dir that is the root of the file system (`/`, `//`, `/./`): the schema's pattern allows it, but
    every output would lie directly in it, beside the system's own directories. One whose logs would lie in a folder
    of the default results' logs (`DEFAULT_LOG_PARTS`: results_dir `train` keeps its logs in logs/train/, beside the
    default run's train logs, and `make clean` would delete them with those)."""
    value = str(config["results_dir"])
    path = Path(value)
    if path.is_absolute() and path.parent == path:
        return [f"results_dir: {value!r} is the root of the file system: every output goes below results_dir (and "
                "Snakemake deletes a job's old outputs before it runs the job again), so results need a directory of "
                "their own: set e.g. results or /scratch/<you>/fedscape"]
    results = Results.of(config)
    folders = Path(results.logs).relative_to(LOGS).parts  # none for the default results' own logs/
    if folders and folders[0] in DEFAULT_LOG_PARTS:
        return [f"results_dir: {value!r} keeps its logs in {results.logs}/, inside {LOGS}/{folders[0]}/ where the "
                f"default results keep their {folders[0]} logs (and `make clean` deletes that folder with the default "
                f"run's logs): use a results_dir whose first folder is none of {', '.join(sorted(DEFAULT_LOG_PARTS))}, "
                f"e.g. results/{results.root.lstrip(os.sep)}"]
    return []


# Sections whose keys are labels that name directories of the results (or appear in file names).
LABEL_SECTIONS = (("inits",), ("algorithms",), ("landscapes",), ("interpolation", "pairs"), ("layer_barriers", "pairs"))


def _directory_labels(config: dict) -> list[str]:
    """Labels `.` and `..`: the schema's label characters allow them, but as a path part they would write
    outside their folder."""
    problems = []
    for path in LABEL_SECTIONS:
        section = config
        for key in path:
            section = section.get(key) or {}
        where = ".".join(path)
        problems += [f"{where}: the label {label!r} names a directory; a label needs a letter, a digit or "
                     "_ (e.g. 'run_a')" for label in section if label in (".", "..")]
    return problems


def config_warnings(config: dict, runs: list[Run], schema: dict | None = None) -> list[str]:
    """Lines on settings that are valid but take no effect or another than they seem to: grid values and labels no
    run takes, and grid values and experiments repeated, which add no run (`unused_grid_values`), an SWA phase that
    starts after the last round or ends within a cycle
    (`idle_swa`), an algorithm label that figures show as another algorithm (`misnamed_algorithm_labels`), an IID
    warm-up under an lr schedule over its own few rounds (`plan.init.warmup_schedule_warnings`), a pretrained init's
    proxy folder that nothing reads
    (`plan.init.unread_proxy_folder_warnings`), a proxy split that no init reads
    (`plan.init.unread_proxy_split_warnings`), seeds that share one partition
    (`plan.partition.shared_partition_warnings`), each stage's own (its plan module's `stage_warnings`, where it has
    one: found, not listed), a bundled data set's data_dir or download
    (`unread_data_locations`), options of a model no run trains (`unused_model_options`), and with the `schema` a
    test_fraction nothing reads (`unused_test_fractions`) and a bn_stats of models without batch norm
    (`unused_bn_stats`)."""
    return [*unused_grid_values(config, runs), *idle_swa(config, runs), *misnamed_algorithm_labels(config, runs),
            *init_plan.warmup_schedule_warnings(config, runs), *init_plan.unread_proxy_folder_warnings(config, runs),
            *init_plan.unread_proxy_split_warnings(config, runs),
            *partition_plan.shared_partition_warnings(config, runs),
            *(line for stage in stage_modules() if hasattr(stage, "stage_warnings")
              for line in stage.stage_warnings(config, runs)),
            *unread_data_locations(config),
            *unused_model_options(config, runs),
            *(unused_test_fractions(config, schema) + unused_bn_stats(config, runs, schema) if schema is not None
              else [])]


def load_config(path: str | Path, schema_path: str | Path) -> dict:
    """Read a YAML config safely, fill defaults and validate it."""
    return check_config(read_config_file(path), load_schema(schema_path), files=[path])


def check_config_file(path: str | Path, schema_path: str | Path = SCHEMA) -> list[str]:
    """The config file at `path` checked as the workflow checks it (`load_config`: YAML syntax with the line, the
    schema, every stage's rules; ConfigError listing its problems): '<path> is valid', then the warnings the workflow
    prints on it (`config_warnings`), each as 'warning: <line>'."""
    config = load_config(path, schema_path)
    lines = config_warnings(config, build_runs(config), load_schema(schema_path))
    return [f"{path} is valid", *(f"warning: {line}" for line in lines)]


def check_config_main(args: Sequence[str]) -> int:
    """`make check-config [CONFIG=my.yaml]` (`args`: the config file, or none): print `check_config_file`'s lines, or
    the config's problems alone (one line each, as the workflow gives them) and 1; without a file, the default config
    (`DEFAULT_CONFIG`), which the workflow reads without a --configfile, said so first. 2 for more than one file."""
    if len(args) > 1:
        print(f"make check-config checks one config file (CONFIG=my.yaml), not {len(args)}: {' '.join(args)}",
              file=sys.stderr)
        return 2
    path = args[0] if args else DEFAULT_CONFIG
    if not args:
        print(f"no CONFIG= given: checking the default config {DEFAULT_CONFIG} (make check-config CONFIG=my.yaml "
              "checks another)")
    try:
        lines = check_config_file(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def all_targets(config: dict, runs: list[Run]) -> list[str]:
    """The targets of `rule all`: every stage's final outputs."""
    return [path for stage in stage_modules() for path in stage.targets(config, runs)]


def wildcard_constraints() -> dict[str, str]:
    """The constraint of every run wildcard (the dataset's: one of the dataset names)."""
    return {"dataset": "|".join(DATASET_NAMES), **WILDCARD_CONSTRAINTS}


def check_execution(config: dict, runs: list[Run], jobs: Iterable[tuple[str, Mapping[str, str]]],
                    planned_as_cluster: bool, local_exec: bool, gpu_limited: bool) -> None:
    """ConfigError listing what the way Snakemake was started leaves wrong about the cards
    (`plan.resources.execution_problems`), called in `onstart`: only then does Snakemake know whether it executes
    locally, and no job has run yet. `jobs`: (rule name, wildcards) of the jobs Snakemake is about to run; where none
    of them computes on the device (`plan.resources.computes_on_device`: tables and figures remade without a card),
    nothing about the cards concerns them."""
    if not any(computes_on_device(config, runs, rule, wildcards) for rule, wildcards in jobs):
        return
    problems = execution_problems(config, planned_as_cluster, local_exec, gpu_limited)
    if problems:
        raise ConfigError("the jobs cannot run as started (nothing ran):\n" + "\n".join(f"  - {p}" for p in problems))


# -- the data the jobs about to run read (DATA_RULES: plan.resources.RULE_NEEDS) -----------------------------


def check_data(config: dict, runs: list[Run], jobs: Iterable[tuple[str, dict]] | None = None) -> None:
    """ConfigError listing every data directory (and the files it lacks of its dataset's layout) and every file of a
    `partitions` entry (a split file) that the jobs about to run need and that is not there.

    `jobs`: (rule name, wildcards) of the jobs Snakemake is about to run (None: every job of the config).
    Not part of `check_config`: `snakemake -n` plans on machines without the data (a laptop, a login
    node), and jobs that read no data (tables, figures) run without it; the Snakefile calls this when
    Snakemake starts executing, before the first job.
    """
    used = sorted({r.dataset for r in runs})
    if jobs is None:
        datasets, inits = set(used), {(r.init, r.dataset) for r in runs}
        settings = {str(r.setting) for r in runs}
    else:
        datasets, inits, settings = set(), set(), set()
        for rule, wildcards in jobs:
            if rule not in DATA_RULES:
                continue
            datasets |= {wildcards["dataset"]} if "dataset" in wildcards else set(used)
            if rule == "init":
                inits.add((wildcards.get("init"), wildcards.get("dataset")))
            if rule == "partition":  # the only job that reads a `partitions` entry's files
                settings.add(wildcards.get("alpha"))
    problems = [p for name in sorted(datasets)
                for p in _data_dir_problems(f"datasets.{name}", name, config["datasets"].get(name) or {})]
    for label, dataset in sorted(inits):
        problems += _proxy_problems(config, label, dataset)
    entries = config.get("partitions") or {}
    for label in sorted(s for s in settings if s in entries):
        problems += kind_file_problems(label, entries[label])
    if problems:
        raise ConfigError("data missing for the jobs about to run (nothing ran; `snakemake -n` does not check "
                          "data):\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)))


def check_read_files(inputs: Iterable[str], remade: Iterable[str], results_root: str | Path) -> None:
    """ConfigError listing every existing result below `results_root` that a job about to run reads and that it
    could not read, or that is not its job's (another run's); `remade`: the outputs of the jobs about to run (made
    afresh, not read as they are).

    Called when Snakemake starts executing, before any job: a job that failed on such a file would cost its
    finished outputs (Snakemake deletes a job's outputs before running it), and a job that did not fail would
    compute on another run's data. Checked without torch or pandas: a partition (`partition_problems`), a
    checkpoint (readable, its format and kind, the run it records), a CSV table (whole, and a per-run table's
    `run_id` in every row), an .npz file (every array readable) and a JSON file; and a partition read with a run's
    checkpoints, that it is the split the run trained on (`trained_split_problems`).
    """
    remade = {str(Path(p)) for p in remade}
    root = Path(results_root)
    read = [path for path in dict.fromkeys(str(Path(p)) for p in inputs)
            if path not in remade and Path(path).is_file() and root in Path(path).parents]
    problems = partition_problems(read) + trained_split_problems(read)
    for path in read:
        problem = None if parse_path(PARTITION_FILE, path) is not None else read_problem(path)
        if problem is not None:
            problems.append(f"{problem}; {remake_hint(path)}")
    if problems:
        raise ConfigError("a file that the jobs about to run read is damaged or not theirs (nothing ran, no output "
                          "was deleted):\n" + "\n".join(f"  - {p}" for p in problems))


def trained_split_problems(read: Iterable[str]) -> list[str]:
    """A line for each partition file among `read` (the files the jobs about to run read) that is not the split a
    run among `read` (by a train output of it) was trained on (`data.partition.trained_partition_problem`): its
    analyses would refuse it in their job, after claiming a card; each file hashed once."""
    read = list(read)
    runs = {}
    for path in read:
        for name in TRAIN_FILE_NAMES.values():
            if (fields := parse_path(f"{TRAIN_DIR}/{name}", path)) is not None:
                runs[tuple(sorted(fields.items()))] = fields
    split_of = functools.cache(split_sha256)
    return [problem for path in read if (part := parse_path(PARTITION_FILE, path)) is not None
            for run in runs.values() if all(run[key] == value for key, value in part.items())
            and (problem := trained_partition_problem(path, run, split_of=split_of)) is not None]


def failed_rerun_warnings(results_root: str | Path) -> list[str]:
    """A line for each finished job below `results_root` that was run again and did not finish
    (`core.manifest.failed_reruns`), with the command that makes it again; the Snakefile's main process warns of each
    on every run, a dry run too, as a plain run would not make it again. (A run that forces it warns too: Snakemake
    gives the workflow its --forcerun files only once the Snakefile is read.)"""
    return [job.line() for job in failed_reruns(results_root)]


def check_failed_reruns(results_root: str | Path, dag_outputs: Iterable[str], planned: Iterable[str]) -> None:
    """ConfigError naming each finished job below `results_root` that was run again and did not finish
    (`core.manifest.failed_reruns`) and that the targets of this run are made from (an output in `dag_outputs`: the
    outputs of every job of its DAG), while it does not run (none in `planned`: those of the jobs about to run).
    Called in `onstart`, before any job: the jobs about to run would read, or stand on, the files made from its
    earlier outputs (a figure redrawn under its new label from the table of its earlier run)."""
    dag, planned = {os.path.normpath(p) for p in dag_outputs}, {os.path.normpath(p) for p in planned}
    stale = [job for job in failed_reruns(results_root)
             if not dag.isdisjoint(job.gone) and planned.isdisjoint(job.gone)]
    if stale:
        raise ConfigError("the targets are made from a job that was run again and did not finish (nothing ran, no "
                          "output was deleted):\n" + "\n".join(f"  - {job.line()}" for job in stale))


def partition_problems(paths: Iterable[str | Path], remade: Iterable[str | Path] = (),
                       args: str | None = None) -> list[str]:
    """One line for each existing partition file among `paths` that is damaged or not the partition its path names
    (`data.partition.partition_file_problem`), with what to do: make it again alone (bit-identical from its seed
    under the numpy it records, so what was made from it stays valid: the runs' analyses check that it is the split
    they were trained on, `data.partition.check_trained_partition`, and `make status` names a run whose split differs,
    `plan.status.trained_from_other_inputs`), then continue by meaning (`core.io.remake_alone_hint`, with the user's
    Snakemake arguments `args`, shell-quoted, where given). Other paths are passed over, and so are `remade` (a
    partition that a job about to run makes again: the remedy forces that job; or one listed already).

    `check_read_files` (the onstart) checks the partitions that the jobs about to run read, `make status` those of
    every job of the config (`config_partition_files`)."""
    remade = {str(Path(p)) for p in remade}
    lines = []
    for path in dict.fromkeys(str(Path(p)) for p in paths):
        fields = parse_path(PARTITION_FILE, path)
        if fields is None or path in remade or not Path(path).is_file():
            continue
        problem = partition_file_problem(path, fields["dataset"], int(fields["num_clients"]), fields["alpha"],
                                         int(fields["seed"]))
        if problem is not None:
            lines.append(f"{problem}; what was made from it is kept: {remake_alone_hint(path, args)}")
    return lines


def config_partition_files(config: dict) -> list[str]:
    """The partition file of every job of `config` that reads one: each run's, and each IID warm-up init's
    (`plan.init.init_input_paths`)."""
    results, runs = Results.of(config), build_runs(config)
    inits = sorted({(run.dataset, run.model, run.init) for run in runs})
    warmups = [init_plan.init_input_paths(config, runs, *init)["partition"] for init in inits
               if config["inits"][init[2]]["kind"] == "iid_warmup"]
    return list(dict.fromkeys([*(results.partition_file(run) for run in runs), *warmups]))


def read_problem(path: str | Path) -> str | None:
    """Why a workflow result (other than a partition) cannot be read by the job that reads it, or None: by its
    suffix, a checkpoint (.pt), a CSV table, an .npz or a JSON file; other files are not checked."""
    suffix = Path(path).suffix
    if suffix == ".pt":
        try:
            record = checkpoint_record(path)
        except ValueError as exc:
            return str(exc)
        kind = "clients" if Path(path).name == "clients.pt" else "trajectory"
        try:
            meta = json.loads(record.get("meta", "{}"))
            run_id, init = meta.get("run_id"), meta.get("init")
        except (json.JSONDecodeError, AttributeError):
            run_id = init = None
        found = {"format": record.get("format"), "kind": record.get("kind")}
        expected = {"format": CHECKPOINT_FORMAT, "kind": kind}
        run = run_of_path(path)
        if run and run_id is not None:  # an init's checkpoint records no run: several start from it
            found["run_id"], expected["run_id"] = run_id, run["run_id"]
        at = parse_path(f"{INIT_DIR}/init.pt", path)
        if at is not None and init is not None:  # but its init label (since it was recorded)
            found["init"], expected["init"] = init, at["init"]
        return belongs_problem(path, f"the {kind} checkpoint of this job", expected, found)
    if suffix == ".csv":
        return table_problem(path, run_of_path(path))
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                for key in f.files:
                    f[key]  # noqa: B018 (every array readable: the archive's checksums)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            return f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})"
        return None
    if suffix == ".json":
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{path} is not a readable JSON file ({type(exc).__name__}: {exc})"
        # a job's record (meta.json, hessian.json) names its run, and a Hessian job's its round
        expected = {key: value for key, value in run_of_path(path).items()
                    if isinstance(record, dict) and key in record}
        found = {key: str(record[key]) for key in expected}
        return belongs_problem(path, "the record of this job", expected, found)
    return None


def _data_dir_problems(where: str, name: str, options: dict, key: str = "data_dir") -> list[str]:
    info = DATASETS.get(name)
    if info is None or not info.needs_data_dir:
        return []
    data_dir = options.get(key)
    # where the files come from: a download fedscape can make, or files made elsewhere (LEAF's scripts)
    made = NO_DOWNLOAD.get(name)
    if data_dir is None:
        holds = (f"that holds its files ({made})" if made
                 else "that holds (or, with `download: true`, receives) its files")
        return [f"{where}.{key}: {name} ({info.description}) is read from a data_dir, and none is set: set it to "
                f"the directory {holds}"]
    if not Path(data_dir).is_dir() and not options.get("download"):
        get = f"{made}: copy its output there" if made else \
            f"copy {name}'s files there or set `download: true` on a machine with internet"
        return [f"{where}.{key}: {data_dir!r} is not a directory (relative paths start at the working directory "
                f"{Path.cwd()}); {get}"]
    if not Path(data_dir).is_dir():
        return []
    return [f"{where}.{key}: {p}" for p in data_layout_problems(name, data_dir, options)]


def _proxy_problems(config: dict, label: str, dataset: str) -> list[str]:
    """The proxy data of a pretrained init: down-sampled ImageNet (`proxy_dir`) or another dataset."""
    spec = config["inits"].get(label) or {}
    if spec.get("kind") != "pretrained":
        return []
    where = f"inits.{label}"
    if spec.get("proxy_dir"):
        if not Path(spec["proxy_dir"]).is_dir():
            return [f"{where}.proxy_dir: {spec['proxy_dir']!r} (down-sampled ImageNet) is not a directory"]
        return []
    name = spec.get("proxy_dataset")
    if not name:
        return []
    options = config["datasets"].get(dataset) or {}
    if spec.get("proxy_data_dir"):
        return _data_dir_problems(where, name, {**spec, "download": options.get("download")}, "proxy_data_dir")
    # without proxy_data_dir the proxy is read from the clients' dataset's data_dir (fedscape.stages.init)
    return _data_dir_problems(f"{where}: proxy_dataset {name} from datasets.{dataset}", name, options)
