"""Planning of the train stage: the resolved settings of every run, and the checks of the run grid
(training, algorithms, datasets and models)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from fedscape.core.alpha import parse_alpha
from fedscape.core.config import ConfigError, canonical
from fedscape.core.names import suggest
from fedscape.core.paths import Results
from fedscape.core.runs import Run
from fedscape.data.partition import PartitionError, check_partition_file
from fedscape.data.specs import DATASET_NAMES, dataset_info
from fedscape.fl.hparams.registry import ALGORITHM_NAMES, algorithm_config, check_algorithm_model
from fedscape.fl.settings import TrainConfig
from fedscape.models.specs import (
    MODEL_NAMES,
    MODEL_OPTIONS,
    NORMS,
    check_model_compatible,
    check_token_options,
    model_option_problems,
)

# Training keys added after results existed: a job's settings carry one only when it differs from its
# default, so that adding it does not rerun every finished train and init job (TrainConfig has the default).
LATE_TRAINING_KEYS = ("keep_optimizer_state",)


def job_training(training: dict) -> dict:
    """`training` as a job's settings carry it: the late keys left out where they are at their default."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {k: v for k, v in training.items() if not (k in LATE_TRAINING_KEYS and v == defaults[k])}


def run_training(config: dict, run: Run) -> dict:
    """The `training` section with the run's algorithm overrides applied."""
    spec = config["algorithms"][run.algorithm]
    return {**config["training"], **spec.get("training", {})}


def rounds_of(config: dict, run: Run) -> int:
    """The number of rounds `run` trains."""
    return int(run_training(config, run)["rounds"])


def train_settings(config: dict, run: Run) -> dict:
    """Everything a train job needs, resolved: Snakemake reruns the job when this dict changes."""
    spec = config["algorithms"][run.algorithm]
    return canonical({
        "run": run.fields(),
        "run_id": run.run_id,
        "dataset_options": config["datasets"][run.dataset],
        "algorithm": spec["name"],
        "hyperparameters": {k: v for k, v in spec.items() if k not in ("name", "training")},
        "training": job_training(run_training(config, run)),
    })


def train_inputs(results: Results, run: Run) -> dict[str, str]:
    """The partition and the initial model a run trains from; an existing partition file is checked first.

    Snakemake deletes a job's outputs before it runs: a damaged or foreign partition.npz (newer than the
    run's checkpoints) would cost a finished run before its job could fail. Checked here, it stops the
    planning instead, and nothing is touched.
    """
    partition = results.partition_file(run)
    if Path(partition).exists():
        try:
            check_partition_file(partition, run.dataset, run.num_clients, parse_alpha(run.alpha), run.seed)
        except PartitionError as exc:
            raise PartitionError(
                f"{exc}. Nothing ran, and the runs trained on it are kept. Remake it (bit-identical from its "
                f"seed) with `snakemake --cores 1 --force {partition}`, then continue with `snakemake "
                "--rerun-triggers params input code software-env` so that those runs are not retrained.") from None
    return {"partition": partition, "init": results.init_file(dataset=run.dataset, model=run.model, init=run.init)}


def run_files(config: dict, runs: list[Run], name: str) -> list[str]:
    """The train output `name` (trajectory, metrics, meta, client_updates, ...) of every run, in run order."""
    results = Results.of(config)
    return [results.run_file(run, name) for run in runs]


def check_round(config: dict, run: Run, value, where: str) -> None:
    """ConfigError unless `value` is 'final' or a round the run trains (0 = its initial model)."""
    if value == "final":
        return
    rounds = rounds_of(config, run)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= rounds:
        raise ConfigError(f"{where}: round {value!r} must be 'final' or an integer in 0..{rounds} "
                          f"(run {run.run_id} trains {rounds} rounds)")


def check_training(training: dict, overrides: dict) -> TrainConfig:
    """The TrainConfig of `training` with `overrides`; ValueError naming an unknown key or a bad value."""
    unknown = set(overrides) - set(training)
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(f"unknown training key {key!r}.{suggest(key, training)} Valid: {', '.join(training)}")
    merged = {**training, **overrides}
    merged.pop("device", None)
    merged["save_clients_at"] = tuple(merged.get("save_clients_at", ()))
    return TrainConfig(**merged)


def check(config: dict, runs: list[Run]) -> list[str]:
    """Problems of `datasets`, `models`, `training` and `algorithms` that the schema cannot express."""
    problems: list[str] = []
    for name in config["datasets"]:
        if name not in DATASET_NAMES:
            problems.append(f"datasets: unknown dataset {name!r}.{suggest(name, DATASET_NAMES)} "
                            f"Valid: {', '.join(DATASET_NAMES)}")
    for section in ("models", "model_options"):
        for name in config[section]:
            if name not in MODEL_NAMES:
                problems.append(f"{section}: unknown model {name!r}.{suggest(name, MODEL_NAMES)} "
                                f"Valid: {', '.join(MODEL_NAMES)}")
    for name, options in config["model_options"].items():
        valid = MODEL_OPTIONS.get(name, ())
        for key, value in (options or {}).items() if name in MODEL_NAMES else ():
            if key not in valid:
                problems.append(f"model_options.{name}: unknown option {key!r}.{suggest(key, valid)} "
                                f"{name} takes {', '.join(valid) if valid else 'no options'}")
            elif key == "norm" and value not in NORMS:
                problems.append(f"model_options.{name}.norm: {value!r} is not a norm.{suggest(value, NORMS)} "
                                f"Valid: {', '.join(NORMS)}")
        if name in MODEL_NAMES:
            problems.extend(model_option_problems(name, {k: v for k, v in (options or {}).items() if k in valid}))
    try:
        check_training(config["training"], {})
    except (TypeError, ValueError) as exc:
        problems.append(f"training: {exc}")
    for label, spec in config["algorithms"].items():
        hparams = {k: v for k, v in spec.items() if k not in ("name", "training")}
        if spec["name"] not in ALGORITHM_NAMES:
            problems.append(f"algorithms.{label}.name: unknown algorithm {spec['name']!r}."
                            f"{suggest(spec['name'], ALGORITHM_NAMES)} Valid: {', '.join(ALGORITHM_NAMES)}")
            continue
        try:
            algorithm_config(spec["name"], hparams)
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
        try:
            check_training(config["training"], spec.get("training", {}))
        except (TypeError, ValueError) as exc:
            problems.append(f"algorithms.{label}.training: {exc}")
    known = [r for r in runs if r.dataset in DATASET_NAMES and r.model in MODEL_NAMES]
    for dataset, model in sorted({(r.dataset, r.model) for r in known}):
        info = dataset_info(dataset)
        try:
            check_model_compatible(model, info.in_channels, info.image_size)
        except ValueError as exc:
            problems.append(f"models: {exc}")
            continue
        try:  # token data: in_channels is the vocabulary, image_size the sequence length
            check_token_options(model, config["model_options"].get(model), info.in_channels, info.image_size,
                                dataset=dataset)
        except ValueError as exc:
            problems.append(f"models: {exc}")
    for label, model in sorted({(r.algorithm, r.model) for r in known
                                if config["algorithms"][r.algorithm]["name"] in ALGORITHM_NAMES}):
        try:
            check_algorithm_model(config["algorithms"][label]["name"], model)
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
    return problems


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: the runs are reached through the tables and analyses that read them."""
    return []
