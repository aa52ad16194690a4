"""Planning of the train stage: the resolved settings of every run, and the checks of the run grid
(training, algorithms, datasets and models)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable

from fedscape.core.config import ConfigError
from fedscape.core.jobs import job_params
from fedscape.core.names import suggest
from fedscape.core.paths import Results
from fedscape.core.runs import Run
from fedscape.data.specs import (
    DATASET_NAMES,
    SEQUENTIAL_AUGMENTATIONS,
    dataset_info,
    dataset_option_problems,
    dataset_settings,
    resolved_targets,
)
from fedscape.fl.hparams.registry import (
    ALGORITHM_NAMES,
    algorithm_config,
    algorithm_spec,
    check_algorithm_model,
    check_algorithm_targets,
    display_name,
    hyperparameter_settings,
    hyperparameter_type_problems,
)
from fedscape.fl.schedule import DEFAULT_LOCAL_EPOCHS, WORK_KEYS
from fedscape.fl.settings import TrainConfig, TrainingSettings, uncaptured_steps
from fedscape.fl.swa import SWASettings, check_swa, partial_cycle_warning, swa_config
from fedscape.models.specs import (
    BN_STATS_BASELINE,
    MODEL_NAMES,
    MODEL_NORMS,
    MODEL_OPTIONS,
    NO_DECAY_MODELS,
    check_model_compatible,
    check_token_options,
    model_option_problems,
    uses_batch_norm,
)
from fedscape.stages.train_settings import TrainJob

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# A train job's settings carry RESULT_VERSIONS["train"] plus the bumps its algorithm's hyperparameters give its runs
# (`AlgorithmConfig.result_bumps`: fixes that changed only such runs, as plan.partition's EXACT_ZEROS_BUMPS) and
# THINNED_EVAL_BUMPS where its training.eval_every is above 1, and UNDECAYED_BUMPS where its model leaves parameters
# undecayed: bump RESULT_VERSIONS["train"] for a change of every run, `result_bumps`, THINNED_EVAL_BUMPS or
# UNDECAYED_BUMPS for one of those runs alone.
RESULT_VERSIONS = {"train": 1}
# THINNED_EVAL_BUMPS 1: a round between two evaluated ones whose clients' mean local training loss is not finite or
# above DIVERGED_LOSS is evaluated (as one whose model is not finite was), and so is the model its clients started
# from where no evaluation saw it (fl.engine), so that a run stops where it does with eval_every 1: one whose model
# exploded between two evaluations and recovered by the next trained on as `ok` (an SWA run averaging the exploded
# model in where it was a cycle end's). Which runs had such an excursion is their data's, so every run with
# eval_every above 1 carries it; with eval_every 1 every round was evaluated and nothing changed.
THINNED_EVAL_BUMPS = 1
# UNDECAYED_BUMPS 1: weight decay (SGD's or AdamW's) leaves alone the parameters a model names (char_gpt's biases,
# LayerNorm gains and embeddings: models.specs.NO_DECAY_MODELS), as its reference code's optimiser groups them; it
# decayed them too. A train job or an init that trains such a model with weight decay carries it (`undecayed_bumps`;
# plan.init), no other: without decay, or on any other model, every parameter decays as before.
UNDECAYED_BUMPS = 1


def undecayed_bumps(model: str, weight_decay: float) -> int:
    """UNDECAYED_BUMPS for a job that trains `model` with `weight_decay` where the model leaves parameters
    undecayed, else 0."""
    return UNDECAYED_BUMPS if model in NO_DECAY_MODELS and weight_decay > 0 else 0


def merge_training(training: dict, overrides: dict) -> dict:
    """`training` with `overrides` (an algorithm's or an init's), its local work resolved.

    A client's local work is counted in local_epochs or local_steps: a work key that `overrides` gives
    replaces the other one of `training`, and with neither given the work is DEFAULT_LOCAL_EPOCHS epochs
    (so that the settings of runs made before local_steps existed stay as they were).
    """
    merged = {**training, **overrides}
    if any(overrides.get(k) is not None for k in WORK_KEYS):
        for key in WORK_KEYS:
            if overrides.get(key) is None:
                merged[key] = None
    if all(merged.get(k) is None for k in WORK_KEYS):
        merged["local_epochs"] = DEFAULT_LOCAL_EPOCHS
    return merged


def run_training(config: dict, run: Run) -> dict:
    """The `training` section with the run's algorithm overrides applied (local work resolved: `merge_training`)."""
    spec = config["algorithms"][run.algorithm]
    return merge_training(config["training"], spec["training"])


def idle_swa(config: dict, runs: list[Run]) -> list[str]:
    """A line for each `swa` setting whose runs end before its phase starts: such runs train and end exactly as
    without SWA (no swa_* columns, the last global model is the final one), which a user who lowered
    `training.rounds` for a pilot would not see otherwise. `swa: null` turns it off without this line. And a line for
    each whose runs end within a cycle (`fl.swa.partial_cycle_warning`): their last rounds train but the SWA model,
    their final one, never averages them, which nothing in their outputs says."""
    idle: dict[tuple[str, int, int], list[str]] = {}
    partial: dict[tuple[str, str], list[str]] = {}
    for label, run in sorted({run.algorithm: run for run in runs}.items()):
        training = run_training(config, run)
        swa = swa_config(training.get("swa"))
        rounds = int(training["rounds"])
        where = f"algorithms.{label}.training" if "swa" in config["algorithms"][label]["training"] else "training"
        if swa is not None and swa.idle(rounds):
            idle.setdefault((where, swa.start(rounds), rounds), []).append(label)
        elif swa is not None and (line := partial_cycle_warning(swa, rounds)):
            partial.setdefault((where, line), []).append(label)
    return [*(f"{where}.swa: its phase starts at round {start}, after the last round ({rounds}) of the runs of "
              f"{', '.join(labels)}, so they train as without SWA; set `swa: null` to say so, or lower "
              "swa.start_round" for (where, start, rounds), labels in idle.items()),
            *(f"{where}.swa: in the runs of {', '.join(labels)}, {line}" for (where, line), labels in partial.items())]


def algorithm_model_options(config: dict, run: Run) -> dict:
    """The options `run`'s algorithm adds to the model it trains (MOON with head projection); {} for most."""
    return _added_model_options(config, run.algorithm)


def _added_model_options(config: dict, label: str) -> dict:
    spec = config["algorithms"][label]
    return algorithm_config(spec["name"], {k: v for k, v in spec.items() if k not in ("name", "training")}
                            ).model_options()


def bn_stats_setting(config: dict, run: Run, value: str) -> str:
    """A `bn_stats` value (`models.specs.BN_STATS`) for a job on `run`'s model: `value` where the model has batch
    norm, else the baseline `stored`, which the job settings leave out: recomputing is a no-op there and must not
    rerun finished jobs."""
    if uses_batch_norm(run.model, config["model_options"].get(run.model)):
        return value
    return BN_STATS_BASELINE


def rounds_of(config: dict, run: Run) -> int:
    """The number of rounds `run` trains."""
    return int(run_training(config, run)["rounds"])


def planned_train(config: dict, run: Run) -> TrainJob:
    """The train job of `run`: its training resolved (the algorithm's overrides, server-side SWA with its start)."""
    spec = config["algorithms"][run.algorithm]
    training = run_training(config, run)
    swa = swa_config(training.get("swa"))
    if swa is not None:
        swa = SWASettings.of(swa, int(training["rounds"]),
                             uses_batch_norm(run.model, config["model_options"].get(run.model)))
    return TrainJob(run=run.fields(), run_id=run.run_id,
                    dataset_options=dataset_settings(run.dataset, config["datasets"][run.dataset]),
                    algorithm=spec["name"],
                    hyperparameters=hyperparameter_settings(
                        spec["name"], {k: v for k, v in spec.items() if k not in ("name", "training")}),
                    training=TrainingSettings.of(training, swa=swa))


def train_settings(config: dict, run: Run, recorded: Iterable[str] | None = None) -> dict:
    """The settings of `planned_train` with its result version (the rule's params): Snakemake reruns the job when
    they change, not where they differ from its `recorded` params only in how it computes (`kept_record`). Keys
    sorted at every level (`canonical`), as they have always been (Snakemake records the text)."""
    job = planned_train(config, run)
    return job_params(job, train_result_version(job, config["model_options"].get(run.model) or {}), recorded,
                      sort=True)


def train_result_version(job: TrainJob, model_options: dict) -> int:
    """The result version of a train job (its model's `model_options` from the config): RESULT_VERSIONS["train"],
    plus its algorithm's `result_bumps`, plus THINNED_EVAL_BUMPS where it evaluates less than every round, plus
    `undecayed_bumps`."""
    bumps = algorithm_config(job.algorithm, job.hyperparameters).result_bumps(
        job.run["model"], model_options, dataclasses.asdict(job.training))
    return (RESULT_VERSIONS["train"] + bumps + (THINNED_EVAL_BUMPS if job.training.eval_every > 1 else 0)
            + undecayed_bumps(job.run["model"], job.training.weight_decay))


def train_inputs(results: Results, run: Run) -> dict[str, str]:
    """The partition and the initial model a run trains from.

    An existing partition file is not checked here: Snakemake 9 takes an error from an input function, where the
    job's outputs exist, for "no job makes this file" and silently plans without the job and what reads it. The
    workflow's onstart checks it before any job runs (`plan.workflow.check_read_files`), and `make status` names it.
    """
    return {"partition": results.partition_file(run),
            "init": results.init_file(dataset=run.dataset, model=run.model, init=run.init)}


def run_files(config: dict, runs: list[Run], name: str) -> list[str]:
    """The train output `name` (trajectory, metrics, meta, client_updates, ...) of every run, in run order."""
    results = Results.of(config)
    return [results.run_file(run, name) for run in runs]


def round_number(config: dict, run: Run, value: int | str) -> int:
    """A round of `run` checked by `check_round` as a number: 'final' is its last round."""
    return rounds_of(config, run) if value == "final" else int(value)


def check_round(config: dict, run: Run, value, where: str) -> None:
    """ConfigError unless `value` is 'final' or a round whose global model the run trains and keeps (0 = its
    initial model; `unkept_round`)."""
    if value == "final":
        return
    rounds = rounds_of(config, run)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= rounds:
        raise ConfigError(f"{where}: round {value!r} must be 'final' or an integer in 0..{rounds} "
                          f"(run {run.run_id} trains {rounds} rounds)")
    problem = unkept_round(config, run, value)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def kept_rounds_of(config: dict, run: Run) -> frozenset[int] | None:
    """The rounds whose global models `run` keeps (`TrainConfig.kept_rounds`); None when it keeps every round."""
    training = run_training(config, run)
    if training["save_every"] == 1:
        return None
    return frozenset(TrainingSettings.of(training).train_config().kept_rounds(swa_config(training.get("swa"))))


def unkept_round(config: dict, run: Run, round_: int) -> str | None:
    """Why run `run` will not keep the global model of `round_` (training.save_every), with the nearest kept rounds;
    None when it keeps it (or does not train that round)."""
    training = run_training(config, run)
    if training["save_every"] == 1:
        return None
    problem = TrainingSettings.of(training).train_config().unkept_round(round_, swa_config(training.get("swa")))
    return problem and f"{problem} (run {run.run_id})"


def check_training(training: dict, overrides: dict, warm_up_init: bool = False) -> TrainConfig:
    """The TrainConfig of `training` with `overrides`; ValueError naming an unknown key or a bad value. `warm_up_init`:
    of an IID warm-up init, whose lr warm-up over its rounds as long as they are or longer is warned about
    (`plan.init.warmup_schedule_warnings`), not refused (`TrainConfig.warmup_problem`), except under a cosine schedule,
    which TrainConfig itself refuses such a warm-up for (no round is left to decay over)."""
    unknown = set(overrides) - set(training)
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(f"unknown training key {key!r}.{suggest(key, training)} Valid: {', '.join(training)}")
    if "device" in overrides:
        # Whether a job takes a card, locally and on SLURM, is planned from `training.device` alone
        # (fedscape.plan.resources): a label computing elsewhere would be scheduled on the wrong resources.
        raise ValueError("device: the device is the workflow's: set training.device; GPU planning and SLURM requests "
                         "read it")
    merged = merge_training(training, overrides)
    if merged.get("bf16_autocast"):
        raise ValueError("bf16_autocast is replaced by precision: bf16, which also covers sequential training and "
                         "the evaluations: set precision: bf16 and remove bf16_autocast")
    if merged.get("capture") == "cuda_graph" and merged.get("device") == "cpu":
        raise ValueError("capture: cuda_graph replays CUDA graphs, but device is cpu: set capture to auto (eager "
                         "steps on a CPU) or device to auto or cuda")
    cfg = TrainingSettings.of(merged).train_config()  # swa, the train job's alone: `check_swa_settings`
    ignored = cfg.ignored_optimizer_options()
    if ignored:
        raise ValueError(ignored)
    if problem := cfg.warmup_problem(over_rounds=not warm_up_init):
        raise ValueError(problem)
    return cfg


def check_swa_settings(training: dict, overrides: dict) -> None:
    """ValueError for a bad `swa` of `training` with an algorithm's `overrides` (a key, a value, or a phase
    that never completes a cycle)."""
    merged = {**training, **overrides}
    swa = swa_config(merged.get("swa"))
    if swa is not None:
        check_swa(swa, int(merged["rounds"]))


def algorithm_label_problems(algorithms: dict) -> list[str]:
    """Algorithm labels that tables and figures would not tell apart: labels shown alike (`display_name`: `fedavg`
    and `FedAvg` are both FedAvg) would share a figure's row (the accuracy table failed on them)."""
    problems, shown = [], {}
    for label in algorithms:
        other = shown.setdefault(display_name(label), label)
        if other != label:
            problems.append(f"algorithms.{label}: figures and tables show it as {display_name(label)}, as they show "
                            f"algorithms.{other}; rename one of them")
    return problems


def misnamed_algorithm_labels(config: dict, runs: list[Run]) -> list[str]:
    """A line for each algorithm label of the runs that spells another algorithm's name (`fedprox` of runs of
    fedavg): figures and tables show a label that spells an algorithm name as that algorithm (`display_name`).
    Valid (a label is a name), but the figures then name another algorithm than the runs trained."""
    lines = []
    for label in sorted({run.algorithm for run in runs}):
        name = config["algorithms"][label]["name"]
        if label.lower() in ALGORITHM_NAMES and label.lower() != name:
            lines.append(f"algorithms.{label}: figures and tables show it as {display_name(label)}, the algorithm "
                         f"its label spells, but its runs are of {name}: a label such as {name}_{label.lower()} "
                         "would say so")
    return lines


def check(config: dict, runs: list[Run]) -> list[str]:
    """Problems of `datasets`, `models`, `training` and `algorithms` that the schema cannot express."""
    problems: list[str] = []
    for name, options in config["datasets"].items():
        if name not in DATASET_NAMES:
            problems.append(f"datasets: unknown dataset {name!r}.{suggest(name, DATASET_NAMES)} "
                            f"Valid: {', '.join(DATASET_NAMES)}")
        problems.extend(dataset_option_problems(name, options or {}))
    for section in ("models", "model_options"):
        for name in config[section]:
            if name not in MODEL_NAMES:
                problems.append(f"{section}: unknown model {name!r}.{suggest(name, MODEL_NAMES)} "
                                f"Valid: {', '.join(MODEL_NAMES)}")
    # (a default dataset, init or algorithm label an experiment takes is checked with the experiment's: core.runs)
    given = [(f"experiments[{i}]", e) for i, e in enumerate(config.get("experiments") or [])]
    for where, experiment in [("experiment_defaults", config.get("experiment_defaults") or {}), *given]:
        name = experiment.get("model")
        if name is not None and name not in MODEL_NAMES:
            problems.append(f"{where}.model: unknown model {name!r}.{suggest(name, MODEL_NAMES)} "
                            f"Valid: {', '.join(MODEL_NAMES)}")
    for name, options in config["model_options"].items():
        valid = MODEL_OPTIONS.get(name, ())
        for key, value in (options or {}).items() if name in MODEL_NAMES else ():
            if key not in valid:
                problems.append(f"model_options.{name}: unknown option {key!r}.{suggest(key, valid)} "
                                f"{name} takes {', '.join(valid) if valid else 'no options'}")
            elif key == "norm" and value not in MODEL_NORMS[name]:
                problems.append(f"model_options.{name}.norm: {value!r} is not a norm of {name}."
                                f"{suggest(value, MODEL_NORMS[name])} Valid: {', '.join(MODEL_NORMS[name])}")
        if name in MODEL_NAMES:
            problems.extend(model_option_problems(name, {k: v for k, v in (options or {}).items() if k in valid}))
    base = None
    try:
        check_training(config["training"], {})
    except (TypeError, ValueError) as exc:
        base = str(exc)
        problems.append(f"training: {exc}")
    problems += algorithm_label_problems(config["algorithms"])
    for label, spec in config["algorithms"].items():
        hparams = {k: v for k, v in spec.items() if k not in ("name", "training")}
        if spec["name"] not in ALGORITHM_NAMES:
            problems.append(f"algorithms.{label}.name: unknown algorithm {spec['name']!r}."
                            f"{suggest(spec['name'], ALGORITHM_NAMES)} Valid: {', '.join(ALGORITHM_NAMES)}")
            continue
        # a key that is no hyperparameter of the algorithm: a training key written beside `name` (it goes in the
        # entry's `training`), or a misspelt `training`, told as such rather than as an unknown hyperparameter
        fields = {f.name for f in dataclasses.fields(algorithm_spec(spec["name"]).config)}
        for key in [k for k in hparams if k not in fields]:
            if key in config["training"]:
                problems.append(f"algorithms.{label}.{key}: {key} is a training key, not a hyperparameter of "
                                f"{spec['name']}: put it in algorithms.{label}.training (an algorithm entry holds "
                                "its name, its hyperparameters and its `training` overrides)")
                del hparams[key]
            elif (hint := suggest(key, ["training", "name"])) and not suggest(key, fields):
                problems.append(f"algorithms.{label}.{key}: not a key of an algorithm entry.{hint}")
                del hparams[key]
        wrong = hyperparameter_type_problems(spec["name"], hparams)
        problems += [f"algorithms.{label}.{key}: {problem}" for key, problem in wrong]
        try:  # without the mistyped values, which the dataclass's own checks would compare
            hyperparameters = algorithm_config(spec["name"], {k: v for k, v in hparams.items() if k not in dict(wrong)})
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
        else:
            with contextlib.suppress(TypeError, ValueError):  # a bad `training` is reported below
                if problem := hyperparameters.training_problem(merge_training(config["training"], spec["training"])):
                    problems.append(f"algorithms.{label}: {problem}")
        try:
            check_training(config["training"], spec["training"])
        except (TypeError, ValueError) as exc:
            if str(exc) != base:  # the same problem as the `training` section's, reported there once
                problems.append(f"algorithms.{label}.training: {exc}")
        try:
            algorithm_spec(spec["name"]).check_training({**config["training"], **spec["training"]})
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
        try:
            check_swa_settings(config["training"], spec["training"])
        except (TypeError, ValueError) as exc:
            overridden = any(k in spec["training"] for k in ("swa", "rounds"))
            problem = f"{f'algorithms.{label}.training' if overridden else 'training'}: {exc}"
            if problem not in problems:
                problems.append(problem)
    known = [r for r in runs if r.dataset in DATASET_NAMES and r.model in MODEL_NAMES]
    for dataset, model in sorted({(r.dataset, r.model) for r in known}):
        info = dataset_info(dataset, config["datasets"][dataset])
        try:
            check_model_compatible(model, info.in_channels, info.image_size, info.inputs)
        except ValueError as exc:
            problems.append(f"{_model_key(config, dataset, model)}: {exc}")
            continue
        try:  # token data: in_channels is the vocabulary, image_size the sequence length
            check_token_options(model, config["model_options"].get(model), info.in_channels, info.image_size,
                                dataset=dataset)
        except ValueError as exc:
            problems.append(f"{_model_key(config, dataset, model)}: {exc}")
    for label, model in sorted({(r.algorithm, r.model) for r in known
                                if config["algorithms"][r.algorithm]["name"] in ALGORITHM_NAMES}):
        try:
            check_algorithm_model(config["algorithms"][label]["name"], model)
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
        # a head that is the token embedding (char_gpt's tie_head) cannot be moved onto a projection head (MOON's
        # head: projection): build_model refuses it, here before any job
        with contextlib.suppress(TypeError, ValueError):  # a bad hyperparameter is reported above
            tied = (config["model_options"].get(model) or {}).get("tie_head")
            if tied and _added_model_options(config, label).get("projection_head"):
                problems.append(f"algorithms.{label}: its head: projection moves model {model}'s head onto a "
                                f"projection head, but model_options.{model}.tie_head: true makes that head the token "
                                f"embedding; set model_options.{model}.tie_head: false, or use head: side")
    for label, dataset in sorted({(r.algorithm, r.dataset) for r in known
                                  if config["algorithms"][r.algorithm]["name"] in ALGORITHM_NAMES}):
        try:
            check_algorithm_targets(config["algorithms"][label]["name"],
                                    resolved_targets(dataset, config["datasets"][dataset]),
                                    f"datasets.{dataset}.targets")
        except ValueError as exc:
            problems.append(f"algorithms.{label}: {exc}")
    problems += _sequential_augmentations(config, known)
    problems += _uncaptured_runs(config, known)
    if not problems:
        problems += _work_lists(config, runs)
    return problems


def stacked_reasons(config: dict, dataset: str, model: str, name: str, hparams: dict, training: dict,
                    who: str) -> list[str]:
    """Why clients of algorithm `name` (with `hparams`, as `who` in words) on `dataset` and `model` with the resolved
    `training` can only train one after another, as planning knows it without torch: an augmentation only sequential
    client training applies (SEQUENTIAL_AUGMENTATIONS: resized_crop), an algorithm whose local steps a stacked step
    does not compute (`AlgorithmSpec.sequential_only`) or does not compute for this model or these settings (the
    hyperparameters' `stacked_problem`), or clients that keep their optimiser state. (A model's batch norm without a
    stacked forward is found by the train job: it needs torch.) `fl.vectorized.resolve_client_parallel` decides the
    same from the built model."""
    reasons = []
    augment = (config["datasets"][dataset] or {}).get("augment")
    spec = algorithm_spec(name) if name in ALGORITHM_NAMES else None  # an unknown name is reported on its own
    if augment in SEQUENTIAL_AUGMENTATIONS:
        reasons.append(f"datasets.{dataset}.augment {augment} crops each image to its own size first")
    if spec is not None and spec.sequential_only:
        reasons.append(f"{who} needs {spec.sequential_only}")
    elif spec is not None:
        with contextlib.suppress(TypeError, ValueError):  # bad hyperparameters are reported on their own
            options = (config.get("model_options") or {}).get(model) or {}
            if need := algorithm_config(name, hparams).stacked_problem(model, options, training):
                reasons.append(f"{who} needs {need}")
    if training.get("keep_optimizer_state"):
        reasons.append("keep_optimizer_state keeps each client's optimiser state between rounds")
    return reasons


def planned_client_path(config: dict, dataset: str, model: str, name: str, hparams: dict, training: dict,
                        who: str) -> tuple[str, str] | None:
    """How the clients of algorithm `name` (`stacked_reasons`' arguments) train on a CUDA device, as planning knows
    it: (sequential or vectorized, how in words); None where `client_parallel: vectorized` cannot be honoured (refused
    on its own: `_sequential_augmentations`).

    `client_parallel: auto` stacks the clients' steps on a GPU unless `stacked_reasons` or AdamW (which auto trains one
    client after another) say otherwise, as `fl.vectorized.resolve_client_parallel` decides; only the built model can
    still send such a run one client after another (batch norm without a stacked forward: cnn_small's), which its
    train job then says."""
    mode = training["client_parallel"]
    if mode == "sequential":
        return "sequential", "one after another (client_parallel: sequential)"
    reasons = stacked_reasons(config, dataset, model, name, hparams, training, who)
    if mode == "vectorized":
        return None if reasons else ("vectorized", "stacked (client_parallel: vectorized)")
    if reasons:
        return "sequential", f"one after another (client_parallel auto: {reasons[0]})"
    if training["optimizer"] == "adamw":
        return "sequential", "one after another (client_parallel auto trains AdamW clients so)"
    return "vectorized", "stacked (client_parallel auto, on a GPU)"


def capture_problem(config: dict, dataset: str, model: str, name: str, hparams: dict, training: dict,
                    who: str) -> str | None:
    """Why `capture: cuda_graph` of the resolved `training` cannot be honoured for the clients of algorithm `name`
    (`stacked_reasons`' arguments): their local steps on the path they take (`planned_client_path`) are declared
    uncaptured (`fl.settings.UNCAPTURED_STEPS`, which the train job's checks read too); None where they are not, or
    `capture` is not cuda_graph (on a cpu device it is refused on its own: `check_training`)."""
    if training["capture"] != "cuda_graph" or training["device"] == "cpu" or name not in ALGORITHM_NAMES:
        return None
    planned = planned_client_path(config, dataset, model, name, hparams, training, who)
    if planned is None:
        return None
    path, how = planned
    strategy, optimizer = algorithm_spec(name).strategy, training["optimizer"]
    reason = uncaptured_steps(strategy, name, path, optimizer)
    if reason is None:
        return None
    hint = ""  # where only the config's `client_parallel: sequential` keeps the clients off the captured stacked path
    stacked = uncaptured_steps(strategy, name, "vectorized", optimizer)
    if training["client_parallel"] == "sequential" and stacked is None and not stacked_reasons(
            config, dataset, model, name, hparams, training, who):
        hint = ", or client_parallel: auto, whose stacked steps are captured"
    return (f"cuda_graph insists on captured local steps, but {who} trains its clients {how} and {reason}; set "
            f"capture: auto (captured steps where possible, eager ones elsewhere){hint}")


def _uncaptured_runs(config: dict, runs: list[Run]) -> list[str]:
    """`capture: cuda_graph` where the runs' local steps are never captured (`capture_problem`): refused here, before
    the partition and init jobs, where otherwise every train job of those runs would fail on the card."""
    problems = []
    for dataset, label, model in sorted({(r.dataset, r.algorithm, r.model) for r in runs}):
        entry = config["algorithms"][label]
        training = merge_training(config["training"], entry["training"])
        hparams = {k: v for k, v in entry.items() if k not in ("name", "training")}
        problem = capture_problem(config, dataset, model, entry["name"], hparams, training,
                                  f"algorithms.{label} ({entry['name']})")
        where = f"algorithms.{label}.training" if "capture" in entry["training"] else "training"
        if problem and f"{where}.capture: {problem}" not in problems:
            problems.append(f"{where}.capture: {problem}")
    return problems


def _sequential_augmentations(config: dict, runs: list[Run]) -> list[str]:
    """client_parallel vectorized asked for explicitly where the clients can only train one after another
    (`stacked_reasons`)."""
    problems = []
    for dataset, label, model in sorted({(r.dataset, r.algorithm, r.model) for r in runs}):
        overrides = config["algorithms"][label]["training"]
        merged = {**config["training"], **overrides}
        if merged.get("client_parallel") != "vectorized":
            continue
        where = f"algorithms.{label}.training" if "client_parallel" in overrides else "training"
        name = config["algorithms"][label]["name"]
        hparams = {k: v for k, v in config["algorithms"][label].items() if k not in ("name", "training")}
        reasons = stacked_reasons(config, dataset, model, name, hparams, merged, f"algorithm {name} ({label})")
        for reason in reasons:
            problem = (f"{where}.client_parallel: vectorized trains stacked clients' batches, but {reason} "
                       f"(sequential client training only); set client_parallel to auto or sequential")
            if problem not in problems:
                problems.append(problem)
    return problems


def _model_key(config: dict, dataset: str, model: str) -> str:
    """Where a run's model comes from: the experiments that name it for `dataset`, else `models`."""
    named = [f"experiments[{i}].model" for i, exp in enumerate(config.get("experiments") or [])
             if exp.get("model") == model and exp.get("dataset") in (None, dataset)]
    return ", ".join(named) if named and model not in config["models"] else "models"


def _work_lists(config: dict, runs: list[Run]) -> list[str]:
    """Local work given per client (a list) must name one value per client of every run it trains."""
    problems = []
    for label, clients in sorted({(r.algorithm, r.num_clients) for r in runs}):
        overrides = config["algorithms"][label]["training"]
        training = run_training(config, next(r for r in runs if r.algorithm == label))
        for key, problem in work_list_problems(training, clients, f"runs of algorithm {label!r}"):
            where = f"algorithms.{label}.training" if key in overrides else "training"
            problems.append(f"{where}.{key}: {problem}")
    return problems


def work_list_problems(training: dict, clients: int, who: str) -> list[tuple[str, str]]:
    """(work key, problem) where `training` gives local work per client for other than `clients` clients."""
    return [(key, f"{len(value)} values (one per client) but {who} have {clients} clients")
            for key in WORK_KEYS if isinstance(value := training.get(key), list | tuple) and len(value) != clients]


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: the runs are reached through the tables and analyses that read them."""
    return []
