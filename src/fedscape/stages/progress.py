"""What a resumable job's saved progress belongs to (`fedscape.fl.engine`: train and IID warm-up rounds, and the
pretraining epochs of `fedscape.stages.init`), and the finished parts of a job that computes in parts (`Parts`)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from fedscape.core.config import digest
from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import atomic_path
from fedscape.core.jobs import JobSettings
from fedscape.core.manifest import code_label, code_version_label, note
from fedscape.data.locations import without_data_locations
from fedscape.fl.settings import ATTEMPT_COMPUTE

log = logging.getLogger("fedscape.progress")


def resume_advice(progress_dir: str | os.PathLike, unit: str) -> str:
    """The log line of a job that keeps its progress in `progress_dir` after every `unit`. A killed rerun of a
    finished job had its outputs deleted by Snakemake first, so a plain run does not run it again while files made
    from them exist: every run of the workflow then names it with the command that does
    (`core.manifest.FailedRerun`)."""
    return (f"progress is kept in {progress_dir} after every {unit}: if this job is killed, run the workflow again and "
            "it resumes from there (with --rerun-incomplete if Snakemake says its outputs are incomplete, or with the "
            "--forcerun command the workflow gives if it names this job as run again and not finished)")


def attempt_record(compute: dict) -> dict:
    """What an attempt of a resumable job (a call that trained rounds or epochs of it) records of itself: where and
    how precisely it computed (`compute`: `describe_compute`'s `ATTEMPT_COMPUTE` keys), and the code it ran (`code`:
    the `code_label` its job's record and tables name, `core.manifest.code_version_label`), since a job resumed after
    a `git pull` trained its first rounds by other code than the attempt that finished it."""
    return {**{key: compute[key] for key in ATTEMPT_COMPUTE if key in compute}, "code": code_version_label()}


def attempts_record(attempts: list[dict], trained: bool) -> dict:
    """A resumable job's `attempts` for its record (a run's meta.json, an init job's record: `core.manifest.note`):
    each call that trained part of it, listed where it resumed after a kill (more than one), or where this call
    trained none (it found every round or epoch done: its own compute then names where it evaluated, not where its
    model trained). An unbroken job lists none. The codes of the attempts go into the job's record too, where they
    differ (`note_codes`)."""
    note_codes(attempt.get("code") for attempt in attempts)
    return {"attempts": attempts} if len(attempts) > 1 or (attempts and not trained) else {}


def note_codes(codes: Iterable[str | None]) -> None:
    """Note in the running job's record (`core.manifest.note`) the codes that computed its results, where more than
    one did: `codes` are those of its attempts (`attempt_record`) or parts (`Parts.codes`), in the order computed,
    None for one saved before they recorded it (`code_label`'s `unrecorded`). The record's `code` is that of the
    attempt that finished the job; `codes` lists every distinct one in order of first use, that attempt's among them
    (it wrote the outputs, where it computed none of them). An unbroken job, or one resumed by the same code, notes
    none."""
    labels = list(dict.fromkeys([*(code_label(None) if code is None else code for code in codes),
                                 code_version_label()]))
    if len(labels) > 1:
        note(codes=labels)


def input_digests(inputs: Iterable[str | os.PathLike]) -> tuple[str, ...]:
    """The contents' digests of the files a job starts from, as `progress_key` takes them (`digests`): a job that
    keys two things by the same inputs reads each file once."""
    return tuple(file_sha256(path) for path in inputs)


def progress_key(settings: dict, inputs: Iterable[str | os.PathLike] = (), device: str | None = None,
                 digests: Iterable[str] | None = None) -> str:
    """The key of a job's progress: its settings without the data's locations, the contents of the files it
    starts from, and where given the type of device it computes on (parts computed on a card are not mixed with those
    of a CPU attempt under `device: auto`).

    Moving the data keeps the progress (a location is not meaning, `fedscape.data.specs.LOCATION_BASELINES`). A
    remade input does not, even where the job's own settings are unchanged: a train job's settings hold neither its
    init's settings nor its partition label's options, so a new init seed or model option reruns the init and then
    the run, which must start from the new model, not resume the rounds trained from the old one. An input remade
    with the same bytes (checkpoints and partitions are byte-reproducible on a CPU) keeps the progress.

    `digests`: the inputs' `input_digests`, where the caller has them (then `inputs` is not given).
    """
    if digests is None:
        digests = input_digests(inputs)
    elif tuple(inputs):
        raise ValueError("progress_key takes the inputs' paths or their digests, not both")
    key = digest({"settings": without_data_locations(settings), "inputs": list(digests)})
    return key if device is None else f"{key}:{device}"


def resume_settings(settings: dict, kind: type[JobSettings]) -> dict:
    """A job's settings as its progress key holds them: their meaning (`JobSettings.meaning`), without its kind's
    `neutral` fields (a train job's memory keys, a Hessian job's batch size, ...), which change how it computes, not
    what, so that a job killed for lack of device memory resumes its saved rounds or parts once they are lowered, and
    without what the config spells out at a default the job takes anyway. A train job's record (meta.json) lists each
    attempt's memory keys (`attempts`, where it resumed)."""
    if not (isinstance(kind, type) and issubclass(kind, JobSettings)):
        raise TypeError(f"resume_settings takes a job kind (a JobSettings subclass), got {kind!r}")
    return kind.meaning(settings)


class Parts:
    """The finished parts of a job that computes in independent parts (a Hessian job's aggregate and clients, an
    interpolation's trained Bezier bends), saved in `directory` (beside the outputs, not one of them: a kill keeps
    it) under the job's key (`progress_key`), so that a rerun after a kill resumes after its last finished part.
    A part is plain data (tensors, lists, numbers, text), read back without unpickling objects; one of another key,
    or cut short, is computed again. A part is saved with the code that computed it (`code_version_label`), which
    its key leaves out: a job resumed after a `git pull` may hold parts of two codes (`codes`, `note_codes`)."""

    def __init__(self, directory: str | os.PathLike | None, key: str):
        self.dir, self.key = (Path(directory) if directory is not None else None), key
        # the code of each part this job loaded or computed, in that order (None: saved before parts recorded it)
        self.codes: dict[str, str | None] = {}

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def load(self, name: str) -> dict | None:
        """Part `name` as saved, or None where it is not saved under this key."""
        if self.dir is None or not self._path(name).exists():
            return None
        import torch  # lazy: the planning imports of this module stay torch-free

        try:
            saved = torch.load(self._path(name), map_location="cpu", weights_only=True)
        except Exception as exc:  # cut short by a kill, or written by another version: computed again
            log.warning("cannot resume part %s from %s (%s): computing it again", name, self.dir, exc)
            return None
        if saved.get("key") != self.key:
            return None
        self.codes[name] = saved.get("code")
        return saved["part"]

    def save(self, name: str, part: dict) -> None:
        self.codes[name] = code_version_label()
        if self.dir is None:
            return
        import torch  # lazy: as above

        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(name)) as tmp:
            torch.save({"key": self.key, "part": part, "code": self.codes[name]}, tmp)

    def clear(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def note(self, resumed: bool) -> str:
        """Text for a part's log line: where it was resumed from, or nothing."""
        return f", when an earlier attempt of this job computed it: resumed from {self.dir}" if resumed else ""


def parts_compute(computes: dict[str, dict[str, str] | None], codes: dict[str, str | None]) -> list[dict]:
    """Where and by which code a job's parts were computed (`computes`: each part's `describe_compute`, None where not
    known; `codes`: each part's code, `Parts.codes`), as a job's metadata records it: each distinct pair once,
    `compute` and `code` (None: not known, a part saved before parts recorded it), with its `parts`, in the order of
    the parts. A job resumed after a kill may have computed its parts on several cards, or on a card and a CPU, and
    after a `git pull` by two codes; an uninterrupted one lists one compute and code, its own."""
    groups: list[dict] = []
    for name, compute in computes.items():
        group = next((g for g in groups if (g["compute"], g["code"]) == (compute, codes.get(name))), None)
        if group is None:
            groups.append(group := {"compute": compute, "code": codes.get(name), "parts": []})
        group["parts"].append(name)
    return groups
