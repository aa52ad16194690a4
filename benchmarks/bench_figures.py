"""Wall-clock seconds of every figure function of a finished workflow run, redrawn from its results.

Each figure job of the config (the functions the workflow/scripts/<rule>.py call, with the inputs and
parameters the rules give them) is called `--repeats` times on the tables of `--results`, writing below
`--out` in the same layout; the median wall and CPU seconds are printed per figure (CPU seconds of this
process: steadier than wall seconds on a machine shared with other work). `--check` compares every CSV written with the
one in `--results` byte for byte (a faster figure must draw the same data). `--profile NAME` runs one figure
under cProfile and prints its 25 most expensive calls. No torch is imported (as in the figure jobs).

    python benchmarks/bench_figures.py --results results --out /tmp/figs [--repeats 3] [--check]
        [--only hessian_density] [--profile client_stats]
"""

from __future__ import annotations

import argparse
import cProfile
import filecmp
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (the script's directory is on sys.path)

from fedscape.analysis.barriers.figures import (
    interpolation_figure_job,
    layer_barrier_figures_job,
    layer_distance_figure_job,
    layer_training_figure_job,
)
from fedscape.analysis.client_stats.figures import client_stats_figure_job
from fedscape.analysis.hessian.definitions import JOB_FILES
from fedscape.analysis.hessian.figures import (
    hessian_by_algorithm_figure_job,
    hessian_by_init_figure_job,
    hessian_density_figure_job,
)
from fedscape.analysis.landscape.figures import landscape_figure_job
from fedscape.core.paths import (
    ACCURACY_FIGURE,
    CLIENT_STATS_FIGURE,
    COST_FIGURE,
    CURVES_FIGURE,
    HESSIAN_FIGURE,
    INTERPOLATION_FIGURE,
    LAYER_DISTANCE_FIGURE,
    LAYER_FIGURE,
    LAYER_TRAINING_FIGURE,
    Results,
)
from fedscape.core.runs import build_runs
from fedscape.plan import barriers as barrier_plan
from fedscape.plan import hessian as hessian_plan
from fedscape.plan import landscape as landscape_plan
from fedscape.plan import report as report_plan
from fedscape.plan.workflow import load_config
from fedscape.report.figures import accuracy_figure_job, cost_figure_job, curves_figure_job

ROOT = Path(__file__).resolve().parents[1]
FIGURE_KEYS = ("png", "pdf", "csv")


def figure_jobs(config: dict, src: Results, dst: Results) -> dict[str, tuple[Callable[[], None], list[str]]]:
    """name -> (a call drawing the figure as its rule does, the CSVs it writes relative to the results)."""
    runs = build_runs(config)
    jobs: dict[str, tuple[Callable[[], None], list[str]]] = {}

    def rel(path: str) -> str:
        return os.path.relpath(path, dst.root)

    def outputs(prefix: str, **fields) -> dict[str, str]:
        out = dst.figure(prefix, **fields)
        Path(out["png"]).parent.mkdir(parents=True, exist_ok=True)
        return {k: out[k] for k in FIGURE_KEYS}

    lambda_trace_jobs = dict(zip(hessian_plan.FIGURES, (hessian_by_algorithm_figure_job, hessian_by_init_figure_job),
                                 strict=True))
    for name, job in lambda_trace_jobs.items():
        out = outputs(HESSIAN_FIGURE, name=name)
        jobs[f"hessian_{name}"] = (lambda out=out, job=job: job(src.table("hessian"), out), [rel(out["csv"])])
    if config["hessian"]["density"]["enabled"]:
        out = outputs(HESSIAN_FIGURE, name=hessian_plan.DENSITY_FIGURE)
        job_dirs = hessian_plan.job_dirs({**config, "results_dir": src.root}, runs)
        densities = [f"{d}/{JOB_FILES['density']}" for d in job_dirs]
        jobs["hessian_density"] = (lambda out=out: hessian_density_figure_job(densities, out), [rel(out["csv"])])
    out = outputs(CLIENT_STATS_FIGURE)
    jobs["client_stats"] = (
        lambda out=out: client_stats_figure_job(src.table("client_stats"), src.table("rounds"), out), [rel(out["csv"])])
    if barrier_plan.interpolation_pairs(config, runs):
        out = outputs(INTERPOLATION_FIGURE)
        jobs["interpolation"] = (lambda out=out: interpolation_figure_job(src.table("interpolation"), out),
                                 [rel(out["csv"])])
    for pair in barrier_plan.layer_pairs(config, runs):
        splits = {split: outputs(LAYER_FIGURE, pair=pair.label, split=split)
                  for split in ("train", "test")}
        flat = {f"{split}_{key}": path for split, out in splits.items() for key, path in out.items()}
        jobs[f"layer_barriers {pair.label}"] = (
            lambda pair=pair.label, flat=flat: layer_barrier_figures_job(src.table("layer_barriers"), pair, flat),
            [rel(o["csv"]) for o in splits.values()])
        out = outputs(LAYER_DISTANCE_FIGURE, pair=pair.label)
        jobs[f"layer_distances {pair.label}"] = (
            lambda out=out, pair=pair: layer_distance_figure_job(src.table("layer_distances"), pair.label, out,
                                                                 rounds=list(pair.rounds)), [rel(out["csv"])])
        out = outputs(LAYER_TRAINING_FIGURE, pair=pair.label)
        jobs[f"layer_training {pair.label}"] = (
            lambda out=out, pair=pair: layer_training_figure_job(
                src.table("layer_barriers"), src.table("layer_distances"), pair.label, out), [rel(out["csv"])])
    work = report_plan.local_work(config, runs)
    for dataset, model in sorted({(r.dataset, r.model) for r in runs}):
        for metric in report_plan.CURVE_METRICS:
            out = outputs(CURVES_FIGURE, dataset=dataset, model=model, metric=metric)
            jobs[f"curves {metric}"] = (lambda out=out, d=dataset, m=model, metric=metric: curves_figure_job(
                src.table("rounds"), d, m, metric, out["png"]), [rel(out["csv"])])
        for kind in report_plan.ACCURACY_KINDS:
            out = outputs(ACCURACY_FIGURE, dataset=dataset, model=model, kind=kind)
            jobs[f"accuracy {kind}"] = (lambda out=out, d=dataset, m=model, kind=kind: accuracy_figure_job(
                src.table("final"), kind, d, m, out["png"], work), [rel(out["csv"])])
        out = outputs(COST_FIGURE, dataset=dataset, model=model)
        jobs["cost"] = (lambda out=out, d=dataset, m=model: cost_figure_job(src.table("cost"), d, m, out["png"]),
                        [rel(out["csv"])])
    for plan in landscape_plan.landscape_plans(config, runs):
        for data in plan.data:
            source = landscape_plan.figure_inputs({**config, "results_dir": src.root}, plan, data)
            base = Path(dst(plan.directory), data)
            base.mkdir(parents=True, exist_ok=True)
            out = {"pdf": f"{base}/surface.pdf", "png": f"{base}/surface.png",
                   "grid_csv": f"{base}/surface_grid.csv", "points_csv": f"{base}/surface_points.csv"}
            settings = landscape_plan.figure_settings(config, plan, data)
            jobs[f"landscape {plan.label}/{data}"] = (
                lambda settings=settings, source=source, out=out: landscape_figure_job(
                    settings, source["surface"], source.get("overlay"), out),
                [rel(out["grid_csv"]), rel(out["points_csv"])])
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config/config.yaml"))
    parser.add_argument("--results", default="results", help="a finished run's results directory (read only)")
    parser.add_argument("--out", required=True, help="where the redrawn figures go")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="figures whose name starts with one of these")
    parser.add_argument("--check", action="store_true", help="compare every CSV with the one in --results")
    parser.add_argument("--profile", help="run this figure once under cProfile")
    args = parser.parse_args()

    config = load_config(args.config, ROOT / "workflow/schemas/config.schema.yaml")
    src, dst = Results(os.path.normpath(args.results)), Results(os.path.normpath(args.out))
    jobs = figure_jobs(config, src, dst)
    if args.only:
        jobs = {k: v for k, v in jobs.items() if k.startswith(tuple(args.only))}
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(jobs[args.profile][0])
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
        return
    print(f"CPU: {cpu_model()}; median of {args.repeats} calls: wall seconds, CPU seconds of this process")
    total, total_cpu, failed = 0.0, 0.0, []
    for name, (draw, csvs) in jobs.items():
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            draw()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        median, median_cpu = statistics.median(times), statistics.median(cpu)
        total, total_cpu = total + median, total_cpu + median_cpu
        same = ""
        if args.check:
            diff = [c for c in csvs if not filecmp.cmp(Path(src.root, c), Path(dst.root, c), shallow=False)]
            failed += diff
            same = "  csv identical" if not diff else f"  CSV DIFFERS: {', '.join(diff)}"
        print(f"{name:40s} {median:7.2f} {median_cpu:7.2f}{same}", flush=True)
    print(f"{'total':40s} {total:7.2f} {total_cpu:7.2f}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
