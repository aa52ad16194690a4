"""What reruns and what does not, on a finished tiny run: a clone (new file dates for every script) and touched scripts
plan nothing; a bumped result version plans exactly its job kind's jobs and what is made from them, as does a changed
setting; the tables say which commit made each run."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.workflow import (
    ROOT,
    WORKFLOW_PARTS,
    copy_workflow,
    forcerun_targets,
    make_status,
    planned_jobs,
    snakemake,
    snakemake_records,
)

from fedscape.core.fingerprints import tree_fingerprint
from fedscape.core.manifest import MANIFEST, changed_outputs, code_version_label, output_records, read_records
from fedscape.data.locations import data_files
from fedscape.plan.workflow import result_versions
from fedscape.report.summary import APPENDED_COLUMNS

RESULTS_PARTS = ("results", "logs", ".snakemake", "tiny.yaml")  # what a user copies next to a fresh clone
# A bumped version of each of these plans its jobs and their descendants (each its plan module below src/fedscape)
BUMPED = {"train": "plan/train.py", "hessian": "plan/hessian.py", "hessian_plane": "plan/hessian.py",
          "landscape_chunk": "plan/landscape.py", "client_stats": "plan/client_stats.py",
          "partition": "plan/partition.py"}


@pytest.fixture(scope="module")
def clone(tiny_run, tmp_path_factory) -> Path:
    """A fresh copy of the workflow (every file of it dated now, as `git clone` leaves them) with the finished tiny
    run's results, logs and Snakemake metadata copied in, their dates kept."""
    workdir = copy_workflow(tmp_path_factory.mktemp("clone") / "fedscape")
    now = time.time() + 5  # newer than every result, as a clone made after the run is
    for part in WORKFLOW_PARTS:
        for path in [workdir / part, *(workdir / part).rglob("*")]:
            os.utime(path, (now, now))
    for part in RESULTS_PARTS:
        source = tiny_run / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, workdir / part)
    return workdir


def _nothing_planned(workdir: Path, *args: str) -> bool:
    proc = snakemake(workdir, "--configfile", "tiny.yaml", "-n", *args)
    return "Nothing to be done" in proc.stdout + proc.stderr


def test_a_fresh_clone_with_a_finished_run_copied_in_plans_nothing(clone):
    assert _nothing_planned(clone)
    # the code trigger, which the default profile leaves out, would plan the jobs again: the test can tell
    assert planned_jobs(clone, "--configfile", "tiny.yaml", "--rerun-triggers", "mtime", "params", "input",
                        "software-env", "code").get("train")


def test_touching_every_script_plans_nothing(clone):
    later = time.time() + 60
    for script in (clone / "workflow" / "scripts").glob("*.py"):
        os.utime(script, (later, later))

    assert _nothing_planned(clone)


def _with_bumped_version(tmp_path: Path, rule: str) -> dict[str, str]:
    """A copy of the library with `rule`'s result version one higher: the environment that imports it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "fedscape", src / "fedscape", ignore=shutil.ignore_patterns("__pycache__"))
    module = src / "fedscape" / BUMPED[rule]
    text = module.read_text()
    version = result_versions()[rule]
    bumped, count = re.subn(rf'"{rule}": {version}\b', f'"{rule}": {version + 1}', text)
    assert count == 1, f"{rule}'s version is not declared once in {module}"
    module.write_text(bumped)
    return {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("rule", sorted(BUMPED))
def test_bumping_a_result_version_plans_exactly_that_stage_and_its_descendants(clone, tmp_path, rule):
    # Prepare: what forcing the rule's jobs would remake (the rule's jobs and everything made from them)
    forced = planned_jobs(clone, "--configfile", "tiny.yaml", "--forcerun", rule)

    # Execute: the same finished run planned with the rule's result version bumped
    env = _with_bumped_version(tmp_path, rule)
    proc = snakemake(clone, "--configfile", "tiny.yaml", "-n", "--quiet", "rules", env=env, timeout=300)
    bumped = {parts[0]: int(parts[1]) for parts in map(str.split, (proc.stdout + proc.stderr).splitlines())
              if len(parts) == 2 and parts[1].isdigit()}

    # Assert: the same jobs, the rule's among them, and only because their params changed
    assert bumped == forced and bumped.get(rule), (bumped, forced)
    assert _nothing_planned(clone)  # the clone itself is untouched


def _hessian_changed(workdir: Path, name: str, **changes) -> str:
    """A copy of the tiny config, written as `name`, with `hessian` settings changed (the keys in their order)."""
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    cfg["hessian"].update(changes)
    (workdir / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def test_changing_one_setting_plans_exactly_the_jobs_it_affects(clone):
    probes = yaml.safe_load((clone / "tiny.yaml").read_text())["hessian"]["trace_probes"] + 1

    changed = planned_jobs(clone, "--configfile", _hessian_changed(clone, "probes.yaml", trace_probes=probes))
    forced = planned_jobs(clone, "--configfile", "tiny.yaml", "--forcerun", "hessian")

    # the Hessian jobs and their tables, not the eigenvector planes nor the Hessian landscape drawn on one
    assert changed == forced and changed.get("hessian")
    assert not {rule for rule in changed if rule == "hessian_plane" or rule.startswith("landscape")}


def test_changing_what_the_eigenpairs_depend_on_plans_the_planes_and_the_landscape_on_them(clone):
    seed = yaml.safe_load((clone / "tiny.yaml").read_text())["hessian"].get("seed", 0) + 1

    changed = planned_jobs(clone, "--configfile", _hessian_changed(clone, "seed.yaml", seed=seed))
    forced = planned_jobs(clone, "--configfile", "tiny.yaml", "--forcerun", "hessian", "hessian_plane")

    assert changed == forced and changed.get("hessian_plane") == changed.get("hessian")
    assert changed.get("landscape_plane") == 1


def test_moving_the_data_plans_nothing(clone):
    # Prepare: the finished run's config with its data elsewhere, fetchable, and a proxy folder of its own
    cfg = yaml.safe_load((clone / "tiny.yaml").read_text())
    cfg["datasets"]["digits"].update(data_dir="/scratch/elsewhere/digits", download=True)
    cfg["inits"]["pre"]["proxy_data_dir"] = "/scratch/elsewhere/proxy"
    (clone / "moved.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # Execute / Assert: a location is not meaning (data.specs.LOCATION_BASELINES) ...
    proc = snakemake(clone, "--configfile", "moved.yaml", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # ... while a dataset option that is plans every job that reads the data set
    cfg["datasets"]["digits"]["test_fraction"] = 0.3
    (clone / "changed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert planned_jobs(clone, "--configfile", "changed.yaml").get("partition")


def test_writing_out_defaults_plans_nothing_while_a_value_off_them_plans_its_jobs(clone):
    # Prepare: FedProx's mu and cnn_small's norm written at the values the jobs take without them, then mu off it
    cfg = yaml.safe_load((clone / "tiny.yaml").read_text())
    cfg["algorithms"]["fedprox"]["mu"] = 0.0001
    cfg["model_options"] = {"cnn_small": {"norm": "none"}}
    (clone / "defaults.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cfg["algorithms"]["fedprox"]["mu"] = 0.001
    (clone / "mu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # Execute / Assert: a default written out is what the jobs computed with (JobSettings.meaning) ...
    assert _nothing_planned(clone, "--configfile", "defaults.yaml")
    # ... while another mu plans the FedProx run (one of the three) and what reads it, no init
    changed = planned_jobs(clone, "--configfile", "mu.yaml")
    assert changed.get("train") == 1 and "init" not in changed


def _memory_lowered(workdir: Path, name: str, lr_factor: float = 1.0) -> str:
    """A copy of the tiny config, written as `name`, with every setting that bounds a job's device memory and changes
    only how it computes lowered (`JobSettings.neutral`), and the lr times `lr_factor`."""
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    cfg["training"].update(eval_batch_size=77, client_chunk_size=3, client_parallel="sequential", capture="eager")
    cfg["training"]["lr"] *= lr_factor
    cfg["hessian"].update(batch_size=33, cache_graph=False)
    (workdir / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def test_lowering_every_memory_setting_plans_nothing_while_another_change_plans_its_jobs(clone):
    # Execute / Assert: how jobs fit their card is not what they compute ...
    assert _nothing_planned(clone, "--configfile", _memory_lowered(clone, "memory.yaml"))
    # ... while an lr beside them plans every train job and what is made from them, as forcing them does
    changed = planned_jobs(clone, "--configfile", _memory_lowered(clone, "memory_lr.yaml", lr_factor=0.5))
    forced = planned_jobs(clone, "--configfile", "tiny.yaml", "--forcerun", "train")
    assert changed == forced and changed.get("train")


def test_a_job_run_again_computes_with_the_lowered_memory_settings_and_keeps_its_record(clone, tmp_path):
    # Prepare: a copy of the finished run and the config with its memory settings lowered
    workdir = shutil.copytree(clone, tmp_path / "copy", symlinks=True)
    config = _memory_lowered(workdir, "memory.yaml")
    jobs = sorted((workdir / "results" / "hessian").rglob("hessian.json"))
    runs = {path: path.stat().st_mtime_ns for path in (workdir / "results" / "train").rglob("meta.json")}

    # Execute: the Hessian jobs forced under it, and what they need
    snakemake(workdir, "--configfile", config, "--forcerun", "hessian", "--until", "hessian")

    # Assert: they computed with the lowered settings (their records say so), the runs they read were not trained
    # again, and no job's settings are out of date under either config
    for job in jobs:
        settings = json.loads(job.read_text())["settings"]
        assert (settings["batch_size"], settings["cache_graph"]) == (33, False), job
    records = [json.loads(p.read_text()) for p in (workdir / "results/_manifest/hessian").rglob("hessian.json")]
    assert len(records) == len(jobs)
    for record in records:  # and so do the jobs' records, while Snakemake's keeps the text of the run that made them
        hessian = record["settings"]["hessian"]
        assert (hessian["batch_size"], hessian["cache_graph"]) == (33, False), record["log"]
    assert runs and runs == {path: path.stat().st_mtime_ns for path in runs}
    for name in (config, "tiny.yaml"):
        proc = snakemake(workdir, "--configfile", name, "-n")
        assert _params_changed(proc.stdout + proc.stderr) == set(), name


def _params_changed(dry_run: str) -> set[str]:
    """The rules whose jobs a dry run plans because their params changed."""
    lines = dry_run.splitlines()
    start = next((i for i, line in enumerate(lines) if "params have changed since last execution" in line), None)
    return set() if start is None else {rule.strip() for rule in lines[start + 1].split(",")}


def test_every_rule_whose_jobs_read_a_data_set_gives_them_its_location(tiny_run):
    # the rules whose finished jobs' recorded params carry a data set's options (the tiny run has every stage)
    records = snakemake_records(tiny_run)
    reading = {r["rule"] for r in records if any("'dataset_options'" in p for p in r.get("params") or [])}
    giving = {s.stem for s in (tiny_run / "workflow" / "scripts").glob("*.py")
              if "with_data_locations(sm.params.settings, sm.config)" in s.read_text()}

    assert {"partition", "init", "train", "hessian"} <= reading
    assert giving == reading


def test_every_job_that_read_a_data_set_recorded_what_its_files_held(tiny_run):
    # the job records (core.manifest) of the jobs given a data location (data.locations.with_data_locations)
    records = [json.loads(p.read_text()) for p in (tiny_run / "results/_manifest").rglob("*.json")]
    reading = [r for r in records if r.get("data_locations")]
    root, names = data_files("digits", None)

    assert {Path(r["log"]).name for r in reading} >= {"partition.log", "init.log", "train.log", "hessian.log"}
    assert all(r["data"]["datasets.digits"]["sha256"] == tree_fingerprint(root, names).sha256 for r in reading)
    assert not any(r.get("data") for r in records if not r.get("data_locations"))


def test_the_tables_name_the_code_version_that_trained_each_run(tiny_run):
    rounds = pd.read_csv(tiny_run / "results/tables/rounds.csv", dtype={"code_version": str})
    final = pd.read_csv(tiny_run / "results/tables/final.csv", dtype={"code_version": str})

    # code_version closes rounds.csv, and final.csv up to the columns appended since (FinalColumns.appended)
    assert list(rounds.columns)[-1] == "code_version"
    assert list(final.columns)[len(final.columns) - len(APPENDED_COLUMNS) - 1:] == ["code_version", *APPENDED_COLUMNS]
    assert set(rounds["code_version"]) == set(final["code_version"]) == {code_version_label()}
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", code_version_label())


def test_status_lists_a_bumped_versions_results_with_the_command_that_remakes_only_them(clone, tmp_path):
    # Prepare: the Hessian's result version bumped
    env = _with_bumped_version(tmp_path, "hessian")
    hessian_csvs = sorted(str(p.relative_to(clone)) for p in (clone / "results/hessian").rglob("hessian.csv"))

    # Execute: `make status`'s command, before and after
    before, after = make_status(clone, "tiny.yaml"), make_status(clone, "tiny.yaml", env)

    # Assert: nothing to remake before; after, every Hessian job for its result version, and the forcerun command
    assert "out of date in meaning: 0 jobs" in before and "nothing to remake" in before
    assert "made from other data" not in before and "missing outputs" not in before
    assert "settings not compared" not in before
    assert f"out of date in meaning: {len(hessian_csvs)} jobs" in after
    assert after.count("(result version changed)") == len(hessian_csvs)
    assert next(line for line in after.splitlines() if "--forcerun" in line).split()[:4] == [
        "snakemake", "--cores", "all", "--configfile"]
    assert sorted(forcerun_targets(after)) == hessian_csvs
    assert "current: " in after and code_version_label()[:12] in after


def test_every_job_dates_its_outputs_within_its_run_so_that_status_reads_none_of_them(clone):
    """`make status` re-hashes only a recorded output dated outside its job's run (its record's start to end), or of
    another size that another output was recorded at: every rule's outputs, copied with their dates, are neither."""
    findings, hashed = changed_outputs(read_records(clone / "results"))

    assert (findings, hashed) == ([], 0)


def test_status_lists_a_job_whose_outputs_are_gone_with_the_command_that_remakes_it(clone, tmp_path):
    # Prepare: a copy of the finished run in which one train job's outputs are gone (as when a run is killed after
    # Snakemake deleted the old ones), while what was made from them is there
    workdir = shutil.copytree(clone, tmp_path / "copy", symlinks=True)
    record = next((workdir / "results" / MANIFEST / "train").rglob("train.json"))
    gone = sorted(f"results/{output}" for output in json.loads(record.read_text())["outputs"])  # below results/
    for output in gone:
        (workdir / output).unlink()

    # Execute
    status = make_status(workdir, "tiny.yaml")

    # Assert: Snakemake plans nothing; make status lists the job and forces it, which plans it
    assert _nothing_planned(workdir)
    assert "missing outputs: 1 job" in status and "out of date in meaning: 0 jobs" in status
    assert f"  {gone[0]} and {len(gone) - 1} more of its outputs (recorded by its job, not there now)" in status
    assert forcerun_targets(status) == [gone[0]]
    assert planned_jobs(workdir, "--configfile", "tiny.yaml", "--forcerun", gone[0])["train"] == 1


def test_status_without_snakemakes_metadata_says_it_cannot_compare_the_results_settings(clone, tmp_path):
    # Prepare: the finished run copied without Snakemake's metadata, and a config with another lr
    workdir = shutil.copytree(clone, tmp_path / "copy", symlinks=True)
    shutil.rmtree(workdir / ".snakemake" / "metadata")
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    cfg["training"]["lr"] /= 2
    (workdir / "lr.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # Execute
    status = make_status(workdir, "lr.yaml")

    # Assert: the changed lr plans nothing (Snakemake has no settings to compare), and status says so of every result
    recorded = len(output_records(workdir / "results"))
    assert "out of date in meaning: 0 jobs" in status
    assert f"settings not compared: {recorded} recorded results that Snakemake has no metadata for here" in status


def test_a_landscape_on_a_copied_plane_changed_with_the_trace_settings_in_one_call_is_planned(tmp_path):
    # Prepare: two runs of one init and partition (FedProx's round-0 Hessian and plane copy FedAvg's), and a Hessian
    # landscape on FedProx's round-0 plane, finished
    from helpers.workflow import TINY_CONFIG

    workdir = copy_workflow(tmp_path / "fedscape")
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg.update(alphas=["iid"], experiments=[{"alpha": "iid", "init": "random", "algorithm": name}
                                            for name in ("fedavg", "fedprox")])
    cfg["hessian"].update(runs="all", rounds=[0])
    cfg["landscapes"] = {"copied": {"kind": "hessian", "runs": [{"alpha": "iid", "algorithm": "fedprox"}], "round": 0,
                                    "resolution": 4, "span": 0.5}}
    for section in ("interpolation", "layer_barriers"):  # stages that read neither the Hessian nor a plane
        cfg.pop(section, None)
    (workdir / "copy.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # the Hessian jobs' table and the landscape's surface: every job of the two stages (no figure or table else)
    targets = ("results/tables/hessian.csv", "results/landscape/digits/cnn_small/copied/train/surface.png")
    snakemake(workdir, *targets, "--configfile", "copy.yaml")
    cfg["hessian"]["trace_probes"] += 1
    cfg["landscapes"]["copied"]["resolution"] = 5
    (workdir / "both.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # Execute
    planned = planned_jobs(workdir, "--configfile", "both.yaml", "--", *targets)

    # Assert: the Hessian jobs for the trace and the landscape for its grid, in one call; no plane. (Through an
    # ancient-only input from a Hessian job Snakemake would check no reason of the plane's descendants)
    assert planned.get("hessian") == 2 and planned.get("landscape_chunk") == 1
    assert "hessian_plane" not in planned
