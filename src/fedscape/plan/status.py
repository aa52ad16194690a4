"""`make status`: which results are out of date in meaning, and the command that remakes only them.

A dry run of the workflow (with the default profile's rerun triggers: settings, result versions, the set of inputs,
input dates and conda environments, not the dates of the code) says which jobs would run and why. Each planned job
falls into one class:

- `meaning`: its settings or result version changed (Snakemake: params changed), or the set of its inputs did;
- `made from`: an input is remade by a job above (it follows from those);
- `dates`: an input is newer than its outputs (a file copied or touched outside the workflow);
- `missing`: not made yet (a new run, a new analysis);
- `other`: anything else Snakemake reports (forced, incomplete, a changed conda environment).

Snakemake does not see the data: a data set's location is not part of any job's settings, and its files are no
job's inputs. Each job that read data recorded the fingerprint of its files (`data.locations`); the results made
from other files than those there now are listed too (`made from other data`), and the command remakes them.

Only the results this config makes are its status: the outputs of every job of its DAG (that of the targets given, where
the arguments name some), which a second dry run with `--forceall` lists (`dag_outputs`: a few seconds, as the first). A
recorded result below the results folder that no job of the config makes (a run, seed or analysis dropped from the
config since, or another config's with the same `results_dir`) is listed apart, `not in this config (kept, not remade)`:
neither current, nor missing, changed or made from other data, and never in the command, which would make it again with
today's settings (`--forcerun` makes each file it names a target) or fail where no rule of the config makes it any more.

Every recorded result of the config that no planned job remakes, and that is the file its job wrote (below), is
current, whichever commit made it: the job records (`_manifest`, `core.manifest`) say which, and a result made by
another commit at the same result versions is current. The config is the dry run's: its arguments read by Snakemake's
own parser (`snakemake_args`), and every path read where Snakemake reads it: the --configfile files from here, the rest
(the default config, the results and their records, `.snakemake/`, the data) below its working directory, `--directory`
where given (`working_directory`). Every command status prints carries the user's arguments, shell-quoted; a
partition's, which make it again alone, carry them without their targets (`without_targets`).

Three things the dry run does not see, the records do. A recorded output that is no file now (a job killed after
Snakemake deleted its old outputs, a file removed by hand) is not remade while files made from it exist; such jobs are
listed (a finished job run again that did not finish, as its mark says, as such: `core.manifest.failed_reruns`), and
the command forces them. A recorded output that is not the file its job wrote (changed, or another output's
content: foreign, as `make verify` says) is no current result: listed, and forced too (a partition file is made again
alone, as `make verify` says; one that is damaged is named once, among the damaged partitions). Status runs often, so it
re-hashes no file whose size and date agree with its record (`core.manifest.changed_outputs`): a file of another size is
changed (hashed only where another output was recorded at its size: a copy of that output is foreign), one dated outside
its job's run (its record's start to the later of its end and Snakemake's touch of its outputs after it, which its
metadata dates: on a cluster, up to minutes later) is hashed (touched, copied without its dates, or a file put in its
place with a date outside that run), and a file of its recorded size dated within its job's run is not read: bit rot,
or another run's file of that size copied in with a date from within this job's run (`cp -p`), is left to
`make verify`, which re-hashes every file. A damaged job record is counted (its outputs are checked nowhere here). And
Snakemake compares a job's settings with those it kept in its metadata (`.snakemake/metadata`, keyed by the output's
path): a result it has no metadata for (made from another checkout, copied without `.snakemake/`, or below an absolute
`results_dir` that has moved since) is not compared, so a changed setting of its job shows nowhere. The records of the
jobs with settings hold them (`settings`, `core.logs.job_log`), but status does not compare them with the settings now,
so such results are counted.

Nor does the dry run see which partition and init a run was trained from, which its meta.json names (`inputs`): a run
trained from other files than those there now, and that neither the command nor a run of the workflow by meaning trains
again, is named with the command that does (`trained_from_other_inputs`); its analyses refuse another split.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedscape.core.config import FIRST_RESULT_VERSION, RESULT_VERSION, ConfigError, load_schema, read_config_file
from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import remake_alone_hint, remake_hint, shell_words
from fedscape.core.manifest import (
    MISSING,
    FailedRerun,
    Finding,
    Records,
    changed_outputs,
    code_label,
    counted,
    output_records,
    read_records,
    recorded_jobs,
    remade_alone,
    rerun_failed_outputs,
)
from fedscape.core.paths import TRAIN_FILE_NAMES, Results, results_root
from fedscape.core.runs import build_runs
from fedscape.data.locations import DataChange, changed_data, unfingerprinted_jobs
from fedscape.data.partition import split_sha256, trained_inputs, trained_partition_problem
from fedscape.plan.train import train_inputs
from fedscape.plan.workflow import (
    DEFAULT_CONFIG,
    SCHEMA,
    check_config,
    config_partition_files,
    partition_problems,
    result_versions,
)

REHASH = "--rehash"
LISTED = 10  # jobs named per group (made from other data, missing outputs); a paper config's data set: hundreds
CLASSES = ("meaning", "made from", "dates", "missing", "other")
# Snakemake's words for each reason (the start of a `reason:` part), in the order the classes are checked: a new job
# made from another new one is missing its outputs and has its inputs updated by another job (Snakemake 9), not made yet
_REASONS = (
    ("meaning", ("Params have changed", "Set of input files has changed")),
    ("missing", ("Missing output files",)),
    ("made from", ("Input files updated by another job",)),
    ("dates", ("Updated input files",)),
)
_JOB_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
# Snakemake's params change: the params only the recorded outputs had, and those only the planned job has (each a
# repr, joined by commas), up to the reason Snakemake gives after it (snakemake.jobs, snakemake.persistence)
_PARAMS_CHANGE = re.compile(r"Params have changed since last execution: (?:Union of exclusive params before and now "
                            r"across all output: )?before: (?P<before>.*?) now: (?P<now>.*?)"
                            r"(?:; Software environment definition has changed since last execution)?$")
_NO_PARAMS = "<nothing exclusive>"


@dataclass
class PlannedJob:
    """One job of a dry run: its rule, outputs, Snakemake's reason and the class of that reason."""

    rule: str
    outputs: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def kind(self) -> str:
        return self._reason()[0]

    @property
    def why(self) -> str:
        """The words of the reason part that gave its class (its first part's for `other`), without the files or
        params it names, in lower case."""
        return self._reason()[1].split(":")[0].strip().lower()

    def _reason(self) -> tuple[str, str]:
        """(its class, the `reason:` part that gave it)."""
        parts = self.reason.split("; ")
        for kind, starts in _REASONS:
            for part in parts:
                if part.startswith(starts):
                    return kind, part
        return "other", parts[0]

    @property
    def result_version_changed(self) -> bool:
        """Whether the job's result version differs from that of its recorded outputs (not merely its settings)."""
        change = _PARAMS_CHANGE.search(self.reason)
        if change is None or self.rule not in _versioned_rules():
            return False
        before, now = (_result_versions(change[side]) for side in ("before", "now"))
        return before is not None and now is not None and before != now


@functools.cache
def _versioned_rules() -> frozenset[str]:
    """The rules whose jobs have a result version (`plan.workflow.result_versions`)."""
    return frozenset(result_versions())


def _result_versions(params: str) -> frozenset[int] | None:
    """The result versions in one side of Snakemake's params change (`before` or `now`: the params only that side has,
    each a repr, joined by commas): a settings dict's RESULT_VERSION (FIRST_RESULT_VERSION where it has none), and a
    bare integer, which in a rule with a result version is that version (`result_version_params` as a param of its
    own: the tables, the figures, client_stats; none at the first version). A version both sides share is in neither,
    as is any param both share. None where the params are no Python literal, so that their versions cannot be read."""
    try:
        values = () if params == _NO_PARAMS else ast.literal_eval(params)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    values = values if isinstance(values, tuple) else (values,)
    return frozenset(v.get(RESULT_VERSION, FIRST_RESULT_VERSION) if isinstance(v, dict) else v
                     for v in values if isinstance(v, dict) or type(v) is int)


def parse_dry_run(text: str) -> list[PlannedJob]:
    """The jobs of `snakemake -n`'s output (its `rule <name>:` blocks with their `output:` and `reason:`)."""
    jobs: list[PlannedJob] = []
    for line in text.splitlines():
        start = _JOB_START.match(line)
        if start:
            jobs.append(PlannedJob(start.group(1)))
            continue
        found = _FIELD.match(line)
        if jobs and found:
            key, value = found.groups()
            if key == "output":
                jobs[-1].outputs = [v.strip() for v in value.split(",") if v.strip()]
            elif key == "reason":
                jobs[-1].reason = value.strip()
    return [j for j in jobs if j.rule != "all"]


def _by_stage(jobs: Iterable[tuple[str, ...]], root: str) -> str:
    """'train 30, hessian 90': how many of `jobs` (their outputs) lie in each folder below the results `root`."""
    counts = Counter(Path(os.path.relpath(job[0], root)).parts[0] for job in jobs)
    return ", ".join(f"{stage} {n}" for stage, n in sorted(counts.items()))


def _below(path: str, root: str) -> bool:
    """Whether `path` lies below the folder `root` as both are written (as Snakemake keys its metadata: a relative and
    an absolute path are never the same)."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    if os.path.isabs(path) != os.path.isabs(root):
        return False
    if root == os.curdir:
        return path != os.pardir and not path.startswith(os.pardir + os.sep)
    return os.path.commonpath([path, root]) == root


def missing_jobs(records: Mapping[str, dict], planned: Iterable[str], root: str) -> list[tuple[str, ...]]:
    """Each recorded job (`records`: `core.manifest.output_records`) below the results folder `root` that the dry run
    does not plan (`planned`: its outputs) and whose outputs are not all there now, as its missing outputs, sorted.

    Snakemake does not remake a missing file while files made from it exist (`core.io.remake_hint`): a job killed
    after Snakemake deleted its old outputs, or a file removed by hand, leaves the files made from them current to it.
    A job recorded at another path than below `root` (results moved since) is not this folder's to remake there."""
    planned = set(planned)
    found = []
    for _, outputs in recorded_jobs(records):
        gone = tuple(sorted(o for o in outputs if not Path(o).is_file()))
        if gone and planned.isdisjoint(outputs) and all(_below(o, root) for o in gone):
            found.append(gone)
    return sorted(found)


def split_by_config(records: Mapping[str, dict], made: Iterable[str], root: str
                    ) -> tuple[dict[str, dict], list[tuple[str, ...]]]:
    """(the records of the config, the jobs outside it): `records` (`core.manifest.output_records`) without the
    outputs below the results folder `root` that no job of the config's DAG makes (`made`: `dag_outputs`), and each
    recorded job with such outputs as those outputs, sorted.

    A run dropped from the config (an algorithm, a seed), an analysis turned off, a round no longer kept, or another
    config's results in the same folder: their files are no result of this config, so none is current, missing or
    changed here, and none is forced, which would make it a target (Snakemake's `--forcerun` adds the files it names
    to the targets): trained again with today's settings, or the whole command refused where no rule of the config
    makes it. An output recorded at another path than below `root` (results moved since) is left in: the config's
    jobs cannot make it there either, and `uncompared_outputs` counts it as before."""
    made = set(made)
    outside = {o for o in records if o not in made and _below(o, root)}
    jobs = [tuple(sorted(o for o in outputs if o in outside)) for _, outputs in recorded_jobs(records)]
    return {o: r for o, r in records.items() if o not in outside}, sorted(job for job in jobs if job)


def uncompared_outputs(records: Mapping[str, dict], planned: Iterable[str], root: str,
                       has_metadata: Callable[[str], bool]) -> list[str]:
    """The recorded outputs whose settings the dry run could not compare with their job's settings now, as Snakemake
    keeps no metadata for them where this config puts them (`has_metadata`: whether `snakemake_metadata` has some):
    those below the results folder `root` that are there, not planned and without metadata (a fresh clone, results
    copied without `.snakemake/`), and every one recorded at another path (an absolute `results_dir` moved: Snakemake
    keys its metadata by the path). The records of the jobs with settings hold them (`core.logs.job_log`), but they
    are not compared here either."""
    planned = set(planned)
    return sorted(o for o in records if o not in planned
                  and (not _below(o, root) or Path(o).is_file() and not has_metadata(o)))


def made_from_other_data(changes: Sequence[DataChange]) -> set[str]:
    """The outputs of the jobs made from other data than the files there now (`data.locations.changed_data`)."""
    return {o for c in changes if c.now is not None for job in c.jobs for o in job}


def trained_from_other_inputs(config: dict, records: Records, skip: Iterable[str] = (),
                              args: str | None = None) -> dict[str, list[str]]:
    """run id -> a line for each of its partition and init files that is not the one the run of `config` was trained
    from, as its meta.json names them (`inputs`, `stages.train`; a run whose meta.json names none, trained before runs
    recorded them, is not checked), with the command that trains it again (`core.io.remake_hint`, with the user's
    Snakemake arguments `args`, shell-quoted, where given: their targets too, which `--forcerun` does not force, as
    in status's own command). Passed over: a run with an output in `skip` (trained again by status's command, or by
    any run of the workflow), and a partition or init in `skip` (named with a remedy of its own, or made again, and
    its runs with it).

    Snakemake plans such a run for its input's newer date alone (`dates`), or not at all (an input dated before the
    run's outputs: copied with its dates, the outputs touched since), and a run of the workflow by meaning, as after a
    partition made again alone (`core.io.remake_alone_hint`), does not train it again. A partition is another split
    (`data.partition.trained_partition_problem`: drawn under a numpy whose random streams changed) that the run's
    analyses refuse; it is read only where its file is not the run's (its SHA-256 as its job recorded it in
    `records`, which status's quick check found it to be). An init made again since (forced alone, its runs then
    continued by meaning) leaves its runs trained from the earlier model, which no later job checks: the analyses
    read the runs' own checkpoints. An init its job recorded no SHA-256 for (made before records) is hashed."""
    skip, results = set(skip), Results.of(config)
    newest = records.by_output()

    def recorded(path: str) -> str | None:
        """The SHA-256 of the output at `path` as its job recorded it; None where no record names it."""
        job = newest.get(path)
        return None if job is None else job.outputs[path]["sha256"]

    # each file hashed once, however many runs (algorithms, inits) share it
    split_of, sha_of = functools.cache(split_sha256), functools.cache(file_sha256)
    found: dict[str, list[str]] = {}
    for run in build_runs(config):
        meta = results.run_file(run, "meta")
        inputs = trained_inputs(Path(meta))
        if inputs is None or any(results.run_file(run, name) in skip for name in TRAIN_FILE_NAMES):
            continue
        files, lines = train_inputs(results, run), []
        partition, init = files["partition"], files["init"]
        if (partition not in skip and Path(partition).is_file() and inputs.get("partition") != recorded(partition)
                and (problem := trained_partition_problem(partition, run.fields(), args, split_of)) is not None):
            lines.append(problem)
        then = inputs.get("init")
        if init not in skip and isinstance(then, str) and Path(init).is_file():
            now = recorded(init) or sha_of(init)
            if now != then:
                lines.append(f"run {run.run_id} was trained from another init than {init} holds now (SHA-256 "
                             f"{now[:12]}..., where its record {meta} names {then[:12]}...): the init was made again "
                             "after the run trained, and the run and what was made from it start from the earlier "
                             f"one. Train the run from this init: {remake_hint(meta, args)}")
        if lines:
            found[run.run_id] = lines
    return found


def report(jobs: Sequence[PlannedJob], records: dict[str, dict], snakemake_args: Iterable[str] = (),
           changes: Sequence[DataChange] = (), unchecked: int = 0, root: str = "results",
           missing: Sequence[tuple[str, ...]] = (), uncompared: int = 0, changed: Sequence[Finding] = (),
           hashed: int = 0, alone_args: str | None = None, damaged: Iterable[str] = (),
           outside: Sequence[tuple[str, ...]] = (), damaged_records: int = 0, retrain: int = 0,
           rerun_failed: Mapping[str, FailedRerun] | None = None) -> list[str]:
    """The lines of `make status` for a dry run's jobs, the results' job records, the data sets whose files
    changed since some of them were made (`data.locations.changed_data`) and the number of jobs that read data
    before fedscape recorded what it held (`unchecked`); `root`: the results folder; `missing`: the recorded jobs
    whose outputs are not there (`missing_jobs`); `uncompared`: how many recorded outputs Snakemake has no metadata
    for (`uncompared_outputs`); `changed`: the recorded outputs that are not the files their jobs wrote, and
    `hashed`: how many files that check read (`core.manifest.changed_outputs`). Of the jobs made from other data, of
    the missing ones and of the changed outputs, the first `LISTED` of each group are named and the others counted by
    the folder they lie in (the command names them all); a changed partition file is named with its own command.
    Every command carries `snakemake_args`, each one word in the shell; a partition's, which force it alone, carry
    `alone_args` (those arguments without their targets, shell-quoted: `without_targets`), or say to add the
    --configfile you run with where None. `damaged`: the partition files that `make status` names among the damaged
    ones (`partition_problems`, with what is wrong with them): not current, and not named again here. `outside`: the
    recorded jobs whose outputs no job of the config makes (`split_by_config`, whose first part `records` is), listed
    apart, the first `LISTED` named, and never in the command. `damaged_records`: how many job records below the
    results folder cannot be read or were edited (`core.manifest.read_records`): their jobs' outputs are checked
    nowhere here, so their count is no `nothing to remake`. `retrain`: how many runs `make status` names as trained
    from other partitions or inits than their files hold now (`trained_from_other_inputs`, each with its remedy): no
    `nothing to remake` either. `rerun_failed`: the outputs that a rerun of their finished job deleted, and that it did
    not write again, each with that job (`core.manifest.rerun_failed_outputs`): their missing job's line says so. One
    that may still run on another host (`FailedRerun.ended`) is named however many are missing, with its own command
    for once it no longer runs, and left out of the command that remakes the others: run, it would start a second copy.

    A job's outputs are current only where all of them are: a job with one output gone, not its own or planned is
    remade whole, the others with it."""
    planned = {o for job in jobs for o in job.outputs}
    stale = [c for c in changes if c.now is not None]
    other_data = made_from_other_data(changes)
    damaged = {str(Path(p)) for p in damaged}
    not_theirs = {f.path for f in changed} | damaged
    changed = [f for f in changed if str(Path(f.path)) not in damaged]
    current = Counter()
    for record, outputs in recorded_jobs(records):
        if all(output not in planned and output not in other_data and output not in not_theirs
               and _below(output, root) and Path(output).exists() for output in outputs):
            current[code_label(record.get("code"), digits=12)] += len(outputs)
    by_kind = {kind: [j for j in jobs if j.kind == kind] for kind in CLASSES}
    lines = [f"current: {counted(sum(current.values()), 'recorded result')}"
             + (f", made by {', '.join(f'{c} ({n})' for c, n in current.most_common())}" if current else "")]
    if current or changed:
        lines.append("  each file checked against its job's record by size, and by content where it is dated outside "
                     "its job's run or has the size another output was recorded at"
                     f"{f' ({hashed} hashed)' if hashed else ''}; make verify re-hashes every one")
    meaning = by_kind["meaning"]
    lines.append(f"out of date in meaning: {counted(len(meaning), 'job')}"
                 + (f" ({len(by_kind['made from'])} more made from them)" if meaning else ""))
    for job in sorted(meaning, key=lambda j: (j.rule, j.outputs)):
        why = "result version changed" if job.result_version_changed else job.why
        lines.append(f"  {job.rule:<18} {job.outputs[0] if job.outputs else '-'}  ({why})")
    for kind, what in (("dates", "with inputs newer than their outputs (file dates)"),
                       ("missing", "not made yet"), ("other", "planned for another reason")):
        if by_kind[kind]:
            counts = Counter(j.rule for j in by_kind[kind])
            lines.append(f"{what}: {counted(len(by_kind[kind]), 'job')} ("
                         + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())) + ")")
    if by_kind["made from"] and not meaning:
        lines.append(f"made from results remade above: {counted(len(by_kind['made from']), 'job')}")
    if changes:
        lines.append("made from other data than the files there now: "
                     + counted(sum(len(c.jobs) for c in stale), "job"))
        for change in changes:
            lines.append(f"  {change.describe()}")
            for files, made in change.by_files() if change.now is not None else []:
                lines.append(f"    made from {files}")
                lines += [f"      {job[0]}" for job in made[:LISTED]]
                if len(made) > LISTED:
                    lines.append(f"      and {len(made) - LISTED} more ({_by_stage(made[LISTED:], root)})")
    if unchecked:
        lines.append(f"made before fedscape recorded what their data held: {counted(unchecked, 'job')} (not checked "
                     "against the files there now)")
    # a partition is made again alone, bit-identical from its seed, so that what was trained on it is kept (its runs'
    # analyses check that it is their split, data.partition.check_trained_partition, and `trained_from_other_inputs`
    # names a run whose split differs)
    # and a job whose rerun may still run on another host has a command of its own, for once it no longer runs
    rerun_failed = rerun_failed or {}
    own = [gone for gone in missing
           if remade_alone(gone[0]) or (gone[0] in rerun_failed and not rerun_failed[gone[0]].ended)]
    missing = [gone for gone in missing if gone not in own]
    extra = shlex.join(snakemake_args)  # as the user gave them: each one word in the shell again

    def named(gone: tuple[str, ...]) -> str:
        why = MISSING if gone[0] not in rerun_failed else rerun_failed[gone[0]].why()
        return f"  {gone[0]}" + (f" and {len(gone) - 1} more of its outputs" if len(gone) > 1 else "") + f" ({why})"

    def own_command(gone: tuple[str, ...]) -> str:
        hint = remake_alone_hint(gone[0], alone_args) if remade_alone(gone[0]) else remake_hint(gone[0], extra)
        return hint if gone[0] not in rerun_failed else rerun_failed[gone[0]].remedy(hint)

    if missing or own:
        lines.append(f"missing outputs: {counted(len(missing) + len(own), 'job')} (Snakemake does not remake a "
                     "missing file while files made from it exist)")
        lines += [named(gone) for gone in missing[:LISTED]]
        if len(missing) > LISTED:
            lines.append(f"  and {len(missing) - LISTED} more ({_by_stage(missing[LISTED:], root)})")
        lines += [f"{named(gone)}; {own_command(gone)}" for gone in own]
    if changed:
        alone = [f for f in changed if remade_alone(f.path)]
        others = [f for f in changed if not remade_alone(f.path)]
        lines.append(f"not the files their jobs wrote: {counted(len(changed), 'recorded result')} (changed or foreign, "
                     "as make verify says)")
        lines += [f"  {finding.what()}" for finding in others[:LISTED]]
        if len(others) > LISTED:
            lines.append(f"  and {len(others) - LISTED} more ({_by_stage([(f.path,) for f in others[LISTED:]], root)})")
        lines += [f"  {finding.what()}; {finding.remedy(alone_args)}" for finding in alone]
    if outside:
        lines.append(f"not in this config (kept, not remade): {counted(len(outside), 'recorded job')} whose results no "
                     "job of the config makes (a run or analysis dropped from it, or another config's in the same "
                     "folder)")
        for job in outside[:LISTED]:
            there = sum(Path(o).is_file() for o in job)
            lines.append(f"  {job[0]}" + (f" and {len(job) - 1} more of its outputs" if len(job) > 1 else "")
                         + ("" if there == len(job) else " (not there now)" if not there
                            else f" ({len(job) - there} of them not there now)"))
        if len(outside) > LISTED:
            lines.append(f"  and {len(outside) - LISTED} more ({_by_stage(outside[LISTED:], root)})")
    if damaged_records:
        lines.append(f"damaged job records: {damaged_records} (their jobs' outputs are not checked; make verify names "
                     "each, with how to get it back)")
    if uncompared:
        lines.append(f"settings not compared: {counted(uncompared, 'recorded result')} that Snakemake has no metadata "
                     "for here (made from another checkout, copied without .snakemake/, or at another path), so a "
                     "changed setting of theirs shows nowhere above")
        lines.append("  run make status from the checkout that made them, or remake what you doubt with "
                     f"snakemake --cores all {extra + ' ' if extra else ''}--forcerun <file>")
    targets = [j.outputs[0] for j in sorted(meaning, key=lambda j: j.outputs) if j.outputs]
    targets += sorted({job[0] for c in stale for job in c.jobs} - set(targets))
    targets += sorted({gone[0] for gone in missing} - set(targets))
    targets += sorted({f.path for f in changed if not remade_alone(f.path)} - set(targets))
    if targets:
        # the command runs every job the dry run plans, not only those it forces and what is made from them
        others = sum(len(by_kind[kind]) for kind in ("dates", "missing", "other"))
        lines.append("remake these and what is made from them"
                     + (f"; it also runs the {counted(others, 'other job')} planned above (inputs newer, not made yet "
                        "or another reason) and what is made from those" if others else "") + ":")
        lines.append(f"  snakemake --cores all {extra + ' ' if extra else ''}--forcerun {shell_words(targets)}")
    elif not jobs and not changed and not own and not damaged and not damaged_records and not retrain:
        lines.append("nothing to remake")  # (damaged partitions and records, runs of other inputs: their own remedies)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`make status [ARGS="--configfile my.yaml"]`: print the status of the workflow's results; 1 if the dry run fails
    or hides its jobs (`hidden_jobs`, `dry_run_jobs`), with one line where a --configfile cannot be read
    (`config_file_problem`). Where the dry run says another Snakemake's lock covers its files (`LOCKED`), the commands
    below would stop on it: said first, with `--unlock`.

    The dry run is Snakemake's own (`snakemake -n` with the given arguments), so it follows the same config and
    profile as a real run would. `--rehash` (not passed on): every data file read again, not only those whose size,
    modification time or inode changed since they were last hashed."""
    args = list(sys.argv[1:] if argv is None else argv)
    rehash = REHASH in args
    args = [a for a in args if a != REHASH]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], capture_output=True, text=True)
    incomplete = incomplete_files(proc.stdout + proc.stderr) if proc.returncode != 0 else []
    if incomplete:
        # A job killed while it wrote its outputs: Snakemake plans nothing until told to make them again, which is
        # what the user will do, so the status is that of the run with --rerun-incomplete, and its commands carry it.
        print(f"{counted(len(incomplete), 'output')} {'is' if len(incomplete) == 1 else 'are'} marked incomplete "
              "(their job was killed while it wrote them; a training job resumes after its last saved round): "
              f"{shell_words(incomplete[:10])}"
              f"{' ...' if len(incomplete) > 10 else ''}\n  the status below is that of a run with --rerun-incomplete")
        args = [*args, RERUN_INCOMPLETE]
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        if problem := config_file_problem(args):  # what make check-config says, not Snakemake's traceback
            print(problem, file=sys.stderr)
            return 1
        print(proc.stdout[-4000:] + proc.stderr[-4000:], file=sys.stderr)
        print("the dry run failed: fix what it says first", file=sys.stderr)
        return 1
    if LOCKED in proc.stdout + proc.stderr:
        print(f"a lock is held (by another Snakemake running in this folder, or left by one that was killed): its "
              f"files would stop the commands below (LockException); if no snakemake runs, "
              f"`{shlex.join(['snakemake', '--unlock', *args])}` first")
    parsed = snakemake_args(args)  # (read once the dry run has: Snakemake said what is wrong with them, if anything)
    if hidden := hidden_jobs(parsed):
        print(f"make status reads the jobs the dry run prints and why each runs, which --quiet {hidden} hides (given "
              "in ARGS or a profile's quiet:; --quiet alone means rules and progress): drop it", file=sys.stderr)
        return 1
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    made = dag_outputs(args)  # run from here, as the first; its paths, as the records', are below Snakemake's workdir
    if jobs is None or made is None:
        return 1
    alone = without_targets(args, parsed)  # for the commands that make a partition again alone
    alone_args = None if alone is None else shlex.join(alone)
    config = workflow_config(parsed)
    with working_directory(parsed):  # every path below is Snakemake's: relative to its working directory
        root = results_root(config)
        planned = {o for job in jobs for o in job.outputs}
        read = read_records(root)
        # the config's records alone: the others are listed apart, and none of them is checked or remade
        records, outside = split_by_config(output_records(root, read), made, root)
        changes = changed_data(records, config, skip=planned, rehash=rehash)
        missing = missing_jobs(records, planned, root)
        metadata = snakemake_metadata(parsed)
        uncompared = uncompared_outputs(records, planned, root, lambda output: metadata(output) is not None)
        # the outputs that would count as current: the others are remade, or listed, anyway
        changed, hashed = changed_outputs(read, planned | made_from_other_data(changes)
                                          | {o for o in records if not _below(o, root)}
                                          | {o for job in outside for o in job}, touched=snakemake_times(metadata))
        # a dry run checks no partition file (the workflow's onstart does, before the first job): each damaged one is
        # named below with what is wrong with it, and not again among the files that are not their jobs'
        damaged = {path: lines for path in config_partition_files(config)
                   if (lines := partition_problems([path], planned, alone_args))}
        # the runs trained from other files than their inputs now, but for those that the command below or any run of
        # the workflow trains again (not the jobs planned for an input's newer date alone: a run by meaning skips
        # them), and the inputs named above with remedies of their own
        again = ({o for job in jobs if job.kind != "dates" for o in job.outputs} | made_from_other_data(changes)
                 | {o for gone in missing for o in gone} | {f.path for f in changed} | set(damaged))
        retrain = trained_from_other_inputs(config, read, again, shlex.join(args))
        rerun_failed = rerun_failed_outputs(root)
        for line in report(jobs, records, args, changes, unfingerprinted_jobs(records), root, missing,
                           len(uncompared), changed, hashed, alone_args, damaged, outside, len(read.damaged),
                           len(retrain), rerun_failed):
            print(line)
        if damaged:
            print(f"damaged partition files, or another run's: {len(damaged)} (the workflow refuses to run the jobs "
                  "that read them)")
            for line in (line for lines in damaged.values() for line in lines):
                print(f"  {line}")
        if retrain:
            print(f"runs trained from other partitions or inits than those there now: {len(retrain)} (a run of the "
                  "workflow by meaning does not train them again; their analyses refuse another split)")
            for line in (line for lines in retrain.values() for line in lines):
                print(f"  {line}")
    return 0


RERUN_INCOMPLETE = "--rerun-incomplete"
FORCEALL = "--forceall"
# What a dry run says where another Snakemake's lock covers files of its DAG (snakemake.persistence's
# `lock_warn_only`): a run of the same targets stops on it (LockException) until that one ends or `--unlock`
LOCKED = "Directory cannot be locked. Another Snakemake instance is running."


def config_file_problem(args: Sequence[str]) -> str | None:
    """Why a --configfile of the dry run's arguments cannot be read as a config (`core.config.read_config_file`: no
    such file, or a YAML syntax error with its line), as make check-config says it; None where each can be, or the
    arguments cannot be read (the dry run's own message says why). The files are read where Snakemake starts."""
    try:
        parsed = snakemake_args(args)
    except SystemExit:  # argparse exits on what it cannot read
        return None
    for path in parsed.configfile or ():
        try:
            read_config_file(path)
        except ConfigError as exc:
            return str(exc)
    return None


def hidden_jobs(parsed: argparse.Namespace) -> str:
    """The --quiet levels of the arguments (`snakemake_args`, the profiles' `quiet:` included) that keep a dry run
    from printing what `make status` reads, joined by spaces; '' for none. `rules` (which `--quiet` alone includes)
    and `all` hide every job's block, so that a dry run that plans jobs reads as one that plans none, and `reason`
    hides why each job runs, which gives its class."""
    from snakemake.settings.enums import Quietness  # lazy: Snakemake's output levels, for make status alone

    return " ".join(sorted(q.name.lower() for q in parsed.quiet or ()
                           if q in (Quietness.RULES, Quietness.ALL, Quietness.REASON)))


def dry_run_jobs(output: str) -> list[PlannedJob] | None:
    """The jobs of a dry run's `output` (`parse_dry_run`); None, said on stderr, where it shows no job and does not say
    that nothing is to be done: what hid them (a --quiet level `hidden_jobs` does not know, Snakemake's words changed)
    would leave a status with nothing planned, and nothing of the config's (`dag_outputs`)."""
    from snakemake.common import NOTHING_TO_BE_DONE_MSG  # lazy: Snakemake's words, for make status alone

    if NOTHING_TO_BE_DONE_MSG in output or any(_JOB_START.match(line) for line in output.splitlines()):
        return parse_dry_run(output)
    print(output[-4000:], file=sys.stderr)
    print("the dry run shows no job and does not say that nothing is to be done (--quiet?): make status cannot tell "
          "what it plans", file=sys.stderr)
    return None


def dag_outputs(args: Sequence[str]) -> set[str] | None:
    """The outputs of every job of the DAG the dry run's arguments give (`snakemake -n --forceall ARGS`: every job
    planned, as forced; the paths as the dry run prints them), which `split_by_config` tells the config's records from
    the others by; None where that dry run fails (what it says printed to stderr). A second dry run rather than the
    targets the planner derives: `rule all` names the end results only, and the jobs between them (a train job's
    outputs, a landscape's chunks, a shared Hessian's copy) are Snakemake's to find, as the `--forcerun` command
    will. It costs what the first does (2.5 s for config/papers/pilot_digits.yaml's 133 jobs)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", FORCEALL, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:] + proc.stderr[-4000:], file=sys.stderr)
        print(f"the dry run of every job of the config ({FORCEALL}), which tells its results from the others in the "
              "results folder, failed: fix what it says first", file=sys.stderr)
        return None
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    return None if jobs is None else {o for job in jobs for o in job.outputs}


def incomplete_files(output: str) -> list[str]:
    """The files a failed dry run's IncompleteFilesException lists (Snakemake prints them one a line after
    "Incomplete files:"); [] for any other failure."""
    if "IncompleteFilesException" not in output or "Incomplete files:" not in output:
        return []
    files = []
    for line in output.split("Incomplete files:", 1)[1].splitlines()[1:]:
        if not line.strip() or line.startswith(" ") or " " in line.strip():
            break
        files.append(line.strip())
    return files


def snakemake_args(args: Sequence[str]) -> argparse.Namespace:
    """The dry run's arguments (`snakemake -n ARGS`) as Snakemake reads them: its own parser, with the profiles it
    reads too (the workflow's default profile, `--profile`)."""
    from snakemake.cli import parse_args  # lazy: Snakemake's command line (a second of imports), for make status alone

    with contextlib.redirect_stderr(io.StringIO()):  # its note of the profiles it reads
        return parse_args(["-n", *args])[1]


def without_targets(args: Sequence[str], parsed: argparse.Namespace | None = None) -> list[str] | None:
    """The dry run's arguments without their targets (the files and rules Snakemake is asked for), as its own parser
    reads them (`snakemake_args`): each argument that is a target and whose removal changes nothing else of what
    Snakemake reads (not an option's value that is spelled as a target too). None where a target cannot be told
    apart so. For the commands that make a partition again alone: `--force` forces every target, and a target made
    from the partition would have every job between them run again. `parsed`: `snakemake_args(args)`, where read."""
    parsed = snakemake_args(args) if parsed is None else parsed
    kept, targets = list(args), set(parsed.targets)
    for at in reversed(range(len(kept))):
        if not targets:
            break
        if kept[at] not in targets:
            continue
        trial = kept[:at] + kept[at + 1:]
        try:
            found = snakemake_args(trial)
        except SystemExit:  # argparse exits on what it cannot read (then the argument was an option's value)
            continue
        if set(found.targets) <= targets and all(_same(value, getattr(found, key, None))
                                                 for key, value in vars(parsed).items() if key != "targets"):
            kept, targets = trial, set(found.targets)
    return None if targets else kept


def _same(a: object, b: object) -> bool:
    """Whether two values of Snakemake's parsed arguments are the same (some are objects without an equality)."""
    return a == b or (type(a) is type(b) and hasattr(a, "__dict__") and vars(a) == vars(b))


def workflow_config(parsed: argparse.Namespace) -> dict:
    """The config the workflow runs with under these arguments (`snakemake_args`), its defaults filled and validated
    as the Snakefile does: Snakemake's merge of the --configfile files in their order and then the --config values
    (its ConfigSettings); without a --configfile, the default config with those values on top (the Snakefile reads
    the default config only then). As Snakemake does, the --configfile files are read relative to where it starts,
    and the default config, and what check_config reads (a `plane_file`), relative to its working directory
    (`working_directory`)."""
    from snakemake.cli import parse_config  # lazy: Snakemake's reading of --config, for make status alone
    from snakemake.settings.types import ConfigSettings  # lazy: its merge of config files, for make status alone
    from snakemake.utils import update_config  # lazy: its merge of two configs, for make status alone

    schema = load_schema(SCHEMA)  # the Snakefile's (its folder's), not below --directory
    # the --configfile files, read before Snakemake enters its working directory: relative to where it starts
    settings = ConfigSettings(config=parse_config(parsed.config), configfiles=parsed.configfile,
                              replace_workflow_config=parsed.replace_workflow_config)
    given, files = settings.overwrite_config, [str(path) for path in settings.configfiles]  # those paths absolute
    with working_directory(parsed):  # where the Snakefile runs: its default config and check_config's files
        if files:
            config = given
        else:
            files = [DEFAULT_CONFIG]
            # as Snakemake's `configfile:` directive, which the Snakefile gives the default config
            config = {} if parsed.replace_workflow_config and given else read_config_file(DEFAULT_CONFIG)
            update_config(config, given)
        return check_config(config, schema, files=files)


def working_directory(parsed: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Enter the folder Snakemake works in under these arguments (`snakemake_args`): `--directory` (`-d`, or a
    profile's `directory:`), else stay here. Snakemake enters it before it reads the Snakefile, so that a relative
    `results_dir` (the results, their records and logs), its `.snakemake/` metadata, the default config and the data
    folders are below it; only the --configfile files are read from where it starts (`workflow_config`)."""
    return contextlib.chdir(parsed.directory) if parsed.directory else contextlib.nullcontext()


def snakemake_metadata(parsed: argparse.Namespace) -> Callable[[str], object | None]:
    """The metadata Snakemake keeps for an output path (its MetadataRecord: the job's rule, params, start and end
    times), None where it keeps none, read by its own persistence backend (that of the arguments: `.snakemake/metadata`
    or a database) in the working directory at this call, as Snakemake reads it there (`working_directory`); the
    output's path relative to that folder too. Opened at the first question."""
    workdir = os.getcwd()

    @functools.cache
    def persistence():
        from snakemake.persistence.db import DbPersistence  # lazy: Snakemake's metadata, for make status alone
        from snakemake.persistence.file import FilePersistence  # lazy: Snakemake's metadata, for make status alone
        from snakemake.settings.enums import PersistenceBackend  # lazy: which one the arguments ask for

        with contextlib.chdir(workdir):  # its default place (`.snakemake`, and a database's namespace) is the folder's
            if parsed.persistence_backend == PersistenceBackend.DB:
                return DbPersistence(nolock=True, db_url=parsed.persistence_backend_db_url)
            return FilePersistence(nolock=True)

    @functools.cache  # asked twice of an output: whether Snakemake compared its settings, and when it touched it
    def metadata(output: str):
        from snakemake.io import IOFile  # lazy: the path as Snakemake keys it, for make status alone

        return persistence().metadata(IOFile(output))

    return metadata


def snakemake_times(metadata: Callable[[str], object | None]) -> Callable[[str], tuple[float, float] | None]:
    """(start, end) of the job that last made an output, as Snakemake recorded them (`metadata`: `snakemake_metadata`),
    for `core.manifest.changed_outputs`; None where it did not record both. Both are the file system's dates: the start,
    of the marker it writes as it starts (submits) the job; the end, the output's own date once it touched it after
    the job."""

    def times(output: str) -> tuple[float, float] | None:
        found = metadata(output)
        start, end = getattr(found, "starttime", None), getattr(found, "endtime", None)
        return None if start is None or end is None else (start, end)

    return times


if __name__ == "__main__":
    sys.exit(main())
