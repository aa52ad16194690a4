"""The settings of every job a config plans (the rules' params), by stage: what the plan tests compare."""

from __future__ import annotations

from fedscape.analysis.barriers.definitions import InterpolationJob, LayerBarriersJob
from fedscape.analysis.client_stats.definitions import ClientStatsJob
from fedscape.analysis.hessian.definitions import HessianJob, HessianPlaneJob
from fedscape.analysis.landscape.definitions import LandscapeChunkJob, LandscapePlaneJob
from fedscape.core.jobs import JobSettings
from fedscape.core.runs import build_runs
from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
from fedscape.plan.client_stats import client_stats_params
from fedscape.plan.hessian import hessian_job_settings, hessian_jobs, plane_job_settings
from fedscape.plan.init import init_settings
from fedscape.plan.landscape import chunk_settings, landscape_plans, plane_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.stages.init_settings import InitJob
from fedscape.stages.partition_settings import PartitionJob
from fedscape.stages.train_settings import TrainJob

ANALYSIS_RULES = tuple(kind.rule for kind in (HessianJob, HessianPlaneJob, InterpolationJob, LayerBarriersJob,
                                              LandscapePlaneJob, LandscapeChunkJob))


def stage_settings(config: dict) -> list[tuple[type[JobSettings], dict]]:
    """Every job of the partition, init, train and client_stats rules that `config` (checked) plans, with its kind
    and its settings."""
    runs = build_runs(config)
    partitions = {(r.dataset, r.setting, r.num_clients, r.seed) for r in runs}
    for run in runs:
        spec = config["inits"][run.init]
        if spec["kind"] == "iid_warmup":  # the IID split its warm-up trains on
            partitions.add((run.dataset, "iid", spec["num_clients"], spec["partition_seed"]))
    jobs = [(PartitionJob, partition_settings(config, *p)) for p in sorted(partitions, key=str)]
    jobs += [(InitJob, init_settings(config, runs, *i)) for i in sorted({(r.dataset, r.model, r.init) for r in runs})]
    jobs += [(TrainJob, train_settings(config, run)) for run in runs]
    return [*jobs, (ClientStatsJob, client_stats_params(runs))]


def analysis_settings(config: dict) -> dict[str, list[dict]]:
    """The settings of every job of the analysis rules (ANALYSIS_RULES) that `config` (checked) plans, by rule."""
    runs = build_runs(config)
    jobs: dict[str, list[dict]] = {rule: [] for rule in ANALYSIS_RULES}
    hessian = list(hessian_jobs(config, runs))
    planes = landscape_plans(config, runs)
    # a hessian surface without a plane file reads the plane job of its run, planned even with the stage off (its
    # Hessian job, listed beside it, is not)
    hessian += [(p.runs[0], p.round) for p in planes if p.kind == "hessian" and not p.spec["plane_file"]]
    jobs["hessian"] = [hessian_job_settings(config, runs, run, r) for run, r in dict.fromkeys(hessian)]
    jobs["hessian_plane"] = [plane_job_settings(config, runs, run, r) for run, r in dict.fromkeys(hessian)]
    jobs["interpolation"] = [interpolation_settings(config, pair) for pair in interpolation_pairs(config, runs)]
    jobs["layer_barriers"] = [layer_settings(config, pair, r) for pair in layer_pairs(config, runs)
                              for r in pair.rounds]
    jobs["landscape_plane"] = [plane_settings(config, plan) for plan in planes]
    jobs["landscape_chunk"] = [chunk_settings(config, plan, data, i) for plan in planes for data in plan.data
                               for i in range(plan.spec["chunks"])]
    return jobs


def all_settings(config: dict) -> list[dict]:
    """The settings of every job `config` (checked) plans that carries settings: the stages' and the analyses'."""
    return [s for _, s in stage_settings(config)] + [s for jobs in analysis_settings(config).values() for s in jobs]


def neutral_rule_settings(config: dict, recorded: dict[tuple, list[str]] | None = None) -> dict[tuple, dict]:
    """The settings of every job of the rules whose kinds have neutral fields (init, train and the GPU analyses), by
    (rule, job) key, each planned with Snakemake's recorded params texts of that key in `recorded`."""
    recorded = recorded or {}
    runs = build_runs(config)
    jobs: dict[tuple, dict] = {}

    def plan(key: tuple, builder, *args) -> None:
        jobs[key] = builder(*args, recorded.get(key))

    for i in sorted({(r.dataset, r.model, r.init) for r in runs}):
        plan(("init", *i), init_settings, config, runs, *i)
    for run in runs:
        plan(("train", run.run_id), train_settings, config, run)
    for run, r in dict.fromkeys(hessian_jobs(config, runs)):
        plan(("hessian", run.run_id, r), hessian_job_settings, config, runs, run, r)
        plan(("hessian_plane", run.run_id, r), plane_job_settings, config, runs, run, r)
    for pair in interpolation_pairs(config, runs):
        plan(("interpolation", pair.label), interpolation_settings, config, pair)
    for pair in layer_pairs(config, runs):
        for r in pair.rounds:
            plan(("layer_barriers", pair.label, r), layer_settings, config, pair, r)
    for p in landscape_plans(config, runs):
        for data in p.data:
            for i in range(p.spec["chunks"]):
                plan(("landscape_chunk", p.label, data, i), chunk_settings, config, p, data, i)
    return jobs
