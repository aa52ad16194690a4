"""Wall time of the default workflow from scratch, where its jobs spend it, and the fixed cost of a job.

Runs `snakemake --cores N` on a copy of this checkout's workflow in a temporary directory and prints the
wall time, the sum of job times per rule (from Snakemake's log, 1 s resolution), and the fixed cost of the
light and the torch jobs (interpreter start, Snakemake's script preamble and imports, up to the library
call: each job logs it) against a bare `python -c pass` measured in the same run. With `--compare REF` it
does the same for another commit (a git worktree) first, on the same machine, and prints the ratio.

    python benchmarks/bench_workflow.py                      # this checkout only
    python benchmarks/bench_workflow.py --compare c3f29ef    # side by side with another commit
    python benchmarks/bench_workflow.py --compare c3f29ef --default-config benchmarks/configs/c3f29ef_default.yaml

`--default-config FILE` runs this checkout once more with FILE in place of its config/config.yaml (not
`--configfile`, which Snakemake merges into the default one): with the reference's own default config, the
same work as the reference's run.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, torch_line

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs", "profiles")
STARTED = re.compile(r"job started ([\d.]+) s after its process")
DONE = re.compile(r"job done in ([\d.]+) s")



def bare_interpreter(repeats: int = 7) -> float:
    """Median wall seconds of `python -c pass`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def job_seconds(workdir: Path) -> dict[str, list[float]]:
    """rule -> wall seconds of each of its jobs, from the timestamps of Snakemake's own log."""
    started, out = {}, collections.defaultdict(list)
    stamp = rule = None
    for log in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log")):
        for line in log.read_text().splitlines():
            if m := re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
                stamp = datetime.datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y")
            elif m := re.match(r"^(?:local)?rule (\w+):$", line):
                rule = (m[1], stamp)
            elif (m := re.match(r"^\s+jobid: (\d+)$", line)) and rule:
                started[m[1]], rule = rule, None
            elif (m := re.match(r"^Finished jobid: (\d+) ", line)) and m[1] in started:
                name, t0 = started.pop(m[1])
                out[name].append((stamp - t0).total_seconds())
    return out


def fixed_costs(workdir: Path) -> dict[str, list[float]]:
    """rule -> seconds from each job's process start to its library call (from the jobs' logs)."""
    out = collections.defaultdict(list)
    rules = {}
    for smk in (workdir / "rules").glob("*.smk"):
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), flags=re.M | re.S):
            rules[m[1]] = bool(re.search(r"localrule: True", m[2]))
    for log in (workdir / "logs").rglob("*.log"):
        if m := STARTED.search(log.read_text()):
            out[_rule_of(log, workdir)].append(float(m[1]))
    return out


def process_split(workdir: Path) -> tuple[float, float, int]:
    """(seconds from the jobs' process starts to their library calls, seconds in the library calls, jobs), summed
    over the jobs' logs: the fixed cost of starting jobs against the work they do."""
    started = done = 0.0
    jobs = 0
    for log in (workdir / "logs").rglob("*.log"):
        text = log.read_text()
        if (a := STARTED.search(text)) and (d := DONE.search(text)):
            started, done, jobs = started + float(a[1]), done + float(d[1]), jobs + 1
    return started, done, jobs


def _rule_of(log: Path, workdir: Path) -> str:
    """The rule a job log belongs to, from its file name or folder (logs mirror the results' layout)."""
    rel = log.relative_to(workdir / "logs")
    stem = log.stem
    if rel.parts[0] == "tables":
        return f"{stem}_table(s)"
    if rel.parts[0] == "figures":
        return "figure"
    if stem.startswith("chunk~"):
        return "landscape_chunk"
    return {"plane": "landscape_plane", "gather": "landscape_gather", "figure": "landscape_figure"}.get(
        stem, rel.parts[0] if rel.parts[0] in ("barriers",) else stem)


def run_workflow(tree: Path, cores: int, scratch: Path, default_config: Path | None = None) -> tuple[float, Path]:
    """Copy `tree`'s workflow to a fresh directory (with `default_config` as its config/config.yaml), run it from
    scratch; (wall seconds, workdir)."""
    workdir = Path(tempfile.mkdtemp(dir=scratch))
    for part in WORKFLOW_PARTS:
        src = tree / part
        if not src.exists():  # a part an older commit (a --compare reference) has not got yet, e.g. profiles/
            continue
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, workdir / part)
    if default_config is not None:
        shutil.copy2(default_config, workdir / "config" / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the workflow of {tree} failed:\n{proc.stderr[-3000:]}")
    return wall, workdir


def report(name: str, wall: float, workdir: Path, bare: float) -> None:
    jobs = job_seconds(workdir)
    total = sum(sum(v) for v in jobs.values())
    print(f"\n{name}: wall {wall:.0f} s ({wall / 60:.1f} min), {sum(map(len, jobs.values()))} jobs, "
          f"{total:.0f} job-seconds")
    print(f"  {'rule':30s} {'jobs':>5s} {'seconds':>8s}")
    for rule, secs in sorted(jobs.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {rule:30s} {len(secs):5d} {sum(secs):8.0f}")
    started, done, logged = process_split(workdir)
    if logged:  # jobs of commits before the jobs logged their start (c3f29ef) have nothing to split
        print(f"  in the {logged} jobs' processes: {started:.0f} s from process start to the library call "
              f"(interpreter, imports), {done:.0f} s in it; the remaining {total - started - done:.0f} job-seconds "
              "are Snakemake's (job set-up, output checks) and the log's 1 s resolution")
    costs = fixed_costs(workdir)
    if costs:
        print(f"  fixed cost per job (process start to library call), bare interpreter {bare:.2f} s:")
        for rule, secs in sorted(costs.items()):
            print(f"    {rule:28s} median {statistics.median(secs):5.2f} s  "
                  f"({statistics.median(secs) - bare:+.2f} s above bare, {len(secs)} jobs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REF", help="git commit to run first, side by side")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--default-config", type=Path, metavar="FILE",
                        help="also run this checkout with FILE as its config/config.yaml (the reference's default)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {torch_line()}; --cores {args.cores}")
    bare = bare_interpreter()
    print(f"bare interpreter (python -c pass): {bare:.3f} s")
    with tempfile.TemporaryDirectory() as scratch:
        results = []
        if args.compare:
            ref = Path(scratch) / "ref"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(ref), args.compare],
                           check=True, capture_output=True)
            try:
                results.append((f"{args.compare}", *run_workflow(ref, args.cores, Path(scratch))))
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], check=False)
        results.append(("this checkout", *run_workflow(ROOT, args.cores, Path(scratch))))
        if args.default_config:
            name = f"this checkout on {args.default_config.name}"
            results.append((name, *run_workflow(ROOT, args.cores, Path(scratch), args.default_config.resolve())))
        for name, wall, workdir in results:
            report(name, wall, workdir, bare)
        if args.compare:
            print()
            for name, wall, _ in results[1:]:
                print(f"wall time: {name} / {args.compare} = {wall / results[0][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
