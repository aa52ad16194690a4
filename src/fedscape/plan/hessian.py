"""Planning of the Hessian stage: which (run, round) jobs a config asks for, their settings and inputs,
the targets, and the checks of the `hessian` section."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedscape.analysis.hessian.definitions import (
    EXACT,
    HUTCHPP,
    JOB_FILES,
    PLANE_FILE,
    QUARTERS,
    HessianJob,
    HessianPlaneJob,
    HessianSettings,
    hutchpp_split,
    job_clients,
    resolve_trace_estimator,
)
from fedscape.core.config import ConfigError
from fedscape.core.jobs import job_params, recorded_settings
from fedscape.core.paths import HESSIAN_DIR, HESSIAN_FIGURE, Results
from fedscape.core.runs import select_runs, selector_values
from fedscape.data.specs import dataset_settings
from fedscape.models.specs import model_norm, piecewise_linear
from fedscape.plan.train import algorithm_model_options, rounds_of, unkept_round

FIGURES = ("lambda_trace_by_algorithm", "lambda_trace_by_init")
DENSITY_FIGURE = "spectral_density"
# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# 2: Hutchinson's `trace_stderr` from Hutchinson's variance estimated over whole probe vectors, not from the spread of
# the probes' z^T H z (too small at small budgets); every other number is as at 1.
# 3: HN and HD from unbiased inner products of the clients' diagonals (two halves of the probes), not from the
# squared norms of the estimates (biased up by their variance): a cosine clipped to [-1, 1], HD NaN where a client's
# diagonal is unresolved; every other number is as at 2.
# 4: HN from products of two independent estimates of each difference of squared norms (four quarters of the
# probes), not from the square of one (biased up by its variance: HN still fell with the probe count); HD from the
# same quarters (every pair of them); every other number is as at 3.
# A job's settings carry RESULT_VERSIONS["hessian"] plus SMALL_HUTCHPP_BUMPS where it computes with Hutch++ below 4
# residual probes but 4 probes in all (trace_probes 5 to 7 and 9), RESULT_VERSIONS["hessian"] otherwise: the bumps
# only those jobs have had (as plan.partition's EXACT_ZEROS_BUMPS). Bump RESULT_VERSIONS["hessian"] for a change of
# every job. SMALL_HUTCHPP_BUMPS 1: their diagonal is Hutchinson's over all the probes, which has four quarters where
# Diag++'s had none (HN and HD NaN). Only those jobs rerun: no other job's numbers changed (at 4 products neither
# diagonal has four quarters).
# MISALIGNED_HUTCHPP_BUMPS, on jobs with Hutch++ at 4 residual probes or more and k = trace_probes // 3 sketch columns
# not a multiple of 4 (100, 150, 200, 500 products): 1: Diag++'s residual probe i in quarter (k + i) % 4, where
# Hutchinson's diagonal over the same products has it, not in i % 4 (maths.ProbeMoments): where the clients chose
# different diagonals, a Diag++ client's quarter a and a Hutchinson client's quarter b != a shared probes and HD took
# the two Hessians' shared off-diagonal mass for diagonal agreement (0.749 for 0.733 on a synthetic pair). A job
# whose clients all kept one diagonal has its HN and HD to rounding (the same quarters, relabelled alike); the
# clients' choice is the data's, so every job of that budget carries the bump.
# Not bumped: Lanczos's invariant-subspace test relative to the operator's scale (maths.lanczos, BREAKDOWN), not
# absolute below 1. Its numbers differ only where a Hessian is too small for the old floor of 1e-10 (the largest
# ||H q|| below about 1e-3; a saturated softmax's, as a confidently fitted client's): most of those jobs failed
# ("rank < 2 along the start vector") and rerun as failed jobs do; which of the others had such a client is the
# data's, not their settings', and the whole kind's rerun (and the planes', whose eigenpairs are the same Lanczos's)
# was not worth their few numbers (on a saturated MLP, a second eigenvalue of 1.8e-10 moved by 0.3%; an aggregate's
# density had 7 nodes of 20 at a largest eigenvalue of 3.7e-7).
# Nor power iteration's convergence flags, which need its residual within tol of the value besides PyHessian's rule
# (maths.power_iteration): its products and every number are as they were, and the flags are in hessian.json and the
# job's warning alone, no table (a finished job keeps the flags it wrote).
# Not bumped either: the sharpness of a model whose perturbed point's logits overflowed (a NaN loss at finite weights,
# maths.sharpness), +inf where the NaN was dropped and the model read as flat (0 or the largest finite loss seen), and
# NaN where a perturbed point was not finite. Only the jobs whose loss overflowed somewhere in the ball change, which
# no setting tells at planning (as a barrier's +inf point, plan.barriers).
# hessian_plane: the eigenvector plane's jobs (it keys the eigenpairs a Hessian job keeps for them too: EigenStore).
# 1: the eigenpairs every Hessian job computed before the plane had a rule of its own (HessianPlaneJob.meaning).
# The figures 2: a participation fraction is labelled with every digit (0.125: 12.5% sampled, was 12%).
# The figures 3: the lambda_max / trace figures' title says "one seed" where each point is one (not "points: seeds");
# the density figure's panels of a dataset / model share one eigenvalue range, and its CSV writes a density below
# analysis.hessian.figures.DENSITY_FLOOR (subnormal) as 0.
RESULT_VERSIONS = {"hessian": 4, "hessian_plane": 1, "hessian_by_algorithm_figure": 3, "hessian_by_init_figure": 3,
                   "hessian_density_figure": 3, "hessian_tables": 1}
SMALL_HUTCHPP_BUMPS = 1
MISALIGNED_HUTCHPP_BUMPS = 1
# The trace_probes of a job with `trace_estimator: exact`, which takes none (its settings hold the field: a required
# one of the first results); the schema's default.
EXACT_TRACE_PROBES = 300


def settings_from_config(section: dict) -> HessianSettings:
    """HessianSettings from the config's `hessian` section (defaults already filled by the schema); `trace_estimator:
    auto` resolved by the budget, so a job's settings name the estimator it computes with."""
    density = section["density"]
    sharp = section["sharpness"]
    estimator = resolve_trace_estimator(section["trace_estimator"], section["trace_probes"])
    # an exact job takes no probes: the count it carries is fixed, so that changing trace_probes reruns none of them
    probes = EXACT_TRACE_PROBES if estimator == EXACT else section["trace_probes"]
    # the adaptive radius as rho's (null or the same number) is the baseline, left out of the job's settings
    adaptive_rho = None if sharp["adaptive_rho"] in (None, sharp["rho"]) else sharp["adaptive_rho"]
    return HessianSettings(
        top_k=section["top_k"], method=section["method"], tol=section["tol"], max_iter=section["max_iter"],
        trace_probes=probes, eval_samples=section["eval_samples"], batch_size=section["batch_size"],
        cache_graph=section["cache_graph"],
        trace_estimator=estimator,
        density=density["enabled"],
        density_steps=density["lanczos_steps"], density_probes=density["probes"],
        seed=section["seed"], sharpness=sharp["enabled"], sharpness_rho=sharp["rho"],
        sharpness_steps=sharp["steps"], sharpness_eta=sharp["eta"],
        precision=section["precision"], clients=section["clients"], sharpness_adaptive_rho=adaptive_rho,
        sharpness_method=sharp["method"],
    )


def _selectors(section: dict) -> list[dict] | None:
    runs = section["runs"]
    if runs == "all":
        return None
    return [runs] if isinstance(runs, dict) else list(runs)


def hessian_runs(config: dict, runs: list) -> list:
    """The runs the Hessian stage analyses: all of them, or those matching any selector of `hessian.runs`."""
    selectors = _selectors(config["hessian"])
    if selectors is None:
        return list(runs)
    chosen = set()
    for selector in selectors:
        chosen.update(select_runs(runs, selector))
    return sorted(chosen)


def hessian_rounds(config: dict, run) -> list[int]:
    """The rounds of `hessian.rounds` for one run, `final` resolved to its last round, sorted and unique."""
    final = rounds_of(config, run)
    return sorted({final if r == "final" else int(r) for r in config["hessian"]["rounds"]})


def hessian_jobs(config: dict, runs: list) -> list[tuple]:
    """Every (run, round) the stage evaluates (empty when the stage is disabled)."""
    if not config["hessian"]["enabled"]:
        return []
    return [(run, r) for run in hessian_runs(config, runs) for r in hessian_rounds(config, run)]


def check(config: dict, runs: list) -> list[str]:
    """Problems of the `hessian` section that the schema cannot express (one line each)."""
    section = config.get("hessian")
    if not section:
        return []
    problems = []
    try:
        settings = settings_from_config(section)
        if settings.top_k < 2:
            problems.append(f"hessian.top_k: the eigenvector plane needs the top 2 eigenvectors, got {settings.top_k}")
    except ValueError as exc:
        problems.append(f"hessian: {exc}")
    try:
        for i, selector in enumerate(_selectors(section) or []):  # (the schema takes non-empty mappings alone)
            if not select_runs(runs, selector):
                problems.append(f"hessian.runs[{i}]: no run of the config matches {selector}; "
                                f"{selector_values(runs, selector)}")
        chosen = hessian_runs(config, runs)
    except ConfigError as exc:
        problems.append(f"hessian.runs: {exc}")
        chosen = []
    if section["enabled"]:
        problems += exact_problems(config, chosen, "hessian.trace_estimator")
    for run in chosen:
        final = rounds_of(config, run)
        bad = [r for r in section["rounds"] if r != "final" and not 0 <= int(r) <= final]
        if bad:
            problems.append(f"hessian.rounds: rounds {bad} are outside 0..{final} (run {run.run_id} trains {final} "
                            "rounds); use `final` for the last round")
            break
        unkept = [p for r in section["rounds"] if r != "final" and (p := unkept_round(config, run, int(r)))]
        if unkept:
            problems.append(f"hessian.rounds: {unkept[0]}")
            break
    return problems


def exact_problems(config: dict, runs: list, where: str) -> list[str]:
    """`hessian.trace_estimator: exact` for Hessian jobs of `runs` whose model is not piecewise linear in its
    parameters (one line per model, prefixed by `where`: what plans the jobs)."""
    if config["hessian"]["trace_estimator"] != EXACT:
        return []
    problems = {}
    for run in runs:
        options = {**config["model_options"].get(run.model, {}), **algorithm_model_options(config, run)}
        if not piecewise_linear(run.model, options) and run.model not in problems:
            norm = model_norm(run.model, options)
            problems[run.model] = (
                f"{where}: hessian.trace_estimator exact takes the Hessian's diagonal from per-sample gradients, "
                f"which holds for models piecewise linear in their parameters (ReLU networks with batch norm or "
                f"none), not {run.model}{f' with {norm} norm' if norm else ''} (run {run.run_id}); use hutchinson, "
                "hutchpp or auto")
    return list(problems.values())


def _round_zero_key(config: dict, run) -> tuple:
    """What fixes a run's round-0 Hessian: its initial model (dataset, model, init, and what its algorithm adds to
    the model: MOON's projection head) and its data (the partition)."""
    added = tuple(sorted(algorithm_model_options(config, run).items()))
    return run.dataset, run.model, run.init, added, *run.partition_fields.values()


def shared_source(config: dict, runs: list, run, round_: int):
    """The run whose (run, round 0) job computes what this run's round-0 job would: the source of the analysed runs
    with the same initial model and partition (runs differing only in algorithm or participation: `_group_source`);
    None when this job computes itself (every round > 0, the group's source, and a job a Hessian landscape asks for
    where no analysed run shares its round 0)."""
    if int(round_) != 0:
        return None
    key = _round_zero_key(config, run)
    # rounds are resolved only for the runs of this group (hessian_jobs would resolve every run's, per job)
    group = [r for r in hessian_runs(config, runs)
             if _round_zero_key(config, r) == key and 0 in hessian_rounds(config, r)]
    source = _group_source(Results.of(config), group) if group else run
    return None if source == run else source


@dataclass
class _Records:
    """Snakemake's record of the Hessian jobs (`use_records`) and the source `_group_source` chose for each group."""

    recorded: Callable[[Mapping[str, Any]], list[str] | None] | None = None
    chosen: dict[tuple[str, ...], Any] = field(default_factory=dict)


_RECORDS = _Records()


def use_records(recorded: Callable[[Mapping[str, Any]], list[str] | None] | None) -> None:
    """Choose the source of each group of runs sharing a round-0 Hessian job by Snakemake's record (`_group_source`):
    `recorded` gives the params texts recorded for the Hessian job with the given wildcards, None without a record
    (the rule file's reader of READ_PARAMS); None: no records, the first run of each group is its source. Forgets the
    sources chosen so far."""
    _RECORDS.recorded = recorded
    _RECORDS.chosen.clear()


def _group_source(results: Results, group: list):
    """The run of `group` (the analysed runs with one round-0 model and partition, sorted) whose round-0 Hessian job
    computes, the others copying it: the first whose job Snakemake recorded as computing (`use_records`), else the
    first. The source of a finished group thus stays its source while it is in the group: which run sorts first
    changes as runs are added or dropped, and a copying job's settings and inputs name its source, so a new first
    run would rerun the finished jobs of the group, which compute the same numbers. Chosen once per group and
    process, so that every planner of a job (its inputs, settings, resources; `plan.resources.computes_on_device`)
    sees one source while the jobs that run write their records."""
    key = (results.root, *(run.run_id for run in group))
    if key not in _RECORDS.chosen:
        recorded = _RECORDS.recorded
        computing = [run for run in group
                     if recorded and _records_computing(recorded({**run.fields(), "round": 0}))]
        _RECORDS.chosen[key] = (computing or group)[0]
    return _RECORDS.chosen[key]


def _records_computing(texts: list[str] | None) -> bool:
    """Whether the params texts Snakemake recorded for a Hessian job are those of a job that computed: settings
    without `shared_from` (`make_hessian_job`)."""
    return any((value := recorded_settings(text)) is not None and "shared_from" not in value for text in texts or ())


def make_hessian_job(config: dict, runs: list, run, round_: int) -> HessianJob:
    """Everything one Hessian job needs, resolved; `shared_from`: the run id whose job's result this one copies
    (`shared_source`), None when it computes. A bound `hessian.clients` of at least the run's clients is `all` in
    the job (`job_clients`): the same job, so a bound set for a large grid leaves the smaller runs' jobs as they
    were."""
    source = shared_source(config, runs, run, round_)
    settings = settings_from_config(config["hessian"])
    return HessianJob(run=run.fields(), run_id=run.run_id, round=int(round_),
                      dataset_options=dataset_settings(run.dataset, config["datasets"][run.dataset]),
                      device=config["training"]["device"],
                      hessian=replace(settings, clients=job_clients(settings.clients, run.num_clients)),
                      shared_from=None if source is None else source.run_id)


def hessian_job_settings(config: dict, runs: list, run, round_: int, recorded: Iterable[str] | None = None) -> dict:
    """The settings of one Hessian job (`make_hessian_job`) as its rule's params carry them (Snakemake reruns the job
    when they change, not where they differ from its `recorded` params only in how it computes: `kept_record`)."""
    job = make_hessian_job(config, runs, run, round_)
    return job_params(job, hessian_result_version(job.hessian), recorded)


def hessian_result_version(settings: HessianSettings) -> int:
    """The result version of a Hessian job that computes with `settings`: RESULT_VERSIONS["hessian"], plus
    SMALL_HUTCHPP_BUMPS for Hutch++ below 4 residual probes, or MISALIGNED_HUTCHPP_BUMPS for Hutch++ whose sketch
    columns are not a multiple of 4 (at 4 residual probes or more: the two never meet)."""
    k, probes = hutchpp_split(settings.trace_probes)
    hutchpp = settings.trace_estimator == HUTCHPP
    # Diag++ without its four quarters where Hutchinson's over all k + m probes has them (at 4: neither has)
    small = hutchpp and probes < QUARTERS <= k + probes
    # Diag++'s quarters once shifted against Hutchinson's by k % 4 (a model of fewer than k parameters takes fewer
    # columns, hutchpp_split, which planning does not know: such a toy's jobs may carry the bump or lack it in vain)
    misaligned = hutchpp and probes >= QUARTERS and k % QUARTERS != 0
    return (RESULT_VERSIONS["hessian"] + (SMALL_HUTCHPP_BUMPS if small else 0)
            + (MISALIGNED_HUTCHPP_BUMPS if misaligned else 0))


def hessian_inputs(config: dict, runs: list, run, round_: int, unread: Callable[[str], Any] = str,
                   recorded: Callable[[str], list[str] | None] = lambda path: None) -> dict:
    """The job's inputs: the run's trajectory and partition, or, for a job that copies (`shared_source`), the
    outputs of the job it copies (`source_<key>`), and through `unread` (the rule's `ancient`) that job's plane where
    the job's record lists it (`recorded`: the inputs Snakemake recorded for a path's job, None without a record; see
    `plane_inputs`)."""
    results = Results.of(config)
    source = shared_source(config, runs, run, round_)
    if source is None:
        return _computing_inputs(results, run)
    source_plane = plane_path(results, source, round_)
    listed = recorded(_job_files(results, run, round_)["table"]) or ()
    return {**_source_outputs(results, source, round_),
            **({"source_plane": unread(source_plane)} if source_plane in listed else {})}


def _computing_inputs(results: Results, run) -> dict[str, str]:
    return {"trajectory": results.run_file(run, "trajectory"), "partition": results.partition_file(run)}


def _job_files(results: Results, run, round_: int) -> dict[str, str]:
    """The outputs of the Hessian job of (run, round), by JOB_FILES key."""
    job = results(HESSIAN_DIR, **run.fields(), round=int(round_))
    return {key: f"{job}/{name}" for key, name in JOB_FILES.items()}


def _source_outputs(results: Results, source, round_: int) -> dict[str, str]:
    return {f"source_{key}": path for key, path in _job_files(results, source, round_).items()}


def make_plane_job(config: dict, runs: list, run, round_: int) -> HessianPlaneJob:
    """The plane job of the Hessian job of (run, round) (`make_hessian_job`): its eigen settings alone."""
    return HessianPlaneJob.of(make_hessian_job(config, runs, run, round_))


def plane_job_settings(config: dict, runs: list, run, round_: int, recorded: Iterable[str] | None = None) -> dict:
    """The settings of one plane job (`make_plane_job`) as its rule's params carry them, kept at Snakemake's
    `recorded` text where they have its meaning (`kept_record`; a plane a Hessian job wrote keeps its record:
    HessianPlaneJob.meaning)."""
    return job_params(make_plane_job(config, runs, run, round_), RESULT_VERSIONS["hessian_plane"], recorded)


def plane_inputs(config: dict, runs: list, run, round_: int, unread: Callable[[str], Any] = str,
                 recorded: Callable[[str], list[str] | None] = lambda path: None) -> dict:
    """The plane job's inputs: the run's trajectory and partition, or the plane it copies (`source_plane`: of the
    run whose round-0 result the run's shares, `shared_source`).

    A job that copies keeps an input it does not read where its record lists it (`recorded`: the inputs Snakemake
    recorded for the job of a path, None without a record): the plane of a Hessian job that copied, written before
    the plane had a rule of its own, recorded that job's inputs (the five outputs of the job it copied), and a copying
    Hessian job the source's plane. Passed through `unread` (the rule's `ancient`), such an input keeps the job's input
    set, so that Snakemake's `input` trigger reruns nothing finished, and remade it reruns nothing. Only there:
    Snakemake (9.x) checks no reason of its own for a job downstream of a job it reruns that is reached from it only
    through ancient inputs, so that such an edge hides a landscape's changed settings in a call that reruns the
    Hessian job (the next call plans it). A job planned without such a record reads what it reads."""
    results = Results.of(config)
    source = shared_source(config, runs, run, round_)
    if source is None:
        return _computing_inputs(results, run)
    listed = set(recorded(plane_path(results, run, round_)) or ())
    unread_outputs = {key: unread(path) for key, path in _source_outputs(results, source, round_).items()
                      if path in listed}
    return {"source_plane": plane_path(results, source, round_), **unread_outputs}


def plane_path(results: Results, run, round_: int) -> str:
    """The eigenvector plane of (run, round): the plane job's output, which Hessian landscapes read."""
    return f"{results(HESSIAN_DIR, **run.fields(), round=round_)}/{PLANE_FILE}"


def job_dirs(config: dict, runs: list) -> list[str]:
    """The output directory of every Hessian job."""
    results = Results.of(config)
    return [results(HESSIAN_DIR, **run.fields(), round=r) for run, r in hessian_jobs(config, runs)]


def targets(config: dict, runs: list) -> list[str]:
    """The Hessian tables, the eigenvector planes and the figures, when the stage is enabled."""
    dirs = job_dirs(config, runs)
    if not dirs:
        return []
    results = Results.of(config)
    planes = [plane_path(results, run, r) for run, r in hessian_jobs(config, runs)]
    out = [results.table("hessian"), results.table("hessian_clients"), *planes]
    names = [*FIGURES, *([DENSITY_FIGURE] if config["hessian"]["density"]["enabled"] else [])]
    return out + [path for name in names for path in results.figure(HESSIAN_FIGURE, name=name).values()]
