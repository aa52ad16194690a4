"""Runs of a config: the grid (or the listed experiments), their ids, and selectors that name them.

A run is one federated training job; its id is its path below ``<results_dir>/train/`` and its key
in every table. The id is built and parsed here only.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from fedscape.core.config import ConfigError
from fedscape.core.names import suggest
from fedscape.core.setting import format_fraction, format_setting, is_partition_label, setting_order_key

# The id of a run: its path below <results_dir>/train/ (and below hessian/); wildcards of the train rule.
RUN_ID = ("{dataset}/{model}/init~{init}/algo~{algorithm}/alpha~{alpha}/clients~{num_clients}/"
          "part~{participation}/seed~{seed}")
# The key=value parts of a run id after dataset and model, and the run field (by its name in FIELD_NAMES) each holds.
_ID_KEYS = {"init": "init", "algo": "algorithm", "alpha": "alpha", "clients": "num_clients",
            "part": "participation", "seed": "seed"}
OK, DIVERGED = "ok", "diverged"  # the status of a run, of its rounds and of the analyses of its models
# Constraints of the run wildcards, by their names (FIELD_NAMES); the dataset's is the list of dataset names, added by
# the plan layer.
WILDCARD_CONSTRAINTS = {
    "model": r"[a-z0-9_]+",
    "init": r"[A-Za-z0-9_.-]+",
    "algorithm": r"[A-Za-z0-9_.-]+",
    # a Dirichlet alpha, iid, or the label of a `partitions` entry (fedscape.core.setting.PARTITION_LABEL); a number
    # as repr writes a float: '0.5', '5e-05' (below 1e-4: no point), '1e+16'
    "alpha": r"iid|[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?|[a-z][a-z0-9_]*",
    "num_clients": r"[0-9]+",
    "participation": r"[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?",
    "seed": r"[0-9]+",
}
# Grid key of every run field (by its name: FIELD_NAMES): the config list (or mapping) the grid takes its values from.
GRID_SECTIONS = {"dataset": "datasets", "model": "models", "init": "inits", "algorithm": "algorithms",
                 "alpha": "alphas", "num_clients": "num_clients", "participation": "participation", "seed": "seeds"}


@dataclass(frozen=True, order=True)
class Run:
    """One federated run of the grid; its fields are the wildcards of the train rule."""

    dataset: str
    model: str
    init: str
    algorithm: str
    setting: str  # the heterogeneity setting (core.setting): 'iid', '1.0', '0.1' or a `partitions` label; named alpha
    num_clients: int
    participation: str  # canonical text: '1.0', '0.5'
    seed: int

    @property
    def run_id(self) -> str:
        """The run's path below results/train/ (also its id in every table)."""
        return RUN_ID.format(**self.fields())

    @property
    def partition_fields(self) -> dict[str, Any]:
        """The fields that name the run's client split (shared by runs differing in model, init, algorithm)."""
        return {"dataset": self.dataset, "num_clients": self.num_clients, "alpha": self.setting, "seed": self.seed}

    def fields(self) -> dict[str, Any]:
        """The run fields as a dict by their names (RUN_FIELDS: the train rule's wildcards, the table columns)."""
        return {name: getattr(self, f.name) for name, f in zip(RUN_FIELDS, fields(self), strict=True)}

    def field(self, name: str) -> Any:
        """The run field named `name` (one of RUN_FIELDS: the setting is `alpha`)."""
        return getattr(self, _ATTRIBUTES[name])

    @classmethod
    def from_fields(cls, values) -> Run:
        """The run of these fields by their names (RUN_FIELDS; text or numbers, e.g. a job's wildcards)."""
        values = {_ATTRIBUTES[name]: values[name] for name in RUN_FIELDS}
        return cls(**{**values, "num_clients": int(values["num_clients"]), "seed": int(values["seed"])})

    @classmethod
    def from_wildcards(cls, wildcards) -> Run:
        """The run of a train-rule job (its wildcards)."""
        return cls.from_fields(wildcards)

    @classmethod
    def from_id(cls, run_id: str) -> Run:
        """The run whose id is `run_id` (ValueError when it is not a run id)."""
        values = parse_run_id(run_id)
        missing = [k for k in RUN_FIELDS if k not in values]
        if missing:
            raise ValueError(f"{run_id!r} is not a run id (no {', '.join(missing)}); expected {RUN_ID}")
        return cls.from_fields(values)


# The name of a run field in run ids and paths (`alpha~0.1`, the `{alpha}` wildcard), tables (the `alpha` column),
# selectors and `experiments` (`{alpha: iid}`) and job settings, where it differs from the Run attribute: the
# heterogeneity setting keeps the name `alpha` it had when it could only be a Dirichlet alpha, so that finished
# results, their tables and users' configs stay valid.
FIELD_NAMES = {"setting": "alpha"}
RUN_FIELDS: tuple[str, ...] = tuple(FIELD_NAMES.get(f.name, f.name) for f in fields(Run))
"""The run fields by their names (FIELD_NAMES): the wildcards of the train rule and the run columns of every table."""
_ATTRIBUTES = {FIELD_NAMES.get(f.name, f.name): f.name for f in fields(Run)}


def parse_run_id(run_id: str) -> dict[str, str]:
    """The run fields in a run id (as text), e.g. {'dataset': 'digits', ..., 'seed': '0'}."""
    parts = str(run_id).split("/")
    out = {"dataset": parts[0]}
    if len(parts) > 1:
        out["model"] = parts[1]
    for part in parts[2:]:
        key, _, value = part.partition("~")
        out[_ID_KEYS.get(key, key)] = value
    return out


# The grid sections that are YAML mappings: their order carries no meaning (a tool that rewrites the file may
# sort them), so an experiment cannot take "the first" label of one of them.
MAPPING_SECTIONS = ("datasets", "inits", "algorithms")
# `experiment_defaults: {seed: every}`: an experiment that names no seed runs once for each of `seeds`.
EVERY_SEED = "every"


def _experiment_defaults(config: dict, grid: dict[str, list]) -> dict:
    """The value of each run field an experiment leaves unset: `experiment_defaults`, else the only label of a
    mapping, else the first value of a list; ConfigError for a mapping of several labels and no default."""
    given = config.get("experiment_defaults") or {}
    defaults = {}
    for key, section in GRID_SECTIONS.items():
        if given.get(key) is not None:
            defaults[key] = given[key]
        elif section in MAPPING_SECTIONS and len(grid[key]) > 1:
            unset = [i for i, exp in enumerate(config["experiments"]) if exp.get(key) is None]
            if unset:
                raise ConfigError(
                    f"experiments[{unset[0]}]: no `{key}` given, and `{section}` has several labels "
                    f"({', '.join(map(str, grid[key]))}), whose order means nothing in YAML: name it in the "
                    f"experiment or set `experiment_defaults: {{{key}: <label>}}`")
            defaults[key] = None
        else:
            defaults[key] = grid[key][0]
    return defaults


# The run fields whose values are labels of a config section (GRID_SECTIONS).
LABEL_FIELDS = ("dataset", "init", "algorithm")


def _check_label(config: dict, key: str, value: str, where: str) -> None:
    """ConfigError naming `where` when `value` of run field `key` is not a label of its section."""
    section = GRID_SECTIONS[key]
    if value not in config[section]:
        raise ConfigError(f"{where}: {value!r} is not defined in `{section}`.{suggest(value, config[section])} "
                          f"Defined: {', '.join(config[section])}")


def build_runs(config: dict) -> list[Run]:
    """The runs of the config: the explicit `experiments`, or the product of the grid's lists."""
    grid = {name: list(config[section]) for name, section in GRID_SECTIONS.items()}
    # every `partitions` label is a heterogeneity setting of the grid beside the alphas
    grid["alpha"] += [label for label in config.get("partitions") or {} if label not in grid["alpha"]]
    if config.get("experiments"):
        defaults = _experiment_defaults(config, grid)
        for key in LABEL_FIELDS:  # a default some experiment takes, named where it is written
            if defaults[key] is not None and any(exp.get(key) is None for exp in config["experiments"]):
                _check_label(config, key, defaults[key], f"experiment_defaults.{key}")
        combos = [{k: defaults[k] if exp.get(k) is None else exp[k] for k in grid} for exp in config["experiments"]]
        if defaults["seed"] == EVERY_SEED:  # replicates: each experiment without a seed, for every seed
            combos = [{**c, "seed": seed} for c in combos for seed in
                      (grid["seed"] if c["seed"] == EVERY_SEED else [c["seed"]])]
    else:
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    runs = []
    for i, c in enumerate(combos):
        for key in LABEL_FIELDS:
            _check_label(config, key, c[key], f"experiments[{i}].{key}")
        labels = config.get("partitions") or {}
        if is_partition_label(c["alpha"]) and c["alpha"] not in labels:
            where = f"experiments[{i}].alpha" if config.get("experiments") else "alphas"
            raise ConfigError(f"{where}: {c['alpha']!r} is neither iid, a Dirichlet alpha nor a label of "
                              f"`partitions`.{suggest(c['alpha'], ['iid', *labels])} Labels: "
                              f"{', '.join(labels) if labels else '(none)'}")
        runs.append(Run.from_fields({**c, "alpha": format_setting(c["alpha"]),
                                     "participation": format_fraction(c["participation"])}))
    return sorted(set(runs))


def unused_grid_values(config: dict, runs: list[Run]) -> list[str]:
    """A line for each list of the grid (models, alphas, num_clients, participation, seeds) with values that no run
    of `experiments` takes: an experiment that leaves a field unset takes the first value of its list, so adding
    a seed to `seeds` alone plans nothing new, and a user expecting replicates would see no sign of it. Likewise
    for the labels of datasets, inits, algorithms and partitions (`_unused_labels`), and for a repeated value of a
    list or a repeated experiment (`_repeated_values`)."""
    lines = _unused_labels(config, runs) + _repeated_values(config)
    if not config.get("experiments"):
        return lines
    for key, section in GRID_SECTIONS.items():
        if section in MAPPING_SECTIONS:
            continue
        used = {_selector_value(key, run.field(key)) for run in runs}
        unused = [str(v) for v in config[section] if _selector_value(key, v) not in used]
        if not unused:
            continue
        fix = ("set `experiment_defaults: {seed: every}` to run each experiment without a seed for every seed, or "
               "name them in `experiments`" if key == "seed" else "name them in `experiments`, or drop them")
        lines.append(f"{section}: {', '.join(unused)} taken by no run (an experiment that leaves `{key}` unset takes "
                     f"the first of `{section}`, {config[section][0]}): {fix}")
    return lines


def _repeated_values(config: dict) -> list[str]:
    """A line for each value that a list of the grid repeats, in any spelling (`alphas: [1, 1.0]`, `seeds: [0, 0]`),
    and each experiment whose runs earlier experiments plan already: a run is planned once, so the repeat adds no
    run, silently, where a user may have meant a replicate."""
    lines = []
    for key, section in GRID_SECTIONS.items():
        if section in MAPPING_SECTIONS:
            continue
        counts = Counter(_selector_value(key, value) for value in config[section])
        lines += [f"{section}: {text} is listed {count} times; its runs are planned once, so a repeat adds none (no "
                  "replicate either): drop it" for text, count in counts.items() if count > 1]
    planned: dict[Run, int] = {}  # run -> the first experiment that plans it
    for i, experiment in enumerate(config.get("experiments") or []):
        runs = build_runs({**config, "experiments": [experiment]})
        if all(run in planned for run in runs):
            earlier = sorted({planned[run] for run in runs})
            lines.append(f"experiments[{i}]: plans only runs that {', '.join(f'experiments[{j}]' for j in earlier)} "
                         f"{'plans' if len(earlier) == 1 else 'plan'} already (a run is planned once), so it adds "
                         "none: drop it, or make it differ (a `seed` of its own for a replicate)")
        for run in runs:
            planned.setdefault(run, i)
    return lines


def _unused_labels(config: dict, runs: list[Run]) -> list[str]:
    """A line for each mapping of labels (datasets, inits, algorithms, partitions) with labels that no run takes: a
    `partitions` entry or an algorithm added without a run that names it plans nothing, silently."""
    used = {"datasets": {r.dataset for r in runs}, "inits": {r.init for r in runs},
            "algorithms": {r.algorithm for r in runs}, "partitions": {str(r.setting) for r in runs}}
    name = {"datasets": "dataset", "inits": "init", "algorithms": "algorithm", "partitions": "alpha"}
    lines = []
    for section, taken in used.items():
        unused = [str(label) for label in (config.get(section) or {}) if str(label) not in taken]
        if unused:  # (the grid without `experiments` takes every label)
            lines.append(f"{section}: {', '.join(unused)} taken by no run: name them as `{name[section]}` in "
                         "`experiments`, or drop them")
    return lines


def _selector_value(key: str, value) -> str:
    """A selector's or a run's field as comparable text (alpha and participation canonical)."""
    if key == "alpha":
        return format_setting(value)
    if key == "participation":
        return format_fraction(value)
    return str(value)


def select_runs(runs: list[Run], selector: dict) -> list[Run]:
    """The runs whose fields equal every key of `selector` (e.g. {alpha: iid, init: random})."""
    unknown = [k for k in selector if k not in RUN_FIELDS]
    if unknown:
        # the attribute of a renamed field (`setting`) points at its name (`alpha`)
        hint = (f" Did you mean {FIELD_NAMES[unknown[0]]!r}?" if unknown[0] in FIELD_NAMES
                else suggest(unknown[0], RUN_FIELDS))
        raise ConfigError(f"unknown run field {unknown[0]!r} in selector {selector}.{hint} "
                          f"Valid: {', '.join(RUN_FIELDS)}")
    want = {k: _selector_value(k, v) for k, v in selector.items()}
    return [r for r in runs if all(_selector_value(k, r.field(k)) == v for k, v in want.items())]


def resolve_run(runs: list[Run], selector: dict, where: str = "") -> Run:
    """The single run a selector names; a clear error when it names none or several."""
    hits = select_runs(runs, selector)
    prefix = f"{where}: " if where else ""
    if not hits:
        raise ConfigError(f"{prefix}no run of the config matches {selector}; {selector_values(runs, selector)}")
    if len(hits) > 1:
        raise ConfigError(f"{prefix}{len(hits)} runs match {selector}; add one of {varying_fields(hits)} to pick one")
    return hits[0]


def selector_values(runs: list[Run], selector: dict) -> str:
    """What the runs have in the selector's keys: each key's values, or (when every value alone is taken by
    some run) the combinations the runs have; for a seed no run has, how a seed gets a run."""
    if not runs:
        return "the config defines no runs"
    keys = [k for k in selector if k in RUN_FIELDS]
    values = {k: list(dict.fromkeys(_selector_value(k, r.field(k)) for r in runs)) for k in keys}
    absent = [k for k in keys if _selector_value(k, selector[k]) not in values[k]]
    if absent or len(keys) == 1:
        shown = absent or keys
        # a seed added to `seeds` alone plans no run under `experiments` (each takes the first seed): the way to one
        hint = (f"; a seed runs where `seeds` lists it and, with `experiments`, an experiment names it or "
                f"`experiment_defaults` says `seed: {EVERY_SEED}`" if "seed" in absent else "")
        return "the runs' values: " + "; ".join(f"{k}: {', '.join(values[k])}" for k in shown) + hint
    combos = list(dict.fromkeys(tuple(_selector_value(k, r.field(k)) for k in keys) for r in runs))
    more = f" and {len(combos) - 12} more" if len(combos) > 12 else ""
    return (f"each value is taken by some run, but not together; the runs' ({', '.join(keys)}): "
            + "; ".join(f"({', '.join(c)})" for c in combos[:12]) + more)


def varying_fields(runs: list[Run]) -> list[str]:
    """The run fields that take more than one value among `runs`."""
    return [f for f in RUN_FIELDS if len({r.field(f) for r in runs}) > 1]


def iid_first(runs: list[Run]) -> list[Run]:
    """Runs ordered from IID to the most skewed alpha, then the other partition kinds (the pilot study's
    order: IID is the reference)."""
    return sorted(runs, key=lambda r: setting_order_key(r.setting))
