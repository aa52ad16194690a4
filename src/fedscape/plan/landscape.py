"""Planning of the loss landscapes: the `landscapes` section resolved to runs, checked, and turned into
per-job settings, inputs and targets.

Each entry ``label -> spec`` is one plane with one surface per data set in ``spec.data``. Runs are
named by selectors (`fedscape.core.runs.select_runs` / `resolve_run`); an empty ``runs`` list means every
run of the config. Paths (all below ``<results_dir>/landscape/{dataset}/{model}/{label}/``): ``plane.npz``,
``points.csv``, ``grid.json``; per data set ``{data}/chunks/chunk~{i}.npz``, ``{data}/surface.npz``
and the figure ``{data}/surface.{pdf,png}`` with its data beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fedscape.analysis.landscape.definitions import (
    CHUNK_FILE,
    FIGURE_FILES,
    PLANE_FILE_KINDS,
    PLANE_FILES,
    SINGLE_RUN_KINDS,
    SURFACE_FILE,
    SURFACE_KINDS,
    LandscapeChunkJob,
    LandscapePlaneJob,
    PlaneCheckpoint,
    PlaneError,
    read_plane_file,
)
from fedscape.analysis.landscape.grid import chunk_bounds
from fedscape.core.config import ConfigError, with_result_version
from fedscape.core.jobs import job_params
from fedscape.core.paths import LANDSCAPE_DIR, SURFACE_DIR, Results, fill
from fedscape.core.runs import build_runs, iid_first, resolve_run, select_runs, selector_values, varying_fields
from fedscape.data.specs import dataset_settings
from fedscape.fl.settings import sample_clients
from fedscape.models.specs import BN_STATS_BASELINE
from fedscape.plan.hessian import plane_path
from fedscape.plan.train import (
    algorithm_model_options,
    bn_stats_setting,
    check_round,
    round_number,
    rounds_of,
    run_training,
)


@dataclass(frozen=True)
class Checkpoint:
    """One model of a run: its global model after `round` ('final' = the run's last round)."""

    run: object  # fedscape.plan.Run
    round: int | str


@dataclass(frozen=True)
class LandscapePlan:
    """One `landscapes` entry resolved against the runs of the config."""

    label: str
    kind: str
    runs: tuple  # fedscape.plan.Run, in selector order
    round: int | str  # 'final' or a round
    checkpoints: tuple[Checkpoint, ...]  # three_points only
    data: tuple[str, ...]  # data wildcard values: 'train', 'test', 'client~3'
    spec: dict = field(hash=False, compare=False)

    @property
    def dataset(self) -> str:
        return self.runs[0].dataset

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def data_run(self):
        """The run whose partition defines the training data (L) and the client shards (L_m)."""
        return self.runs[0]

    @property
    def directory(self) -> str:
        """The surface's directory, relative to the results directory."""
        return fill(LANDSCAPE_DIR, dataset=self.dataset, model=self.model, surface=self.label)

    def surface_id(self, data: str) -> str:
        return f"{self.label}/{data}"


def data_names(spec: dict) -> tuple[str, ...]:
    """The data wildcard values of a spec: train, test, client~<client>."""
    return tuple(f"client~{spec['client']}" if d == "client" else d for d in spec["data"])


def _select(runs: list, selectors: list, where: str) -> list:
    out = []
    for i, sel in enumerate(selectors or [{}]):  # no selector: every run
        if not isinstance(sel, dict):
            raise ConfigError(f"{where}[{i}]: a run selector is a mapping of run fields, e.g. "
                              f"{{alpha: iid, init: random}}; got {sel!r}")
        # one selector's matches from IID to the most skewed alpha (the pilot study's order: IID is the reference)
        hits = iid_first(select_runs(runs, sel))
        if not hits:
            raise ConfigError(f"{where}[{i}]: no run of the config matches {sel}; {selector_values(runs, sel)}")
        out.extend(r for r in hits if r not in out)
    return out


def _model_point(config: dict, checkpoint: Checkpoint) -> tuple:
    """What identifies a checkpoint's model: the run and round number, or for round 0 the init it starts from (runs
    of one init label share it, unless their algorithm adds to the model, e.g. MOON's projection head: then each
    seed's own)."""
    run, number = checkpoint.run, round_number(config, checkpoint.run, checkpoint.round)
    if number != 0:
        return (run.run_id, number)
    options = algorithm_model_options(config, run)
    return (run.dataset, run.model, run.init, tuple(sorted(options.items())), run.seed if options else None)


def _point_text(point: tuple) -> str:
    if len(point) == 2:
        return f"round {point[1]} of {point[0]}"
    return f"the init {point[2]} of {point[0]}/{point[1]} (round 0 of every run from it)"


def resolve_landscape(config: dict, runs: list, label: str) -> LandscapePlan:
    """The `landscapes.<label>` entry resolved to runs; ConfigError naming the key when it cannot work."""
    spec = config["landscapes"][label]
    where = f"landscapes.{label}"
    kind = spec["kind"]
    round_ = spec["round"]
    checkpoints: tuple[Checkpoint, ...] = ()
    if kind == "three_points":
        items = spec["checkpoints"]
        if len(items) != 3:
            raise ConfigError(f"{where}.checkpoints: kind three_points needs exactly 3 checkpoints, got {len(items)}")
        if spec["runs"]:
            raise ConfigError(f"{where}.runs: kind three_points names its runs in `checkpoints`; remove `runs`")
        cps = []
        for i, item in enumerate(items):
            if not isinstance(item["run"], dict) or not item["run"]:
                raise ConfigError(f"{where}.checkpoints[{i}].run: a run selector is a non-empty mapping of run fields")
            run = resolve_run(runs, item["run"], f"{where}.checkpoints[{i}].run")
            check_round(config, run, item["round"], f"{where}.checkpoints[{i}].round")
            cps.append(Checkpoint(run, item["round"]))
        # one model named twice would pass and fail the plane job on two identical points after training: 'final'
        # is the run's last round, and round 0 of runs from one init is that init
        points = [_model_point(config, c) for c in cps]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            if points[i] == points[j]:
                raise ConfigError(f"{where}.checkpoints: the three checkpoints must differ; [{i}] and [{j}] are both "
                                  f"{_point_text(points[i])} (rounds {cps[i].round!r} and {cps[j].round!r})")
        checkpoints = tuple(cps)
        selected = list(dict.fromkeys(c.run for c in cps))
    else:
        if spec["checkpoints"]:
            raise ConfigError(f"{where}.checkpoints: only kind three_points takes checkpoints (kind is {kind})")
        selected = _select(runs, spec["runs"], f"{where}.runs")
        if kind in SINGLE_RUN_KINDS and len(selected) != 1:
            raise ConfigError(f"{where}.runs: kind {kind} needs exactly one run, the selectors match {len(selected)}; "
                              f"add one of {varying_fields(selected)} to pick one")
        if kind == "final_models" and len(selected) < 3:
            raise ConfigError(f"{where}.runs: kind final_models needs at least 3 runs to span a plane, the selectors "
                              f"match {len(selected)}; use kind three_points to add e.g. the init")
        if kind == "trajectories" and len(selected) < 2:
            raise ConfigError(f"{where}.runs: kind trajectories needs at least 2 runs (use kind trajectory for one)")
        for run in selected:
            check_round(config, run, round_, f"{where}.round")
        if kind == "final_models":
            # round 0 of runs from one init is that init: the plane job would find its models all one point only
            # after every run has trained
            points = {_model_point(config, Checkpoint(run, round_)) for run in selected}
            if len(points) < 2:
                raise ConfigError(f"{where}.round: at round {round_!r} the {len(selected)} runs' models are all one "
                                  f"model, {_point_text(points.pop())}: runs from one init share their round-0 "
                                  f"model, so no plane goes through them; set a later round (e.g. final), or "
                                  f"select runs from different inits in {where}.runs")
        if kind in ("trajectory", "trajectories") and round_ == 0:
            raise ConfigError(f"{where}.round: a {kind} plane needs a round >= 1 (the PCA of the global models of "
                              f"rounds 0..round; round 0 is the initial model alone)")
    if not selected:
        raise ConfigError(f"{where}.runs: the config defines no runs")
    archs = {(r.dataset, r.model) for r in selected}
    if len(archs) > 1:
        raise ConfigError(f"{where}: all runs of one plane must share dataset and model, got "
                          f"{', '.join(sorted('/'.join(a) for a in archs))}")
    added = {r.algorithm: algorithm_model_options(config, r) for r in selected}
    if len({tuple(sorted(a.items())) for a in added.values()}) > 1:
        raise ConfigError(f"{where}: all runs of one plane must train the same network, but their algorithms add "
                          f"{added} to the model (MOON's head: projection puts the classifier on a projection head)")
    if kind == "local":
        run = selected[0]
        training = run_training(config, run)
        t = training["rounds"] if round_ == "final" else round_
        if t < 1:
            raise ConfigError(f"{where}.round: the local scope needs a round >= 1 (round t goes from the model "
                              f"after round t-1 to the clients' models of round t)")
        saved = list(training["save_clients_at"])
        if t not in saved:
            raise ConfigError(f"{where}.round: round {t} is not in training.save_clients_at {saved} of run "
                              f"{run.run_id}; add it there so the clients' models of that round are kept")
    if kind == "hessian" and spec["plane_file"] is None and round_ == "final":
        round_ = rounds_of(config, selected[0])  # the Hessian stage names its files by round number
    data_run = selected[0]
    client = spec["client"]
    if "client" in spec["data"] and not 0 <= client < data_run.num_clients:
        raise ConfigError(f"{where}.client: client {client} does not exist; run {data_run.run_id} has "
                          f"{data_run.num_clients} clients (0..{data_run.num_clients - 1})")
    if kind == "local" and "client" in spec["data"]:
        # the round's saved client models are those of the clients it sampled (the train stage draws them alike):
        # another client's surface L_m would be drawn with no model of that client on the plane (t: the local
        # scope's round, checked above)
        sampled = sample_clients(data_run.seed, t, data_run.num_clients, float(data_run.participation))
        if client not in sampled:
            raise ConfigError(f"{where}.client: client {client} does not train in round {t} of run "
                              f"{data_run.run_id} (participation {data_run.participation}: that round samples clients "
                              f"{sampled}), so the plane holds no model of it; set client to one of them, or pick "
                              f"another round")
    if bn_stats_setting(config, data_run, spec["bn_stats"]) != BN_STATS_BASELINE and spec["points_per_batch"] > 1:
        raise ConfigError(f"{where}.points_per_batch: bn_stats {spec['bn_stats']} gives every grid point its own "
                          f"batch-norm statistics, which a batched pass of {spec['points_per_batch']} points cannot "
                          f"hold; set points_per_batch: 1, or bn_stats: {BN_STATS_BASELINE}")
    resolution = spec["resolution"]
    chunks = spec["chunks"]
    # a chunk starts at a multiple of points_per_batch (chunk_bounds): more chunks than such groups leaves some empty
    groups = -(-resolution * resolution // int(spec["points_per_batch"]))
    if chunks > groups:
        raise ConfigError(f"{where}.chunks: {chunks} chunks for a {resolution}x{resolution} grid evaluated "
                          f"{spec['points_per_batch']} points at a time ({groups} such groups, each in one chunk): "
                          f"at most {groups}")
    span = spec["span"]
    if isinstance(span, list) and not (span[0] < span[1] and span[2] < span[3]):
        raise ConfigError(f"{where}.span: [amin, amax, bmin, bmax] needs amin < amax and bmin < bmax, got {span}")
    return LandscapePlan(label, kind, tuple(selected), round_, checkpoints, data_names(spec), spec)


def landscape_plans(config: dict, runs: list) -> list[LandscapePlan]:
    """Every `landscapes` entry resolved (raises the first ConfigError; check_config reports them all)."""
    return [resolve_landscape(config, runs, label) for label in config["landscapes"]]


# Grid points one chunk job may evaluate without `allow_large`: a 200 x 200 grid, about an hour of cnn_small on
# the digits on one CPU core; `resolution: 10000` in one chunk would be 1e8 points (weeks).
MAX_CHUNK_POINTS = 40_000


def bn_stats_uses(config: dict, runs: list, schema: dict) -> dict[str, tuple[str, str, set[str]]]:
    """Each landscape's `bn_stats`: its value, its default (the schema's) and its plane's model, for the warning on a
    setting nothing reads (`plan.workflow.unused_bn_stats`)."""
    default = schema["properties"]["landscapes"]["additionalProperties"]["properties"]["bn_stats"]["default"]
    return {f"landscapes.{plan.label}": (plan.spec["bn_stats"], default, {plan.data_run.model})
            for plan in landscape_plans(config, runs)}


# The kinds whose plane the models of several runs span, each run taken by a selector of `runs` (SINGLE_RUN_KINDS
# refuse a second run; three_points names each checkpoint's run alone, and `resolve_run` refuses a selector of several)
MULTI_RUN_KINDS = tuple(kind for kind in SURFACE_KINDS if kind not in (*SINGLE_RUN_KINDS, "three_points"))


def stage_warnings(config: dict, runs: list) -> list[str]:
    """The landscapes' lines among the config check's warnings (`plan.workflow.config_warnings`)."""
    return mixed_seed_warnings(config, runs)


def mixed_seed_warnings(config: dict, runs: list) -> list[str]:
    """A line for each landscape of MULTI_RUN_KINDS one of whose selectors names no seed and takes the runs of more
    than one: a second seed (`experiment_defaults: {seed: every}`, or a seed in `experiments`) widens such a plane
    silently (the default config's final_alphas: the final models of 3 alphas on 2 seeds, 6 models where 3 were
    meant). A warning, not a problem: several seeds on one plane is a valid choice."""
    lines = []
    for plan in landscape_plans(config, runs):
        if plan.kind not in MULTI_RUN_KINDS:
            continue
        selectors = plan.spec["runs"] or [{}]  # none: every run (`_select`)
        widened = [f"runs[{i}] {selector}" if plan.spec["runs"] else "runs [] (every run)"
                   for i, selector in enumerate(selectors)
                   if "seed" not in selector and len({run.seed for run in select_runs(runs, selector)}) > 1]
        if widened:
            seeds = sorted({run.seed for run in plan.runs})
            names, takes = ("names", "takes") if len(widened) == 1 else ("name", "take")
            lines.append(f"landscapes.{plan.label}: {', '.join(widened)} {names} no seed and {takes} the runs of "
                         f"seeds {', '.join(map(str, seeds))}, so its {plan.kind} plane is spanned by the models of "
                         f"{len(plan.runs)} runs, each seed's; for one seed's, add seed: {seeds[0]} to its runs "
                         "(several seeds on one plane is a valid choice: then leave it)")
    return lines


def check(config: dict, runs: list) -> list[str]:
    """Problems of the `landscapes` section that the schema cannot express."""
    problems = []
    for label, spec in config["landscapes"].items():
        try:
            resolve_landscape(config, runs, label)
        except ConfigError as exc:
            problems.append(str(exc))
        problems += _plane_file_problems(label, spec)
        points = int(spec["resolution"]) ** 2
        # the largest chunk as the chunk jobs split the grid (aligned to points_per_batch)
        per_chunk = max(stop - start for start, stop in chunk_bounds(points, int(spec["chunks"]),
                                                                      int(spec["points_per_batch"])))
        if per_chunk > MAX_CHUNK_POINTS and not spec["allow_large"]:
            problems.append(f"landscapes.{label}: resolution {spec['resolution']} gives {points:,} grid points, "
                            f"{per_chunk:,} per chunk in {spec['chunks']} chunk(s), each point a model evaluation on "
                            f"each data set; at most {MAX_CHUNK_POINTS:,} per chunk: raise `chunks` to at least "
                            f"{-(-points // MAX_CHUNK_POINTS)} or set `allow_large: true`")
    return problems


def _plane_file_problems(label: str, spec: dict) -> list[str]:
    """A `plane_file` that its kind would ignore, or that is no readable plane: checked here, not by the plane job
    that runs after training. Read once by `check` (not by `resolve_landscape`, which every rule's inputs call)."""
    path = spec["plane_file"]
    if not path:  # null or empty: the Hessian stage's plane (`hessian_plane_path`)
        return []
    where = f"landscapes.{label}.plane_file"
    kind = spec["kind"]
    if kind not in PLANE_FILE_KINDS:
        return [f"{where}: only kind {' or '.join(PLANE_FILE_KINDS)} reads a plane file; kind {kind} makes its own "
                f"plane: remove plane_file or set kind: {PLANE_FILE_KINDS[0]}"]
    if not Path(path).exists():
        return [f"{where}: plane file {path} does not exist (relative paths start at the working directory "
                f"{Path.cwd()}); point plane_file to a plane file (e.g. an eigen_plane.npz of the Hessian stage), or "
                "remove it to read the Hessian stage's plane of the run"]
    try:
        read_plane_file(path, supplied_as=where)
    except PlaneError as exc:
        return [f"{where}: {exc}"]
    return []


# -- per-job settings (typed job kinds, written by core.jobs.to_settings: Snakemake reruns a job when they change) --
def _round_value(value) -> int | str:
    return value if value == "final" else int(value)


def hessian_plane_path(plan: LandscapePlan, results: Results) -> str:
    """The plane file a hessian surface reads: `plane_file`, or the Hessian stage's eigenvector plane."""
    if plan.spec["plane_file"]:
        return str(plan.spec["plane_file"])
    return plane_path(results, plan.runs[0], plan.round)


# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# landscape_gather 2: the surface records the card and the precision its chunks were evaluated on (surfaces.csv).
# landscape_figure 2: the runs' labels are made by the figure job (figures.with_run_labels), not read from the plane
# job's points: a plane made before 0.125 read '12.5% sampled' draws it so.
# landscape_chunk is not bumped for a grid point whose float32 batch sum of losses overflowed: it is finite now
# (`models.evaluate.batch_loss_sum`; was +inf, at any points_per_batch for a sequence surface), and only such chunks
# change, which no setting tells at planning.
# landscape_figure 3: the plane drawn to scale (equal aspect, the figure sized from the extent; was stretched to a
# fixed size), a checkpoint far off the plane hollow (figures.OFF_PLANE).
# landscape_figure 4: a trajectory's rounds take its group's marker and the legend shows its line and that marker (was
# the final model's star on every run: runs of one setting, one colour, looked alike), the random init solid first.
RESULT_VERSIONS = {"landscape_plane": 1, "landscape_chunk": 1, "landscape_gather": 2, "landscape_figure": 4,
                   "surfaces_table": 1}
# A plane job's settings carry RESULT_VERSIONS["landscape_plane"] plus SUPPLIED_PLANE_EXTENT_BUMPS where it is a
# hessian plane read from a supplied `plane_file` with an automatic extent (`span: null`), and RANDOM_PLANE_STREAM_BUMPS
# where it is a random plane (kind random), as plan.partition's EXACT_ZEROS_BUMPS: the fixes that changed only those
# planes.
# SUPPLIED_PLANE_EXTENT_BUMPS 1: their automatic extent holds [-1, 1]^2 (grid.SQUARE_KINDS), where a supplied plane
# file's model projected off (0, 0), by a rounding of its centre or as another run's, made it that point's tiny box
# plus the margin. Random planes and the Hessian stage's own planes project their model to exactly (0, 0), so their
# extent did not change.
SUPPLIED_PLANE_EXTENT_BUMPS = 1
# RANDOM_PLANE_STREAM_BUMPS 1: the directions are drawn from a stream of the plane's seed of their own
# (planes._RANDOM_PLANE_STREAM), not from the numbers a `random` init of that seed draws its weights from. The random
# completion of a degenerate PCA plane keeps its seed: which planes have one is the checkpoints', not the settings'
# (and its one float64 draw over every parameter measured no correlation with an init's weights).
RANDOM_PLANE_STREAM_BUMPS = 1


def plane_version(spec: dict) -> int:
    """The result version of a plane job of the landscape `spec`: RESULT_VERSIONS["landscape_plane"], plus
    SUPPLIED_PLANE_EXTENT_BUMPS for a hessian plane of a supplied plane_file with an automatic extent, or
    RANDOM_PLANE_STREAM_BUMPS for a random plane."""
    supplied = spec["kind"] == "hessian" and bool(spec["plane_file"]) and spec["span"] is None
    return (RESULT_VERSIONS["landscape_plane"] + (SUPPLIED_PLANE_EXTENT_BUMPS if supplied else 0)
            + (RANDOM_PLANE_STREAM_BUMPS if spec["kind"] == "random" else 0))


def make_plane_job(config: dict, plan: LandscapePlan) -> LandscapePlaneJob:
    """Everything the plane job needs."""
    spec = plan.spec
    return LandscapePlaneJob(
        label=plan.label, kind=plan.kind, runs=tuple(r.run_id for r in plan.runs),
        run_fields=tuple(r.fields() for r in plan.runs), round=_round_value(plan.round),
        checkpoints=tuple(PlaneCheckpoint(run_id=c.run.run_id, round=_round_value(c.round))
                          for c in plan.checkpoints),
        center=spec["center"], seed=int(spec["seed"]), resolution=int(spec["resolution"]), span=spec["span"],
        margin=float(spec["margin"]), client=int(spec["client"]),
        plane_file=str(spec["plane_file"]) if spec["plane_file"] else None)


def plane_settings(config: dict, plan: LandscapePlan, recorded: Iterable[str] | None = None) -> dict:
    """The settings of the plane job (`make_plane_job`) as its rule's params carry them, kept at Snakemake's
    `recorded` text where they have its meaning (`kept_record`: a field its kind's plane does not read,
    `LandscapePlaneJob.meaning`, reruns nothing)."""
    return job_params(make_plane_job(config, plan), plane_version(plan.spec), recorded)


def surface_bn_stats(config: dict, plan: LandscapePlan) -> str:
    """The batch-norm statistics of a surface's grid points: `landscapes.<label>.bn_stats` where the plane's model
    has batch norm, else `stored`."""
    return bn_stats_setting(config, plan.data_run, plan.spec["bn_stats"])


def make_chunk_job(config: dict, plan: LandscapePlan, data: str, chunk: int) -> LandscapeChunkJob:
    """Everything one chunk job needs (the grid and plane come as input files)."""
    spec = plan.spec
    run = plan.data_run
    training = run_training(config, run)
    return LandscapeChunkJob(
        surface_id=plan.surface_id(data), dataset=run.dataset,
        dataset_options=dataset_settings(run.dataset, config["datasets"][run.dataset]),
        data=data, chunk=int(chunk), chunks=int(spec["chunks"]), points_per_batch=int(spec["points_per_batch"]),
        batch_size=int(training["eval_batch_size"]), device=training["device"], precision=spec["precision"],
        bn_stats=surface_bn_stats(config, plan))


def chunk_settings(config: dict, plan: LandscapePlan, data: str, chunk: int,
                   recorded: Iterable[str] | None = None) -> dict:
    """The settings of one chunk job (`make_chunk_job`) as its rule's params carry them (kept at its `recorded`
    params where they differ only in how it computes: `kept_record`)."""
    return job_params(make_chunk_job(config, plan, data, chunk), RESULT_VERSIONS["landscape_chunk"], recorded)


def surface_settings(config: dict, plan: LandscapePlan, data: str) -> dict:
    """What the gather job records about a surface (also the row of surfaces.csv)."""
    spec = plan.spec
    rounds = sorted({rounds_of(config, r) for r in plan.runs})
    if plan.kind == "three_points":
        round_ = None
    elif plan.round == "final":
        round_ = rounds[0] if len(rounds) == 1 else None
    else:
        round_ = int(plan.round)
    return with_result_version({
        "surface_id": plan.surface_id(data),
        "label": plan.label,
        "kind": plan.kind,
        "runs": [r.run_id for r in plan.runs],
        "round": round_,
        "data": data,
        "data_run": plan.data_run.run_id,
        "resolution": int(spec["resolution"]),
        "chunks": int(spec["chunks"]),
        # only where it is not the baseline: the surfaces gathered before the option keep their settings
        **({"bn_stats": bn} if (bn := surface_bn_stats(config, plan)) != BN_STATS_BASELINE else {}),
    }, RESULT_VERSIONS["landscape_gather"])


def figure_settings(config: dict, plan: LandscapePlan, data: str) -> dict:
    """What a landscape figure job draws with: the contour levels, and every heterogeneity setting of the
    workflow's runs, so that each setting has the colour it has in the other figures (a new one redraws them)."""
    spec = plan.spec
    return {"surface_id": plan.surface_id(data), "levels": int(spec["levels"]),
            "clip_loss": spec["clip_loss"], "run_settings": sorted({run.setting for run in build_runs(config)})}


def overlay_data(plan: LandscapePlan, data: str) -> str | None:
    """The local scope draws L_m's contour lines over L (pilot study Fig. 2b): the client surface, if any."""
    if plan.kind != "local" or data != "train":
        return None
    clients = [d for d in plan.data if d.startswith("client~")]
    return clients[0] if clients else None


# -- inputs and targets ---------------------------------------------------------------------------------
def plane_inputs(config: dict, plan: LandscapePlan) -> dict:
    """The trajectories of a plane's runs; the client models of the local scope; the Hessian plane file."""
    results = Results.of(config)
    inputs: dict = {"trajectories": [results.run_file(run, "trajectory") for run in plan.runs]}
    if plan.kind == "local":
        inputs["clients"] = results.run_file(plan.runs[0], "clients")
    if plan.kind == "hessian":
        inputs["hessian_plane"] = hessian_plane_path(plan, results)
    return inputs


def chunk_inputs(config: dict, plan: LandscapePlan, data: str) -> dict[str, str]:
    """A chunk job's plane and grid, and the partition that defines its data (for the test set only where the
    batch-norm statistics are recomputed from the training data)."""
    results = Results.of(config)
    plane_dir = results(plan.directory)
    inputs = {key: f"{plane_dir}/{PLANE_FILES[key]}" for key in ("plane", "grid")}
    if data != "test" or surface_bn_stats(config, plan) != BN_STATS_BASELINE:
        inputs["partition"] = results.partition_file(plan.data_run)
    return inputs


def chunk_files(config: dict, plan: LandscapePlan, data: str) -> list[str]:
    """Every chunk of one surface."""
    surface_dir = Results.of(config)(SURFACE_DIR, dataset=plan.dataset, model=plan.model, surface=plan.label,
                                     data=data)
    return [f"{surface_dir}/{CHUNK_FILE.format(chunk=i)}" for i in range(plan.spec["chunks"])]


def figure_inputs(config: dict, plan: LandscapePlan, data: str) -> dict[str, str]:
    """A figure's surface, and the surface of L_m drawn over L in the local scope."""
    results = Results.of(config)
    inputs = {"surface": f"{results(plan.directory)}/{data}/{SURFACE_FILE}"}
    other = overlay_data(plan, data)
    if other is not None:
        inputs["overlay"] = f"{results(plan.directory)}/{other}/{SURFACE_FILE}"
    return inputs


def surface_files(config: dict, runs: list, name: str) -> list[str]:
    """The file `name` (SURFACE_FILE, or one of FIGURE_FILES) of every surface of every plane."""
    results = Results.of(config)
    return [f"{results(plan.directory)}/{data}/{name}" for plan in landscape_plans(config, runs) for data in plan.data]


def targets(config: dict, runs: list) -> list[str]:
    """surfaces.csv and every surface's figure (PNG and PDF)."""
    if not config["landscapes"]:
        return []
    return [Results.of(config).table("surfaces"), *surface_files(config, runs, FIGURE_FILES["png"]),
            *surface_files(config, runs, FIGURE_FILES["pdf"])]
