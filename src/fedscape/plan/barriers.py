"""Planning of the barrier analyses: the interpolation and layer-wise pairs named in the config.

Pairs of checkpoints are named by run selectors (`fedscape.core.runs.resolve_run`) and rounds; this
module resolves them, checks them and builds the per-job settings, inputs and targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedscape.analysis.barriers.definitions import (
    CONTROL_MODES,
    CUMULATION_MODES,
    INTERPOLATION_FILES,
    LAYER_FILES,
    PAIR_SEPARATOR,
    SPLITS,
    BarrierData,
    CurveSettings,
    InterpolationJob,
    LayerBarriersJob,
)
from fedscape.core.config import ConfigError, canonical
from fedscape.core.jobs import job_params
from fedscape.core.names import unknown_name_error
from fedscape.core.paths import (
    INTERPOLATION_DIR,
    INTERPOLATION_FIGURE,
    JOB_LOGS,
    LAYER_ALIGNED_FIGURE,
    LAYER_CUMULATION_FIGURE,
    LAYER_DISTANCE_FIGURE,
    LAYER_FIGURE,
    LAYER_TRAINING_FIGURE,
    LAYERWISE_DIR,
    Results,
)
from fedscape.core.runs import Run, resolve_run
from fedscape.data.specs import dataset_settings
from fedscape.fl.settings import sample_clients
from fedscape.models.specs import NO_PERMUTATION_SPEC
from fedscape.plan.train import (
    algorithm_model_options,
    bn_stats_setting,
    check_round,
    kept_rounds_of,
    round_number,
    rounds_of,
    run_training,
    unkept_round,
)

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# interpolation_tables 2: a barrier whose loss overflowed to +inf between finite ends is +inf with a +inf ratio (was
# NaN). Not bumped: layer_barriers, whose layer-wise ratios are now +inf there too and NaN over an end that overflowed
# (was -inf or NaN): only a pair whose float32 loss overflowed has other numbers, which of a kind's jobs had one is the
# data's, not their settings', and the kind's rerun (every layer-wise GPU job: 140 in layerwise.yaml) was not worth
# them. The figures 2 draw +inf (matplotlib left it out unseen); they and layer_distance_figure 2 label a
# participation fraction with every digit (0.125: 12.5% sampled, was 12%).
# Not bumped either, for the same reason: interpolation and layer_barriers, whose loss is finite where only a batch's
# float32 sum overflowed (models.evaluate.batch_loss_sum: was +inf at eval_batch_size 1024, finite at 256), and +inf
# with error 1 at a point of finite parameters whose logits overflowed (barriers.maths.evaluate_point: was NaN loss
# and error). Only the jobs whose loss overflowed somewhere change, which no setting tells at planning.
# layer_barrier_tables 2: the per-job rows of a layer_barriers 1 job over an end that overflowed read as the jobs
# compute them now (tables._over_ends: barrier NaN, was -inf or NaN; a +inf barrier's ratio +inf, was NaN).
# interpolation_tables 3, layer_barrier_tables 3: an error ratio over ends whose mean error is below
# definitions.RATIO_FLOORS is NaN (was the barrier over a fraction of a sample: 46.0 in the default run); t is written
# as the grid reads (definitions.grid_t: 0.15, was 0.15000000000000002). Not bumped: interpolation (t) and
# layer_barriers (the ratio), whose jobs now write them so and whose older files the table jobs read so (their rerun:
# every GPU job of the kind, for numbers the tables already correct).
# layer_barrier_figures, layer_cumulation_figures, layer_aligned_figures 3: each row (loss, error) one colour scale
# shared by its panels, each cell's value printed (was a scale per panel, no values). layer_training_figure 3: the
# loss and the error barrier in panels of their own (were twin axes, whose zeros differed).
RESULT_VERSIONS = {"interpolation": 1, "layer_barriers": 1, "interpolation_figure": 2, "layer_barrier_figures": 3,
                   "layer_distance_figure": 2, "layer_cumulation_figures": 3, "layer_aligned_figures": 3,
                   "layer_training_figure": 3, "interpolation_tables": 3, "layer_barrier_tables": 3,
                   "layer_consecutive_table": 1}
# An interpolation job's settings carry RESULT_VERSIONS["interpolation"] plus CURVE_DECAY_BUMPS where it trains a
# Bezier curve with weight decay above 0 (`interpolation.curve.weight_decay`), as plan.partition's EXACT_ZEROS_BUMPS:
# the fixes that changed only those jobs. 1: the bend decays as Garipov et al.'s curves do (0.5 wd ||phi(t)||^2 in
# the loss, gradient wd 2t(1-t) phi(t) on the bend; curve.train_bend), not by SGD's wd theta. At weight decay 0 (the
# default; no shipped config sets another) every number is as it was.
CURVE_DECAY_BUMPS = 1
# A layer-wise job's settings carry RESULT_VERSIONS["layer_barriers"] plus DIRECTION_STREAM_BUMPS where it runs a
# control mode (random_direction), as CURVE_DECAY_BUMPS: the fixes that changed only the rows of those modes.
# 1: each direction comes from a stream of `direction_seed` of its own (definitions._DIRECTION_STREAM; layer 0's first
# was mode random's layer order when both seeds were equal) and is scaled by an exactly summed norm, the same on every
# machine (BLAS split it over the machine's threads).
DIRECTION_STREAM_BUMPS = 1
# The clients a pair of one run compares when `clients` is null: the first two, which every run has (at least two
# clients are needed for a pair) and which both train every round under full participation.
DEFAULT_CLIENT_PAIR = (0, 1)


# -- plan: pairs named in the config ---------------------------------------------------------------
@dataclass(frozen=True)
class InterpolationPair:
    """Two checkpoints (run, round) to interpolate between; a round is an int or 'final'."""

    label: str
    run_a: Run
    run_b: Run
    round_a: int | str
    round_b: int | str


@dataclass(frozen=True)
class LayerPair:
    """Two models compared layer-wise over rounds: two clients of one run, two runs' global models, or one run's
    global models at consecutive rounds t and t + 1 (`rounds` holds t)."""

    label: str
    kind: str  # "clients", "runs" or "consecutive"
    run_a: Run
    run_b: Run | None  # None for a client pair and a consecutive pair
    clients: tuple[int, int]
    rounds: tuple[int, ...]

    @property
    def run_id(self) -> str:
        """The run_id column of layer_barriers.csv: the run, or 'run_a | run_b' for two runs."""
        return self.run_a.run_id if self.run_b is None else f"{self.run_a.run_id}{PAIR_SEPARATOR}{self.run_b.run_id}"


def _resolve(runs: list, selector, where: str):
    if not isinstance(selector, dict) or not selector:
        raise ConfigError(f"{where}: a run selector is a non-empty mapping of run fields, e.g. "
                          f"{{alpha: iid, init: random}}; got {selector!r}")
    return resolve_run(runs, selector, where)


def _same_architecture(config: dict, run_a, run_b, where: str) -> None:
    if (run_a.dataset, run_a.model) != (run_b.dataset, run_b.model):
        raise ConfigError(f"{where}: runs a and b must share dataset and model to be compared, got "
                          f"{run_a.dataset}/{run_a.model} and {run_b.dataset}/{run_b.model}")
    added_a, added_b = algorithm_model_options(config, run_a), algorithm_model_options(config, run_b)
    if added_a != added_b:
        raise ConfigError(f"{where}: runs a and b train different networks: algorithm {run_a.algorithm} adds "
                          f"{added_a or 'nothing'} to model {run_a.model}, {run_b.algorithm} adds "
                          f"{added_b or 'nothing'} (MOON's head: projection puts the classifier on a projection "
                          "head); compare runs whose algorithms build the same network")


def _check_alignable(config: dict, section: str, run, where: str) -> None:
    """ConfigError when `<section>.align` is on and the run's model has no weight-matching spec (the alignment job
    would fail after training): interpolation and layer_barriers refuse it alike."""
    if not config[section]["align"]:
        return
    if run.model in NO_PERMUTATION_SPEC:
        raise ConfigError(f"{where}: {section}.align cannot align model {run.model!r}: "
                          f"{NO_PERMUTATION_SPEC[run.model]}; set {section}.align: false for it")
    if algorithm_model_options(config, run):
        raise ConfigError(f"{where}: {section}.align has no weight-matching spec of the projection head that "
                          f"algorithm {run.algorithm} (MOON, head: projection) adds to model {run.model}; set "
                          f"{section}.align: false for it, or use head: side")


def interpolation_pair(config: dict, runs: list, label: str) -> InterpolationPair:
    """The interpolation pair `label` of the config, resolved to runs (ConfigError naming the key)."""
    spec = config["interpolation"]["pairs"][label]
    where = f"interpolation.pairs.{label}"
    run_a = _resolve(runs, spec["a"], f"{where}.a")
    run_b = _resolve(runs, spec["b"], f"{where}.b")
    _same_architecture(config, run_a, run_b, where)
    _check_alignable(config, "interpolation", run_a, where)
    round_a, round_b = spec["round_a"], spec["round_b"]
    check_round(config, run_a, round_a, f"{where}.round_a")
    check_round(config, run_b, round_b, f"{where}.round_b")
    # 'final' is the run's last round: resolved before comparing, or round_a: final, round_b: <last> would pass
    # and interpolate a checkpoint with itself (barrier 0 everywhere).
    number_a, number_b = round_number(config, run_a, round_a), round_number(config, run_b, round_b)
    if run_a == run_b and number_a == number_b:
        raise ConfigError(f"{where}: a and b name the same checkpoint ({run_a.run_id}, round {number_a}: "
                          f"round_a {round_a!r}, round_b {round_b!r})")
    return InterpolationPair(label, run_a, run_b, round_a, round_b)


def layer_pair(config: dict, runs: list, label: str) -> LayerPair:
    """The layer-wise pair `label` of the config with its rounds (ConfigError naming the key)."""
    section = config["layer_barriers"]
    spec, every = section["pairs"][label], section["every"]
    where = f"layer_barriers.pairs.{label}"
    has_run = spec["run"] is not None
    has_ab = spec["a"] is not None or spec["b"] is not None
    if has_run == has_ab:
        raise ConfigError(f"{where}: give either `run` (two clients of one run, with `clients`; or its global models "
                          "at consecutive rounds, with `consecutive: true`) or both `a` and `b` (the global models "
                          "of two runs)")
    explicit = spec["rounds"]
    if spec["clients"] is not None and (spec["consecutive"] or not has_run):
        compared = "global models at rounds t and t + 1" if spec["consecutive"] else "the global models of a and b"
        raise ConfigError(f"{where}.clients: this pair compares {compared}, not clients; drop `clients`, or give "
                          "`run` and `clients` without `consecutive` to compare two clients")
    if spec["consecutive"]:
        if not has_run:
            raise ConfigError(f"{where}.consecutive: compares the global models of one run at rounds t and t + 1; "
                              "give `run` instead of `a` and `b`")
        if not set(section["modes"]) - {"single", *CONTROL_MODES}:
            raise ConfigError(f"{where}.consecutive: the midpoint of rounds t and t + 1 is the full average, which "
                              f"only a cumulative mode computes; add one of shallow, deep, random or ends to "
                              f"layer_barriers.modes (now {list(section['modes'])})")
        run = _resolve(runs, spec["run"], f"{where}.run")
        last = rounds_of(config, run)
        kept = kept_rounds_of(config, run)
        if explicit == "all":  # every t whose models at t and t + 1 the run keeps (training.save_every)
            rounds = [r for r in range(last) if r % every == 0 and (kept is None or {r, r + 1} <= kept)]
        else:
            bad = [r for r in explicit if not 0 <= r < last]
            if bad:
                raise ConfigError(f"{where}.rounds: rounds {bad} are outside 0..{last - 1} (round t is compared "
                                  f"with t + 1; run {run.run_id} trains {last} rounds)")
            rounds = sorted(set(explicit))
            unkept = [p for r in rounds for t in (r, r + 1) if (p := unkept_round(config, run, t))]
            if unkept:
                raise ConfigError(f"{where}.rounds: {unkept[0]}")
        pair = LayerPair(label, "consecutive", run, None, (0, 1), ())
    elif has_run:
        run = _resolve(runs, spec["run"], f"{where}.run")
        training = run_training(config, run)
        clients = DEFAULT_CLIENT_PAIR if spec["clients"] is None else tuple(spec["clients"])
        if len(clients) != 2 or clients[0] == clients[1]:
            raise ConfigError(f"{where}.clients: name two different client ids, got {list(clients)}")
        bad = [c for c in clients if not 0 <= c < run.num_clients]
        if bad:
            raise ConfigError(f"{where}.clients: client ids {bad} are outside 0..{run.num_clients - 1} "
                              f"(run {run.run_id} has {run.num_clients} clients)")
        saved = sorted(set(training["save_clients_at"]))
        if not saved:
            raise ConfigError(f"{where}: run {run.run_id} saves no client models; list rounds in "
                              "training.save_clients_at")
        if explicit == "all":
            rounds = [r for r in saved if r % every == 0]
        else:
            missing = [r for r in explicit if r not in saved]
            if missing:
                raise ConfigError(f"{where}.rounds: rounds {missing} have no client checkpoints; "
                                  f"training.save_clients_at is {saved}")
            rounds = sorted(set(explicit))
        absent = [r for r in rounds for c in clients
                  if c not in sample_clients(run.seed, r, run.num_clients, float(run.participation))]
        if absent:
            raise ConfigError(f"{where}: clients {list(clients)} do not both take part in rounds "
                              f"{sorted(set(absent))} of run {run.run_id} (participation {run.participation}); "
                              "pick other clients or set `rounds`")
        pair = LayerPair(label, "clients", run, None, clients, ())
    else:
        if spec["a"] is None or spec["b"] is None:
            raise ConfigError(f"{where}: a pair of runs needs both `a` and `b`")
        run_a = _resolve(runs, spec["a"], f"{where}.a")
        run_b = _resolve(runs, spec["b"], f"{where}.b")
        if run_a == run_b:
            raise ConfigError(f"{where}: a and b select the same run {run_a.run_id}; use `run` and `clients` to "
                              "compare two clients of one run")
        _same_architecture(config, run_a, run_b, where)
        last = min(rounds_of(config, run_a), rounds_of(config, run_b))
        if explicit == "all":  # of the rounds whose global models both runs keep (training.save_every)
            kept = [k for k in (kept_rounds_of(config, run_a), kept_rounds_of(config, run_b)) if k is not None]
            rounds = [r for r in range(1, last + 1) if r % every == 0 and all(r in k for k in kept)]
        else:
            bad = [r for r in explicit if not 0 <= r <= last]
            if bad:
                raise ConfigError(f"{where}.rounds: rounds {bad} are outside 0..{last}")
            rounds = sorted(set(explicit))
            unkept = [p for r in rounds for run in (run_a, run_b) if (p := unkept_round(config, run, r))]
            if unkept:
                raise ConfigError(f"{where}.rounds: {unkept[0]}")
        pair = LayerPair(label, "runs", run_a, run_b, (0, 1), ())
    if not rounds:
        raise ConfigError(f"{where}: no round is left (every: {every}); lower layer_barriers.every or set `rounds`")
    _check_alignable(config, "layer_barriers", pair.run_a, where)
    return LayerPair(pair.label, pair.kind, pair.run_a, pair.run_b, pair.clients, tuple(rounds))


def interpolation_pairs(config: dict, runs: list) -> list[InterpolationPair]:
    return [interpolation_pair(config, runs, label) for label in config["interpolation"]["pairs"]]


def layer_pairs(config: dict, runs: list) -> list[LayerPair]:
    return [layer_pair(config, runs, label) for label in config["layer_barriers"]["pairs"]]


# The endings of a layer-wise pair's figure logs after its label (`{pair}_distances.log`, ...)
LAYER_LOG_SUFFIXES = tuple(sorted(
    {log.split("/barriers/layerwise/{pair}", 1)[1].removesuffix(".log") for log in JOB_LOGS.values()
     if "/barriers/layerwise/{pair}" in log} - {""}))


def bn_stats_uses(config: dict, runs: list[Run], schema: dict) -> dict[str, tuple[str, str, set[str]]]:
    """The `bn_stats` of the interpolation and layer_barriers sections that have pairs: its value, its default (the
    schema's) and the models of their pairs, for the warning on a setting nothing reads
    (`plan.workflow.unused_bn_stats`)."""
    uses = {}
    for section, pairs in (("interpolation", interpolation_pairs(config, runs)),
                           ("layer_barriers", layer_pairs(config, runs))):
        if pairs:
            default = schema["properties"][section]["properties"]["bn_stats"]["default"]
            uses[section] = (config[section]["bn_stats"], default, {pair.run_a.model for pair in pairs})
    return uses


def check(config: dict, runs: list) -> list[str]:
    """Problems of the interpolation and layer_barriers sections that the schema cannot express."""
    problems = []
    for label in config["interpolation"]["pairs"]:
        try:
            interpolation_pair(config, runs, label)
        except ConfigError as exc:
            problems.append(str(exc))
    for section in ("interpolation", "layer_barriers"):
        value = config[section]["eval_samples"]
        for name in value if isinstance(value, dict) else ():
            if name not in config["datasets"]:
                problems.append(f"{section}.eval_samples: {unknown_name_error('data set', name, config['datasets'])}")
    labels = config["layer_barriers"]["pairs"]
    for label in labels:
        try:
            layer_pair(config, runs, label)
        except ConfigError as exc:
            problems.append(str(exc))
        # a pair's figure logs are named after it plus a suffix (core.paths.JOB_LOGS): `x_distances` would write
        # the log (and the record of its outputs) that pair x's distance figure writes
        for suffix in LAYER_LOG_SUFFIXES:
            if label.endswith(suffix) and label[: -len(suffix)] in labels:
                problems.append(f"layer_barriers.pairs.{label}: a pair labelled {label[: -len(suffix)]}{suffix} "
                                f"beside pair {label[: -len(suffix)]} would share a log with that pair's figure "
                                f"(barriers/layerwise/{label}.log); name it without the ending {suffix}")
    return problems


def eval_samples(section: dict, run: Run) -> int | None:
    """The section's `eval_samples` for a pair of `run`'s data set: the value, or in its per-data-set form that data
    set's (None, every sample, where it is not named)."""
    value = section["eval_samples"]
    return value.get(run.dataset) if isinstance(value, dict) else value


def _data(config: dict, run: Run) -> BarrierData:
    """The data of a barrier job: the run's fields and its dataset's options (keys sorted, as a train job's)."""
    return BarrierData(run=canonical(run.fields()),
                       dataset_options=canonical(dataset_settings(run.dataset, config["datasets"][run.dataset])))


def make_interpolation_job(config: dict, pair: InterpolationPair) -> InterpolationJob:
    """Everything one interpolation job needs."""
    section = config["interpolation"]
    return InterpolationJob(
        pair_id=pair.label, run_a=pair.run_a.run_id, run_b=pair.run_b.run_id, round_a=pair.round_a,
        round_b=pair.round_b, points=section["points"], data=_data(config, pair.run_a),
        device=config["training"]["device"], eval_batch_size=config["training"]["eval_batch_size"],
        precision=section["precision"], bn_stats=bn_stats_setting(config, pair.run_a, section["bn_stats"]),
        align=bool(section["align"]), curve=curve_settings(section["curve"]),
        eval_samples=eval_samples(section, pair.run_a), eval_seed=section["eval_seed"])


def interpolation_settings(config: dict, pair: InterpolationPair, recorded: Iterable[str] | None = None) -> dict:
    """The settings of one interpolation job (`make_interpolation_job`) as its rule's params carry them (Snakemake
    reruns it when they change, not where they differ from its `recorded` params only in how it computes:
    `kept_record`)."""
    job = make_interpolation_job(config, pair)
    return job_params(job, interpolation_version(job.curve), recorded)


def interpolation_version(curve: CurveSettings | None) -> int:
    """The result version of an interpolation job with the Bezier settings `curve` (None: no curve):
    RESULT_VERSIONS["interpolation"], plus CURVE_DECAY_BUMPS for a curve trained with weight decay."""
    return RESULT_VERSIONS["interpolation"] + (CURVE_DECAY_BUMPS if curve is not None and curve.weight_decay > 0 else 0)


def curve_settings(section: dict) -> CurveSettings | None:
    """The Bezier curve's settings from `interpolation.curve` (defaults filled by the schema), None when off."""
    if not section["enabled"]:
        return None
    return CurveSettings(**{k: v for k, v in section.items() if k != "enabled"})


def make_layer_job(config: dict, pair: LayerPair, round_: int) -> LayerBarriersJob:
    """Everything one layer-wise job (one pair, one round) needs; the job itself drops the seeds of modes it does
    not run, and the subsets' seed where it evaluates every sample."""
    section = config["layer_barriers"]
    return LayerBarriersJob(
        pair=pair.label, kind=pair.kind, run_id=pair.run_id, round=int(round_), clients=pair.clients,
        data=_data(config, pair.run_a), device=config["training"]["device"],
        eval_batch_size=config["training"]["eval_batch_size"], precision=section["precision"],
        bn_stats=bn_stats_setting(config, pair.run_a, section["bn_stats"]), modes=tuple(section["modes"]),
        align=bool(section["align"]), order_seed=section["order_seed"], direction_seed=section["direction_seed"],
        direction_samples=section["direction_samples"], direction_moves=section["direction_moves"],
        eval_samples=eval_samples(section, pair.run_a), eval_seed=section["eval_seed"])


def layer_settings(config: dict, pair: LayerPair, round_: int, recorded: Iterable[str] | None = None) -> dict:
    """The settings of one layer-wise job (`make_layer_job`) as its rule's params carry them (kept at its `recorded`
    params where they differ only in how it computes: `kept_record`)."""
    job = make_layer_job(config, pair, round_)
    return job_params(job, layer_version(job.modes), recorded)


def layer_version(modes: Iterable[str]) -> int:
    """The result version of a layer-wise job of `modes`: RESULT_VERSIONS["layer_barriers"], plus
    DIRECTION_STREAM_BUMPS where it runs a control mode."""
    return RESULT_VERSIONS["layer_barriers"] + (DIRECTION_STREAM_BUMPS if set(CONTROL_MODES) & set(modes) else 0)


# -- inputs and targets -------------------------------------------------------------------------------
def interpolation_inputs(config: dict, pair: InterpolationPair) -> dict[str, str]:
    """The two trajectories of an interpolation pair and the partition of its first run (the train split)."""
    results = Results.of(config)
    return {"trajectory_a": results.run_file(pair.run_a, "trajectory"),
            "trajectory_b": results.run_file(pair.run_b, "trajectory"),
            "partition": results.partition_file(pair.run_a)}


def layerwise_inputs(config: dict, pair: LayerPair) -> dict[str, str]:
    """The checkpoints of a layer-wise pair (clients.pt, the second run's trajectory, or for consecutive rounds the
    run's trajectory alone) and its partition."""
    results = Results.of(config)
    inputs = {"trajectory_a": results.run_file(pair.run_a, "trajectory"),
              "partition": results.partition_file(pair.run_a)}
    if pair.kind == "clients":
        inputs["clients"] = results.run_file(pair.run_a, "clients")
    elif pair.kind == "runs":
        inputs["trajectory_b"] = results.run_file(pair.run_b, "trajectory")
    return inputs


def consecutive_pairs(config: dict, runs: list) -> list[str]:
    """The labels of the consecutive-round layer-wise pairs (layer_consecutive.csv's, in its row order), sorted: the
    order of `layer_barriers.pairs` in the YAML would change the table job's params."""
    return sorted(p.label for p in layer_pairs(config, runs) if p.kind == "consecutive")


def interpolation_curves(config: dict, runs: list) -> list[str]:
    """Every pair's curve.csv."""
    results = Results.of(config)
    return [f"{results(INTERPOLATION_DIR, pair=label)}/{INTERPOLATION_FILES['curve']}"
            for label in config["interpolation"]["pairs"]]


def layerwise_outputs(config: dict, runs: list, name: str) -> list[str]:
    """Every (pair, round)'s file `name` of LAYER_FILES (barriers, distances)."""
    results = Results.of(config)
    return [f"{results(LAYERWISE_DIR, pair=p.label, round=r)}/{LAYER_FILES[name]}" for p in layer_pairs(config, runs)
            for r in p.rounds]


def targets(config: dict, runs: list) -> list[str]:
    """The interpolation and layer-wise tables and figures of the pairs the config names."""
    results = Results.of(config)
    out: list[str] = []
    if config["interpolation"]["pairs"]:
        out += [results.table("interpolation"), results.table("barriers"),
                *results.figure(INTERPOLATION_FIGURE).values()]
    pairs = layer_pairs(config, runs)
    if pairs:
        out += [results.table("layer_barriers"), results.table("layer_distances")]
        out += [results.table("layer_consecutive")] if consecutive_pairs(config, runs) else []
        out += [path for p in pairs for split in SPLITS
                for path in results.figure(LAYER_FIGURE, pair=p.label, split=split).values()]
        out += [path for p in pairs for path in results.figure(LAYER_DISTANCE_FIGURE, pair=p.label).values()]
        out += [path for p in pairs for path in results.figure(LAYER_TRAINING_FIGURE, pair=p.label).values()]
        section = config["layer_barriers"]
        extra = [LAYER_CUMULATION_FIGURE] if set(section["modes"]) & set(CUMULATION_MODES) else []
        extra += [LAYER_ALIGNED_FIGURE] if section["align"] else []
        out += [path for figure in extra for p in pairs for split in SPLITS
                for path in results.figure(figure, pair=p.label, split=split).values()]
    return out
