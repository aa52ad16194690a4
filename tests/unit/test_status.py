"""`make status`: a dry run's jobs sorted by why they would run, current results by the commit that made them, the
recorded outputs not there now and those whose settings Snakemake cannot compare; the config read from the arguments
as Snakemake reads them."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import yaml
from helpers.configs import SCHEMA, config_with
from helpers.workflow import ROOT, TINY_CONFIG

from fedscape.core.config import ConfigError
from fedscape.core.io import remake_alone_hint, remake_hint
from fedscape.core.logs import job_log
from fedscape.core.manifest import Finding
from fedscape.plan import status
from fedscape.plan.status import (
    PlannedJob,
    missing_jobs,
    parse_dry_run,
    report,
    snakemake_args,
    uncompared_outputs,
    workflow_config,
)
from fedscape.plan.workflow import check_config, config_partition_files, partition_problems

# Snakemake's words for a params change (snakemake.persistence.ParamsChange), before and now to fill in
PARAMS_CHANGE = ("Params have changed since last execution: Union of exclusive params before and now across all "
                 "output: before: {} now: {}")

DRY_RUN = """Building DAG of jobs...
Job stats:
job      count
hessian      2

[Mon Nov 23 14:57:18 2026]
rule hessian:
    input: results/train/a/trajectory.pt
    output: results/hessian/a/round~0/hessian.csv, results/hessian/a/round~0/hessian.json
    log: logs/hessian/a/round~0/hessian.log
    jobid: 3
    reason: Params have changed since last execution: before: {'run_id': 'a'} now: {'run_id': 'a', 'result_version': 2}
    wildcards: round=0
[Mon Nov 23 14:57:18 2026]
rule hessian:
    output: results/hessian/b/round~0/hessian.csv
    reason: Params have changed since last execution: before: {'trace_probes': 8} now: {'trace_probes': 9}
[Mon Nov 23 14:57:18 2026]
localrule hessian_tables:
    input: results/hessian/a/round~0/hessian.csv
    output: results/tables/hessian.csv
    reason: Input files updated by another job: results/hessian/a/round~0/hessian.csv
[Mon Nov 23 14:57:18 2026]
rule train:
    output: results/train/c/trajectory.pt
    reason: Missing output files: results/train/c/trajectory.pt
[Mon Nov 23 14:57:18 2026]
localrule summary_table:
    output: results/tables/summary.csv
    reason: Updated input files: results/tables/final.csv
[Mon Nov 23 14:57:18 2026]
localrule all:
    input: results/tables/summary.csv
    reason: Input files updated by another job: results/tables/summary.csv
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_a_dry_runs_jobs_are_parsed_with_their_outputs_and_reasons():
    jobs = parse_dry_run(DRY_RUN)

    assert [j.rule for j in jobs] == ["hessian", "hessian", "hessian_tables", "train", "summary_table"]
    assert jobs[0].outputs == ["results/hessian/a/round~0/hessian.csv", "results/hessian/a/round~0/hessian.json"]
    assert [j.kind for j in jobs] == ["meaning", "meaning", "made from", "missing", "dates"]
    assert [j.result_version_changed for j in jobs[:2]] == [True, False]


@pytest.mark.parametrize(("rule", "before", "now", "changed"), [
    # a job's settings carry its version: a settings change at version 4, and a bump
    ("hessian", "{'trace_probes': 8, 'result_version': 4}", "{'trace_probes': 9, 'result_version': 4}", False),
    ("hessian", "{'trace_probes': 8, 'result_version': 4}", "{'trace_probes': 8, 'result_version': 5}", True),
    # the first version is no key: a first bump, a settings change at the first version, and back to it
    ("train", "{'lr': 0.05}", "{'lr': 0.05, 'result_version': 2}", True),
    ("train", "{'lr': 0.05}", "{'lr': 0.04}", False),
    ("partition", "{'alpha': 0.05, 'result_version': 2}", "{'alpha': 0.05}", True),
    # the train job's other param (where it keeps its progress) is no version
    ("train", "'/a/progress'", "'/b/progress'", False),
    # a rule without settings has its version as its param, none at the first version
    ("summary_table", "2", "3", True),
    ("final_table", "<nothing exclusive>", "2", True),
    # client statistics: its runs and its version, each a param; a version both share is in neither
    ("client_stats", "['a']", "['a', 'b']", False),
    ("client_stats", "['a'],2", "['a', 'b'],3", True),
    # outputs recorded at two versions, one of them the version now
    ("hessian", "{'x': 1, 'result_version': 3},{'x': 1, 'result_version': 4}", "{'x': 2, 'result_version': 4}", True),
    # a rule without a result version: a number among its params is no version
    ("all", "5", "6", False),
    # params that are no Python literal: no version to read
    ("hessian", "{'x': inf, 'result_version': 4}", "{'x': 1.0, 'result_version': 5}", False),
])
def test_a_result_version_changed_when_the_recorded_and_the_planned_versions_differ(rule, before, now, changed):
    assert PlannedJob(rule, ["x"], PARAMS_CHANGE.format(before, now)).result_version_changed is changed


@pytest.mark.parametrize("reason", [
    "Missing output files: x; " + PARAMS_CHANGE.format("2", "3"),
    PARAMS_CHANGE.format("2", "3") + " ; Software environment definition has changed since last execution",
])
def test_the_params_change_is_read_among_other_reasons(reason):
    assert PlannedJob("summary_table", ["x"], reason).result_version_changed


@pytest.mark.parametrize(("reason", "kind"), [
    ("Set of input files has changed since last execution", "meaning"),
    ("Forced execution", "other"),
    ("Missing output files: x; Params have changed since last execution", "meaning"),
    ("Incomplete output files", "other"),
    # Snakemake 9: a new job made from another new job
    ("Missing output files: x; Input files updated by another job: y", "missing"),
    ("Input files updated by another job: y; Updated input files: z", "made from"),
])
def test_each_reason_falls_into_its_class(reason, kind):
    assert PlannedJob("r", ["x"], reason).kind == kind


@pytest.mark.parametrize(("reason", "why"), [
    ("Input files updated by another job: y; Set of input files has changed since last execution",
     "set of input files has changed since last execution"),
    ("Input files updated by another job: y; " + PARAMS_CHANGE.format("{'lr': 1}", "{'lr': 2}"),
     "params have changed since last execution"),
    ("Missing output files: x; Input files updated by another job: y", "missing output files"),
    ("Forced execution", "forced execution"),
])
def test_why_is_the_part_of_the_reason_that_gave_its_class(reason, why):
    assert PlannedJob("r", ["x"], reason).why == why


# A dry run of Snakemake 9 for a new run: its partition, and its training made from that; a table whose set of inputs
# changed (the new run among them)
NEW_RUN_DRY_RUN = """Building DAG of jobs...
[Fri Nov 27 20:31:45 2026]
rule partition:
    output: results/partitions/d/clients~4/alpha~0.5/seed~0/partition.npz
    reason: Missing output files: results/partitions/d/clients~4/alpha~0.5/seed~0/partition.npz
[Fri Nov 27 20:31:45 2026]
rule train:
    input: results/partitions/d/clients~4/alpha~0.5/seed~0/partition.npz
    output: results/train/c/metrics.csv
    reason: Missing output files: results/train/c/metrics.csv; Input files updated by another job: \
results/partitions/d/clients~4/alpha~0.5/seed~0/partition.npz
[Fri Nov 27 20:31:45 2026]
localrule final_table:
    input: results/train/a/metrics.csv, results/train/c/metrics.csv
    output: results/tables/final.csv
    reason: Input files updated by another job: results/train/c/metrics.csv; Set of input files has changed since \
last execution
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_new_jobs_made_from_new_jobs_are_not_made_yet_and_the_reason_shown_is_the_one_that_counts():
    lines = report(parse_dry_run(NEW_RUN_DRY_RUN), {})

    assert lines[1:3] == ["out of date in meaning: 1 job (0 more made from them)",
                          "  final_table        results/tables/final.csv  (set of input files has changed since last "
                          "execution)"]
    assert "not made yet: 2 jobs (partition 1, train 1)" in lines
    assert not any(line.startswith("made from results remade above") for line in lines)


def test_the_report_names_the_out_of_date_results_the_command_and_the_commits_of_the_current_ones(tmp_path,
                                                                                                monkeypatch):
    # Prepare: two current results made by two commits (one dirty), and a planned one
    monkeypatch.chdir(tmp_path)
    # and one recorded at another path (its folder moved since), there still
    for name in ("results/current_a.csv", "results/current_b.csv", "results/hessian/a/round~0/hessian.csv",
                 "old/results/current_c.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    records = {
        "results/current_a.csv": {"code": {"commit": "a" * 40, "dirty": False}},
        "results/current_b.csv": {"code": {"commit": "b" * 40, "dirty": True}},
        "results/hessian/a/round~0/hessian.csv": {"code": {"commit": "a" * 40, "dirty": False}},
        "results/gone.csv": {"code": {"commit": "c" * 40, "dirty": False}},
        "old/results/current_c.csv": {"code": {"commit": "c" * 40, "dirty": False}},
    }

    # Execute
    lines = report(parse_dry_run(DRY_RUN), records, ["--configfile", "my.yaml"])

    # Assert
    assert lines[0] == f"current: 2 recorded results, made by {'a' * 12} (1), {'b' * 12}-dirty (1)"
    assert lines[1].startswith("  each file checked against its job's record by size")  # how current (below)
    assert lines[2] == "out of date in meaning: 2 jobs (1 more made from them)"
    assert "(result version changed)" in lines[3] and "(params have changed since last execution)" in lines[4]
    assert lines[-1] == ("  snakemake --cores all --configfile my.yaml --forcerun "
                         "results/hessian/a/round~0/hessian.csv results/hessian/b/round~0/hessian.csv")
    assert "not made yet: 1 job (train 1)" in lines


@pytest.mark.parametrize("args", [["-d", "my work", "--configfile", "my.yaml"],
                                  ["--config", "hessian={top_k: 3}", "results_dir=/scratch/me/$USER's"]])
def test_the_commands_carry_the_users_arguments_as_one_word_each_in_the_shell(args):
    # Prepare: a job out of date in meaning, and results Snakemake has no metadata for
    jobs = [PlannedJob("hessian", ["results/hessian/a/round~0/hessian.csv"], PARAMS_CHANGE.format("1", "2")),
            PlannedJob("train", ["/scratch/my runs/it's/train/b/metrics.csv"], PARAMS_CHANGE.format("1", "2"))]

    # Execute
    lines = report(jobs, {}, args, uncompared=1)

    # Assert: the shell reads each command back into the arguments given and the files named, in their place
    command = shlex.split(lines[-1])
    assert command == ["snakemake", "--cores", "all", *args, "--forcerun",
                       "/scratch/my runs/it's/train/b/metrics.csv", "results/hessian/a/round~0/hessian.csv"]
    doubt = next(line for line in lines if "remake what you doubt with" in line).split(" with ", 1)[1]
    assert shlex.split(doubt) == ["snakemake", "--cores", "all", *args, "--forcerun", "<file>"]


@pytest.mark.parametrize("args", [None, "--configfile my.yaml", "-d 'my work' --config 'a=1'", "--cores 3"])
def test_every_remedy_command_runs_here_as_printed(args):
    # Prepare: the remedies of a partition (made again alone, then continued by meaning) and of another output
    path = "results/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz"
    hints = remake_alone_hint(path, args) + remake_hint("results/tables/final.csv", args)

    # Execute: each command as Snakemake reads it, with the workflow's default profile
    commands = [snakemake_args(shlex.split(command)[1:]) for command in hints.split("`")[1::2]]

    # Assert: each says its cores (the default profile does not), which Snakemake needs to run any job here
    assert len(commands) == 3
    assert all(parsed.cores is not None for parsed in commands)
    if args == "--cores 3":  # the user's own cores win over the command's
        assert {str(parsed.cores) for parsed in commands} == {"3"}


def test_nothing_planned_says_so():
    assert report([], {}) == ["current: 0 recorded results", "out of date in meaning: 0 jobs", "nothing to remake"]


@pytest.mark.parametrize(("args", "rehash"), [(["--configfile", "my.yaml"], False),
                                              (["--rehash", "--configfile", "my.yaml"], True)])
def test_rehash_reads_every_data_file_again_and_is_not_passed_to_snakemake(monkeypatch, args, rehash):
    # Prepare: the dry run and the data check, recorded
    seen = {}
    run = subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        seen.setdefault("cmds", []).append(cmd[3:])
        return subprocess.CompletedProcess(cmd, 0, DRY_RUN, "")

    def config(parsed):
        seen["configfiles"] = parsed.configfile
        return {"results_dir": "r"}

    def changed_data(records, config, skip, rehash):
        seen["rehash"] = rehash
        return []

    monkeypatch.setattr(status.subprocess, "run", dry_run)
    monkeypatch.setattr(status, "workflow_config", config)
    monkeypatch.setattr(status, "changed_data", changed_data)
    monkeypatch.setattr(status, "config_partition_files", lambda config: [])
    monkeypatch.setattr(status, "trained_from_other_inputs", lambda *args: {})  # (a config without runs)

    # Execute
    assert status.main(args) == 0

    # Assert: the dry run and that of every job of the config's DAG (`dag_outputs`), neither given --rehash
    assert seen["cmds"] == [["-n", "--configfile", "my.yaml"], ["-n", "--forceall", "--configfile", "my.yaml"]]
    assert seen["configfiles"] == [Path("my.yaml")]
    assert seen["rehash"] is rehash


def test_each_damaged_partition_of_the_config_is_named_unless_a_planned_job_remakes_it(tmp_path, monkeypatch, capsys):
    """A dry run checks no partition (the workflow's onstart does): status names every damaged one of the config's
    jobs with the command that remakes it alone."""
    # Prepare: the tiny config's two partitions (IID and alpha 0.5) both damaged; the dry run remakes the IID one
    config = check_config(config_with({}, results_dir=str(tmp_path / "res")), SCHEMA)
    iid, skewed = (Path(tmp_path, "res/partitions/digits/clients~4", alpha, "seed~0/partition.npz")
                   for alpha in ("alpha~iid", "alpha~0.5"))
    for path in (iid, skewed):
        path.parent.mkdir(parents=True)
        path.write_text("not a partition")
    dry_run = f"""[Mon Nov 23 14:57:18 2026]
localrule partition:
    output: {iid}, {iid.with_name("counts.csv")}
    reason: Forced execution
"""
    monkeypatch.setattr(status.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 0, dry_run, ""))
    monkeypatch.setattr(status, "workflow_config", lambda args: config)

    # Execute
    assert status.main(["--configfile", "tiny.yaml"]) == 0

    # Assert: the alpha 0.5 partition alone, after the dry run's lines, with its remedy
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("damaged partition files, or another run's: 1 (the workflow refuses to run the jobs that read "
                        "them)")
    assert lines[start + 1:] == [f"  {line}" for line in partition_problems([skewed], args="--configfile tiny.yaml")]
    assert lines[start + 1].startswith(f"  {skewed} is not a readable partition file") and "--force" in lines[-1]


def test_a_damaged_partition_alone_is_no_nothing_to_remake_either(tmp_path, monkeypatch, capsys):
    # Prepare: nothing planned, one partition of the config damaged (the dry run checks none)
    config = check_config(config_with({}, results_dir=str(tmp_path / "res")), SCHEMA)
    skewed = Path(tmp_path, "res/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz")
    skewed.parent.mkdir(parents=True)
    skewed.write_text("not a partition")
    _dry_run(monkeypatch, NOTHING_PLANNED, [[str(skewed)]])
    monkeypatch.setattr(status, "workflow_config", lambda args: config)

    # Execute
    assert status.main(["--configfile", "tiny.yaml"]) == 0

    # Assert: its remedy, and no word that all is well
    out = capsys.readouterr().out
    assert "damaged partition files, or another run's: 1" in out and "--force" in out
    assert "nothing to remake" not in out


# -- the config: the arguments as Snakemake reads them -----------------------------------------------------------


@pytest.fixture
def config_files(tmp_path, monkeypatch) -> Path:
    """base.yaml (the tiny config, its own lr and results folder) and over.yaml (another results folder and number of
    rounds) in `tmp_path`, and work/ (a folder to give Snakemake's --directory) with a default config of its own
    (config/config.yaml: the tiny config with another lr and a relative results folder); the working directory the
    workflow's root, where `make status` runs."""
    monkeypatch.chdir(ROOT)
    base = yaml.safe_load(TINY_CONFIG.read_text())
    base["results_dir"] = str(tmp_path / "base")
    base["training"]["lr"] = 0.0123
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({"results_dir": str(tmp_path / "over"),
                                                        "training": {"rounds": 4}}))
    (tmp_path / "work" / "config").mkdir(parents=True)
    own = {**base, "results_dir": "work_results", "training": {**base["training"], "lr": 0.0456}}
    (tmp_path / "work" / "config" / "config.yaml").write_text(yaml.safe_dump(own))
    return tmp_path


DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(("args", "results_dir", "lr", "rounds"), [
    (["--configfile={d}/base.yaml"], "{d}/base", 0.0123, 3),
    # several files merge in their order (nested sections key by key): the second's folder and rounds, the first's lr
    (["--configfile", "{d}/base.yaml", "{d}/over.yaml"], "{d}/over", 0.0123, 4),
    (["--configfiles", "{d}/base.yaml", "{d}/over.yaml"], "{d}/over", 0.0123, 4),
    (["--configfile", "{d}/over.yaml", "{d}/base.yaml"], "{d}/base", 0.0123, 3),
    # --config values go on top, as Snakemake parses them
    (["--configfile", "{d}/base.yaml", "--config", "results_dir=elsewhere"], "elsewhere", 0.0123, 3),
    (["--config", "results_dir=elsewhere"], "elsewhere", DEFAULT["training"]["lr"], DEFAULT["training"]["rounds"]),
    # no --configfile: the default config
    ([], "results", DEFAULT["training"]["lr"], DEFAULT["training"]["rounds"]),
    # targets before the options, and the dry run's other options
    (["results/tables/final.csv", "--configfile={d}/base.yaml", "--rerun-triggers", "mtime"], "{d}/base", 0.0123, 3),
    # --directory: the Snakefile reads its default config below it; a --configfile is read where Snakemake starts
    (["--directory", "{d}/work"], "work_results", 0.0456, 3),
    (["-d", "{d}/work", "--configfile={d}/base.yaml"], "{d}/base", 0.0123, 3),
])
def test_the_config_is_the_one_snakemake_reads_from_the_arguments(config_files, args, results_dir, lr, rounds):
    config = workflow_config(snakemake_args([a.format(d=config_files) for a in args]))

    assert config["results_dir"] == results_dir.format(d=config_files)
    assert (config["training"]["lr"], config["training"]["rounds"]) == (lr, rounds)
    assert config["hessian"]["top_k"] > 0  # defaults filled


def test_a_config_the_dry_run_refuses_is_refused(config_files):
    with pytest.raises(ConfigError, match="not_a_key"):
        workflow_config(snakemake_args(["--configfile", f"{config_files}/base.yaml", "--config", "not_a_key=1"]))


# -- what the dry run does not see: recorded outputs not there now, settings without Snakemake's metadata -----------


def _write(*paths: str) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x")


def test_recorded_jobs_whose_outputs_are_not_there_are_listed_with_the_command_that_remakes_them(tmp_path,
                                                                                                 monkeypatch):
    # Prepare: a train job that lost two of its three outputs, a job that lost its one, one the dry run plans anyway
    # (DRY_RUN: results/hessian/a), one recorded at another path (its folder moved since), and one all there
    monkeypatch.chdir(tmp_path)
    train = {"log": "logs/train/a.log"}
    records = {"results/train/a/metrics.csv": train, "results/train/a/trajectory.pt": train,
               "results/train/a/clients.pt": train, "results/hessian/b/hessian.csv": {"log": "logs/hessian/b.log"},
               "results/hessian/a/round~0/hessian.csv": {"log": "logs/hessian/a.log"},
               "/elsewhere/results/train/c/metrics.csv": {"log": "logs/train/c.log"},
               "results/tables/final.csv": {"log": "logs/tables/final.log"}}
    _write("results/train/a/metrics.csv", "results/tables/final.csv")
    jobs = parse_dry_run(DRY_RUN)

    # Execute
    missing = missing_jobs(records, {o for job in jobs for o in job.outputs}, "results")
    lines = report(jobs, records, ["--configfile", "c.yaml"], missing=missing)

    # Assert: each job by its missing outputs; listed, and forced by the command after the jobs out of date
    assert missing == [("results/hessian/b/hessian.csv",),
                       ("results/train/a/clients.pt", "results/train/a/trajectory.pt")]
    at = lines.index("missing outputs: 2 jobs (Snakemake does not remake a missing file while files made from it "
                     "exist)")
    assert lines[at + 1:at + 3] == [
        "  results/hessian/b/hessian.csv (recorded by its job, not there now)",
        "  results/train/a/clients.pt and 1 more of its outputs (recorded by its job, not there now)"]
    assert lines[0] == "current: 1 recorded result, made by unrecorded (1)"  # the table: the train job is not
    assert lines[-1] == ("  snakemake --cores all --configfile c.yaml --forcerun results/hessian/a/round~0/hessian.csv "
                         "results/hessian/b/round~0/hessian.csv results/hessian/b/hessian.csv "
                         "results/train/a/clients.pt")


def test_a_missing_partition_is_made_again_alone_not_forced_with_what_was_trained_on_it(tmp_path, monkeypatch):
    # Prepare: a partition recorded by its job and gone, while the run trained on it is there; a train output gone too
    monkeypatch.chdir(tmp_path)
    partition = "results/partitions/digits/clients~10/alpha~0.1/seed~0/partition.npz"
    records = {partition: {"log": "logs/partition/p.log"}, "results/train/a/metrics.csv": {"log": "logs/train/a.log"},
               "results/train/b/metrics.csv": {"log": "logs/train/b.log"}}
    _write("results/train/a/metrics.csv")

    # Execute
    lines = report([], records, ["--configfile", "c.yaml"], missing=missing_jobs(records, [], "results"))

    # Assert: the partition with its own commands (bit-identical from its seed, then on by meaning), kept out of the
    # --forcerun command, which would retrain every run on it
    assert "missing outputs: 2 jobs (Snakemake does not remake a missing file while files made from it exist)" in lines
    assert f"  {partition} (recorded by its job, not there now); {remake_alone_hint(partition)}" in lines
    assert lines[-1] == "  snakemake --cores all --configfile c.yaml --forcerun results/train/b/metrics.csv"


def test_a_missing_partition_alone_is_no_nothing_to_remake(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    partition = "results/partitions/digits/clients~10/alpha~0.1/seed~0/partition.npz"
    records = {partition: {"log": "logs/partition/p.log"}}

    lines = report([], records, [], missing=missing_jobs(records, [], "results"))

    assert "nothing to remake" not in lines
    assert f"--force {partition}`" in lines[-1]


def test_missing_jobs_past_ten_are_counted_by_stage_and_all_remade(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = {f"results/{stage}/r{k:02d}/out.csv": {"log": f"logs/{stage}/r{k}.log"}
               for stage, n in (("init", 1), ("train", 12)) for k in range(n)}

    missing = missing_jobs(records, [], "results")
    lines = report([], records, [], missing=missing)

    assert len(missing) == 13
    assert "  and 3 more (train 3)" in lines
    assert len(lines[-1].split("--forcerun ")[1].split()) == 13


@pytest.mark.parametrize(("root", "uncompared"), [
    ("results", ["/elsewhere/results/e.csv", "results/b.csv"]),
    # an absolute results folder: the same folder written relative is another path to Snakemake
    ("{d}/results", ["/elsewhere/results/e.csv", "results/a.csv", "{d}/results/b.csv"]),
])
def test_the_outputs_snakemake_has_no_metadata_for_are_those_whose_settings_it_cannot_compare(tmp_path, monkeypatch,
                                                                                              root, uncompared):
    # Prepare: below the root, a, b and c there, a and c with Snakemake's metadata, c planned anyway, d not there; one
    # recorded at another path (its folder moved since), and results/a.csv (the root's a, or another path)
    monkeypatch.chdir(tmp_path)
    root = root.format(d=tmp_path)
    names = {name: f"{root}/{name}.csv" for name in "abcd"}
    _write(*(names[n] for n in "abc"), "results/a.csv")
    records = {path: {"log": f"logs/{n}.log"} for n, path in names.items()}
    records |= {"results/a.csv": {"log": "logs/a.log"}, "/elsewhere/results/e.csv": {"log": "logs/e.log"}}
    with_metadata = {names["a"], names["c"]}

    # Execute
    found = uncompared_outputs(records, [names["c"]], root, with_metadata.__contains__)
    lines = report([], records, root=root, uncompared=len(found))

    # Assert
    assert found == sorted(o.format(d=tmp_path) for o in uncompared)
    assert lines[-3:-1] == [
        f"settings not compared: {len(uncompared)} recorded results that Snakemake has no metadata for here (made "
        "from another checkout, copied without .snakemake/, or at another path), so a changed setting of theirs shows "
        "nowhere above",
        "  run make status from the checkout that made them, or remake what you doubt with snakemake --cores all "
        "--forcerun <file>"]


def test_nothing_without_metadata_says_nothing():
    assert not any("settings not compared" in line for line in report([], {}, uncompared=0))


# -- Snakemake's --directory: every path below it but the --configfile files ---------------------------------------

NOTHING_PLANNED = "Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n"


def dag_text(*jobs: Sequence[str]) -> str:
    """A dry run with `--forceall` of a DAG whose jobs have these outputs, as Snakemake prints it (`dag_outputs`)."""
    return "Building DAG of jobs...\n" + "".join(
        f"[Mon Nov 23 14:57:18 2026]\nrule job:\n    output: {', '.join(outputs)}\n    reason: Forced execution\n"
        for outputs in jobs)


def _dry_run(monkeypatch, text: str, dag: Iterable[Sequence[str]] = ()) -> list[list[str]]:
    """The dry run of `status.main` replaced by one that prints `text`, and that of every job of the config's DAG
    (`--forceall`: `dag_outputs`) by one of jobs with the outputs `dag`; returns the commands it was given."""
    seen = []
    run = subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, dag_text(*dag) if "--forceall" in cmd else text, "")

    monkeypatch.setattr(status.subprocess, "run", dry_run)
    return seen


# the jobs of `finished_below` by their logs' names, each with its outputs: the config's DAG
FINISHED_BELOW = {"tables": ["results/tables/a.csv"], "run": ["results/train/r/x.pt", "results/train/r/y.pt"]}


@pytest.fixture
def finished_below(config_files, restore_logging) -> Path:
    """A finished-looking run below work/ (of `config_files`), as `snakemake --directory work` leaves one: a table job
    and a job with two outputs, their outputs and records below work/results (written through job_log, as every
    job does), and Snakemake's metadata (in work/.snakemake) of every output but the table. Returns work/."""
    from snakemake.persistence import MetadataRecord
    from snakemake.persistence.file import FilePersistence

    work = config_files / "work"
    outputs = FINISHED_BELOW
    with contextlib.chdir(work):
        for name, paths in outputs.items():
            with job_log(f"logs/{name}.log", paths, "results"):
                for i, path in enumerate(paths):
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).write_text(f"{name} output {i}\n")
        metadata = FilePersistence(nolock=True)  # work/.snakemake, keyed by the outputs' paths below work/
        for path in outputs["run"]:
            metadata._write_record(path, MetadataRecord(rule="train"))
    return work


def test_with_directory_the_records_and_metadata_below_it_are_read(finished_below, monkeypatch, capsys):
    # Prepare: the dry run plans nothing; the config file named relative to where make status runs, its results_dir
    # relative (below the working directory, as Snakemake reads it)
    _dry_run(monkeypatch, NOTHING_PLANNED, FINISHED_BELOW.values())
    work = os.path.relpath(finished_below, ROOT)
    config = os.path.relpath(finished_below.parent / "base.yaml", ROOT)

    # Execute
    assert status.main(["--directory", work, "--configfile", config, "--config", "results_dir=results"]) == 0

    # Assert: the three results below work/ are current; Snakemake has no metadata for the table's in work/.snakemake
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("current: 3 recorded results, made by ")
    assert next(line for line in lines if line.startswith("settings not compared")).startswith(
        "settings not compared: 1 recorded result")
    assert lines[-1] == "nothing to remake"
    assert Path.cwd() == ROOT  # and make status is back where it started


def test_with_directory_a_missing_output_is_forced_by_its_path_below_it(finished_below, monkeypatch, capsys):
    # Prepare: one of the train job's outputs removed; the dry run plans nothing
    (finished_below / "results/train/r/y.pt").unlink()
    _dry_run(monkeypatch, NOTHING_PLANNED, FINISHED_BELOW.values())
    args = ["-d", str(finished_below), "--configfile", str(finished_below.parent / "base.yaml"),
            "--config", "results_dir=results"]

    # Execute
    assert status.main(args) == 0

    # Assert: its path as Snakemake reads a target with --directory (relative to that folder), in the command
    lines = capsys.readouterr().out.splitlines()
    assert "  results/train/r/y.pt (recorded by its job, not there now)" in lines
    assert lines[-1] == f"  snakemake --cores all {shlex.join(args)} --forcerun results/train/r/y.pt"


# -- recorded outputs that are not the files their jobs wrote: not current, listed and remade -----------------------


def test_outputs_not_their_jobs_files_are_not_current_and_are_listed_with_the_command(tmp_path, monkeypatch):
    # Prepare: four recorded results there, one changed, one another's content; a partition file changed
    monkeypatch.chdir(tmp_path)
    part = "results/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz"
    outputs = ["results/train/a/x.pt", "results/train/a/y.pt", "results/tables/final.csv", "results/train/b/x.pt", part]
    _write(*outputs)
    records = {o: {"log": f"logs/{k}.log"} for k, o in enumerate(outputs)}
    changed = [Finding("results/train/a/x.pt", "changed", "14 bytes; its job wrote 13 bytes"),
               Finding("results/train/b/x.pt", "foreign", "its content is that recorded for results/train/a/y.pt"),
               Finding(part, "changed", "9 bytes; its job wrote 8 bytes")]

    # Execute
    lines = report([], records, ["--configfile", "c.yaml"], changed=changed, hashed=1)

    # Assert: two current; each named as make verify names it, the partition file with its own command (alone)
    assert lines[0] == "current: 2 recorded results, made by unrecorded (2)"
    assert lines[1].endswith("dated outside its job's run or has the size another output was recorded at (1 hashed); "
                             "make verify re-hashes every one")
    at = lines.index("not the files their jobs wrote: 3 recorded results (changed or foreign, as make verify says)")
    assert lines[at + 1:at + 4] == [
        "  changed: results/train/a/x.pt (14 bytes; its job wrote 13 bytes)",
        "  foreign: results/train/b/x.pt (its content is that recorded for results/train/a/y.pt)",
        f"  changed: {part} (9 bytes; its job wrote 8 bytes); {remake_alone_hint(part)}"]
    assert lines[-1] == ("  snakemake --cores all --configfile c.yaml --forcerun results/train/a/x.pt "
                         "results/train/b/x.pt")


def test_changed_outputs_past_ten_are_counted_by_stage_and_all_remade(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    changed = [Finding(f"results/{stage}/r{k:02d}/out.csv", "changed", "2 bytes; its job wrote 1 bytes")
               for stage, n in (("init", 1), ("train", 12)) for k in range(n)]

    lines = report([], {f.path: {} for f in changed}, [], changed=changed)

    assert "  and 3 more (train 3)" in lines
    assert len(lines[-1].split("--forcerun ")[1].split()) == 13


def test_a_changed_output_is_found_listed_and_forced_by_make_status(finished_below, monkeypatch, capsys):
    # Prepare: below work/, one output of the train job rewritten with another size; the dry run plans nothing
    (finished_below / "results/train/r/x.pt").write_text("another run's output\n")
    _dry_run(monkeypatch, NOTHING_PLANNED, FINISHED_BELOW.values())
    args = ["-d", str(finished_below), "--configfile", str(finished_below.parent / "base.yaml"),
            "--config", "results_dir=results"]

    # Execute
    assert status.main(args) == 0

    # Assert: the table current, not the train job's other output (remade with it)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("current: 1 recorded result,")
    assert "  changed: results/train/r/x.pt (21 bytes; its job wrote 13 bytes)" in lines
    assert lines[-1] == f"  snakemake --cores all {shlex.join(args)} --forcerun results/train/r/x.pt"


# -- the partition remedies: the user's own arguments, each file once ----------------------------------------------


def test_every_partition_remedy_carries_the_users_arguments_and_names_each_file_once(config_files, restore_logging,
                                                                                      monkeypatch, capsys):
    """With `-d DIR`, a partition's path in its remedy is relative to DIR: run without it, the command would force
    the partition of the folder make status ran in."""
    # Prepare: the arguments with a target and a working directory with a space; below it, the config's two
    # partitions: one recorded by its job and then another file put in its place (changed, and damaged), one damaged
    # and never recorded; and a third partition recorded and gone. The dry run plans nothing.
    work = config_files / "my work"
    (config_files / "work").rename(work)
    args = ["results/tables/final.csv", "-d", str(work), "--configfile", str(config_files / "base.yaml"),
            "--config", "results_dir=results"]
    given = args[1:]  # without the target, which --force would force too
    recorded, damaged = config_partition_files(workflow_config(snakemake_args(args)))
    gone = "results/partitions/digits/clients~4/alpha~0.1/seed~9/partition.npz"
    with contextlib.chdir(work):
        for k, path in enumerate((recorded, gone)):
            with job_log(f"logs/partition/{k}.log", [path], "results"):
                Path(path).parent.mkdir(parents=True)
                Path(path).write_text("a partition\n")
        Path(recorded).write_text("another run's partition\n")
        Path(gone).unlink()
        Path(damaged).parent.mkdir(parents=True)
        Path(damaged).write_text("not a partition")
    # (the DAG faked as the dry run is: the gone partition among its jobs, as if a seed of the config)
    _dry_run(monkeypatch, NOTHING_PLANNED, [[recorded], [damaged], [gone]])

    # Execute
    assert status.main(args) == 0

    # Assert: each partition once (the recorded one among the damaged ones, with what is wrong with it, not again as
    # changed), each with both commands; none of them current
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [sum(path in line for line in lines) for path in (recorded, damaged, gone)] == [1, 1, 1]
    assert not any(line.startswith("not the files their jobs wrote") for line in lines)
    assert lines[0] == "current: 0 recorded results"
    at = lines.index("damaged partition files, or another run's: 2 (the workflow refuses to run the jobs that read "
                     "them)")
    assert sorted(line.split(" is not a readable partition file")[0] for line in lines[at + 1:]) == sorted([
        f"  {damaged}", f"  {recorded}"])
    assert "--configfile you run with" not in out
    for path in (recorded, damaged, gone):
        line = next(line for line in lines if path in line)
        force, go_on = (shlex.split(command) for command in line.split("`")[1::2][-2:])  # numpy's words quote too
        assert force == ["snakemake", "--cores", "1", *given, "--force", path]
        assert go_on == ["snakemake", "--cores", "all", *given, "--rerun-triggers", "params", "input", "software-env"]
        # as Snakemake reads it: that partition alone, below the working directory given
        parsed = snakemake_args(force[1:])
        assert (set(parsed.targets), str(parsed.directory), parsed.force) == ({path}, str(work), True)


@pytest.mark.parametrize(("args", "kept"), [
    (["--configfile", "a.yaml"], ["--configfile", "a.yaml"]),
    (["results/x.csv", "-d", "my work", "--configfile", "a.yaml", "--config", "a=1"],
     ["-d", "my work", "--configfile", "a.yaml", "--config", "a=1"]),
    # a --configfile list takes every word up to the next option: no target there
    (["--configfile", "a.yaml", "results/x.csv", "-d", "w"], ["--configfile", "a.yaml", "results/x.csv", "-d", "w"]),
    # an option's value spelled as a target is kept
    (["-d", "results", "results", "all"], ["-d", "results"]),
])
def test_the_targets_are_told_from_the_other_arguments_by_snakemakes_parser(args, kept):
    assert status.without_targets(args) == kept


# Snakemake 9's words for a job killed while it wrote its outputs (the profile's own lines around it)
INCOMPLETE = """Building DAG of jobs...
IncompleteFilesException:
The files below seem to be incomplete. If you are sure that certain files are not incomplete, mark them as complete with

    snakemake --cleanup-metadata <filenames>

To re-generate the files rerun your command with the --rerun-incomplete flag.
Incomplete files:
results/train/c/trajectory.pt
results/tables/summary.csv
Using workflow specific profile profiles/default for setting default command line arguments.
"""


@pytest.mark.parametrize(("output", "files"), [
    (INCOMPLETE, ["results/train/c/trajectory.pt", "results/tables/summary.csv"]),
    ("MissingInputException in rule train:\nMissing input files for rule train:", []),
    ("IncompleteFilesException:\nsomething else", []),
])
def test_the_incomplete_files_are_read_from_a_failed_dry_run(output, files):
    assert status.incomplete_files(output) == files


def test_incomplete_outputs_are_named_and_the_status_is_that_of_a_run_that_makes_them_again(monkeypatch, capsys):
    # Prepare: a dry run that fails on incomplete files unless asked to make them again
    calls = []
    run = subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        calls.append(cmd[3:])
        if "--rerun-incomplete" in cmd:
            return subprocess.CompletedProcess(cmd, 0, DRY_RUN, "")
        return subprocess.CompletedProcess(cmd, 1, "", INCOMPLETE)

    monkeypatch.setattr(status.subprocess, "run", dry_run)
    monkeypatch.setattr(status, "workflow_config", lambda parsed: {"results_dir": "r"})
    monkeypatch.setattr(status, "changed_data", lambda records, config, skip, rehash: [])
    monkeypatch.setattr(status, "config_partition_files", lambda config: [])
    monkeypatch.setattr(status, "trained_from_other_inputs", lambda *args: {})  # (a config without runs)

    # Execute
    code = status.main(["--configfile", "my.yaml"])

    # Assert: both files named, the second dry run asked to make them again, and the commands carry it
    out = capsys.readouterr().out
    assert code == 0
    assert calls == [["-n", "--configfile", "my.yaml"], ["-n", "--configfile", "my.yaml", "--rerun-incomplete"],
                     ["-n", "--forceall", "--configfile", "my.yaml", "--rerun-incomplete"]]
    assert "2 outputs are marked incomplete" in out and "results/train/c/trajectory.pt" in out
    assert "--configfile my.yaml --rerun-incomplete --forcerun" in out


# -- what the dry run hides: --quiet, from the arguments or a profile ------------------------------------------------

# Snakemake 9's dry run with `--quiet rules` of a config whose FedProx mu changed: no job's block, its summary alone
QUIET_DRY_RUN = """Building DAG of jobs...
Job stats:
job             count
------------  -------
train               1
final_table         1
total               2

Reasons:
    (check individual jobs above for details)
    input files updated by another job:
        final_table
    params have changed since last execution:
        train
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


@pytest.mark.parametrize(("args", "hidden"), [
    (["--quiet", "rules"], "rules"),
    (["-q"], "rules"),  # rules and progress
    (["--quiet", "all"], "all"),
    (["--quiet", "reason"], "reason"),  # every job's block, without why it runs
    (["--profile", "{profile}"], "rules"),
    (["--quiet", "progress", "host"], None),  # neither hides a job
    ([], None),
])
def test_a_quiet_dry_run_is_refused_as_it_hides_what_status_reads(tmp_path, monkeypatch, capsys, args, hidden):
    # Prepare: a profile that makes Snakemake quiet about rules; dry runs that print what Snakemake prints
    (tmp_path / "quiet").mkdir()
    (tmp_path / "quiet" / "config.yaml").write_text("quiet: rules\n")
    args = [arg.format(profile=tmp_path / "quiet") for arg in args]
    _dry_run(monkeypatch, QUIET_DRY_RUN if hidden else NEW_RUN_DRY_RUN, [["results/train/c/metrics.csv"]])
    monkeypatch.setattr(status, "workflow_config", lambda parsed: {"results_dir": str(tmp_path / "results")})
    monkeypatch.setattr(status, "config_partition_files", lambda config: [])
    monkeypatch.setattr(status, "trained_from_other_inputs", lambda *args: {})  # (a config without runs)

    # Execute
    code = status.main(args)

    # Assert: refused, saying which level to drop; else the status of the jobs planned
    out, err = capsys.readouterr()
    if hidden:
        assert (code, out) == (1, "")
        assert f"--quiet {hidden} hides" in err and "drop it" in err
    else:
        assert code == 0 and "not made yet: 2 jobs (partition 1, train 1)" in out


@pytest.mark.parametrize(("dry_run", "dag", "shown"), [
    (NOTHING_PLANNED, [["results/t.csv"]], True),
    (QUIET_DRY_RUN, [["results/t.csv"]], False),  # jobs planned, their blocks hidden
    (NOTHING_PLANNED, [], False),  # the DAG's jobs hidden: every record would be outside the config
])
def test_a_dry_run_that_shows_no_job_and_does_not_say_nothing_is_to_be_done_is_no_status(tmp_path, monkeypatch,
                                                                                         capsys, dry_run, dag, shown):
    # Prepare: arguments with no --quiet; dry runs whose jobs are hidden all the same (Snakemake's words changed)
    _dry_run(monkeypatch, dry_run, dag)
    monkeypatch.setattr(status, "workflow_config", lambda parsed: {"results_dir": str(tmp_path / "results")})
    monkeypatch.setattr(status, "config_partition_files", lambda config: [])
    monkeypatch.setattr(status, "trained_from_other_inputs", lambda *args: {})  # (a config without runs)

    # Execute
    code = status.main(["--configfile", "c.yaml"])

    # Assert: a status only where the dry runs show what they plan
    out, err = capsys.readouterr()
    assert (code, "nothing to remake" in out) == ((0, True) if shown else (1, False))
    assert ("make status cannot tell what it plans" in err) is not shown


# -- what counts as current, and what the command runs ---------------------------------------------------------------


@pytest.mark.parametrize(("change", "current"), [
    (None, "current: 3 recorded results, made by unrecorded (3)"),
    ("gone", "current: 1 recorded result, made by unrecorded (1)"),
    ("changed", "current: 1 recorded result, made by unrecorded (1)"),
    ("planned", "current: 1 recorded result, made by unrecorded (1)"),
])
def test_a_jobs_outputs_are_current_only_where_all_of_them_are(tmp_path, monkeypatch, change, current):
    # Prepare: a train job with two outputs and a table job, all there; one of the train job's outputs gone, not its
    # job's file, or planned
    monkeypatch.chdir(tmp_path)
    train = {"log": "logs/train/a.log"}
    records = {"results/train/a/x.pt": train, "results/train/a/y.pt": train,
               "results/tables/final.csv": {"log": "logs/tables/final.log"}}
    _write(*records)
    if change == "gone":
        Path("results/train/a/y.pt").unlink()
    changed = [Finding("results/train/a/y.pt", "changed", "2 bytes; its job wrote 1 bytes")] * (change == "changed")
    jobs = [PlannedJob("train", ["results/train/a/y.pt"], "Forced execution")] * (change == "planned")

    # Execute
    lines = report(jobs, records, changed=changed, missing=missing_jobs(records, [], "results"))

    # Assert: the train job's output there is current with its job alone
    assert lines[0] == current


@pytest.mark.parametrize(("text", "others"), [
    (DRY_RUN, "; it also runs the 2 other jobs planned above (inputs newer, not made yet or another reason) and what "
              "is made from those"),
    (DRY_RUN.split("[Mon Nov 23 14:57:18 2026]\nrule train:")[0], ""),  # the jobs out of date in meaning alone
])
def test_the_command_says_it_runs_every_job_planned_not_only_those_it_remakes(text, others):
    lines = report(parse_dry_run(text), {}, ["--configfile", "c.yaml"])

    assert lines[-2] == f"remake these and what is made from them{others}:"
    assert lines[-1].endswith("--forcerun results/hessian/a/round~0/hessian.csv results/hessian/b/round~0/hessian.csv")


# -- make status's quick check: damaged records, and the dates Snakemake gives the outputs after their jobs ----------


@pytest.mark.parametrize("damaged", [False, True])
def test_a_damaged_job_record_is_counted_and_is_no_nothing_to_remake(finished_below, monkeypatch, capsys, damaged):
    # Prepare: below work/, a finished run; a job record cut short; the dry run plans nothing
    if damaged:
        (finished_below / "results/_manifest/tables").mkdir()
        (finished_below / "results/_manifest/tables/final.json").write_text('{"version": 2, "outp')
    _dry_run(monkeypatch, NOTHING_PLANNED, FINISHED_BELOW.values())
    args = ["-d", str(finished_below), "--configfile", str(finished_below.parent / "base.yaml"),
            "--config", "results_dir=results"]

    # Execute
    assert status.main(args) == 0

    # Assert
    lines = capsys.readouterr().out.splitlines()
    line = ("damaged job records: 1 (their jobs' outputs are not checked; make verify names each, with how to get it "
            "back)")
    assert (line in lines, lines[-1] == "nothing to remake") == (damaged, not damaged)


@pytest.mark.parametrize(("recorded", "hashed"), [
    ("touched", False),  # Snakemake's date for the job's outputs: that of its touch after the job
    ("no times", True),  # metadata of an older Snakemake, without the job's times: hashed, as dated after its run
])
def test_outputs_snakemake_touched_after_their_job_are_not_read(finished_below, monkeypatch, capsys, recorded,
                                                                hashed):
    """On a cluster, Snakemake's main process touches a job's outputs when it next checks its jobs (up to 180 s with
    the SLURM executor), long after the job's record says it finished."""
    from snakemake.persistence import MetadataRecord
    from snakemake.persistence.file import FilePersistence

    # Prepare: the train job's outputs dated 100 s after its record's end, and Snakemake's metadata of that job
    record = json.loads((finished_below / "results/_manifest/run.json").read_text())
    started, finished = (datetime.datetime.fromisoformat(record[key]).timestamp() for key in ("started", "finished"))
    with contextlib.chdir(finished_below):
        for path in FINISHED_BELOW["run"]:
            os.utime(path, (finished + 100, finished + 100))
            times = {"starttime": started, "endtime": finished + 100} if recorded == "touched" else {}
            FilePersistence(nolock=True)._write_record(path, MetadataRecord(rule="train", **times))
    _dry_run(monkeypatch, NOTHING_PLANNED, FINISHED_BELOW.values())
    args = ["-d", str(finished_below), "--configfile", str(finished_below.parent / "base.yaml"),
            "--config", "results_dir=results"]

    # Execute
    assert status.main(args) == 0

    # Assert: all current; the train job's files read only without Snakemake's times
    out = capsys.readouterr().out
    assert out.startswith("current: 3 recorded results")
    assert ("(2 hashed)" in out) is hashed
