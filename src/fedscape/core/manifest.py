"""What each job made and with what: a record per job (its outputs' SHA-256 and size, the software and machine that
made them), and `verify`, which re-hashes every recorded result.

Snakemake decides what is up to date from modification times, so damage that keeps a file's time (a copy that
preserves times, bit rot, another run's file restored into place) is invisible to it. Every job therefore writes,
after its outputs, a record below `<results_dir>/_manifest/` (mirroring its log's path), and `make verify` compares
each recorded output with the file now there: changed, missing, or foreign (the content recorded for another output),
each with the command that remakes it. The records travel with the results directory.

The code version a record names is the one the job started with (`start_job`): a file edited, or a commit pulled,
while a job runs is not the code it loaded.

Torch-free: light jobs write records too, and `make verify` runs without torch. Versions of torch, CUDA and cuDNN are
recorded by the jobs that imported torch (`sys.modules`), and what a job computed on (device, precision) is noted by
the job itself (`note`).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import atomic_write_text, remake_hint

MANIFEST = "_manifest"  # below results_dir: one record per job, at its log's relative path (.json)
RECORD_VERSION = 1
# Untracked files below these (relative to the checkout) make the code dirty: the registries load every module of
# their packages, tracked or not (pkgutil.iter_modules), and Snakemake reads every rule and script it is given
CODE_PATHS = ("src", "rules", "workflow", "Snakefile")
UNTRACKED_LISTED = 10  # untracked code files a record names (it counts them all)
# What the running job noted about itself (its code version as it started: `start_job`; device and precision:
# fedscape.models.device.log_compute), added to its record; one job per process.
_NOTES: dict = {}


def start_notes() -> None:
    """Forget what an earlier job of this process noted (a job's record holds its own notes only)."""
    _NOTES.clear()


def start_job() -> None:
    """Begin the record of the job this process runs: forget an earlier job's notes, and note the code version now,
    as the job starts (its record and its tables' `code_version` name it): the code it loaded, whatever the checkout
    holds when it ends."""
    start_notes()
    note(code=code_version())


def note(**fields) -> None:
    """Add `fields` to the record of the job running in this process. A value that is a function without arguments
    is called when the record is written, after the job's work (what the job read, once it has read it)."""
    _NOTES.update(fields)


def noted(key: str):
    """What the running job noted under `key` (None if nothing)."""
    return _NOTES.get(key)


def file_record(path: str | Path) -> dict:
    """{'size': bytes, 'sha256': hex digest} of a file, read in chunks (checkpoints are hundreds of MB)."""
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def code_version(source: Path | None = None) -> dict:
    """fedscape's version, and the git commit of its source checkout with a dirty flag where it is one.

    Dirty: a tracked file differs from the commit, or an untracked file lies below `CODE_PATHS` (the record names
    the first `UNTRACKED_LISTED` of those, `untracked`, and counts them, `untracked_count`). Two git calls.

    `source` (default: the root of the tree this module is in) is a checkout only where it holds pyproject.toml and
    is the top of its git work tree: an installed copy's root (site-packages' parent), or an unpacked source tree
    without a .git of its own, may lie inside some other git checkout, whose commit is not the code that ran."""
    source = Path(source or Path(__file__).resolve().parents[3])
    out = {"fedscape": _version("fedscape"), "commit": None, "dirty": None}
    if not (source / "pyproject.toml").is_file():
        return out
    try:
        top, commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
                                     capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
        if Path(top).resolve() != source.resolve():
            return out  # a tree inside another checkout
        # -z: paths as they are (no quoting); an untracked folder is one entry ('normal'), not each file in it
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "-z", "--untracked-files=normal"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError, ValueError):
        return out  # an installed copy, not a checkout
    entries = status.split("\0")
    tracked, untracked, index = False, [], 0
    while index < len(entries):
        entry, index = entries[index], index + 1
        if entry[:2] == "??":
            if entry[3:].split("/", 1)[0] in CODE_PATHS:
                untracked.append(entry[3:])
        elif entry:
            tracked = True
            index += "R" in entry[:2] or "C" in entry[:2]  # a rename or copy: the entry after it is the old path
    return {**out, "commit": commit, "dirty": tracked or bool(untracked),
            "untracked": sorted(untracked)[:UNTRACKED_LISTED], "untracked_count": len(untracked)}


def code_label(code: dict | None, digits: int | None = None) -> str:
    """A record's `code` (`code_version`) in one word: the commit (its first `digits` characters; `-dirty` with
    uncommitted changes to tracked files or untracked code files), `fedscape <version>` for an installed copy that is
    no checkout, `unrecorded` without one."""
    if not code:
        return "unrecorded"
    if code.get("commit"):
        return code["commit"][:digits] + ("-dirty" if code.get("dirty") else "")
    return f"fedscape {code.get('fedscape')}"


def code_version_label() -> str:
    """The code_version column of the tables: the `code_label` of the code the running job started with
    (`start_job`); outside a job, of this process's checkout when first asked."""
    return code_label(noted("code") or _process_code())


@functools.cache
def _process_code() -> dict:
    return code_version()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def software() -> dict:
    """Python, Snakemake and, where this process imported it, torch with its CUDA and cuDNN versions."""
    out = {"python": platform.python_version(), "snakemake": _version("snakemake")}
    torch = sys.modules.get("torch")
    if torch is not None:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn)
    return out


def manifest_path(results_root: str | Path, logs_root: str | Path, log: str | Path) -> Path:
    """Where the record of the job logging to `log` lives: its path below `logs_root`, below the results' manifest."""
    relative = Path(os.path.relpath(log, logs_root))
    if relative.parts and relative.parts[0] == os.pardir:
        raise ValueError(f"the log {log} is not below {logs_root}")
    return Path(results_root) / MANIFEST / relative.with_suffix(".json")


def write_record(path: str | Path, outputs: Iterable[str | Path], started: float,
                 log: str | Path | None = None) -> None:
    """The record of a finished job: its outputs' size and SHA-256, what made them (the code version the job started
    with, `start_job`), when, and on what."""
    notes = {key: value() if callable(value) else value for key, value in _NOTES.items()}
    record = {
        "version": RECORD_VERSION,
        "log": None if log is None else str(log),
        "outputs": {str(p): file_record(p) for p in outputs if Path(p).is_file()},
        "code": notes.pop("code") if "code" in notes else code_version(),
        "software": software(),
        "host": socket.gethostname(),
        "started": _iso(started),
        "finished": _iso(datetime.datetime.now().timestamp()),
        **notes,
    }
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Finding:
    """One recorded output that is not what its job made."""

    path: str
    problem: str  # changed | missing | foreign
    detail: str

    def line(self) -> str:
        return f"{self.problem}: {self.path} ({self.detail}); {remake_hint(self.path)}"


def output_records(results_root: str | Path) -> dict[str, dict]:
    """output path -> the newest record of a job that wrote it, for every record below `results_root`'s manifest (a
    job that ran again wrote a newer one)."""
    records: dict[str, dict] = {}
    manifest = Path(results_root) / MANIFEST
    for path in sorted(manifest.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the job record {path} ({exc}): it is damaged; the job whose log mirrors "
                             "its path writes it again when it runs") from None
        for output in record.get("outputs", {}):
            if output not in records or record.get("finished", "") >= records[output].get("finished", ""):
                records[output] = record
    return records


def verify(results_root: str | Path) -> tuple[int, list[Finding]]:
    """(outputs checked, findings) for every recorded output below `results_root` (`output_records`)."""
    records = {output: record["outputs"][output] for output, record in output_records(results_root).items()}
    by_digest: dict[str, list[str]] = {}
    for output, want in records.items():
        by_digest.setdefault(want["sha256"], []).append(output)
    findings = []
    for output, want in sorted(records.items()):
        if not Path(output).is_file():
            findings.append(Finding(output, "missing", "recorded by its job, not there now"))
            continue
        found = file_record(output)
        if found == want:
            continue
        others = [o for o in by_digest.get(found["sha256"], []) if o != output]
        if others:
            findings.append(Finding(output, "foreign", f"its content is that recorded for {others[0]}"))
        else:
            findings.append(Finding(output, "changed", f"{found['size']} bytes, SHA-256 {found['sha256'][:12]}...; "
                                                       f"its job wrote {want['size']} bytes, {want['sha256'][:12]}..."))
    return len(records), findings


def main(results_root: str = "results") -> int:
    """`make verify`: re-hash every recorded result of `results_root`; print what is wrong; 1 if anything is."""
    checked, findings = verify(results_root)
    for finding in findings:
        print(finding.line())
    if not checked:
        print(f"no job records below {Path(results_root) / MANIFEST}: run the workflow first (results made before "
              "fedscape recorded them have none)")
        return 1
    print(f"{checked} outputs checked below {results_root}: {len(findings)} changed, missing or foreign")
    return 1 if findings else 0
