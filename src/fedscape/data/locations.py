"""Where a job's data is, and what it holds: the locations a job reads from the config when it starts, and the
fingerprint of the files it read, which its record keeps and `make status` compares with the files there now.

A data set's location is not part of a job's settings (`fedscape.data.specs.LOCATION_BASELINES`): moving the data
reruns nothing. So replacing the data under the same path would rerun nothing either, and every result made from
the old data would look current. Every job that reads data therefore records, per data set it read, a `DataRead`
(which files, found through which config keys) and the fingerprint of those files (`fedscape.core.fingerprints`:
their contents and their paths relative to the data set's folder, so a copy elsewhere has the same one).
`make status` reads those records and lists the results whose data changed since (`changed_data`). A partition
records the fingerprint of the files it split, and a job that loads it with other files stops
(`job_fingerprint`, `fedscape.data.partition.load_partition`): it would mix results of the two.

Torch-free: the partition job and `make status` use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedscape.core.config import config_value
from fedscape.core.fingerprints import Fingerprint, describe_change, tree_fingerprint
from fedscape.core.manifest import note, noted, recorded_jobs
from fedscape.core.paths import DATA_HASHES, results_root
from fedscape.data import imagenet200
from fedscape.data.leaf import LEAF_SPLITS, leaf_directory, raw_roles_directory, reddit_vocab_path
from fedscape.data.sources import cifar_files, digits_file
from fedscape.data.specs import (
    DATASET_BASELINES,
    DATASET_NAMES,
    IMAGENET32_FILES,
    INIT_LOCATION_BASELINES,
    LOCATION_BASELINES,
)
from fedscape.data.stackoverflow import WORD_COUNT_FILE, database_path

IMAGENET32 = "imagenet32"  # a DataRead's reader for down-sampled ImageNet (a pretrained init's proxy_dir)


@dataclass(frozen=True)
class DataRead:
    """One data set a job read: `key` names it as the config does (`datasets.cifar10`, `inits.pre.proxy_dir`,
    `inits.pre.proxy_dataset`); `reader` is the data set whose files were read (or `imagenet32`); `source` its
    `datasets.<name>.source` where that chooses other files (Shakespeare's raw texts); `location` the config keys
    that give its folder, the first one set wins (a proxy data set without its own folder is read from the clients'
    data set's)."""

    key: str
    reader: str
    location: tuple[tuple[str, ...], ...] = ()
    source: str | None = None

    def data_dir(self, config: Mapping) -> str | None:
        """The folder `config` gives this data set (None: none set, e.g. the digits bundled with scikit-learn)."""
        folders = [config_value(config, keys) for keys in self.location]
        return next((str(f) for f in folders if f is not None), None)

    def in_config(self, config: Mapping) -> bool:
        """Whether `config` still has the data set (or init) whose folder this is: results of one it dropped are no
        longer the workflow's."""
        return bool(self.location) and isinstance(config_value(config, self.location[0][:-1]), Mapping)

    def as_record(self) -> dict:
        return {"reader": self.reader, "location": [list(k) for k in self.location], "source": self.source}

    @classmethod
    def from_record(cls, key: str, record: Mapping) -> DataRead:
        return cls(key, record["reader"], tuple(tuple(k) for k in record.get("location") or ()),
                   record.get("source"))


def data_files(reader: str, data_dir: str | None, source: str | None = None) -> tuple[Path, tuple[str, ...]]:
    """The folder and the files (relative to it) that data set `reader` is read from below `data_dir`: every file
    its reader opens (`fedscape.data.sources`), in the layout the reader finds. FileNotFoundError as the reader
    raises it when they are not there."""
    if reader == "digits":
        paths = [digits_file()]
    elif reader in ("cifar10", "cifar100"):
        paths = cifar_files(reader, data_dir)
    elif reader == "shakespeare" and source == "raw":
        paths = sorted(raw_roles_directory(data_dir).glob("*.txt"))
    elif reader in ("femnist", "shakespeare", "reddit"):
        directory = leaf_directory(reader, data_dir)
        paths = [p for split in LEAF_SPLITS for p in sorted((directory / split).glob("*.json"))]
        if reader == "reddit":
            paths.append(reddit_vocab_path(directory))
    elif reader == "stackoverflow":
        database = database_path(data_dir)
        paths = [database, database.parent / WORD_COUNT_FILE]
    elif reader == "imagenet200":
        if data_dir is None:
            raise FileNotFoundError("ImageNet-200 is read from a data_dir, and none was given")
        paths = [Path(p) for split, per_class in (("train", imagenet200.TRAIN_PER_CLASS), ("val", None))
                 for p in imagenet200.list_split(data_dir, split, per_class).paths]
        solution = imagenet200.flat_val_solution(data_dir)
        paths += [solution] if solution is not None else []
    elif reader == IMAGENET32:
        paths = sorted(Path(data_dir).glob(IMAGENET32_FILES)) if data_dir is not None else []
        if not paths:
            raise FileNotFoundError(f"no {IMAGENET32_FILES} files in {data_dir}")
    else:
        raise ValueError(f"no files are known for the data set {reader!r} (one of {', '.join(DATASET_NAMES)}, "
                         f"or {IMAGENET32})")
    paths = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return root, tuple(p.relative_to(root).as_posix() for p in paths)


def fingerprint_now(read: DataRead, config: Mapping, rehash: bool = False
                    ) -> tuple[str | None, Fingerprint | None, str | None]:
    """The folder `config` gives `read`'s data set, the fingerprint of its files there (`data_files`), and None; or
    the folder, None and why they cannot be read. `rehash`: every file read again (`tree_fingerprint`)."""
    data_dir = read.data_dir(config)
    try:
        root, names = data_files(read.reader, data_dir, read.source)
        return data_dir, tree_fingerprint(root, names, hash_cache(config), rehash), None
    except (OSError, ValueError) as exc:
        return data_dir, None, f"{type(exc).__name__}: {exc}"


def hash_cache(config: Mapping) -> str:
    """Where the file digests of a config's data sets are kept: below its results directory."""
    return os.path.join(results_root(config), DATA_HASHES)


def with_data_locations(settings: dict, config: dict) -> dict:
    """A job's `settings` with the data locations `config` gives now, which the job reads its data from: the
    location keys (LOCATION_BASELINES) of every data set's options in them, and a pretrained init's folders
    (INIT_LOCATION_BASELINES). The job's record notes them (`fedscape.core.manifest`), and the fingerprint of each
    data set the job reads (`data_reads`, `JobData`), taken when the job first needs it or else when its record is
    written, after the job's work (a CIFAR job with `download: true` fetches its files first).

    A job's settings carry these keys at their baselines (`dataset_settings`, `fedscape.plan.init`), so that the
    location is not part of what Snakemake compares; a job finds its data set's name beside its options, as
    `dataset` or in its `run`."""
    read: dict[str, dict] = {}

    def fill(out: dict) -> dict:
        if "dataset_options" in out:
            name = _dataset_of(out)
            if name not in config["datasets"]:
                raise ValueError(f"job settings with dataset_options name no data set of the config's datasets "
                                 f"({', '.join(sorted(config['datasets']))}): {name!r}")
            given = config["datasets"][name]
            read[name] = {k: given.get(k, baseline) for k, baseline in LOCATION_BASELINES.items()}
            out["dataset_options"] = {**out["dataset_options"], **read[name]}
        if out.get("kind") == "pretrained" and any(k in out for k in INIT_LOCATION_BASELINES):
            spec = config["inits"][out["init"]]
            read[f"inits.{out['init']}"] = {k: spec.get(k) for k in INIT_LOCATION_BASELINES}
            out.update(read[f"inits.{out['init']}"])
        return out

    filled = _each_mapping(settings, fill)
    note(data_locations=read, data=JobData(data_reads(filled), config))
    return filled


def without_data_locations(settings: dict) -> dict:
    """`settings` with every data location at its baseline, as the job was planned: the inverse of
    `with_data_locations`, for what identifies a job's work apart from where its data is (its saved progress)."""

    def clear(out: dict) -> dict:
        if isinstance(out.get("dataset_options"), dict):
            out["dataset_options"] = {k: LOCATION_BASELINES[k] if k in LOCATION_BASELINES else v
                                      for k, v in out["dataset_options"].items()}
        if out.get("kind") == "pretrained":
            out.update({k: None if out[k] is None else INIT_LOCATION_BASELINES[k]
                        for k in INIT_LOCATION_BASELINES if k in out})
        return out

    return _each_mapping(settings, clear)


def _each_mapping(node, change):
    """`node` (job settings: mappings, lists and values) with `change` applied to every mapping, innermost first, to a
    copy whose values are already changed."""
    if isinstance(node, list):
        return [_each_mapping(v, change) for v in node]
    if not isinstance(node, dict):
        return node
    return change({k: _each_mapping(v, change) for k, v in node.items()})


class JobData:
    """The data sets the running job reads (`with_data_locations` notes it as the record's `data`): called, the
    record of each (`data_record`), their fingerprints taken once per job, when first asked for (`job_fingerprint`:
    by the partition job and each job that loads a partition) or when the record is written."""

    def __init__(self, reads: Iterable[DataRead], config: Mapping) -> None:
        self.reads = {read.key: read for read in reads}
        self.config = config
        self._records: dict[str, dict] = {}

    def record(self, key: str) -> dict:
        if key not in self._records:
            self._records[key] = data_record(self.reads[key], self.config)
        return self._records[key]

    def __call__(self) -> dict[str, dict]:
        return {key: self.record(key) for key in self.reads}


def job_fingerprint(dataset: str) -> str | None:
    """The SHA-256 fingerprint of data set `dataset`'s files as the running job reads them (`with_data_locations`
    said where); None outside such a job (a test, a benchmark) or where its files cannot be read."""
    data = noted("data")
    key = f"datasets.{dataset}"
    if not isinstance(data, JobData) or key not in data.reads:
        return None
    return data.record(key)["sha256"]


def job_data_change(dataset: str, before: str) -> str:
    """Which files of data set `dataset`, as the running job reads them, differ from those whose fingerprint was
    `before`, in words (`core.fingerprints.describe_change`); '' outside such a job."""
    data = noted("data")
    now = job_fingerprint(dataset)
    return describe_change(hash_cache(data.config), before, now) if now else ""


def _dataset_of(node: Mapping) -> str | None:
    run = node.get("run") if isinstance(node.get("run"), dict) else {}
    return node.get("dataset") or run.get("dataset")


def data_reads(settings: dict) -> list[DataRead]:
    """The data sets a job with these `settings` reads: each node with `dataset_options` reads its data set, except
    a pretrained init whose proxy lies elsewhere (down-sampled ImageNet in `proxy_dir`, or a `proxy_dataset`), which
    reads that instead."""
    reads: dict[str, DataRead] = {}

    def visit(node):
        if isinstance(node, list):
            for v in node:
                visit(v)
        if not isinstance(node, dict):
            return
        for v in node.values():
            visit(v)
        if "dataset_options" not in node:
            return
        name = _dataset_of(node)
        own = ("datasets", name, "data_dir")
        if node.get("kind") == "pretrained" and node.get("proxy_dir"):
            key = f"inits.{node['init']}.proxy_dir"
            reads[key] = DataRead(key, IMAGENET32, (("inits", node["init"], "proxy_dir"),))
        elif node.get("kind") == "pretrained" and node.get("proxy_dataset"):
            key = f"inits.{node['init']}.proxy_dataset"
            reads[key] = DataRead(key, node["proxy_dataset"], (("inits", node["init"], "proxy_data_dir"), own))
        else:
            source = node["dataset_options"].get("source", DATASET_BASELINES["source"])
            reads[f"datasets.{name}"] = DataRead(f"datasets.{name}", name, (own,),
                                                 None if source == DATASET_BASELINES["source"] else source)

    visit(settings)
    return list(reads.values())


def data_record(read: DataRead, config: Mapping) -> dict:
    """What a job's record says of a data set it read: how to find its files again, the folder it was read from and
    their fingerprint (sha256 None, with the reason, where they cannot be read now)."""
    data_dir, now, problem = fingerprint_now(read, config)
    found = now.as_record() if now is not None else {"sha256": None, "problem": problem}
    return {**read.as_record(), "data_dir": data_dir, **found}


@dataclass
class DataChange:
    """A data set whose files differ from those some recorded results were made from."""

    read: DataRead
    cache_dir: str  # where the digests and the lists of the fingerprints' files are kept (`hash_cache`)
    data_dir: str | None
    now: Fingerprint | None
    problem: str | None = None
    jobs: list[tuple[str, ...]] = field(default_factory=list)  # the outputs of each job made from other data
    made_from: list[str] = field(default_factory=list)  # the fingerprint each of those jobs recorded

    def describe(self) -> str:
        """One line: the data set, its folder now and what it holds, or why it cannot be read."""
        where = f"{self.read.key} ({self.data_dir or 'bundled'})"
        if self.now is None:
            return f"{where}: cannot be read now ({self.problem}); {len(self.jobs)} jobs not checked"
        return f"{where} now holds {self.now.short}: {len(self.jobs)} jobs read other files"

    def by_files(self) -> list[tuple[str, list[tuple[str, ...]]]]:
        """The jobs grouped by the files they read (a change whose files can be read now): for each recorded
        fingerprint (sorted), which files differ from those there now, in words, and the outputs of each job that
        read them."""
        groups: dict[str, list[tuple[str, ...]]] = {}
        for sha, job in zip(self.made_from, self.jobs, strict=True):
            groups.setdefault(sha, []).append(job)
        return [(f"{sha[:12]}, now {describe_change(self.cache_dir, sha, self.now.sha256)}", sorted(jobs))
                for sha, jobs in sorted(groups.items())]


def changed_data(records: Mapping[str, dict], config: Mapping, skip: Iterable[str] = (), rehash: bool = False
                 ) -> list[DataChange]:
    """The data sets of `config` whose files are not those that recorded jobs read (`records`:
    `core.manifest.output_records`, output -> its job's record), each with the outputs of each such job. A job
    with an output in `skip` (a dry run plans it already) or without its outputs, and a data set (or init) the config
    no longer has, are left out. A data set that cannot be read now (moved without telling the config) is listed
    with the problem and no fingerprint. `rehash`: every file read again, not trusting the cache's digests of files
    whose size, modification time and inode are unchanged."""
    skip = set(skip)
    changes: dict[tuple, DataChange] = {}
    for record, outputs in recorded_jobs(records):
        if skip.intersection(outputs) or not all(Path(o).exists() for o in outputs):
            continue
        for key, entry in sorted((record.get("data") or {}).items()):
            if not isinstance(entry, dict) or not entry.get("sha256"):
                continue
            read = DataRead.from_record(key, entry)
            if not read.in_config(config):
                continue
            data_dir = read.data_dir(config)
            if (read, data_dir) not in changes:
                changes[read, data_dir] = DataChange(read, hash_cache(config), *fingerprint_now(read, config, rehash))
            change = changes[read, data_dir]
            if change.now is None or change.now.sha256 != entry["sha256"]:
                change.jobs.append(tuple(sorted(outputs)))
                change.made_from.append(entry["sha256"])
    return [c for c in changes.values() if c.jobs]


def unfingerprinted_jobs(records: Mapping[str, dict]) -> int:
    """How many recorded jobs read data (their record notes its locations) but not what it held: jobs made before
    fedscape recorded fingerprints, which `changed_data` cannot check."""
    logs = {r.get("log") for r in records.values() if r.get("data_locations") and "data" not in r}
    return len(logs)
