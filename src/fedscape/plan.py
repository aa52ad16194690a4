"""The experiment plan: which runs a config asks for, their paths and their resolved settings.

Snakemake's rule files call these functions; they never see the `snakemake` object. Settings are
passed to jobs as plain dicts so that Snakemake reruns exactly the jobs whose settings changed.
Planning is torch-free: this module and the `*_plan` / `model_specs` / `fl.hparams` /
`fl.train_config` modules it calls never import torch (tests/test_config.py checks it), so that
`snakemake -n` does not pay for `import torch`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from fedscape.config import ConfigError, load_schema, validate_config
from fedscape.partition import format_alpha
from fedscape.utils import suggest

# Data shape of every dataset: (in_channels, image_size, num_classes), known without loading.
DATASET_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}

WILDCARD_CONSTRAINTS = {
    "dataset": "|".join(sorted(DATASET_SHAPES)),
    "model": r"[a-z0-9_]+",
    "init": r"[A-Za-z0-9_.-]+",
    "algorithm": r"[A-Za-z0-9_.-]+",
    "alpha": r"iid|[0-9]+\.[0-9]+(e-?[0-9]+)?",
    "num_clients": r"[0-9]+",
    "participation": r"[0-9]+\.[0-9]+(e-?[0-9]+)?",
    "seed": r"[0-9]+",
}


@dataclass(frozen=True, order=True)
class Run:
    """One federated run of the grid; its fields are the wildcards of the train rule."""

    dataset: str
    model: str
    init: str
    algorithm: str
    alpha: str  # canonical text: 'iid', '1.0', '0.1'
    num_clients: int
    participation: str  # canonical text: '1.0', '0.5'
    seed: int

    @property
    def run_id(self) -> str:
        """The run's path below results/train/ (also its id in every table)."""
        return (f"{self.dataset}/{self.model}/init~{self.init}/algo~{self.algorithm}/alpha~{self.alpha}/"
                f"clients~{self.num_clients}/part~{self.participation}/seed~{self.seed}")

    @property
    def partition_id(self) -> str:
        return f"{self.dataset}/clients~{self.num_clients}/alpha~{self.alpha}/seed~{self.seed}"

    @property
    def init_id(self) -> str:
        return f"{self.dataset}/{self.model}/init~{self.init}"

    @classmethod
    def from_wildcards(cls, wildcards) -> Run:
        values = {f.name: wildcards[f.name] for f in fields(cls)}
        return cls(**{**values, "num_clients": int(values["num_clients"]), "seed": int(values["seed"])})


def results_root(config: dict) -> str:
    """The configured results directory, normalised (``results/`` and ``./results`` are ``results``)."""
    return os.path.normpath(config.get("results_dir", "results"))


def format_fraction(value: float | str) -> str:
    return repr(float(value))


def load_config(path: str | Path, schema_path: str | Path) -> dict:
    """Read a YAML config safely, fill defaults and validate it (schema and cross-key checks)."""
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    return check_config(config, load_schema(schema_path))


def check_config(config: dict, schema: dict) -> dict:
    """Validate against the schema (filling defaults), then the rules a schema cannot express."""
    validate_config(config, schema)
    problems: list[str] = []
    from fedscape.fl.hparams import algorithm_config
    from fedscape.model_specs import check_model_compatible

    training = config["training"]
    try:
        _train_config(training, {})
    except (TypeError, ValueError) as exc:
        problems.append(f"training: {exc}")
    for label, spec in config["algorithms"].items():
        hparams = {k: v for k, v in spec.items() if k not in ("name", "training")}
        try:
            algorithm_config(spec["name"], hparams)
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
        try:
            _train_config(training, spec.get("training", {}))
        except (TypeError, ValueError) as exc:
            problems.append(f"algorithms.{label}.training: {exc}")
    try:
        runs = build_runs(config)
    except ConfigError as exc:
        problems.append(str(exc))
        runs = []
    for dataset, model in sorted({(r.dataset, r.model) for r in runs}):
        channels, size, _ = DATASET_SHAPES[dataset]
        try:
            check_model_compatible(model, channels, size)
        except ValueError as exc:
            problems.append(f"models: {exc}")
    # issue 3: algorithm/model combinations (e.g. stochdepth on a plain CNN) and the inits section
    from fedscape.fl.hparams import check_algorithm_model
    from fedscape.init_plan import check_inits

    for label, model in sorted({(r.algorithm, r.model) for r in runs}):
        try:
            check_algorithm_model(config["algorithms"][label]["name"], model)
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
    problems.extend(check_inits(config, runs))
    from fedscape.barrier_plan import check_barrier_config

    if runs:
        problems.extend(check_barrier_config(config, runs))
    from fedscape.hessian_plan import check_hessian_config

    problems.extend(check_hessian_config(config, runs))
    from fedscape.landscape_plan import check_landscapes

    if runs:
        problems.extend(check_landscapes(config, runs))
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def _train_config(training: dict, overrides: dict):
    from fedscape.fl.train_config import TrainConfig

    merged = {**training, **overrides}
    unknown = set(overrides) - set(training)
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(f"unknown training key {key!r}.{suggest(key, training)} Valid: {', '.join(training)}")
    merged.pop("device", None)
    merged["save_clients_at"] = tuple(merged.get("save_clients_at", ()))
    return TrainConfig(**merged)


def build_runs(config: dict) -> list[Run]:
    """The runs of the config: the explicit `experiments`, or the product of the grid's lists."""
    grid = {
        "dataset": list(config["datasets"]),
        "model": list(config["models"]),
        "init": list(config["inits"]),
        "algorithm": list(config["algorithms"]),
        "alpha": list(config["alphas"]),
        "num_clients": list(config["num_clients"]),
        "participation": list(config["participation"]),
        "seed": list(config["seeds"]),
    }
    if config.get("experiments"):
        combos = [{k: grid[k][0] if exp.get(k) is None else exp[k] for k in grid} for exp in config["experiments"]]
    else:
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    runs = []
    for i, c in enumerate(combos):
        for key, section in (("dataset", "datasets"), ("init", "inits"), ("algorithm", "algorithms")):
            if c[key] not in config[section]:
                raise ConfigError(f"experiments[{i}].{key}: {c[key]!r} is not defined in `{section}`."
                                  f"{suggest(c[key], config[section])} Defined: {', '.join(config[section])}")
        runs.append(Run(c["dataset"], c["model"], c["init"], c["algorithm"], format_alpha(c["alpha"]),
                        int(c["num_clients"]), format_fraction(c["participation"]), int(c["seed"])))
    return sorted(set(runs))


def canonical(value):
    """Settings with every mapping's keys sorted, so that reordering YAML keys never reruns a job
    (Snakemake compares params by their text)."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def partition_settings(config: dict, dataset: str, alpha: str, num_clients: int, seed: int) -> dict:
    return canonical({"dataset": dataset, "dataset_options": config["datasets"][dataset], "alpha": alpha,
            "num_clients": int(num_clients), "seed": int(seed), **config["partition"]})


def init_settings(config: dict, dataset: str, model: str, init: str) -> dict:
    from fedscape.init_plan import init_extras, kind_spec

    channels, size, classes = DATASET_SHAPES[dataset]
    spec = config["inits"][init]
    runs = build_runs(config) if spec["kind"] == "continue" else []
    return canonical({"dataset": dataset, "model": model, "model_options": config["model_options"].get(model, {}),
            "in_channels": channels, "image_size": size, "num_classes": classes, "init": init,
            **kind_spec(spec), **init_extras(config, runs, dataset, model, init)})


def train_settings(config: dict, run: Run) -> dict:
    """Everything a train job needs, resolved: Snakemake reruns the job when this dict changes."""
    spec = config["algorithms"][run.algorithm]
    training = {**config["training"], **spec.get("training", {})}
    return canonical({
        "run": asdict(run),
        "run_id": run.run_id,
        "dataset_options": config["datasets"][run.dataset],
        "algorithm": spec["name"],
        "hyperparameters": {k: v for k, v in spec.items() if k not in ("name", "training")},
        "training": training,
    })


def digest(settings: dict) -> str:
    """A stable digest of JSON-able settings (used to refuse resuming with other settings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


RUN_FIELDS = tuple(f.name for f in fields(Run))


def _selector_value(key: str, value) -> str:
    if key == "alpha":
        return format_alpha(value)
    if key == "participation":
        return format_fraction(value)
    return str(value)


def select_runs(runs: list[Run], selector: dict) -> list[Run]:
    """The runs whose fields equal every key of `selector` (e.g. {alpha: iid, init: random})."""
    unknown = [k for k in selector if k not in RUN_FIELDS]
    if unknown:
        raise ConfigError(f"unknown run field {unknown[0]!r} in selector {selector}.{suggest(unknown[0], RUN_FIELDS)} "
                          f"Valid: {', '.join(RUN_FIELDS)}")
    want = {k: _selector_value(k, v) for k, v in selector.items()}
    return [r for r in runs if all(_selector_value(k, getattr(r, k)) == v for k, v in want.items())]


def resolve_run(runs: list[Run], selector: dict, where: str = "") -> Run:
    """The single run a selector names; a clear error when it names none or several."""
    hits = select_runs(runs, selector)
    prefix = f"{where}: " if where else ""
    if not hits:
        raise ConfigError(f"{prefix}no run of the config matches {selector}; the config defines "
                          f"{len(runs)} runs, e.g. {runs[0].run_id if runs else '(none)'}")
    if len(hits) > 1:
        varying = [f for f in RUN_FIELDS if len({getattr(r, f) for r in hits}) > 1]
        raise ConfigError(f"{prefix}{len(hits)} runs match {selector}; add one of {varying} to pick one")
    return hits[0]
