"""Job records and `make verify`: every output's SHA-256 and size as its job wrote it, and what re-hashing finds."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fedscape.core import manifest
from fedscape.core.jobs import RecordedSettings
from fedscape.core.logs import job_log
from fedscape.core.manifest import MANIFEST, code_label, file_record, manifest_path, output_records, verify
from fedscape.plan.status import report

SHA256_OF_TABLE = "81bf9fa83c6f7f151bd491a98cd7d933de3965289e3ebd77c6c425f7eaa16392"


def test_a_record_is_the_outputs_hash_and_size(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"x,y\n1,2\n")

    # sha256 of those 8 bytes, computed independently (sha256sum)
    assert file_record(path) == {"size": 8, "sha256": SHA256_OF_TABLE}


@pytest.mark.parametrize(("results", "log", "expected"), [
    ("results", "logs/train/r/train.log", "results/_manifest/train/r/train.json"),
    ("/scratch/me/res", "logs/scratch/me/res/tables/rounds.log", "/scratch/me/res/_manifest/tables/rounds.json"),
])
def test_a_jobs_record_mirrors_its_log_below_the_results(results, log, expected):
    logs = "logs" if results == "results" else f"logs/{results.lstrip('/')}"

    assert str(manifest_path(results, logs, log)) == expected


def test_a_log_outside_the_logs_has_no_record_place():
    with pytest.raises(ValueError, match="is not below"):
        manifest_path("results", "logs", "elsewhere/x.log")


@pytest.fixture
def finished(tmp_path, monkeypatch, restore_logging):
    """Two jobs run through job_log in `tmp_path`: a table job and a job with two outputs."""
    monkeypatch.chdir(tmp_path)
    outputs = {"tables": ["results/tables/a.csv"], "run": ["results/train/r/x.pt", "results/train/r/y.pt"]}
    for name, paths in outputs.items():
        with job_log(f"logs/{name}.log", paths, "results"):
            for i, p in enumerate(paths):
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as fh:
                    fh.write(f"{name} output {i}\n".encode())
    return tmp_path


def test_every_job_that_succeeds_writes_its_record(finished):
    record = json.loads((finished / "results" / MANIFEST / "run.json").read_text())

    # its outputs by their paths below the results directory, which travel with it
    assert record["version"] == 2 and record["log"] == "logs/run.log"
    assert record["outputs"] == {p: file_record(finished / "results" / p) for p in ("train/r/x.pt", "train/r/y.pt")}
    assert set(record) >= {"code", "software", "host", "started", "finished"}
    assert record["software"]["python"] and record["code"]["fedscape"]


def test_a_job_s_record_holds_its_own_notes_and_a_noted_function_s_value_when_it_ended(tmp_path, monkeypatch,
                                                                                      restore_logging):
    # Prepare: a note of an earlier job in this process
    monkeypatch.chdir(tmp_path)
    manifest.note(earlier="a note of another job")
    read = []

    # Execute: the job notes a value and a function of what it has read by its end
    with job_log("logs/job.log", [], "results"):
        manifest.note(device="cpu", files=lambda: len(read))
        read += ["a", "b"]

    # Assert
    record = json.loads((tmp_path / "results" / MANIFEST / "job.json").read_text())
    assert record["device"] == "cpu" and record["files"] == 2
    assert "earlier" not in record


def test_a_job_records_the_settings_it_computes_with_and_their_digest(tmp_path, monkeypatch, restore_logging):
    # Prepare: settings whose params text is an earlier run's (`kept_record`), with a tuple JSON holds as a list
    monkeypatch.chdir(tmp_path)
    now = {"run_id": "r", "training": {"eval_batch_size": 33, "lr": 0.1}, "rounds": (0, 5)}
    settings = RecordedSettings(now, repr({**now, "training": {"eval_batch_size": 512, "lr": 0.1}}))

    # Execute
    with job_log("logs/job.log", [], "results", settings=settings):
        pass
    with job_log("logs/plain.log", [], "results"):
        pass

    # Assert: the values of now, not the recorded text; a job without settings records none
    record = json.loads((tmp_path / "results" / MANIFEST / "job.json").read_text())
    assert record["settings"] == {"run_id": "r", "training": {"eval_batch_size": 33, "lr": 0.1}, "rounds": [0, 5]}
    text = json.dumps(record["settings"], sort_keys=True)
    assert record["settings_digest"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    plain = json.loads((tmp_path / "results" / MANIFEST / "plain.json").read_text())
    assert "settings" not in plain and "settings_digest" not in plain


def test_a_failing_job_writes_no_record(tmp_path, monkeypatch, restore_logging):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), job_log("logs/bad.log", ["results/bad.csv"], "results"):
        raise RuntimeError("boom")

    assert not (tmp_path / "results" / MANIFEST / "bad.json").exists()


def test_verify_finds_nothing_in_intact_results(finished):
    assert verify("results") == (3, [])
    assert manifest.main("results") == 0


def test_verify_finds_changed_missing_and_foreign_outputs_even_with_their_times_kept(finished, capsys):
    # Prepare: damage that keeps the files' modification times (invisible to Snakemake)
    x, y, a = (finished / p for p in ("results/train/r/x.pt", "results/train/r/y.pt", "results/tables/a.csv"))
    times = os.stat(x).st_mtime_ns
    x.write_bytes(b"bit rot\n")
    os.utime(x, ns=(times, times))
    y.write_bytes(a.read_bytes())  # another output's content put in its place
    a.unlink()

    # Execute
    checked, findings = verify("results")
    code = manifest.main("results")

    # Assert: each finding names its file and the command that remakes it; verify fails
    assert checked == 3
    assert {(f.path, f.problem) for f in findings} == {("results/train/r/x.pt", "changed"),
                                                      ("results/train/r/y.pt", "foreign"),
                                                      ("results/tables/a.csv", "missing")}
    out = capsys.readouterr().out
    assert f"--forcerun {shlex.quote('results/train/r/x.pt')}" in out
    assert "its content is that recorded for results/tables/a.csv" in out
    assert code == 1


# -- make status's quick check: sizes, and the contents of files dated outside their job's run or of another's size --

HOUR = 3600


def _put(path: Path, content: bytes | None = None, shift: float | None = None) -> None:
    """Write `content` to `path` (None: leave it), its modification time then moved by `shift` seconds from where it
    was (None: as the write left it)."""
    times = os.stat(path).st_mtime
    if content is not None:
        path.write_bytes(content)
    if shift is not None:
        os.utime(path, (times + shift, times + shift))


FOREIGN_X = ("foreign", "its content is that recorded for results/train/r/y.pt")


@pytest.mark.parametrize(("change", "found", "hashed"), [
    # another size: changed, read by none
    (lambda x, y: _put(x, b"a longer file\n"), [("changed", "14 bytes; its job wrote 13 bytes")], 0),
    # another size, that another output was recorded at (a.csv's 16 bytes): read, and a copy of that output (foreign,
    # as make verify says), or changed
    (lambda x, y: _put(x, (x.parents[2] / "tables/a.csv").read_bytes()),
     [("foreign", "its content is that recorded for results/tables/a.csv")], 1),
    (lambda x, y: _put(x, b"another file 16\n"), [("changed", "16 bytes, SHA-256 ")], 1),
    # the same size, written after its job: read, and changed or another output's content (foreign)
    (lambda x, y: _put(x, b"run output 9\n", HOUR), [("changed", "13 bytes, SHA-256 ")], 1),
    (lambda x, y: _put(x, y.read_bytes(), HOUR), [FOREIGN_X], 1),
    # another run's file put in its place with its older date kept (cp -a, rsync -a): dated before its job started
    (lambda x, y: _put(x, y.read_bytes(), -HOUR), [FOREIGN_X], 1),
    # touched (or copied without its dates): read, and the file its job wrote
    (lambda x, y: _put(x, None, HOUR), [], 1),
    # nothing changed: nothing read
    (lambda x, y: None, [], 0),
    # the same size and a date within its job's run (bit rot, an edit that kept the date): not read here (make verify)
    (lambda x, y: _put(x, b"run output 9\n", 0), [], 0),
])
def test_status_s_check_reads_only_the_files_whose_size_and_date_do_not_say(finished, monkeypatch, change, found,
                                                                            hashed):
    # Prepare: one change to x.pt (13 bytes, as its sibling y.pt); every file that is read, counted
    read = []
    monkeypatch.setattr(manifest, "file_record", lambda path: read.append(path) or file_record(path))
    x, y = finished / "results/train/r/x.pt", finished / "results/train/r/y.pt"
    change(x, y)

    # Execute
    findings, count = manifest.changed_outputs(manifest.read_records("results"))

    # Assert
    assert [(f.path, f.problem) for f in findings] == [("results/train/r/x.pt", problem) for problem, _ in found]
    assert all(f.detail.startswith(detail) for f, (_, detail) in zip(findings, found, strict=True))
    assert count == hashed and read == ["results/train/r/x.pt"] * hashed


def test_status_s_check_leaves_out_the_outputs_it_is_told_to_and_those_not_there(finished):
    (finished / "results/train/r/x.pt").write_text("a longer file\n")
    (finished / "results/train/r/y.pt").unlink()

    assert manifest.changed_outputs(manifest.read_records("results"), skip=["results/train/r/x.pt"]) == ([], 0)


def test_status_s_check_compares_sizes_alone_for_a_record_without_its_job_s_times(finished):
    # Prepare: x.pt's record without its times, x.pt touched; a.csv's with them, a.csv touched
    record_file = finished / "results" / MANIFEST / "run.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k not in ("started", "finished")}))
    for path in ("results/train/r/x.pt", "results/tables/a.csv"):
        _put(finished / path, None, HOUR)

    # Execute / Assert: a.csv alone is read
    assert manifest.changed_outputs(manifest.read_records("results")) == ([], 1)


LATE = 100.0  # seconds after its job's record ended that Snakemake's main process touched its outputs (a cluster's)


@pytest.mark.parametrize(("snakemake", "moved", "hashed"), [
    # Snakemake's times of the record's job: from before its start (submitted) to the date its touch gave the file
    ((-30, LATE), LATE, 0),
    (None, LATE, 1),  # no metadata: dated after its job's run
    ((-30, LATE), LATE + HOUR, 1),  # touched again since
    ((LATE - 5, LATE), LATE, 1),  # the metadata of a later job than the record's (started after the record's end)
])
def test_status_s_check_takes_a_job_s_run_to_end_where_snakemake_touched_its_outputs(finished, snakemake, moved,
                                                                                     hashed):
    # Prepare: x.pt dated `moved` seconds after its job's record ended; Snakemake's start and end of the job that
    # made it (from the record's start and end), or none. The record's job ran for a second (its `started` counts
    # from its process's start, which in a test session can be minutes earlier)
    record_file = finished / "results" / MANIFEST / "run.json"
    record = json.loads(record_file.read_text())
    record["started"] = (datetime.datetime.fromisoformat(record["finished"]) - datetime.timedelta(seconds=1)
                         ).isoformat()
    record_file.write_text(json.dumps(record))
    started, ended = (datetime.datetime.fromisoformat(record[key]).timestamp() for key in ("started", "finished"))
    x = finished / "results/train/r/x.pt"
    os.utime(x, (ended + moved, ended + moved))
    times = {"results/train/r/x.pt": (started + snakemake[0], ended + snakemake[1])} if snakemake else {}

    # Execute
    findings, count = manifest.changed_outputs(manifest.read_records("results"), touched=times.get)

    # Assert: read only where its date is not Snakemake's for the record's job; the file its job wrote
    assert (findings, count) == ([], hashed)


def test_verify_without_records_says_so(tmp_path, capsys):
    assert manifest.main(str(tmp_path)) == 1
    assert "no job records" in capsys.readouterr().out


@pytest.mark.parametrize(("tree", "names_commit"), [("checkout", True), ("installed", False), ("unpacked", False)])
def test_the_commit_is_recorded_only_for_a_source_checkout(tmp_path, tree, names_commit):
    # Prepare: a git repository holding an installed copy's tree (a venv inside a checkout) or a source checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("a checkout\n")
    _git(tmp_path, "add", "README")
    _git(tmp_path, "commit", "-q", "-m", "one")
    # the checkout itself; an installed copy's root (where site-packages' fedscape/core/manifest.py puts it) in a venv
    # inside the checkout; an unpacked source tree (pyproject.toml, no .git of its own) inside the checkout
    root = {"checkout": tmp_path, "installed": tmp_path / "venv" / "lib" / "python3.11",
            "unpacked": tmp_path / "vendor" / "fedscape-1.0"}[tree]
    root.mkdir(parents=True, exist_ok=True)
    if tree != "installed":
        (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")

    # Execute
    code = manifest.code_version(root)

    # Assert: the enclosing repository's commit only where the tree is the checkout itself
    assert (code["commit"] is not None) == names_commit
    assert code["fedscape"] and (code["dirty"] is None) == (not names_commit)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A committed source checkout: pyproject.toml, a module below src/, a rule and a README."""
    repo = tmp_path / "checkout"
    for name, text in {"pyproject.toml": "[project]\nname = 'x'\n", "src/fedscape/fl/hparams/fedavg.py": "",
                       "rules/train.smk": "", "README": "a checkout\n"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    return repo


@pytest.mark.parametrize(("files", "dirty", "untracked"), [
    ({}, False, []),
    # a module the registries load (pkgutil.iter_modules) whether git tracks it or not
    ({"src/fedscape/fl/hparams/zz_untracked.py": ""}, True, ["src/fedscape/fl/hparams/zz_untracked.py"]),
    ({"rules/extra.smk": ""}, True, ["rules/extra.smk"]),
    ({"workflow/scripts/new.py": "", "Snakefile": ""}, True, ["Snakefile", "workflow/"]),  # a new folder: one entry
    ({"notes.txt": "", "scratch/try.py": "", "srcnotes.txt": ""}, False, []),  # untracked beside the code
    ({"README": "edited\n"}, True, []),  # a tracked file changed
])
def test_the_code_is_dirty_with_a_changed_tracked_file_or_an_untracked_code_file(checkout, files, dirty, untracked):
    # Prepare
    for name, text in files.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)

    # Execute
    code = manifest.code_version(checkout)

    # Assert
    assert code["commit"] == _git(checkout, "rev-parse", "HEAD")
    assert (code["dirty"], code["untracked"], code["untracked_count"]) == (dirty, untracked, len(untracked))
    assert code_label(code).endswith("-dirty") == dirty


def test_a_record_names_the_first_untracked_code_files_and_counts_them_all(checkout):
    for k in range(manifest.UNTRACKED_LISTED + 2):
        (checkout / f"src/fedscape/fl/hparams/zz_{k:02d}.py").write_text("")

    code = manifest.code_version(checkout)

    assert code["untracked"] == [f"src/fedscape/fl/hparams/zz_{k:02d}.py" for k in range(manifest.UNTRACKED_LISTED)]
    assert code["untracked_count"] == manifest.UNTRACKED_LISTED + 2 and code["dirty"]


def _commit_a_change(repo: Path) -> None:
    (repo / "src/fedscape/fl/hparams/fedavg.py").write_text("changed = True\n")
    _git(repo, "commit", "-q", "-am", "two")


def _remove_the_untracked_module(repo: Path) -> None:
    (repo / "src/fedscape/fl/hparams/zz_untracked.py").unlink()


@pytest.mark.parametrize(("untracked_at_start", "during_the_job"), [
    (False, _commit_a_change),  # a `git pull` or commit while a long job runs
    (True, _remove_the_untracked_module),  # a module the job loaded, gone by its end
])
def test_a_job_records_the_code_version_it_started_with(checkout, tmp_path, monkeypatch, restore_logging,
                                                         untracked_at_start, during_the_job):
    # Prepare: the code version of `checkout`, in a job that changes it while it runs
    monkeypatch.setattr(manifest, "code_version", functools.partial(manifest.code_version, checkout))
    if untracked_at_start:
        (checkout / "src/fedscape/fl/hparams/zz_untracked.py").write_text("")
    started = manifest.code_version()
    monkeypatch.chdir(tmp_path)

    # Execute
    with job_log("logs/job.log", [], "results"):
        during_the_job(checkout)
        label = manifest.code_version_label()

    # Assert: the record and the tables' label name the code as the job started, not as the checkout is at its end
    record = json.loads((tmp_path / "results" / MANIFEST / "job.json").read_text())
    assert manifest.code_version() != started
    assert record["code"] == started and started["dirty"] == untracked_at_start
    assert label == code_label(started)


# -- make verify: the results directory it is given ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_verify_checks_the_results_directory_it_is_given_wherever_it_was_made(finished, how):
    # Prepare: the results copied (the original kept) or moved elsewhere, and an output there damaged
    Path("elsewhere").mkdir()
    (shutil.copytree if how == "copied" else shutil.move)("results", "elsewhere/res")
    Path("elsewhere/res/tables/a.csv").write_text("garbage\n")

    # Execute
    checked, findings = verify("elsewhere/res")

    # Assert: the damaged file of the given directory, named where it is now
    assert checked == 3
    assert [(f.path, f.problem) for f in findings] == [("elsewhere/res/tables/a.csv", "changed")]
    assert f"--forcerun {shlex.quote('elsewhere/res/tables/a.csv')}" in findings[0].line()
    assert verify("results") == ((3, []) if how == "copied" else (0, []))


@pytest.mark.parametrize("root", ["..", "ABSOLUTE"])
def test_verify_of_results_made_with_a_relative_results_dir_runs_from_any_directory(finished, monkeypatch, root):
    monkeypatch.chdir(finished / "results" / "train")

    assert verify(str(finished / "results") if root == "ABSOLUTE" else root) == (3, [])


def _old_record(manifest_dir: Path, log: str | None, outputs: dict[str, Path]) -> None:
    """A record as fedscape wrote it before version 2: each output by the path its job was given (`outputs`: that
    path -> the file now), at the log's path below the manifest."""
    path = manifest_dir / "train/r/train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "log": log, "finished": "2026-01-01T00:00:00+00:00",
                                "outputs": {o: file_record(f) for o, f in outputs.items()}}))


@pytest.mark.parametrize(("results_dir", "log"), [
    ("results", "logs/train/r/train.log"),  # the default: paths relative to the workflow's directory
    ("res/a", "logs/res/a/train/r/train.log"),  # another relative results directory
    ("ABSOLUTE", "logs/ABSOLUTE/train/r/train.log"),  # an absolute one: its logs below logs/ without the leading /
])
def test_verify_reads_an_older_record_of_results_moved_elsewhere(tmp_path, monkeypatch, results_dir, log):
    # Prepare: an older record of results made in tmp_path/wd, their directory then moved, verify run elsewhere
    made = tmp_path / "wd" / results_dir if results_dir != "ABSOLUTE" else tmp_path / "made"
    results_dir = str(made) if results_dir == "ABSOLUTE" else results_dir
    log = log.replace("ABSOLUTE", str(made).lstrip("/"))
    for name in ("x.pt", "y.pt"):
        (made / "train/r").mkdir(parents=True, exist_ok=True)
        (made / "train/r" / name).write_text(name)
    _old_record(made / MANIFEST, log, {f"{results_dir}/train/r/{n}": made / "train/r" / n for n in ("x.pt", "y.pt")})
    shutil.move(made, tmp_path / "moved")
    (tmp_path / "moved/train/r/y.pt").write_text("bit rot")
    monkeypatch.chdir(tmp_path)

    # Execute
    checked, findings = verify("moved")

    # Assert: both outputs found below the directory given, the damaged one named there
    assert checked == 2
    assert [(f.path, f.problem) for f in findings] == [("moved/train/r/y.pt", "changed")]
    assert sorted(output_records("moved")) == ["moved/train/r/x.pt", "moved/train/r/y.pt"]


def test_an_older_record_s_output_outside_its_results_directory_keeps_its_path(tmp_path, monkeypatch):
    # Prepare: an older record without a log, and one whose output lies outside the results directory of its log
    monkeypatch.chdir(tmp_path)
    Path("results/train/r").mkdir(parents=True)
    Path("elsewhere.csv").write_text("x")
    outputs = {"elsewhere.csv": Path("elsewhere.csv"), "results/train/r/gone.pt": Path("elsewhere.csv")}
    _old_record(Path("results", MANIFEST), "logs/train/r/train.log", outputs)
    _old_record(Path("results", MANIFEST, "nolog"), None, {"results/train/r/z.pt": Path("elsewhere.csv")})

    # Execute / Assert
    assert sorted(output_records("results")) == ["elsewhere.csv", "results/train/r/gone.pt", "results/train/r/z.pt"]


def test_status_counts_the_recorded_results_of_a_moved_results_directory(finished):
    shutil.move("results", "moved")

    records = output_records("moved")

    assert sorted(records) == ["moved/tables/a.csv", "moved/train/r/x.pt", "moved/train/r/y.pt"]
    assert report([], records, root="moved")[0].startswith("current: 3 recorded results")


# -- make verify: the command of each finding ---------------------------------------------------------------------


@pytest.mark.parametrize(("output", "command"), [
    ("partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz", "--force"),  # bit-identical from its seed
    ("partitions/digits/clients~4/alpha~0.5/seed~0/counts.csv", "--force"),
    ("train/digits/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~4/part~1.0/seed~0/trajectory.pt",
     "--forcerun"),
    ("init/digits/cnn_small/init~random/init.pt", "--forcerun"),
])
def test_verify_remakes_a_partition_alone_and_any_other_output_with_what_is_made_from_it(
        tmp_path, monkeypatch, restore_logging, capsys, output, command):
    # Prepare: a job's output, then deleted
    monkeypatch.chdir(tmp_path)
    path = f"results/{output}"
    with job_log("logs/job.log", [path], "results"):
        Path(path).parent.mkdir(parents=True)
        Path(path).write_text("made")
    Path(path).unlink()

    # Execute
    code = manifest.main("results")

    # Assert
    assert code == 1
    assert f"`snakemake --cores 1 {command} {path}`" in capsys.readouterr().out


def test_a_missing_output_names_the_record_to_delete_when_the_workflow_no_longer_makes_it(finished, capsys):
    # Prepare: the output of a one-output job and one of a two-output job gone (a workflow that no longer makes them)
    Path("results/tables/a.csv").unlink()
    Path("results/train/r/y.pt").unlink()

    # Execute
    code = manifest.main("results")

    # Assert: each names its job's record, and says which other outputs it also holds
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("missing: results/tables/a.csv (")
    assert lines[1].startswith("missing: results/train/r/y.pt (")
    assert lines[0].endswith(f"delete its job's record {Path('results', MANIFEST, 'tables.json')}")
    assert lines[1].endswith(f"delete its job's record {Path('results', MANIFEST, 'run.json')}, which also names 1 "
                             "other output, no longer checked then")


# -- make verify: records that cannot be read -----------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b'{"version": 2, "outputs": {"tables/b.csv": {"si',  # cut short
    b"\xff\xfe garbage",
    b"[1, 2]",  # JSON, not a record
    b'{"version": 2, "outputs": {"tables/b.csv": {"size": 3}}}',  # an output without its digest
    b'{"version": "2", "outputs": {}}',
])
def test_a_damaged_record_is_a_finding_naming_it_and_every_other_record_is_checked(finished, capsys, caplog, content):
    # Prepare
    record = Path("results", MANIFEST, "tables", "final.json")
    record.parent.mkdir()
    record.write_bytes(content)

    # Execute
    checked, findings = verify("results")
    code = manifest.main("results")
    with caplog.at_level(logging.WARNING, logger="fedscape"):
        records = output_records("results")

    # Assert: the other jobs' outputs are checked; the record is named with how to get it back; status goes on
    assert checked == 3
    assert [(f.path, f.problem) for f in findings] == [(str(record), "damaged record")]
    out = capsys.readouterr().out
    assert out.startswith(f"damaged record: {record} (") and "its job logs to tables/final.log" in out
    assert "--forcerun <one of its outputs>" in out and "or delete the record" in out
    assert out.splitlines()[-1] == ("3 outputs checked below results: 0 changed, missing or foreign; damaged job "
                                    "records: 1")
    assert code == 1
    assert len(records) == 3 and str(record) in caplog.text


DO_NOT_MATCH = "its settings do not match their digest"


@pytest.mark.parametrize(("edit", "damaged"), [
    (None, None),
    (lambda record: record["settings"].update(x=999), DO_NOT_MATCH),  # what the job computed with, rewritten
    (lambda record: record["settings"]["nested"].pop("a"), DO_NOT_MATCH),
    (lambda record: record.update(settings_digest="0" * 16), DO_NOT_MATCH),
    # a job writes both or neither: the digest deleted with the settings it would have caught, or the settings
    (lambda record: record.update(settings={"x": 999}) or record.pop("settings_digest"),
     "it has settings without settings_digest"),
    (lambda record: record.pop("settings"), "it has settings_digest without settings"),
], ids=["unedited", "a setting rewritten", "a setting removed", "the digest rewritten", "no digest", "no settings"])
def test_a_record_whose_settings_do_not_match_their_digest_is_damaged(tmp_path, monkeypatch, restore_logging, capsys,
                                                                      edit, damaged):
    # Prepare: a job's record of its settings (values JSON holds as other types: a tuple, a float, NaN), edited
    monkeypatch.chdir(tmp_path)
    Path("results/t").mkdir(parents=True)
    with job_log("logs/t/j.log", ["results/t/a.csv"], "results",
                 settings={"x": 1, "lr": 0.1, "rounds": (0, 5), "nested": {"b": float("nan"), "a": None}}):
        Path("results/t/a.csv").write_text("a\n")
    record = Path("results", MANIFEST, "t", "j.json")
    if edit:
        content = json.loads(record.read_text())
        edit(content)
        record.write_text(json.dumps(content))

    # Execute
    checked, findings = verify("results")
    code = manifest.main("results")

    # Assert: a damaged record, with how to get it back; its outputs are not checked
    out = capsys.readouterr().out
    if damaged:
        assert (checked, [(f.path, f.problem) for f in findings]) == (0, [(str(record), "damaged record")])
        assert f"ValueError: {damaged}" in findings[0].detail
        assert "--forcerun <one of its outputs>" in out and "or delete the record" in out
        assert code == 1
    else:
        assert (checked, findings, code) == (1, [], 0)


def test_the_temporary_file_of_a_killed_record_write_is_no_record(finished):
    # Prepare: what a job killed while it wrote its record leaves (core.io.atomic_path's name), cut short
    folder = Path("results", MANIFEST, "tables")
    folder.mkdir()
    fd, _ = tempfile.mkstemp(prefix=".final.json.", suffix=".tmp.json", dir=folder)
    os.write(fd, b'{"outp')
    os.close(fd)

    assert verify("results") == (3, [])


# -- a rule whose output moved to a rule of its own ------------------------------------------------------------------
def _job_writes(root: Path, record: Path, outputs: dict[str, bytes]) -> None:
    from fedscape.core.manifest import write_record

    for name, content in outputs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    write_record(record, [root / name for name in outputs], 0.0, "logs/h/hessian.log", root=root)


def test_outputs_a_job_no_longer_writes_keep_their_earlier_record_until_written_again(tmp_path):
    # Prepare: a job that wrote a table and a plane; run again, it writes the table alone (the plane kept)
    root = tmp_path / "results"
    record = root / MANIFEST / "h" / "hessian.json"
    _job_writes(root, record, {"h/hessian.csv": b"a\n1\n", "h/eigen_plane.npz": b"plane"})
    earlier = json.loads(record.read_text())
    record.write_text(json.dumps({**earlier, "started": "2026-01-01T00:00:00+00:00",
                                  "finished": "2026-01-01T01:00:00+00:00"}))  # a job of long ago
    _job_writes(root, record, {"h/hessian.csv": b"a\n2\n"})

    # Execute
    records = output_records(root)
    checked, findings = verify(root)

    # Assert: the plane still recorded (by the earlier job, without a log), the table by the new one; both verified
    assert set(records) == {str(root / "h/hessian.csv"), str(root / "h/eigen_plane.npz")}
    assert records[str(root / "h/eigen_plane.npz")]["log"] is None
    assert records[str(root / "h/hessian.csv")]["outputs"] == {"h/hessian.csv": file_record(root / "h/hessian.csv")}
    assert checked == 2 and findings == []

    # Execute: the plane's own job writes it again, later
    _job_writes(root, root / MANIFEST / "h" / "eigen_plane.json", {"h/eigen_plane.npz": b"plane 2"})

    # Assert: its own record answers for it
    assert output_records(root)[str(root / "h/eigen_plane.npz")]["log"] == "logs/h/hessian.log"
    assert verify(root) == (2, [])

    # Execute: the first job runs twice more, each time writing the table alone; the plane's job dated even before
    # the first job's kept record (a host whose clock was behind)
    plane = root / MANIFEST / "h" / "eigen_plane.json"
    plane.write_text(json.dumps({**json.loads(plane.read_text()), "started": "2025-12-31T22:00:00+00:00",
                                 "finished": "2025-12-31T23:00:00+00:00"}))
    _job_writes(root, record, {"h/hessian.csv": b"a\n3\n"})
    _job_writes(root, record, {"h/hessian.csv": b"a\n4\n"})

    # Assert: the plane's own record still answers for it, not the first job's kept one (with that job's times)
    records = output_records(root)
    assert records[str(root / "h/eigen_plane.npz")]["outputs"] == {
        "h/eigen_plane.npz": file_record(root / "h/eigen_plane.npz")}
    assert json.loads((root / MANIFEST / "h" / "hessian.earlier.json").read_text())["finished"] == (
        "2026-01-01T01:00:00+00:00")
    assert verify(root) == (2, [])
    assert manifest.changed_outputs(manifest.read_records(root))[0] == []


def test_an_output_gone_or_a_record_of_the_first_version_carries_nothing(tmp_path):
    # Prepare: a record whose second output is gone before its job runs again, and one of version 1
    root = tmp_path / "results"
    record = root / MANIFEST / "h" / "hessian.json"
    _job_writes(root, record, {"h/a.csv": b"a", "h/b.npz": b"b"})
    (root / "h/b.npz").unlink()
    _job_writes(root, record, {"h/a.csv": b"a2"})
    old = root / MANIFEST / "old" / "x.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"outputs": {"/elsewhere/results/h/c.csv": file_record(root / "h/a.csv")}}))
    _job_writes(root, old, {"h/d.csv": b"d"})

    # Assert: no record beside either
    assert sorted(p.name for p in (root / MANIFEST).rglob("*.json")) == ["hessian.json", "x.json"]
