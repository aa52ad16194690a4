"""The whole plan of a config: its validation, its runs and the targets of `rule all`, from the stage
modules of this package (each has `check(config, runs)` and `targets(config, runs)`).

Torch-free: `snakemake -n` imports only this package, `fedscape.core` and the torch-free declaration
modules of the lower layers (tests/unit/test_architecture.py checks it).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import fedscape.plan as _package
from fedscape.core.config import ConfigError, duplicate_keys, load_schema, read_config_file, validate_config
from fedscape.core.paths import PARTITION_DIR, parse_path
from fedscape.core.runs import WILDCARD_CONSTRAINTS, Run, build_runs
from fedscape.data.partition import PartitionError, check_partition_file
from fedscape.data.specs import DATASET_NAMES, DATASETS, NO_DOWNLOAD

PARTITION_FILE = f"{PARTITION_DIR}/partition.npz"
FIRST = "train"  # its checks come first: every other stage reads the run grid it checks


def stage_modules() -> list[ModuleType]:
    """Every stage's plan module (train first, then alphabetically): the modules with `check` and `targets`."""
    modules = [importlib.import_module(f"{_package.__name__}.{info.name}")
               for info in pkgutil.iter_modules(_package.__path__) if info.name != "workflow"]
    stages = [m for m in modules if hasattr(m, "check") and hasattr(m, "targets")]
    return sorted(stages, key=lambda m: (m.__name__.rsplit(".", 1)[1] != FIRST, m.__name__))


def check_config(config: dict, schema: dict, files: Iterable[str | Path] = ()) -> dict:
    """Validate against the schema (filling defaults), then every stage's rules a schema cannot express.

    `files`: the YAML files the config was read from, checked for keys written twice first (the loader
    that made `config` kept only the later value, silently).
    """
    duplicates = [problem for path in files for problem in duplicate_keys(path)]
    if duplicates:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in duplicates))
    validate_config(config, schema)
    problems: list[str] = _results_dir_problems(config) + _directory_labels(config)
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


def _results_dir_problems(config: dict) -> list[str]:
    """A results_dir that is the root of the file system (`/`, `//`, `/./`): the schema's pattern allows it, but
    every output would lie directly in it, beside the system's own directories."""
    value = str(config["results_dir"])
    path = Path(value)
    if path.is_absolute() and path.parent == path:
        return [f"results_dir: {value!r} is the root of the file system: every output goes below results_dir (and "
                "Snakemake deletes a job's old outputs before it runs the job again), so results need a directory of "
                "their own: set e.g. results or /scratch/<you>/fedscape"]
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
        problems += [f"{'.'.join(path)}: the label {label!r} names a directory; a label needs a letter, a digit or "
                     "_ (e.g. 'run_a')" for label in section if label in (".", "..")]
    return problems


def load_config(path: str | Path, schema_path: str | Path) -> dict:
    """Read a YAML config safely, fill defaults and validate it."""
    return check_config(read_config_file(path), load_schema(schema_path), files=[path])


def all_targets(config: dict, runs: list[Run]) -> list[str]:
    """The targets of `rule all`: every stage's final outputs."""
    return [path for stage in stage_modules() for path in stage.targets(config, runs)]


def wildcard_constraints() -> dict[str, str]:
    """The constraint of every run wildcard (the dataset's: one of the dataset names)."""
    return {"dataset": "|".join(DATASET_NAMES), **WILDCARD_CONSTRAINTS}


# -- the data the jobs about to run read -------------------------------------------------------------------
# The rules whose jobs read a dataset (or an init's proxy data); their `dataset` wildcard names it, and a rule
# without one (a barrier pair) may read any dataset of the config.
DATA_RULES = ("partition", "init", "train", "hessian", "interpolation", "layer_barriers", "landscape_chunk")


def check_data(config: dict, runs: list[Run], jobs: Iterable[tuple[str, dict]] | None = None) -> None:
    """ConfigError listing every data directory that the jobs about to run need and that is not there.

    `jobs`: (rule name, wildcards) of the jobs Snakemake is about to run (None: every job of the config).
    Not part of `check_config`: `snakemake -n` plans on machines without the data (a laptop, a login
    node), and jobs that read no data (tables, figures) run without it; the Snakefile calls this when
    Snakemake starts executing, before the first job.
    """
    used = sorted({r.dataset for r in runs})
    if jobs is None:
        datasets, inits = set(used), {(r.init, r.dataset) for r in runs}
    else:
        datasets, inits = set(), set()
        for rule, wildcards in jobs:
            if rule not in DATA_RULES:
                continue
            datasets |= {wildcards["dataset"]} if "dataset" in wildcards else set(used)
            if rule == "init":
                inits.add((wildcards.get("init"), wildcards.get("dataset")))
    problems = [p for name in sorted(datasets)
                for p in _data_dir_problems(f"datasets.{name}", name, config["datasets"].get(name) or {})]
    for label, dataset in sorted(inits):
        problems += _proxy_problems(config, label, dataset)
    if problems:
        raise ConfigError("data missing for the jobs about to run (nothing ran; `snakemake -n` does not check "
                          "data):\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)))


def check_read_partitions(inputs: Iterable[str], remade: Iterable[str]) -> None:
    """ConfigError listing every existing partition file that a job about to run reads and that is not the
    partition its path names (another run's, or damaged); `remade`: the outputs of the jobs about to run (a
    partition among them is made afresh, not read as it is).

    Called when Snakemake starts executing, before any job: a job that failed on such a file would cost its
    finished outputs (Snakemake deletes a job's outputs before running it), and a job that did not fail would
    compute on another run's data.
    """
    remade = {str(Path(p)) for p in remade}
    problems = []
    for path in dict.fromkeys(str(Path(p)) for p in inputs):
        fields = parse_path(PARTITION_FILE, path)
        if fields is None or path in remade or not Path(path).exists():
            continue
        try:
            check_partition_file(path, fields["dataset"], int(fields["num_clients"]), fields["alpha"],
                                 int(fields["seed"]))
        except PartitionError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("a partition that the jobs about to run read is not theirs (nothing ran, no output was "
                          "deleted):\n" + "\n".join(f"  - {p}" for p in problems) + "\nA partition is remade "
                          "bit-identical from its seed: after remaking it, continue with `snakemake --rerun-triggers "
                          "params input code software-env` so that what was made from it is not made again.")


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
    return []


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
