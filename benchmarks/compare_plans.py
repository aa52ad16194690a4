"""Do two commits plan the same jobs with the same settings? A check for refactors of the workflow.

For each config (the default, every config/papers/*.yaml and tests/data/tiny_config.yaml unless named),
builds the DAG of `snakemake -n --forceall` in a copy of this checkout's workflow and in one of `--ref`
(a git worktree), and compares every job's rule, wildcards, inputs, outputs, log and params (also as
Snakemake records them, key order included: a reordered settings dict reruns the job).

    python benchmarks/compare_plans.py --ref HEAD~1
    python benchmarks/compare_plans.py --ref main config/papers/pilot.yaml

Prints one line per config and exits 1 when any plan differs. A config that uses what --ref does not know (a new key)
is compared as it was at --ref: what a user who ran it there plans after upgrading.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow", "config", "envs")
# params_text: the params as Snakemake records them (the sorted repr of each value, key order included), whose change
# reruns a job even where the settings are equal as mappings.
FIELDS = ("wildcards", "input", "output", "log", "params", "params_text")

# Runs in a fresh interpreter with the checkout's src on PYTHONPATH: prints the DAG's jobs as JSON.
SNAPSHOT = r"""
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings, StorageSettings
workdir, configfile = Path(sys.argv[1]), sys.argv[2]
os.chdir(workdir)
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                      config_settings=ConfigSettings(configfiles=[Path(configfile)]), snakefile=workdir / "Snakefile",
                      workdir=workdir)
    wf.dag(DAGSettings(forceall=True))
    workflow = wf._workflow
    workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = [{"rule": j.rule.name, "wildcards": dict(j.wildcards_dict), "output": sorted(map(str, j.output)),
             "input": sorted(map(str, j.input)), "log": sorted(map(str, j.log)), "params": dict(j.params.items()),
             "params_text": sorted(repr(v) for v in j.non_derived_params)}
            for j in workflow.dag.jobs]
print(json.dumps(jobs, default=str, sort_keys=True))
"""


def plan(tree: Path, configfile: Path, scratch: Path) -> dict[tuple, dict]:
    """The jobs the workflow in `tree` plans for `configfile`, keyed by rule and outputs."""
    workdir = Path(tempfile.mkdtemp(dir=scratch))
    for part in WORKFLOW_PARTS:
        src = tree / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, workdir / part)
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, "-c", SNAPSHOT, str(workdir), str(configfile)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"planning {configfile} in {tree} failed:\n{out.stderr[-3000:]}")
    return {(j["rule"], tuple(j["output"])): j for j in json.loads(out.stdout.splitlines()[-1])}


def compare(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two plans."""
    lines = [f"only in --ref: {k[0]} {k[1][:1]}" for k in sorted(set(old) - set(new))]
    lines += [f"only here: {k[0]} {k[1][:1]}" for k in sorted(set(new) - set(old))]
    for key in sorted(set(old) & set(new)):
        lines += [f"{key[0]} {key[1][:1]}: {field} differs" for field in FIELDS if old[key][field] != new[key][field]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git commit to compare this checkout with")
    parser.add_argument("configs", nargs="*", type=Path, help="configs (default: the shipped ones)")
    args = parser.parse_args()
    configs = args.configs or [ROOT / "config/config.yaml", *sorted((ROOT / "config/papers").glob("*.yaml")),
                               ROOT / "tests/data/tiny_config.yaml"]
    with tempfile.TemporaryDirectory() as scratch:
        ref_tree = Path(scratch) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(ref_tree), args.ref],
                       check=True, capture_output=True)
        try:
            failed = 0
            for config in configs:
                config = config.resolve()
                note = ""
                try:
                    old = plan(ref_tree, config, Path(scratch))
                except RuntimeError as exc:
                    # this checkout's config uses what --ref has not (a new key): compare the config as it was at
                    # --ref instead, which is what a user who ran it there plans after upgrading
                    config = ref_tree / config.relative_to(ROOT)
                    if not config.exists():
                        raise exc from None
                    old = plan(ref_tree, config, Path(scratch))
                    note = " (--ref cannot plan this checkout's version of it: compared as it was at --ref)"
                differences = compare(old, new := plan(ROOT, config, Path(scratch)))
                failed += bool(differences)
                name = config.relative_to(ref_tree if note else ROOT)
                print(f"{name}: {len(new)} jobs, "
                      f"{'same jobs and settings' if not differences else f'{len(differences)} differences'}{note}")
                for line in differences[:20]:
                    print("   ", line)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
