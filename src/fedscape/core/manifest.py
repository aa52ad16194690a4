"""What each job made and with what: a record per job (its outputs' SHA-256 and size, the software and machine that
made them), and `verify`, which re-hashes every recorded result.

Snakemake decides what is up to date from modification times, so damage that keeps a file's time (a copy that
preserves times, bit rot, another run's file restored into place) is invisible to it. Every job therefore writes,
after its outputs, a record below `<results_dir>/_manifest/` (mirroring its log's path), and `make verify` compares
each recorded output with the file now there: changed, missing, or foreign (the content recorded for another output),
each with the command that remakes it; `make status` checks them quickly (`changed_outputs`: sizes, and the contents
of the files dated outside their job's run, or of another output's recorded size) and counts no such output as
current. The records travel with the
results directory: a record names its outputs by their paths below the results directory, so that a copied or moved
results directory is checked where it is now.

The code version a record names is the one the job started with (`start_job`): a file edited, or a commit pulled,
while a job runs is not the code it loaded. A job resumed after a kill from rounds or parts that other code computed (a
commit pulled between its attempts) notes every code, in order of first use (`codes`: stages.progress.note_codes).

Torch-free: light jobs write records too, and `make verify` runs without torch. Versions of torch, CUDA and cuDNN are
recorded by the jobs that imported torch (`sys.modules`), and what a job computed on (device, precision) is noted by
the job itself (`note`), as are the settings it computed with (`fedscape.core.logs.job_log`), with their digest: a
record whose settings no longer match it, or that holds one without the other, was edited, and `make verify` names it
damaged.

A job also marks itself as started beside its record (`mark_started`), and its record removes the mark: Snakemake
deletes a job's outputs before it runs it, so a finished job run again (its settings changed, or forced) that then fails
or is killed leaves its earlier record naming outputs that are gone, beside a mark, while the files made from them are
still the earlier run's; and Snakemake does not make a missing file again while files made from it exist.
`failed_reruns` finds such jobs, for the warning every run of the workflow gives (`plan.workflow.failed_rerun_warnings`)
and for `make status` and `make verify`, but for those that still run: on this host by their process, on another by
their SLURM job (`squeue`); where neither can be asked, each of them says that it may still run (`FailedRerun.why`).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from fedscape.core.config import digest
from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import atomic_write_text, is_temporary, remake_alone_hint, remake_hint
from fedscape.core.paths import DEFAULT_RESULTS, LOGS, PARTITION_DIR, PARTITION_FILE, parse_path

log = logging.getLogger("fedscape.manifest")

MANIFEST = "_manifest"  # below results_dir: one record per job, at its log's relative path (.json)
MISSING = "recorded by its job, not there now"  # a recorded output that is no file now (make verify, make status)
# one deleted by Snakemake for a rerun of its job that then failed or was killed (`failed_reruns`)
RERUN_FAILED = "deleted by Snakemake for a rerun of its job, which failed or was killed"
STARTED = ".started"  # the suffix of the mark beside a job's record from its start until it writes the record
# SLURM's job states (squeue(1), "JOB STATE CODES") of a job that has not ended: queued or held, starting, running,
# stopped or suspended with its processes kept, being signalled, resized or requeued, or ending (COMPLETING: some of
# its processes may still run; STAGE_OUT: its files are being copied out). Every other state is one of an ended job.
SLURM_LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "STAGE_OUT", "SUSPENDED", "STOPPED",
                        "SIGNALING", "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                        "SPECIAL_EXIT"})
# What squeue says, failing, of a single job id its controller no longer knows (an ended job, kept MinJobAge seconds,
# 300 by default); of several such ids it lists none, without an error
SLURM_UNKNOWN_JOB = "Invalid job id specified"
# squeue's longest wait for an answer (its controller not reached), which every run of the workflow waits for where
# marks of other hosts name SLURM jobs (`failed_reruns`)
SQUEUE_SECONDS = 10
# Seconds a file's modification time may lie outside its job's run (its record's `started` to `finished`) and still
# count as written by it (`changed_outputs`): the record's clock (the job's host) and the file system's may differ
DATE_SLACK = 10.0
# 2: outputs by their paths relative to the results directory; 1: as the job named them (absolute, or relative to
# the workflow's directory), read by mapping them onto the results directory they are found in (`_outputs`)
RECORD_VERSION = 2
# Untracked files below these (relative to the checkout) make the code dirty: the registries load every module of
# their packages, tracked or not (pkgutil.iter_modules), and Snakemake reads every rule and script it is given
CODE_PATHS = ("src", "rules", "workflow", "Snakefile")
UNTRACKED_LISTED = 10  # untracked code files a record names (it counts them all)
# git's words for a folder in no repository: an unpacked source tree, whose missing commit is no error
NOT_A_REPOSITORY = "not a git repository"
_GIT_WARNED: set[str] = set()  # the git errors `code_version` warned of in this process (each once)
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
    without a .git of its own, may lie inside some other git checkout, whose commit is not the code that ran.

    A source tree where git fails otherwise than by finding no repository (a checkout owned by another user, which git
    refuses as of "dubious ownership"; no git installed; a timeout) records no commit either, but says why:
    `git_error`, git's first line, logged once per process as a warning (the job goes on: its results do not depend
    on it)."""
    source = Path(source or Path(__file__).resolve().parents[3])
    out = {"fedscape": _version("fedscape"), "commit": None, "dirty": None}
    if not (source / "pyproject.toml").is_file():
        return out
    try:
        top, commit = _git(source, "rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != source.resolve():
            return out  # a tree inside another checkout
        # -z: paths as they are (no quoting); an untracked folder is one entry ('normal'), not each file in it
        status = _git(source, "status", "--porcelain", "-z", "--untracked-files=normal")
    except subprocess.CalledProcessError as exc:
        line = next((text.strip() for text in (exc.stderr or "").splitlines() if text.strip()),
                    f"git {exc.cmd[3]} exited with status {exc.returncode}")
        if NOT_A_REPOSITORY in line:
            return out  # an unpacked source tree outside any checkout: no commit to name
        return _git_failed(out, source, line)
    except subprocess.TimeoutExpired as exc:
        return _git_failed(out, source, f"git {exc.cmd[3]} took more than {exc.timeout:g} s")
    except OSError as exc:  # no git to run
        return _git_failed(out, source, f"git cannot run: {exc}")
    except ValueError:
        return _git_failed(out, source, "git rev-parse --show-toplevel HEAD did not give a folder and a commit")
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


def _git(source: Path, *args: str) -> str:
    """The output of git `args` run in `source` (CalledProcessError with git's stderr where it fails)."""
    return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout


def _git_failed(out: dict, source: Path, error: str) -> dict:
    """`out` with `git_error`, warned once per process and error: a job calls `code_version` as it starts and its
    tables again (`code_version_label`), and one warning says it all."""
    if error not in _GIT_WARNED:
        _GIT_WARNED.add(error)
        hint = (f"; `git config --global --add safe.directory {source}` lets this user read it"
                if "dubious ownership" in error else "")
        log.warning("git cannot read the source checkout %s (%s): the job records no commit of the code it runs, "
                    "only fedscape's version%s", source, error, hint)
    return {**out, "git_error": error}


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
    """Python, Snakemake, numpy and, where this process imported it, torch with its CUDA and cuDNN versions.

    numpy always (a dependency of every job; read from its installed metadata, so that `make verify` imports none):
    its Generator's streams may change between versions (NEP 19), and a partition drawn again from its seed under
    another numpy may be another split (`_warn_remade_split`)."""
    out = {"python": platform.python_version(), "snakemake": _version("snakemake"), "numpy": _version("numpy")}
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


def write_record(path: str | Path, outputs: Iterable[str | Path], started: float, log: str | Path | None = None, *,
                 root: str | Path) -> None:
    """The record of a finished job: its outputs' size and SHA-256 (each by its path relative to the results
    directory `root`; each a file, as `core.logs.job_log` checks first), what made them (the code version the job
    started with, `start_job`), when, and on what."""
    notes = {key: value() if callable(value) else value for key, value in _NOTES.items()}
    record = {
        "version": RECORD_VERSION,
        "log": None if log is None else str(log),
        "outputs": {Path(os.path.relpath(p, root)).as_posix(): file_record(p) for p in outputs},
        "code": notes.pop("code") if "code" in notes else code_version(),
        "software": software(),
        "host": socket.gethostname(),
        "started": _iso(started),
        "finished": _iso(datetime.datetime.now().timestamp()),
        **notes,
    }
    earlier = _earlier_record(Path(path))
    _warn_remade_split(earlier, record, root)
    _keep_earlier_outputs(Path(path), earlier, set(record["outputs"]), root)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    started_mark(path).unlink(missing_ok=True)  # finished (`mark_started`)


def started_mark(record: str | Path) -> Path:
    """The mark beside the record at `record` (`manifest_path`) of a job that started and has written no record
    since (`mark_started`)."""
    record = Path(record)
    return record.with_name(record.name.removesuffix(".json") + STARTED)


def mark_started(record: str | Path) -> None:
    """Mark the job whose record goes to `record` as started: its host, process id, time and SLURM job id (None
    outside a SLURM job; marks written before it have no such key) (`core.logs.job_log`, as the job starts, after
    Snakemake deleted its outputs). `write_record` removes the mark; a job that fails or is killed leaves it, which
    tells a rerun that never finished (`failed_reruns`) from outputs removed by hand. The job id lets another host
    ask whether the job still runs (`_still_running`): a workflow on a login node checks its jobs' marks while they
    run on the compute nodes."""
    mark = {"host": socket.gethostname(), "pid": os.getpid(), "started": _iso(datetime.datetime.now().timestamp()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    atomic_write_text(started_mark(record), json.dumps(mark) + "\n")


def _earlier_record(path: Path) -> dict | None:
    """The record at `path` that a job's new record replaces, where it is one of version 2 or later (its outputs by
    their paths below the results directory, as the new record's); None where there is none, or it cannot be read
    (`make verify` names it), or it is of version 1."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(earlier, dict) and isinstance(earlier.get("outputs"), dict)
            and earlier.get("version", 1) >= RECORD_VERSION):
        return None
    return earlier


def _warn_remade_split(earlier: dict | None, record: dict, root: str | Path) -> None:
    """Warn, in the log of the job writing `record`, of each partition file it wrote with other contents than its
    `earlier` record names: made again (`--force`, after `make verify` or `make status` named it) under a numpy whose
    streams changed, the same seed drew another split, and the runs trained on the earlier one are refused by their
    analyses until they are trained again (`--forcerun`); under another numpy whose streams did not, only the
    metadata's numpy differs, and the analyses read it (they compare splits). A workflow that reruns the runs already
    needs nothing more."""
    if earlier is None:
        return
    for output, entry in record["outputs"].items():
        before = earlier["outputs"].get(output)
        if (parse_path(PARTITION_FILE, output) is None or not isinstance(before, dict)
                or before.get("sha256") in (None, entry["sha256"])):
            continue
        numpy = (earlier.get("software") or {}).get("numpy"), record["software"].get("numpy")
        under = f"numpy {numpy[0]} then, {numpy[1]} now" if numpy[0] and numpy[0] != numpy[1] else f"numpy {numpy[1]}"
        path = os.path.join(root, output)
        log.warning("%s was made with other bytes than its earlier record names (SHA-256 %s..., earlier %s...; "
                    "%s): where its split differs too, the runs trained on the earlier split are refused by their "
                    "analyses (Hessian, landscape, barriers) until they are trained on this one: %s", path,
                    entry["sha256"][:12],
                    before["sha256"][:12], under, remake_hint(path))


EARLIER = ".earlier.json"  # the suffix of a record's sibling that keeps what its job no longer writes


def _keep_earlier_outputs(path: Path, earlier: dict | None, written: set[str], root: str | Path) -> None:
    """Before a job's record at `path` replaces an earlier one: the earlier record's outputs that this job no longer
    writes and that are still there (of a rule whose output moved to a rule of its own, and was kept: a Hessian job's
    eigenvector plane, now rule hessian_plane's) go to a record of their own beside it (`<name>.earlier.json`, the
    earlier record's fields with those outputs and no log: known by its outputs), so that `make verify` and `make
    status` still know where they came from until a job writes them again (its newer record then answers for them,
    `Records.by_output`). Those it kept already keep its times, the span of the runs that wrote them (`make status`
    reads no file dated within it). `earlier`: that record (`_earlier_record`), None where there is none to keep from
    (a record of version 1, whose output paths are not below the results directory, is left as it is)."""
    if earlier is None:
        return
    sibling = path.with_name(path.name.removesuffix(".json") + EARLIER)
    try:  # what that record kept before (the earlier record's entry for an output it wrote again is the newer one)
        before = json.loads(sibling.read_text())
        carried = {output: entry for output, entry in before["outputs"].items() if output not in earlier["outputs"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        before, carried = {}, {}

    def still_there(outputs: dict) -> dict:
        return {output: entry for output, entry in outputs.items()
                if output not in written and Path(root, output).is_file()}

    dropped, carried = still_there(earlier["outputs"]), still_there(carried)
    if not dropped and not carried:
        return
    if not dropped:  # nothing new to keep: that record as it was (its times), less what is gone or written now
        kept = {**before, "outputs": carried}
    else:
        kept = {**earlier, "log": None, "outputs": {**carried, **dropped}}
        since = before.get("started")
        if carried and isinstance(since, str) and since < str(earlier.get("started", "")):
            kept["started"] = since  # the span of both runs
    atomic_write_text(sibling, json.dumps(kept, indent=1, sort_keys=True) + "\n")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


DAMAGED = "damaged record"  # a Finding's problem for a record that cannot be read, or edited (`read_records`)


@dataclass(frozen=True)
class Finding:
    """One recorded output that is not what its job made, or a job record that cannot be read or was edited."""

    path: str
    problem: str  # changed | missing | foreign | damaged record
    detail: str
    record: str = ""  # a missing output's: the record naming it, and how many other outputs that record names
    others: int = 0
    rerun: FailedRerun | None = field(default=None, compare=False)  # a missing output's job that was run again

    def line(self) -> str:
        if self.problem == DAMAGED:
            return (f"{DAMAGED}: {self.path} ({self.detail}); the outputs of its job are not checked: run the job "
                    "again, which writes its record again (`snakemake --cores 1 --forcerun <one of its outputs>`, plus "
                    "the --configfile you run with), or delete the record")
        line = f"{self.what()}; {self.remedy()}"
        if self.problem == "missing":
            also = (f", which also names {counted(self.others, 'other output')}, no longer checked then" if self.others
                    else "")
            line += (f"; or, where the workflow no longer makes it (a setting changed since: fewer landscape chunks, a "
                     f"run taken out of the config), delete its job's record {self.record}{also}")
        return line

    def what(self) -> str:
        """'changed: <path> (<detail>)': the finding without what to do about it."""
        return f"{self.problem}: {self.path} ({self.detail})"

    def remedy(self, args: str | None = None) -> str:
        """The command that makes its output again (`_remake_hint`; `args`: the user's Snakemake arguments,
        shell-quoted, as `core.io.remake_alone_hint` takes them), for once its job's rerun no longer runs where that
        rerun may still run (`FailedRerun.remedy`)."""
        hint = _remake_hint(self.path, args)
        return hint if self.rerun is None else self.rerun.remedy(hint)


def remade_alone(path: str) -> bool:
    """Whether the output at `path` is made again alone, not with what is made from it: a partition's files
    (`--force`: bit-identical from its seed under the numpy it records, so that the runs trained on it stay valid;
    their analyses check that it is their split, `fedscape.data.partition.check_trained_partition`)."""
    return bool(parse_path(f"{PARTITION_DIR}/{{file}}", path))


def _remake_hint(path: str, args: str | None = None) -> str:
    """The command that makes the output at `path` again: a partition's files alone (`remade_alone`), any other
    output with what is made from it; with the user's Snakemake arguments `args` where given (`core.io`)."""
    return remake_alone_hint(path, args) if remade_alone(path) else remake_hint(path, args)


@dataclass(frozen=True)
class JobRecord:
    """One job's record as read from a results directory: the record file, its contents, and its outputs (size and
    SHA-256) by their paths below the results directory it was read from."""

    file: Path
    record: dict
    outputs: dict[str, dict]


@dataclass(frozen=True)
class Records:
    """The job records of a results directory: those that can be read, and the damaged ones (file, problem)."""

    jobs: list[JobRecord]
    damaged: list[tuple[Path, str]]

    def by_output(self) -> dict[str, JobRecord]:
        """output path -> the newest record of a job that wrote it (a job that ran again wrote a newer one). A record of
        what a job no longer writes (`_keep_earlier_outputs`) answers for an output only where no other record names
        it: whichever job writes it now wrote it after that record's job, however late the record's times."""
        newest: dict[str, JobRecord] = {}
        rank: dict[str, tuple[bool, str]] = {}
        for job in self.jobs:
            mine = (not job.file.name.endswith(EARLIER), str(job.record.get("finished", "")))
            for output in job.outputs:
                if output not in newest or mine >= rank[output]:
                    newest[output], rank[output] = job, mine
        return newest


def read_records(results_root: str | Path) -> Records:
    """Every job record below `results_root`'s manifest (a killed write's temporary file is none), each output
    named by its path below `results_root` as given: where the directory is now, not where its jobs wrote it. A record
    that cannot be read, or whose settings do not match their digest (`_check_settings`), is damaged."""
    root = os.path.normpath(results_root)
    manifest = Path(root) / MANIFEST
    jobs, damaged = [], []
    for path in sorted(manifest.rglob("*.json")):
        if is_temporary(path):
            continue
        try:
            record = json.loads(path.read_text())
            outputs = _outputs(record, path.relative_to(manifest), root)
            _check_settings(record)
        except (OSError, ValueError, TypeError) as exc:  # a cut or garbled file (JSONDecodeError), another shape
            damaged.append((path, f"{type(exc).__name__}: {exc}; its job logs to "
                                  f"{path.relative_to(manifest).with_suffix('.log')} below the results' logs"))
            continue
        jobs.append(JobRecord(path, record, outputs))
    return Records(jobs, damaged)


def _outputs(record: dict, relative: Path, root: str) -> dict[str, dict]:
    """A record's outputs (size and SHA-256), each by its path below `root`; ValueError for a record of another
    shape. A record of version 1 names them as its job did: those below the results directory it was written in
    (`_written_below`) are mapped onto `root`, any other path is kept."""
    if not isinstance(record, dict) or not isinstance(record.get("outputs", {}), dict):
        raise ValueError("not a job record (no outputs by path)")
    outputs = record.get("outputs", {})
    for entry in outputs.values():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and type(entry.get("size")) is int):
            raise ValueError(f"an output's entry is not its size and SHA-256: {entry!r}")
    if record.get("version", 1) >= 2:
        return {os.path.join(root, output): entry for output, entry in outputs.items()}
    written = _written_below(record.get("log"), relative)
    found = {}
    for output, entry in outputs.items():
        below = output.lstrip("/")
        if written is not None and below.startswith(f"{written}/"):
            output = os.path.join(root, below[len(written) + 1:])
        found[output] = entry
    return found


def _check_settings(record: dict) -> None:
    """ValueError where a record's `settings` are not those its job noted with their `settings_digest`
    (`core.logs.job_log`): edited since, so what they say the job computed with cannot be trusted. A job notes both or
    neither (they came in together, and `job_log` is the only writer of either), so one without the other was
    edited too: the digest deleted with the settings it would have caught."""
    if ("settings" in record) != ("settings_digest" in record):
        have, gone = ("settings", "settings_digest") if "settings" in record else ("settings_digest", "settings")
        raise ValueError(f"it has {have} without {gone} (its job wrote both)")
    if "settings" in record and digest(record["settings"]) != record["settings_digest"]:
        raise ValueError(f"its settings do not match their digest {record['settings_digest']!r}")


def _written_below(log: str | None, relative: Path) -> str | None:
    """The results directory a record of version 1 was written in, without a leading '/' (its job named its outputs
    below it, absolute or relative to the workflow's directory), found from its log: the record's path below the
    manifest is the log's below the logs of that directory (`manifest_path`), which are `logs/` for the default
    results directory and `logs/<results_dir>/` for any other (`core.paths.Results.logs`). None where the log does
    not say."""
    if not log:
        return None
    parts, mirrored = Path(log).with_suffix("").parts, relative.with_suffix("").parts
    logs = parts[:len(parts) - len(mirrored)]
    if not logs or logs[0] != LOGS or parts[len(logs):] != mirrored:
        return None
    return DEFAULT_RESULTS if len(logs) == 1 else "/".join(logs[1:])


@dataclass(frozen=True)
class FailedRerun:
    """A finished job run again (its settings changed, or forced) that did not finish: its mark is there
    (`mark_started`), its record is the earlier run's, and outputs that record names are gone. Snakemake deleted them
    before it ran the job, which then failed or was killed (an exception, out of memory, a scheduler's time limit,
    kill -9); the files made from them (tables, figures) are still the earlier run's, and Snakemake does not make a
    missing file again while files made from it exist: a plain run says "Nothing to be done", or redraws a figure from
    those files."""

    record: Path
    log: str  # the job's log as its record names it (its record where it names none)
    mark: dict  # what `mark_started` wrote: host, pid, started, slurm_job_id ({} where it cannot be read)
    gone: tuple[str, ...]  # its recorded outputs that are no file now, sorted, below the results directory as read
    # Whether it is known to run no more: its process gone from this host, or its SLURM job from the queue (or a mark
    # that names no host); False for a mark of another host that could not be asked (`_still_running`)
    ended: bool = True

    def why(self) -> str:
        """Why its outputs are gone, as every report of it says (`line`, `make verify`, `make status`): where it may
        still run (not `ended`), said so, for following `remedy` then would start a second copy of it."""
        if self.ended:
            return RERUN_FAILED
        return (f"deleted by Snakemake for a rerun of its job on {self.mark['host']}, which did not finish, or still "
                "runs there")

    def remedy(self, hint: str) -> str:
        """`hint` (what makes its outputs again), for once it no longer runs where it may still run (`why`)."""
        return hint if self.ended else f"if it no longer runs: {hint}"

    def line(self) -> str:
        """What happened, and the command that makes the job again with what was made from it (`_remake_hint`, without
        the user's arguments, which the workflow is not told)."""
        host, when = self.mark.get("host"), self.mark.get("started")
        started = f" (started {when} on {host})" if host else ""
        more = f" and {len(self.gone) - 1} more" if len(self.gone) > 1 else ""
        return (f"the job logging to {self.log} was run again and did not finish{started}: its outputs ({self.gone[0]}"
                f"{more}) were {self.why()}, so the files made from them are still those of its earlier run, and "
                "Snakemake does not make a missing file again while files made from it exist: "
                f"{self.remedy(_remake_hint(self.gone[0]))}; a job that keeps its progress (training every round, "
                "pretraining every epoch) resumes from it. Where the config no longer makes it, delete "
                f"{started_mark(self.record)} instead")


def rerun_failed_outputs(results_root: str | Path) -> dict[str, FailedRerun]:
    """The outputs of the jobs `failed_reruns` names (below `results_root` as given), each with its job."""
    return {output: job for job in failed_reruns(results_root) for output in job.gone}


def failed_reruns(results_root: str | Path) -> list[FailedRerun]:
    """The jobs below `results_root`'s manifest whose rerun did not finish (`FailedRerun`), by their records' paths;
    their outputs by their paths below `results_root` as given (`read_records`). Only the records of marked jobs are
    read, so that every run of the workflow, a dry run too, can ask. Passed over: a mark without an earlier record (a
    first run that failed, which Snakemake runs again: nothing is made from its outputs), a job whose outputs are all
    there, one whose record cannot be read (`make verify` names it), and one that still runs (`_still_running`: its
    process on this host, a workflow running now, or its SLURM job; a process id reused since hides one, rarely).
    Those of other hosts whose state is not known are named as such (`FailedRerun.ended`)."""
    root = os.path.normpath(results_root)
    manifest = Path(root) / MANIFEST
    named = []
    # (os.walk: a third faster than Path.rglob over a manifest of 20,000 records, 0.2 s)
    marks = [Path(folder, name) for folder, _, names in os.walk(manifest) for name in names
             if name.endswith(STARTED) and not is_temporary(name)]
    for mark in sorted(marks):
        record = mark.with_name(mark.name.removesuffix(STARTED) + ".json")
        try:
            earlier = json.loads(record.read_text())
            outputs = _outputs(earlier, record.relative_to(manifest), root)
        except (OSError, ValueError, TypeError):  # no record (a first run), or a damaged one
            continue
        gone = tuple(sorted(output for output in outputs if not Path(output).is_file()))
        if not gone:
            continue
        try:
            started = json.loads(mark.read_text())
        except (OSError, ValueError):
            started = {}
        started = started if isinstance(started, dict) else {}
        named.append(FailedRerun(record, str(earlier.get("log") or record), started, gone))
    # one question to SLURM for the jobs of all other hosts' marks (squeue(1) asks for few calls: each loads its
    # controller), and none where there are none
    slurm = slurm_states(job for rerun in named if (job := _slurm_job(rerun.mark)) is not None)
    return [replace(rerun, ended=running is False) for rerun in named
            if (running := _still_running(rerun.mark, slurm)) is not True]


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """The state of each SLURM job among `job_ids` that `squeue` lists, by its id: one it no longer lists has ended
    (its controller forgets an ended job after MinJobAge seconds). None where it cannot be asked (no squeue on PATH)
    or gave no answer (its controller not reached within SQUEUE_SECONDS, an error)."""
    job_ids = sorted(set(job_ids))
    if not job_ids or shutil.which("squeue") is None:
        return None
    # `--jobs=`: its argument is optional, and squeue(1) asks for no space before it; `--states=all`: not only its
    # default's (pending, running, completing), which need not cover SLURM_LIVE (an ended job's state is read as such)
    command = ["squeue", "--noheader", f"--jobs={','.join(job_ids)}", "--states=all", "--format=%A %T"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return {} if SLURM_UNKNOWN_JOB in proc.stderr else None
    return dict(words for line in proc.stdout.splitlines() if len(words := line.split()) == 2)


def _slurm_job(mark: dict) -> str | None:
    """The SLURM job id of another host's mark (`mark_started`); None for this host's, and for one without a job id
    (not in a SLURM job, or written before marks named it)."""
    job = mark.get("slurm_job_id")
    if mark.get("host") in (None, socket.gethostname()) or not (isinstance(job, str) and job.isdecimal()):
        return None
    return job


def _still_running(mark: dict, slurm: Mapping[str, str] | None = None) -> bool | None:
    """Whether the job a mark names (`mark_started`) runs now: its process, where it ran on this host; its SLURM job,
    where it ran on another (`slurm`: `slurm_states` of the marks' jobs, None where it could not be asked). None where
    that cannot be known: another host's mark without a job id (`_slurm_job`), or SLURM not asked. A mark that names
    no host (unreadable) tells nothing: False, so that it is named."""
    host, pid = mark.get("host"), mark.get("pid")
    if host is None:
        return False
    if host != socket.gethostname():
        job = _slurm_job(mark)
        return None if job is None or slurm is None else slurm.get(job) in SLURM_LIVE
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        pass
    return True


def output_records(results_root: str | Path, records: Records | None = None) -> dict[str, dict]:
    """output path (below `results_root` as given) -> the record of the newest job that wrote it (`read_records`;
    `records`: those already read from it). A damaged record is left out with a warning (`make verify` lists it)."""
    records = read_records(results_root) if records is None else records
    for path, problem in records.damaged:
        logging.getLogger("fedscape").warning("the job record %s cannot be read (%s): its outputs are left out; "
                                              "`make verify` says how to get it back", path, problem)
    return {output: job.record for output, job in records.by_output().items()}


def recorded_jobs(records: Mapping[str, dict]) -> list[tuple[dict, list[str]]]:
    """(record, its outputs) of each job of `records` (`output_records`: output -> its job's record), a job known by
    its log (a record without one by its output)."""
    jobs: dict[str, tuple[dict, list[str]]] = {}
    for output, record in records.items():
        jobs.setdefault(record.get("log") or output, (record, []))[1].append(output)
    return list(jobs.values())


def _by_digest(newest: Mapping[str, JobRecord]) -> dict[str, list[str]]:
    """SHA-256 -> the outputs recorded with it (`Records.by_output`)."""
    by_digest: dict[str, list[str]] = {}
    for output, job in newest.items():
        by_digest.setdefault(job.outputs[output]["sha256"], []).append(output)
    return by_digest


def content_finding(output: str, want: dict, by_digest: Mapping[str, list[str]]) -> Finding | None:
    """The file at `output` re-hashed against its record (`want`: size and SHA-256): None where it is the file its
    job wrote; foreign where it holds the content recorded for another output (`by_digest`: `_by_digest`); changed
    otherwise."""
    found = file_record(output)
    if found == want:
        return None
    others = [o for o in by_digest.get(found["sha256"], []) if o != output]
    if others:
        return Finding(output, "foreign", f"its content is that recorded for {others[0]}")
    return Finding(output, "changed", f"{found['size']} bytes, SHA-256 {found['sha256'][:12]}...; "
                                      f"its job wrote {want['size']} bytes, {want['sha256'][:12]}...")


def verify(results_root: str | Path) -> tuple[int, list[Finding]]:
    """(outputs checked, findings) for every recorded output below `results_root` (`read_records`), and a finding
    for each damaged record."""
    records = read_records(results_root)
    newest = records.by_output()
    by_digest = _by_digest(newest)
    rerun_failed = rerun_failed_outputs(results_root)
    findings = [Finding(str(path), DAMAGED, problem) for path, problem in records.damaged]
    for output, job in sorted(newest.items()):
        if not Path(output).is_file():
            rerun = rerun_failed.get(output)
            findings.append(Finding(output, "missing", MISSING if rerun is None else rerun.why(), str(job.file),
                                    len(job.outputs) - 1, rerun))
        elif finding := content_finding(output, job.outputs[output], by_digest):
            findings.append(finding)
    return len(newest), findings


def changed_outputs(records: Records, skip: Iterable[str] = (), slack: float = DATE_SLACK,
                    touched: Callable[[str], tuple[float, float] | None] | None = None) -> tuple[list[Finding], int]:
    """(findings, files hashed): `make status`'s quick `verify` of the recorded outputs that are files now (not those
    in `skip`), which reads no file whose size and date agree with its record. A file of another size than its job
    wrote is changed, and not hashed unless another output was recorded at its size: then it may be a copy of that
    output, and is hashed (`content_finding`: foreign where it holds that output's content, as `verify` says; rare, so
    cheap). A file of the recorded size whose modification time lies outside its job's run (`started` to `finished`
    of the record, `slack` seconds either side: the record's times are whole seconds of the job's clock, the file's
    are its file system's) was not written by that job as it stands (touched, copied without its dates, or another
    file put in its place) and is hashed (`content_finding`). A file of the recorded size dated within its job's run
    is not read: content changed in place with its date kept (bit rot, a copy that kept another file's dates from
    within that run) is for `verify`. A record without its times is checked by size only.

    `touched`: the workflow manager's start and end of the job that last made an output, by its path (Snakemake's
    metadata: `plan.status.snakemake_times`), None where it keeps none. Snakemake touches every output after its job
    ended (its postprocessing, in its main process), later than the record's `finished`: a second or so on this host,
    but on a cluster at the main process' next check of its jobs (up to 180 s apart with the SLURM executor). So a
    file dated after the record's `finished` is its job's too where it is dated no later than Snakemake's end (the
    date that touch gave it) and Snakemake's job is the record's (it started before the record's `finished`)."""
    skip = set(skip)
    newest = records.by_output()
    by_digest: dict[str, list[str]] | None = None
    sizes: set[int] | None = None
    findings, hashed = [], 0
    for output, job in sorted(newest.items()):
        if output in skip:
            continue
        try:
            found = os.stat(output)
        except OSError:
            continue  # not there: missing (`verify`; `make status` lists the jobs)
        if not stat.S_ISREG(found.st_mode):
            continue
        want = job.outputs[output]
        if found.st_size != want["size"]:
            # the sizes other outputs were recorded at (this one's is not its own)
            sizes = {o.outputs[other]["size"] for other, o in newest.items()} if sizes is None else sizes
            if found.st_size not in sizes:
                findings.append(Finding(output, "changed",
                                        f"{found.st_size} bytes; its job wrote {want['size']} bytes"))
                continue
        else:
            run = _run_times(job.record)
            if run is None or run[0] - slack <= found.st_mtime <= run[1] + 1 + slack:  # `finished`: cut to the second
                continue
            # dated after it: the date Snakemake's touch after the job gives it, where it recorded that job (`touched`)
            after = touched(output) if touched is not None and found.st_mtime > run[1] else None
            if after is not None and after[0] <= run[1] + 1 + slack and found.st_mtime <= after[1] + slack:
                continue
        by_digest = _by_digest(newest) if by_digest is None else by_digest
        hashed += 1
        if finding := content_finding(output, want, by_digest):
            findings.append(finding)
    return findings, hashed


def _run_times(record: dict) -> tuple[float, float] | None:
    """(started, finished) of a job's record as POSIX times; None where it has not both (`write_record`)."""
    try:
        return (datetime.datetime.fromisoformat(record["started"]).timestamp(),
                datetime.datetime.fromisoformat(record["finished"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return None


def counted(count: int, noun: str) -> str:
    """'1 job', '2 jobs': `count` and `noun`, with an s unless it is 1 (the counts `make verify` and `make status`
    print)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def main(results_root: str = "results") -> int:
    """`make verify`: re-hash every recorded result of `results_root`; print what is wrong; 1 if anything is."""
    checked, findings = verify(results_root)
    for finding in findings:
        print(finding.line())
    damaged = sum(f.problem == DAMAGED for f in findings)
    if not checked and not damaged:
        print(f"no job records below {Path(results_root) / MANIFEST}: run the workflow first (results made before "
              "fedscape recorded them have none)")
        return 1
    print(f"{counted(checked, 'output')} checked below {results_root}: {len(findings) - damaged} changed, missing or "
          "foreign"
          + (f"; damaged job records: {damaged}" if damaged else ""))
    return 1 if findings else 0
