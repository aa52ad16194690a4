"""Planning of the partition stage: the settings of one client split."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedscape.core.jobs import job_params
from fedscape.core.names import suggest
from fedscape.core.runs import Run
from fedscape.core.setting import is_partition_label
from fedscape.data.partition import (
    PARTITION_KINDS,
    check_partition_dataset,
    check_partition_entry,
    class_label_problem,
    dirichlet_draws_exact_zeros,
    kind_client_count,
    kind_files,
    kind_options,
    seed_free_reason,
    setting_entry,
)
from fedscape.data.specs import dataset_info, dataset_settings
from fedscape.stages.partition_settings import PartitionJob

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# A partition job's settings carry RESULT_VERSIONS["partition"] plus EXACT_ZEROS_BUMPS where its split is Dirichlet
# with alpha < 0.1 (`data.partition.dirichlet_draws_exact_zeros`, an alpha of `alphas` or a `partitions` entry),
# RESULT_VERSIONS["partition"] otherwise: the bumps only those splits have had. Bump RESULT_VERSIONS["partition"] for
# a change of every partition (those splits then move on with it, never back to a version they had), and
# EXACT_ZEROS_BUMPS for one of those splits alone.
# EXACT_ZEROS_BUMPS 1: a class whose Dirichlet draw gave no client under the cap any mass (numpy's exact zeros,
# alpha < 0.1 only) is redrawn instead of spread over every client, those at the cap included (version 2 of those
# splits). Only such partitions (and what is made from them) rerun: no other partition changed, bit for bit.
RESULT_VERSIONS = {"partition": 1}
EXACT_ZEROS_BUMPS = 1


def planned_partition(config: dict, dataset: str, setting: str, num_clients: int, seed: int) -> PartitionJob:
    """The partition job of a dataset, setting (an alpha or a `partitions` label, whose entry comes along as
    `kind`), client count and seed, with the `partition` section."""
    kind = None
    if is_partition_label(setting):
        entry = config["partitions"][setting]
        kind = {"kind": entry["kind"], **kind_options(entry)}
    # less the windows its evaluations score: a split draws from every training sample, whatever the stride
    options = {k: v for k, v in dataset_settings(dataset, config["datasets"][dataset]).items() if k != "eval_stride"}
    return PartitionJob(dataset=dataset, dataset_options=options, alpha=setting, num_clients=int(num_clients),
                        seed=int(seed), kind=kind, **config["partition"])


def partition_settings(config: dict, dataset: str, setting: str, num_clients: int, seed: int,
                       recorded: Iterable[str] | None = None) -> dict:
    """The settings of `planned_partition` with its result version (the rule's params), keys sorted at every level
    (`canonical`), as they have always been: Snakemake records them as text, key order included. Kept at its
    `recorded` params where they differ only in how it computes (`kept_record`: `PartitionJob.neutral`)."""
    job = planned_partition(config, dataset, setting, num_clients, seed)
    return job_params(job, partition_result_version(setting, job.kind), recorded, sort=True)


def partition_result_version(setting: str, kind: dict | None = None) -> int:
    """The result version of the partition job of `setting` (an alpha, or a `partitions` label with its entry `kind`):
    RESULT_VERSIONS["partition"], plus EXACT_ZEROS_BUMPS for a Dirichlet split with alpha < 0.1."""
    entry = setting_entry(setting, kind)[0]
    return RESULT_VERSIONS["partition"] + (EXACT_ZEROS_BUMPS if dirichlet_draws_exact_zeros(entry) else 0)


def partition_files(config: dict, setting: str) -> list[str]:
    """The files a partition job of `setting` reads that exist (the rule's input): those of its `partitions` entry's
    kind (a split file), none for an alpha. A file that is not there yet is left out, as a dataset's files are, so
    that a dry run plans without it; the job then names it."""
    files = kind_files(config["partitions"][setting]) if is_partition_label(setting) else []
    return [f for f in files if Path(f).is_file()]


def check(config: dict, runs: list[Run]) -> list[str]:
    """The `partitions` entries (kinds and options, and the options each dataset they are used with cannot take;
    labels that are no run's setting), client counts that cannot each get `partition.min_size` samples of their
    dataset (known at planning) and client counts other than an entry fixes (a writer split beyond max_clients, a
    split file's users)."""
    problems = []
    entries = config.get("partitions") or {}
    for label, entry in entries.items():
        if not is_partition_label(label):
            problems.append(f"partitions.{label}: a partition label must be lower-case letters, digits and _, "
                            "start with a letter and not be iid, inf, infinity, nan or null (it names the runs' "
                            "`alpha~<label>` folder)")
            continue
        problems += check_partition_entry(label, entry)
    for alpha in config.get("alphas") or []:
        if isinstance(alpha, str) and alpha != "iid" and alpha not in entries:
            problems.append(f"alphas: {alpha!r} is neither a number, iid nor a label of `partitions`."
                            f"{suggest(alpha, ['iid', *entries])}")
    min_size = int(config["partition"]["min_size"])
    for dataset, label in sorted({(run.dataset, run.setting) for run in runs if run.setting in entries}):
        problems += check_partition_dataset(label, entries[label], dataset, config["datasets"][dataset])
    # a split by writers of a data set read to its first max_clients writers cannot give more clients
    for dataset, label, num_clients in sorted({(r.dataset, r.setting, r.num_clients) for r in runs
                                               if r.setting in entries}):
        spec = PARTITION_KINDS.get(entries[label].get("kind"))
        most = config["datasets"][dataset].get("max_clients")
        if spec is not None and spec.needs_writers and most is not None and num_clients > most:
            problems.append(f"num_clients: {num_clients} clients of the {spec.name} partition {label}, but "
                            f"datasets.{dataset}.max_clients reads the first {most} writers alone; use at most "
                            f"{most} clients or raise max_clients")
        # a kind whose options fix the client count (a split file's users, read where the file is there already)
        fixed = kind_client_count(entries[label])
        if fixed is not None and fixed[0] != num_clients:
            problems.append(f"num_clients: {num_clients} clients of the {spec.name} partition {label}, but "
                            f"partitions.{label}.{fixed[1]}, one client each; set num_clients to {fixed[0]} for "
                            f"the runs on {label}")
    for dataset, setting in sorted({(run.dataset, str(run.setting)) for run in runs if run.setting not in entries}):
        problem = class_label_problem(setting_entry(setting)[0]["kind"], dataset)
        if problem:
            problems.append(f"alphas: {setting} on {dataset}: {problem} (alphas: iid, or a `partitions` label)")
    # the runs' partitions, and the IID partitions their warm-up inits train on (`inits.<label>.num_clients`)
    counts = {(run.dataset, run.num_clients, "num_clients") for run in runs}
    inits = config.get("inits") or {}
    counts |= {(run.dataset, int(inits[run.init]["num_clients"]), f"inits.{run.init}.num_clients") for run in runs
               if run.init in inits and inits[run.init]["kind"] == "iid_warmup"}
    for dataset, num_clients, key in sorted(counts):
        options = config["datasets"][dataset]
        pool = dataset_info(dataset, options).client_pool_bound(options["test_fraction"],
                                                       options["proxy_fraction"])
        if num_clients * min_size > pool:
            problems.append(f"{key}: {num_clients} clients x partition.min_size {min_size} = "
                            f"{num_clients * min_size} samples, but {dataset} leaves at most {pool} for the clients "
                            f"(after its test and proxy splits); use at most {pool // min_size} clients or a smaller "
                            "min_size")
    return problems


def shared_partition_warnings(config: dict, runs: list[Run]) -> list[str]:
    """A line for each `partitions` label, dataset and client count whose runs take several seeds while its kind makes
    the same split for every seed (`data.partition.seed_free_reason`: one class per client among at most the data
    set's classes, the first writers, a split file): the seeds share one partition, so their spread covers the
    training's randomness alone. Valid (a published split is fixed), but not what a spread over seeds usually means."""
    entries = config.get("partitions") or {}
    seeds: dict[tuple[str, str, int], set[int]] = {}
    for run in runs:
        if run.setting in entries:
            seeds.setdefault((run.dataset, run.setting, run.num_clients), set()).add(int(run.seed))
    # one line per label, reason and seeds: the datasets and client counts it holds for (meta.yaml's one label of
    # first writers on three data sets)
    shared: dict[tuple[str, str, tuple[int, ...]], list[str]] = {}
    for (dataset, label, num_clients), taken in sorted(seeds.items()):
        why = (seed_free_reason(entries[label], num_clients, dataset, config["datasets"][dataset]) if len(taken) > 1
               else None)
        if why is not None:
            shared.setdefault((label, why, tuple(sorted(taken))), []).append(f"{dataset} with {num_clients} clients")
    return [f"seeds: the runs on partitions.{label} ({entries[label]['kind']}: {', '.join(where)}) take seeds "
            f"{', '.join(map(str, taken))}, but {why}: they share one partition, so their spread covers only the "
            f"training's randomness (client sampling, batch order), not the split's; keep one seed for {label}, or "
            "read the spread over seeds as the training's alone"
            for (label, why, taken), where in shared.items()]


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: partitions are reached through the runs and the partitions table."""
    return []
