"""Job records and `make verify`: every output's SHA-256 and size as its job wrote it, and what re-hashing finds."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from fedscape.core import manifest
from fedscape.core.logs import job_log
from fedscape.core.manifest import MANIFEST, file_record, manifest_path, verify

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

    assert record["log"] == "logs/run.log"
    assert record["outputs"]["results/train/r/y.pt"] == file_record(finished / "results/train/r/y.pt")
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


def test_verify_without_records_says_so(tmp_path, capsys):
    assert manifest.main(str(tmp_path)) == 1
    assert "no job records" in capsys.readouterr().out


@pytest.mark.parametrize(("tree", "names_commit"), [("checkout", True), ("installed", False), ("unpacked", False)])
def test_the_commit_is_recorded_only_for_a_source_checkout(tmp_path, tree, names_commit):
    # Prepare: a git repository holding an installed copy's tree (a venv inside a checkout) or a source checkout
    import subprocess

    def git(*args, cwd=tmp_path):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "README").write_text("a checkout\n")
    git("add", "README")
    git("commit", "-q", "-m", "one")
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
