"""A finished job run again that failed or was killed: Snakemake deleted its outputs before it ran it, and does not make
them again while files made from them exist. Its mark (`core.manifest.mark_started`) names it on every run of the
workflow, in `make status` and `make verify`; `onstart` refuses targets made from it. A mark of another host names
its SLURM job, which `squeue` is asked about; where that cannot be known, every report says the job may still run. With
the small fixes of the same review: `make status` on a held lock and a missing config file, counts in the singular,
and the seed control pair of config/config.yaml."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.workflow import ROOT

from fedscape.core import manifest
from fedscape.core.config import ConfigError, load_schema
from fedscape.core.io import remake_hint
from fedscape.core.manifest import (
    MANIFEST,
    MISSING,
    RERUN_FAILED,
    counted,
    failed_reruns,
    rerun_failed_outputs,
    started_mark,
    verify,
)
from fedscape.core.runs import build_runs, resolve_run
from fedscape.plan import status
from fedscape.plan.status import missing_jobs, report
from fedscape.plan.workflow import SCHEMA, check_config, check_failed_reruns, failed_rerun_warnings

OUTPUTS = ("results/train/r/metrics.csv", "results/train/r/trajectory.pt")
RECORD = Path("results", MANIFEST, "train/r/train.json")  # the record of the job logging to LOG
LOG = "logs/train/r/train.log"
# A job as a workflow script runs it (`core.logs.job_log`), in a process of its own: it writes its outputs, or fails
JOB = """
import sys
from pathlib import Path
from fedscape.core.logs import job_log
with job_log(sys.argv[1], sys.argv[3:], "results"):
    if sys.argv[2] == "fail":
        raise MemoryError("out of memory, say")
    for path in sys.argv[3:]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(path)
"""


def run_job(workdir: Path, fail: bool = False, log: str = LOG, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """Run the job in `workdir` as Snakemake does: its outputs deleted first, then the job (failing where `fail`)."""
    for output in outputs:
        Path(workdir, output).unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", JOB, log, "fail" if fail else "ok", *outputs], cwd=workdir,
                          capture_output=True, text=True)
    assert proc.returncode == (1 if fail else 0), proc.stderr


def delete_outputs(workdir: Path) -> None:
    for output in OUTPUTS:
        Path(workdir, output).unlink()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def rerun_failed(workdir) -> Path:
    """A job that finished, then was run again and failed: its earlier record is there, its outputs are not."""
    run_job(workdir)
    run_job(workdir, fail=True)
    return workdir


OTHER_HOST = "node042"
SLURM_JOB = "4242"
# what every report says of a rerun whose job ran on another host that could not be asked whether it still runs
MAY_RUN = f"deleted by Snakemake for a rerun of its job on {OTHER_HOST}, which did not finish, or still runs there"


def mark_as(host: str, pid: int | None = None, job: str | None = None) -> None:
    """The failed rerun's mark as if its job's process wrote it on `host` ("this": this host, else OTHER_HOST), as
    process `pid` (where given), in the SLURM job `job` (None: outside SLURM, or a mark written before marks named
    one, which has no such key)."""
    mark = json.loads(started_mark(RECORD).read_text())
    mark.pop("slurm_job_id", None)
    mark["host"] = socket.gethostname() if host == "this" else OTHER_HOST
    if pid is not None:
        mark["pid"] = pid
    if job is not None:
        mark["slurm_job_id"] = job
    started_mark(RECORD).write_text(json.dumps(mark))


def fake_squeue(monkeypatch, folder: Path, answer: tuple[str, int, str] | None) -> Path:
    """Put first on PATH a `squeue` that prints `answer`'s stdout and stderr and exits with its code (None: no squeue on
    PATH at all); the arguments of each of its calls, one line each, go to the file returned."""
    bin_dir, calls = folder / "bin", folder / "squeue_calls"
    bin_dir.mkdir()
    if answer is None:
        monkeypatch.setenv("PATH", str(bin_dir))  # nothing else either: this machine may have a real squeue
        return calls
    out, code, err = answer
    script = bin_dir / "squeue"
    script.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\nprintf %s {shlex.quote(out)}\n'
                      f"printf %s {shlex.quote(err)} >&2\nexit {code}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


# -- the mark, and the jobs it names --------------------------------------------------------------------------------


@pytest.mark.parametrize(("history", "named"), [
    (("ok", "fail"), True),  # a rerun that failed after Snakemake deleted the earlier run's outputs
    (("fail",), False),  # a first run that failed: nothing is made from it, and Snakemake runs it again
    (("ok", "fail", "ok"), False),  # made again since: its new record removed the mark
    (("ok", "delete"), False),  # outputs removed by hand: no rerun (make status lists them as missing)
])
def test_a_rerun_that_did_not_finish_is_named_and_nothing_else_is(workdir, history, named):
    # Prepare: the job's runs, each as Snakemake runs it
    for step in history:
        if step == "delete":
            delete_outputs(workdir)
        else:
            run_job(workdir, fail=step == "fail")

    # Execute
    found = failed_reruns("results")

    # Assert: by its record, with every output gone; the mark only where the last run failed
    assert [(job.record, job.log, job.gone) for job in found] == ([(RECORD, LOG, OUTPUTS)] if named else [])
    assert started_mark(RECORD).exists() is (history[-1] == "fail")


def test_a_job_that_succeeds_leaves_no_mark(workdir):
    run_job(workdir)

    assert sorted(p.name for p in RECORD.parent.iterdir()) == ["train.json"]


def test_the_warning_says_what_happened_and_gives_the_command_that_makes_the_job_again(rerun_failed):
    lines = failed_rerun_warnings("results")

    assert len(lines) == 1
    assert lines[0].startswith(f"the job logging to {LOG} was run again and did not finish (started ")
    assert f"on {socket.gethostname()}): its outputs ({OUTPUTS[0]} and 1 more) were {RERUN_FAILED}, so " in lines[0]
    assert remake_hint(OUTPUTS[0]) in lines[0]  # `snakemake --cores 1 --forcerun <its first output>`
    assert f"delete {started_mark(RECORD)} instead" in lines[0]


@pytest.mark.parametrize(("host", "pid", "named"), [
    ("this", "this", False),  # still running here: a workflow running now, not a failed job
    ("this", "gone", True),
    ("other", "this", True),  # another host's, outside SLURM: cannot be asked, so named, with the doubt said
])
def test_a_marked_job_still_running_on_this_host_is_not_named(rerun_failed, host, pid, named):
    # Prepare: the mark as the job's process wrote it, of this host or another, of this process or an ended one
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mark_as(host, pid=os.getpid() if pid == "this" else int(ended.stdout))

    # Execute
    lines = failed_rerun_warnings("results")

    # Assert
    assert len(lines) == named
    assert not named or (f"were {MAY_RUN}, so " in lines[0]
                         and "exist: if it no longer runs: make it again with" in lines[0]) is (host == "other")


@pytest.mark.parametrize(("env", "recorded"), [({"SLURM_JOB_ID": SLURM_JOB}, SLURM_JOB), ({}, None)])
def test_a_mark_names_the_slurm_job_its_job_ran_in(workdir, monkeypatch, env, recorded):
    # Prepare: the rerun fails in a SLURM job, or outside SLURM
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_job(workdir)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    # Execute
    run_job(workdir, fail=True)

    # Assert
    assert json.loads(started_mark(RECORD).read_text())["slurm_job_id"] == recorded


@pytest.mark.parametrize(("squeue", "said"), [
    ((f"{SLURM_JOB} RUNNING\n", 0, ""), None),  # still running there: not named
    ((f"{SLURM_JOB} PENDING\n", 0, ""), None),  # requeued (its node failed): it runs again
    ((f"{SLURM_JOB} COMPLETING\n", 0, ""), None),  # ending: some of its processes may still run
    (("", 0, ""), RERUN_FAILED),  # no longer listed: it ended
    ((f"{SLURM_JOB} TIMEOUT\n", 0, ""), RERUN_FAILED),  # ended, still listed
    (("", 1, "slurm_load_jobs error: Invalid job id specified\n"), RERUN_FAILED),  # forgotten by SLURM since
    (("", 1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"), MAY_RUN),
    (None, MAY_RUN),  # no squeue on PATH
])
def test_another_hosts_mark_is_asked_of_its_slurm_job(rerun_failed, monkeypatch, squeue, said):
    # Prepare: the rerun's job ran in a SLURM job on a compute node; squeue answers for it as given
    mark_as("other", job=SLURM_JOB)
    calls = fake_squeue(monkeypatch, rerun_failed, squeue)

    # Execute
    lines = failed_rerun_warnings("results")
    _, findings = verify("results")

    # Assert: named only where it does not run, and with the doubt only where that cannot be known
    assert len(lines) == (said is not None)
    assert not lines or ("still runs there" in lines[0]) is (said == MAY_RUN)
    assert [f.detail for f in findings] == [said or MISSING] * 2
    assert squeue is None or calls.read_text().splitlines() == [f"--noheader --jobs={SLURM_JOB} --states=all "
                                                                "--format=%A %T"] * 2  # once per report


@pytest.mark.parametrize(("in_dag", "planned", "refused"), [
    (True, False, True),  # the targets are made from it, and it does not run: they would stand on its earlier run
    (True, True, False),  # it runs again
    (False, False, False),  # nothing this run makes is made from it
])
def test_a_run_whose_targets_are_made_from_a_failed_rerun_is_refused_before_any_job(rerun_failed, in_dag, planned,
                                                                                    refused):
    dag = ["results/tables/final.csv", *(OUTPUTS if in_dag else ())]
    jobs = ["results/tables/final.csv", *(OUTPUTS if planned else ())]

    if refused:
        with pytest.raises(ConfigError, match="made from a job that was run again and did not finish") as error:
            check_failed_reruns("results", dag, jobs)
        assert "--forcerun results/train/r/metrics.csv" in str(error.value)
    else:
        check_failed_reruns("results", dag, jobs)


@pytest.mark.parametrize(("history", "said"), [(("ok", "fail"), True), (("fail",), False)])
def test_a_failed_reruns_log_says_it_had_finished_before(workdir, history, said):
    for step in history:
        run_job(workdir, fail=step == "fail")

    text = Path(LOG).read_text()

    assert "job failed: MemoryError" in text
    assert ("this job had finished before (its record " in text) is said


# -- make status and make verify ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failed", [True, False])
def test_status_says_a_missing_jobs_outputs_were_deleted_for_a_rerun_that_failed(workdir, failed):
    # Prepare: the job's outputs gone, by a failed rerun or by hand
    run_job(workdir)
    if failed:
        run_job(workdir, fail=True)
    else:
        delete_outputs(workdir)
    records = manifest.output_records("results")

    # Execute
    lines = report([], records, missing=missing_jobs(records, [], "results"),
                   rerun_failed=rerun_failed_outputs("results"))

    # Assert: one missing job, said to be a failed rerun where it was one, and forced by the command
    assert lines[lines.index("missing outputs: 1 job (Snakemake does not remake a missing file while files made "
                             "from it exist)") + 1] == \
        f"  {OUTPUTS[0]} and 1 more of its outputs ({RERUN_FAILED if failed else MISSING})"
    assert lines[-1] == f"  snakemake --cores all --forcerun {OUTPUTS[0]}"


@pytest.mark.parametrize("failed", [True, False])
def test_verify_says_a_missing_output_was_deleted_for_a_rerun_that_failed(workdir, failed):
    run_job(workdir)
    if failed:
        run_job(workdir, fail=True)
    else:
        delete_outputs(workdir)

    checked, findings = verify("results")

    assert checked == 2
    assert [(f.problem, f.detail) for f in findings] == [("missing", RERUN_FAILED if failed else MISSING)] * 2


NOTHING_PLANNED = "Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n"


def fake_dry_runs(monkeypatch, returncode: int = 0, output: str = NOTHING_PLANNED) -> None:
    """`make status`'s dry run replaced by one that ends with `returncode` and prints `output`, for a config whose
    results are below results/, and whose DAG (the dry run with --forceall) is the job's."""
    run = subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too
    dag = f"Building DAG of jobs...\nrule train:\n    output: {', '.join(OUTPUTS)}\n    reason: Forced execution\n"

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, returncode, dag if "--forceall" in cmd else output, "")

    monkeypatch.setattr(status.subprocess, "run", dry_run)
    monkeypatch.setattr(status, "workflow_config", lambda parsed: {"results_dir": "results"})
    monkeypatch.setattr(status, "changed_data", lambda records, config, skip, rehash: [])
    monkeypatch.setattr(status, "config_partition_files", lambda config: [])
    monkeypatch.setattr(status, "trained_from_other_inputs", lambda *args: {})


def test_make_status_names_a_failed_rerun(rerun_failed, monkeypatch, capsys):
    fake_dry_runs(monkeypatch)

    assert status.main([]) == 0

    assert f"  {OUTPUTS[0]} and 1 more of its outputs ({RERUN_FAILED})" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("host", "job", "may_run"), [
    ("this", None, False),  # its process ended on this host
    ("other", SLURM_JOB, False),  # its SLURM job is no longer listed
    ("other", None, True),  # another host's job outside SLURM (or a mark from before marks named one): not known
])
def test_make_verify_and_make_status_say_where_a_failed_rerun_may_still_run(rerun_failed, monkeypatch, capsys, host,
                                                                           job, may_run):
    # Prepare
    mark_as(host, job=job)
    fake_squeue(monkeypatch, rerun_failed, ("", 0, ""))
    fake_dry_runs(monkeypatch)

    # Execute
    verify_lines = [f.line() for f in verify("results")[1]]
    assert status.main([]) == 0
    status_lines = capsys.readouterr().out.splitlines()

    # Assert: the one wording in both, whose command is for once it no longer runs where it may still run, and which
    # status then leaves out of the command that remakes the others
    why, unless = (MAY_RUN, "if it no longer runs: ") if may_run else (RERUN_FAILED, "")
    assert [line.split("; or, where")[0] for line in verify_lines] == [
        f"missing: {output} ({why}); {unless}{remake_hint(output)}" for output in OUTPUTS]
    listed = f"  {OUTPUTS[0]} and 1 more of its outputs ({why})"
    assert (f"{listed}; {unless}{remake_hint(OUTPUTS[0], '')}" if may_run else listed) in status_lines
    assert (f"  snakemake --cores all --forcerun {OUTPUTS[0]}" in status_lines) is not may_run


@pytest.mark.parametrize("locked", [True, False])
def test_make_status_says_a_held_lock_stops_its_command_and_how_to_lift_it(workdir, monkeypatch, capsys, locked):
    # Prepare: the dry run as Snakemake prints it where another Snakemake's lock covers files of its DAG
    fake_dry_runs(monkeypatch, output=(f"Building DAG of jobs...\nError: {status.LOCKED}\n" if locked else "")
                  + NOTHING_PLANNED)

    # Execute
    assert status.main(["--configfile", "my.yaml"]) == 0

    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert ("a lock is held (by another Snakemake running in this folder, or left by one that was killed): its files "
            "would stop the commands below (LockException); if no snakemake runs, `snakemake --unlock --configfile "
            "my.yaml` first" in lines) is locked


def test_the_lock_message_status_reads_is_snakemakes():
    import snakemake.persistence  # its `lock_warn_only`, which a dry run calls

    assert status.LOCKED in Path(snakemake.persistence.__file__).read_text()


@pytest.mark.parametrize(("config", "said"), [
    (None, "config file nope.yaml does not exist"),
    ("training: {lr: 0.1\n", "nope.yaml: line 2, column 1: YAML syntax error"),
    ("training: {lr: 0.1}\n", "the dry run failed: fix what it says first"),  # a readable file: Snakemake's message
])
def test_make_status_with_a_config_file_it_cannot_read_says_so_in_one_line(workdir, monkeypatch, capsys, config,
                                                                          said):
    # Prepare: the dry run fails, as on such a file (Snakemake's traceback)
    if config is not None:
        Path("nope.yaml").write_text(config)
    fake_dry_runs(monkeypatch, returncode=1, output="Traceback (most recent call last):\n  ...\n")

    # Execute
    code = status.main(["--configfile", "nope.yaml"])

    # Assert
    err = capsys.readouterr().err
    assert code == 1
    assert said in err
    assert ("Traceback" in err) is (config is not None and said.startswith("the dry run"))


# -- counts in the singular -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "text"), [(0, "0 jobs"), (1, "1 job"), (2, "2 jobs")])
def test_a_count_of_one_is_in_the_singular(count, text):
    assert counted(count, "job") == text


@pytest.mark.parametrize(("outputs", "checked", "also"), [
    (("results/a.csv", "results/b.csv"), "2 outputs checked", "which also names 1 other output,"),
    (("results/a.csv",), "1 output checked", None),
])
def test_make_verify_counts_in_the_singular(workdir, capsys, outputs, checked, also):
    run_job(workdir, outputs=outputs)
    Path(outputs[0]).unlink()

    manifest.main("results")

    out = capsys.readouterr().out
    assert f"\n{checked} below results: 1 changed, missing or foreign" in f"\n{out}"
    assert also is None or also in out


# -- the seed control pair of config/config.yaml, and the hint of a selector whose seed no run has ----------------


def control_pair_recipe() -> tuple[dict, list[str], str, dict]:
    """What config/config.yaml's comment says to add for the pilot study's IID-vs-IID control: (the experiment, the
    landscapes given `seed: 0`, the pair's label, the pair)."""
    text = (ROOT / "config" / "config.yaml").read_text()
    comment = " ".join(line.lstrip("# ") for line in re.search(r"^# The pilot study's control.*?(?=^\S*[^#\s])", text,
                                                               flags=re.M | re.S)[0].splitlines())
    experiment = yaml.safe_load(re.search(r"`(\{[^`]*\})` to `experiments`", comment)[1])
    landscapes = re.search(r"`seed: 0` to the runs of the landscapes (\w+) and (\w+)", comment).groups()
    label, pair = re.search(r"the pair `(\w+): (\{[^`]*\})`", comment).groups()
    return experiment, list(landscapes), label, yaml.safe_load(pair)


def test_the_seed_control_pair_of_the_default_config_validates_as_its_comment_says():
    # Prepare: the default config, a second seed, and what the comment adds
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    experiment, landscapes, label, pair = control_pair_recipe()
    config["seeds"] = [0, 1]
    config["experiments"].append(experiment)
    for name in landscapes:
        for selector in config["landscapes"][name]["runs"]:
            selector["seed"] = 0
    config["interpolation"]["pairs"][label] = pair

    # Execute
    checked = check_config(copy.deepcopy(config), load_schema(ROOT / SCHEMA))

    # Assert: the pair names the IID runs of both seeds
    runs = build_runs(checked)
    assert [resolve_run(runs, pair[side]).seed for side in ("a", "b")] == [0, 1]


@pytest.mark.parametrize(("selector", "hinted"), [({"alpha": "iid", "seed": 1}, True), ({"alpha": 0.3}, False)])
def test_a_selector_whose_seed_no_run_has_says_how_a_seed_gets_a_run(selector, hinted):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text()) | {"seeds": [0, 1]}
    runs = build_runs(config)

    with pytest.raises(ConfigError, match="no run of the config matches") as error:
        resolve_run(runs, selector)

    assert ("a seed runs where `seeds` lists it and, with `experiments`, an experiment names it or "
            "`experiment_defaults` says `seed: every`" in str(error.value)) is hinted
