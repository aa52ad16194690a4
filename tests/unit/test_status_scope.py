"""`make status` scoped to the config: a recorded result that no job of the config's DAG makes (a run dropped from the
config since, another config's in the same folder) is listed apart, `not in this config (kept, not remade)`, and is
never current, missing, changed or forced (`--forcerun` makes each file it names a target: the dropped run trained
again with today's settings, or the whole command refused where no rule of the config makes it)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import yaml
from helpers.configs import SCHEMA, config_with
from helpers.workflow import TINY_CONFIG, copy_workflow

from fedscape.core.logs import job_log
from fedscape.core.paths import TRAIN_FILES, Results
from fedscape.core.runs import build_runs
from fedscape.plan import status
from fedscape.plan.status import report, split_by_config
from fedscape.plan.workflow import check_config

NOTHING_PLANNED = "Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n"
OUTSIDE = ("not in this config (kept, not remade): {} whose results no job of the config makes (a run "
           "or analysis dropped from it, or another config's in the same folder)")
KEPT = "results/train/digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~4/part~1.0/seed~0"
DROPPED = "results/train/digits/cnn_small/init~random/algo~fedprox/alpha~iid/clients~4/part~1.0/seed~0"
FILES = ("clients.pt", "metrics.csv", "trajectory.pt")  # sorted: the first names its job


def _forced(out: str) -> list[str]:
    """The files `make status`'s command forces (its last line; a `settings not compared` line names `<file>`)."""
    command = out.splitlines()[-1].split()
    return command[command.index("--forcerun") + 1:]


def _record(*runs: str) -> dict[str, list[str]]:
    """Each run's train job (its outputs `FILES` below the run's folder) written through job_log, as a job writes
    them and its record (below results/); run folder -> its outputs."""
    written = {}
    for run in runs:
        outputs = [f"{run}/{name}" for name in FILES]
        with job_log(f"logs/{run.removeprefix('results/')}/train.log", outputs, "results"):
            for output in outputs:
                Path(output).parent.mkdir(parents=True, exist_ok=True)
                Path(output).write_text(f"{output}\n")
        written[run] = outputs
    return written


def _fake_dry_runs(monkeypatch, dag: Iterable[Sequence[str]]) -> None:
    """The dry run of `status.main` replaced by one that plans nothing (as when files made from the results exist),
    and that of every job of the config's DAG (`--forceall`) by one of jobs with the outputs `dag`."""
    run = subprocess.run  # Snakemake's own argument parser asks its executor plugins' commands too
    jobs = "".join(f"[Mon Nov 23 14:57:18 2026]\nrule train:\n    output: {', '.join(outputs)}\n"
                   "    reason: Forced execution\n" for outputs in dag)

    def dry_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "snakemake"]:
            return run(cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, 0, f"Building DAG of jobs...\n{jobs}" if "--forceall" in cmd
                                           else NOTHING_PLANNED, "")

    monkeypatch.setattr(status.subprocess, "run", dry_run)


@pytest.mark.parametrize(("dropped", "mark"), [
    ("deleted", " (not there now)"),  # before: listed as missing and forced
    ("changed", ""),  # before: listed as not its job's file and forced
    ("there", ""),  # before: counted current
])
def test_a_dropped_runs_results_are_listed_outside_the_config_and_never_forced(tmp_path, monkeypatch, capsys,
                                                                               restore_logging, dropped, mark):
    # Prepare: two runs' train jobs recorded; a config that keeps one (its DAG: that run's train job); one output of
    # the kept run gone, the dropped run's outputs deleted, changed or there
    monkeypatch.chdir(tmp_path)
    outputs = _record(KEPT, DROPPED)
    Path(outputs[KEPT][2]).unlink()
    if dropped == "deleted":
        for output in outputs[DROPPED]:
            Path(output).unlink()
    elif dropped == "changed":
        Path(outputs[DROPPED][1]).write_text("another size\n" * 9)
    config = check_config(config_with({}, results_dir="results"), SCHEMA)
    monkeypatch.setattr(status, "workflow_config", lambda parsed: config)
    _fake_dry_runs(monkeypatch, [outputs[KEPT]])

    # Execute
    assert status.main(["--configfile", "kept.yaml"]) == 0

    # Assert: the dropped run's job listed apart (once), neither current nor missing nor changed, and not forced;
    # the kept run as before: its gone output missing and forced (its job, and so its two outputs there, not current)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert _forced(out) == [outputs[KEPT][2]]
    assert lines[0] == "current: 0 recorded results"
    at = lines.index(OUTSIDE.format("1 recorded job"))
    assert lines[at + 1] == f"  {DROPPED}/{FILES[0]} and 2 more of its outputs{mark}"
    assert sum(DROPPED in line for line in lines) == 1
    assert f"  {outputs[KEPT][2]} (recorded by its job, not there now)" in lines
    assert not any(line.startswith("not the files their jobs wrote") for line in lines)


def test_a_config_that_makes_every_recorded_result_lists_none_outside(tmp_path, monkeypatch, capsys,
                                                                       restore_logging):
    # Prepare: both runs recorded and kept by the config, one output of each gone
    monkeypatch.chdir(tmp_path)
    outputs = _record(KEPT, DROPPED)
    for run in (KEPT, DROPPED):
        Path(outputs[run][0]).unlink()
    config = check_config(config_with({}, results_dir="results"), SCHEMA)
    monkeypatch.setattr(status, "workflow_config", lambda parsed: config)
    _fake_dry_runs(monkeypatch, outputs.values())

    # Execute
    assert status.main(["--configfile", "both.yaml"]) == 0

    # Assert: as before the config's scope: both missing and forced (neither job current), nothing outside
    out = capsys.readouterr().out
    assert "not in this config" not in out
    assert _forced(out) == [outputs[KEPT][0], outputs[DROPPED][0]]
    assert out.splitlines()[0] == "current: 0 recorded results"


def test_the_records_are_split_by_the_outputs_of_the_configs_dag():
    # Prepare: a job the config makes; one it makes in part (a round of client models it no longer keeps); one it
    # does not make; one recorded at another path (the results moved since)
    jobs = {"kept": [f"{KEPT}/{name}" for name in FILES],
            "part": ["results/train/r/trajectory.pt", "results/train/r/clients~8.pt"],
            "dropped": [f"{DROPPED}/{name}" for name in FILES],
            "moved": ["/elsewhere/results/train/s/trajectory.pt"]}
    records = {output: {"log": f"logs/{name}.log"} for name, outputs in jobs.items() for output in outputs}
    made = [*jobs["kept"], "results/train/r/trajectory.pt", "results/tables/final.csv"]

    # Execute
    ours, outside = split_by_config(records, made, "results")

    # Assert: the outputs the config does not make below the results folder are outside, by job; those at another
    # path stay (no job of the config makes them there either: counted as settings not compared, as before)
    assert outside == [tuple(jobs["dropped"]), ("results/train/r/clients~8.pt",)]
    assert sorted(ours) == sorted([*jobs["kept"], "results/train/r/trajectory.pt", *jobs["moved"]])
    assert all(ours[o] is records[o] for o in ours)


def test_jobs_outside_the_config_past_ten_are_counted_by_stage_and_leave_nothing_to_remake(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = [(f"results/{stage}/r{k:02d}/out.csv",) for stage, n in (("init", 1), ("train", 12)) for k in range(n)]

    lines = report([], {}, outside=outside)

    assert lines[lines.index(OUTSIDE.format("13 recorded jobs")) + 1] == "  results/init/r00/out.csv (not there now)"
    assert "  and 3 more (train 3)" in lines
    assert lines[-1] == "nothing to remake"


def test_make_status_with_the_real_dry_runs_keeps_a_dropped_run_out_of_its_command(tmp_path, monkeypatch, capsys,
                                                                                    restore_logging):
    """Snakemake's own dry runs of the tiny config without its FedProx run: the DAG of the config decides."""
    # Prepare: the workflow and the tiny config without the FedProx run; the train jobs of the IID FedAvg run (kept)
    # and of the FedProx run (dropped) recorded, the dropped run's outputs deleted
    work = copy_workflow(tmp_path / "work")
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    kept = {**tiny, "experiments": [e for e in tiny["experiments"] if e["algorithm"] != "fedprox"]}
    (work / "kept.yaml").write_text(yaml.safe_dump(kept))
    config = check_config(tiny, SCHEMA)
    runs = {(run.algorithm, run.setting): run for run in build_runs(config)}
    results = Results.of(config)
    written = {}
    with contextlib.chdir(work):
        for key in (("fedavg", "iid"), ("fedprox", "0.5")):
            outputs = [results.run_file(runs[key], name) for name in TRAIN_FILES]
            with job_log(f"logs/{runs[key].run_id}/train.log", outputs, "results"):
                for output in outputs:
                    Path(output).parent.mkdir(parents=True, exist_ok=True)
                    Path(output).write_text(f"{output}\n")
            written[key] = sorted(outputs)
        for output in written["fedprox", "0.5"]:
            Path(output).unlink()
    monkeypatch.chdir(work)

    # Execute
    assert status.main(["--configfile", "kept.yaml"]) == 0

    # Assert: the dropped run listed apart and in no command; the kept run is the config's (planned: its inputs are
    # made first), so not outside
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "--forcerun" not in out and "missing outputs" not in out
    at = lines.index(OUTSIDE.format("1 recorded job"))
    assert lines[at + 1] == f"  {written['fedprox', '0.5'][0]} and 4 more of its outputs (not there now)"
    assert not any(runs["fedavg", "iid"].run_id in line for line in lines)
