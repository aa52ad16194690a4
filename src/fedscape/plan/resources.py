"""What a job asks of the machine beyond cores: one GPU for the jobs that compute with torch on a device.

Snakemake schedules a local run by cores alone unless a resource says otherwise, so every rule that can run on a GPU
declares its `gpu` resource (`gpu_job_resources`) and the Snakefile limits a local run's `gpu` resource to what the
cards hold (`local_gpu_slots`). Under a cluster executor (the SLURM profile) the same rules ask SLURM for a card, in
the GPU partition, whenever `training.device` is not `cpu`, and SLURM places the jobs itself: a config that computes
on CPUs asks for none (the profile only sizes the jobs: memory, time, CPUs). tests/unit/test_resources.py keeps the
rules and `GPU_RULES` in step.

The host memory a cluster job asks for (`mem_mb`) follows its data where it reads a data set: a job decodes the whole
data set into host memory before it copies it to the card, and ImageNet-200's pool alone is about 20 GB where
CIFAR-10's is 0.7 GB. Every heavy rule that reads one asks for it in its rule file (`train_mem_mb`, `init_mem_mb`,
`data_job_mem_mb`), from its `RuleNeeds.host_mb` and the data set its job decodes (`job_mem_mb`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from fedscape.core.config import ConfigError, config_value
from fedscape.core.gpus import export_card_limit, no_card_known, visible_gpus
from fedscape.core.runs import Run
from fedscape.data.sources import proxy_writers_after
from fedscape.data.specs import PROXY_SPLITS, STORED_IMAGE_AUGMENTATIONS, TARGETS, dataset_info, resolved_targets
from fedscape.fl.settings import clients_per_round
from fedscape.fl.state_sizes import client_state_models
from fedscape.plan.hessian import shared_source
from fedscape.plan.train import kept_rounds_of, run_training
from fedscape.stages.init_settings import TRAINING_KINDS

log = logging.getLogger(__name__)
_UNSEEN_WARNED: list[bool] = []  # whether `planned_gpus` said that it counts an unseen card


@dataclass(frozen=True)
class RuleNeeds:
    """What a heavy rule's jobs need beyond a core (rules marked `localrule: True` need nothing: tables, figures)."""

    gpu: bool  # computes with torch on the configured device (a GPU rule)
    data: bool  # reads a dataset (or an init's proxy data): its data directory is checked before the job starts
    # The config keys that bound a GPU rule's device memory, for the message of a job that runs out of it
    # (`memory_hint`): smaller values use less, and `key=value` names the value (as YAML writes it) that uses least;
    # a `{wildcard}` part is the job's own (its entry of a section), and `a|b` names the first of the keys the config
    # sets (an entry's own override before the section it overrides). A mapping gives each kind of job its keys, the
    # kind read at `kind` (a key path, with the job's wildcards).
    memory: tuple[str, ...] | Mapping[str, tuple[str, ...]] = ()
    kind: str = ""
    # The host memory (MiB) a cluster job of a rule that reads data holds beside the data set's tensors (`job_mem_mb`):
    # Python, torch and CUDA's host side, its models and working arrays; what the SLURM profile gave the rule before its
    # data set was counted, so that no job asks for less than it did. 0: the profile sizes the rule's jobs (a
    # `localrule: True`, or a rule that reads no data set).
    host_mb: int = 0
    # How many copies of its data set's tensors (`data_bytes`) a job holds at once in host memory: one where the job
    # copies the data set to the card and drops the decoded one; two where it keeps the decoded pool on the CPU and
    # takes rows from it (a surface's client shard, the union of the shards) or decodes it again for its test set.
    host_data: int = 1


# What a train or init job holds beside its data set's tensors and a train job's kept models (`train_mem_mb`): Python,
# torch and CUDA's host side (its context and libraries take 2-3 GB of host memory once a job has touched a card), the
# model and its optimiser. 16000: what the profile gave every train and init job before their data sets were counted
# (tests/workflow/test_slurm.py ran with it), and the Hessian and surface jobs likewise, so that no job asks for less.
HOST_BASE_MB = 16000
# What the barrier jobs hold beside their data set: two runs' models and the points between them; the profile's 8000.
BARRIER_BASE_MB = 8000
# A Hessian or plane job that copies another run's round-0 result (`by_input`): torch-free, a few files read, written.
COPY_MEM_MB = 2000
# What bounds federated rounds' device memory: vectorised rounds stack client_chunk_size clients' models, activations
# and gradients; captured steps keep their CUDA graphs' memory pools (and a vectorised chunk's state per chunk size)
_TRAIN_MEMORY = ("training.client_chunk_size", "training.client_parallel=sequential", "training.eval_batch_size",
                 "training.capture=eager")
# What bounds a Hessian job's device memory: cache_graph keeps every batch's gradient graph, which grows with
# eval_samples
_HESSIAN_MEMORY = ("hessian.batch_size", "hessian.cache_graph=false", "hessian.eval_samples")
# Every heavy rule (not `localrule: True`) and every rule that reads data, once: the GPU rules and DATA_RULES derive
# from it, the SLURM profile gives each heavy rule a `set-threads` entry, and each GPU rule asks for its card itself
# (`gpu_job_resources`; tests/unit/test_resources.py keeps them in step).
RULE_NEEDS: dict[str, RuleNeeds] = {
    "partition": RuleNeeds(gpu=False, data=True),  # torch-free; runs local, but reads the data
    "train": RuleNeeds(gpu=True, data=True, memory=_TRAIN_MEMORY, host_mb=HOST_BASE_MB),
    # a pretraining's batches; an IID warm-up's federated rounds, bounded as a train job's by its `inits` entry's
    # `training` overrides, else by the `training` section
    "init": RuleNeeds(gpu=True, data=True, kind="inits.{init}.kind",
                      memory={"pretrained": ("inits.{init}.batch_size", "training.eval_batch_size"),
                              "iid_warmup": tuple(f"inits.{{init}}.{entry.partition('=')[0]}|{entry}"
                                                 for entry in _TRAIN_MEMORY)}, host_mb=HOST_BASE_MB),
    # the data set's pool on the CPU, and the rows it evaluates taken from it (or its test set decoded again)
    "landscape_chunk": RuleNeeds(gpu=True, data=True, memory=("landscapes.{surface}.points_per_batch",
                                                              "training.eval_batch_size"),
                                 host_mb=HOST_BASE_MB, host_data=2),
    "hessian": RuleNeeds(gpu=True, data=True, memory=_HESSIAN_MEMORY, host_mb=HOST_BASE_MB),
    # the aggregate's top-2 eigenvectors, as the Hessian job computes them (where that job did not keep them)
    "hessian_plane": RuleNeeds(gpu=True, data=True, memory=_HESSIAN_MEMORY, host_mb=HOST_BASE_MB),
    "interpolation": RuleNeeds(gpu=True, data=True, memory=("training.eval_batch_size",), host_mb=BARRIER_BASE_MB),
    "layer_barriers": RuleNeeds(gpu=True, data=True, memory=("training.eval_batch_size",), host_mb=BARRIER_BASE_MB),
    "landscape_plane": RuleNeeds(gpu=False, data=False),  # checkpoints in, a plane out: CPU
    "client_stats": RuleNeeds(gpu=False, data=False),  # client_updates.csv and trajectories in: CPU
}
# The rules whose jobs compute with torch on the configured device: federated training, the inits that train, the
# loss-surface chunks, the Hessian jobs and the barrier evaluations. Every other rule reads tables or writes figures.
GPU_RULES = tuple(rule for rule, needs in RULE_NEEDS.items() if needs.gpu)
# The rules whose jobs read a dataset; their `dataset` wildcard names it, and a rule without one (a barrier pair)
# may read any dataset of the config.
DATA_RULES = tuple(rule for rule, needs in RULE_NEEDS.items() if needs.data)
# The GPU rules whose round-0 job may copy another run's result instead of computing it (`by_input` in their rule
# files: `fedscape.plan.hessian.shared_source` gives such a job the inputs it copies)
COPYING_RULES = ("hessian", "hessian_plane")


def gpu_per_job(config: dict, gpus: int | None = None) -> int:
    """The `gpu` resource of a GPU rule's job: 1 where it will take a card (CUDA visible, device not `cpu`), else 0,
    so that a CPU-only machine schedules by cores alone, as before. `gpus`: the visible cards (default: this
    machine's, `planned_gpus`)."""
    if config["training"]["device"] == "cpu":
        return 0
    return int((planned_gpus() if gpus is None else gpus) > 0)


def planned_gpus() -> int:
    """The cards a local run on this machine plans its GPU jobs for: the visible ones
    (`fedscape.core.gpus.visible_gpus`), or one where it shows none while a card may be there unseen (`no_card_known`
    False: a ROCm machine, whose torch calls its cards cuda, or a container that hides the NVIDIA driver's listing
    and nvidia-smi). Counted as none, the GPU jobs would hold no `gpu` resource and get no limit per card, and each
    would find the card through torch and start on it at once; counted as one, they run one at a time on it, and
    wait for other workflows' jobs there. Said once per process (the planner asks more than once)."""
    gpus = visible_gpus()
    if gpus or no_card_known():
        return gpus
    if not _UNSEEN_WARNED:
        _UNSEEN_WARNED.append(True)
        log.warning("fedscape: this machine lists no NVIDIA card (no /proc/driver/nvidia/gpus, no nvidia-smi), but a "
                    "device file a card is reached through exists, so torch may find one: the GPU jobs of a local "
                    "run are planned for one card, one at a time; --resources gpu=N allows N at once, and "
                    "training.device: cpu none")
    return 1


# The GPU model names snakemake-executor-plugin-slurm (2.8.0) accepts in a job's `gpu_model`
SLURM_GPU_MODEL_FORMAT = re.compile(r"[a-zA-Z0-9_.]+")


def gpu_job_resources(config: dict, cluster: bool, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The resources of a GPU rule's job that say whether, and on a cluster where, it takes a card.

    A local run: `gpu` alone (`gpu_per_job`). A cluster (an executor's `--jobs`: the submitting node need not see a
    card): a card whenever `training.device` is not `cpu`, in SLURM_GPU_PARTITION (else SLURM_PARTITION) with
    SLURM_GPU_MODEL, as the environment says when the jobs are planned; with `device: cpu`, a CPU job
    (`cpu_job_resources`)."""
    if not cluster:
        return {"gpu": gpu_per_job(config)}
    environ = os.environ if environ is None else environ
    if config["training"]["device"] == "cpu":
        return cpu_job_resources(cluster, environ)
    model = environ.get("SLURM_GPU_MODEL", "")
    if model and not SLURM_GPU_MODEL_FORMAT.fullmatch(model):
        # refused as the jobs are planned: the plugin would refuse it only at the first GPU job's submission, after
        # the CPU jobs before it ran
        raise ConfigError(
            f"SLURM_GPU_MODEL={model}: the SLURM executor plugin takes a GPU model of letters, digits, '_' and '.' "
            f"only, and would refuse the GPU jobs' submission; unset it and choose the cards by partition "
            f"(SLURM_GPU_PARTITION) or node feature (--set-resources <rule>:constraint=<feature>), docs/cluster.md")
    return {"gpu": 1, "gpu_model": model,
            "slurm_partition": environ.get("SLURM_GPU_PARTITION") or environ.get("SLURM_PARTITION", "")}


def cpu_job_resources(cluster: bool, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The same resources for a job of a GPU rule that computes nothing on a device (a Hessian job that copies
    another run's result): no card, and on a cluster the partition of CPU jobs (SLURM_PARTITION)."""
    if not cluster:
        return {"gpu": 0}
    environ = os.environ if environ is None else environ
    return {"gpu": 0, "gpu_model": "", "slurm_partition": environ.get("SLURM_PARTITION", "")}


def by_input(key: str, copies: str, gpu_job: dict, cpu_job: dict) -> Callable:
    """A rule's resource `key` as a function of its job's input: `cpu_job`'s where the job has an input named
    `copies` (it copies a result and computes nothing), else `gpu_job`'s."""
    return lambda wildcards, input: (cpu_job if copies in input.keys() else gpu_job)[key]


def by_init(key: str, config: dict, gpu_job: dict, cpu_job: dict) -> Callable:
    """The init rule's resource `key` as a function of its job's `init` wildcard: `gpu_job`'s where the init's kind
    trains on the configured device (`fedscape.stages.init_settings.TRAINING_KINDS`: pretrained, iid_warmup), else
    `cpu_job`'s (a random or a continued model is made on the CPU: a card held for it would keep a training job
    waiting)."""
    return lambda wildcards: (gpu_job if _init_trains(config, wildcards.init) else cpu_job)[key]


def _init_trains(config: dict, init: str) -> bool:
    return config["inits"][init]["kind"] in TRAINING_KINDS


def computes_on_device(config: dict, runs: list[Run], rule: str, wildcards: Mapping[str, str]) -> bool:
    """Whether the job of `rule` with `wildcards` (as Snakemake names them) computes with torch on
    `training.device`, and so takes a card where its resources give one: a job of a GPU rule, but not an init job
    whose model is made on the CPU (`by_init`) nor a job of COPYING_RULES that copies another run's result
    (`by_input`)."""
    if rule not in GPU_RULES:
        return False
    if rule == "init":
        return _init_trains(config, wildcards["init"])
    if rule in COPYING_RULES:
        return shared_source(config, runs, Run.from_wildcards(wildcards), int(wildcards["round"])) is None
    return True


def execution_problems(config: dict, planned_as_cluster: bool, local_exec: bool, gpu_limited: bool,
                       gpus: int | None = None) -> list[str]:
    """What the way Snakemake was started leaves wrong about the cards, known only once it executes (`onstart`);
    asked only where a job about to run computes on the device (`plan.workflow.check_execution`,
    `computes_on_device`): tables and figures remade from a cluster's results on a machine without a card need none.

    - `--jobs` with `--cores` on a local run: Snakemake then counts it as a cluster run while the Snakefile is read
      (no limit on cores, and the Snakefile sets no `gpu` limit), so every GPU job could start on one card at once;
      refused where a card is visible, or may be there unseen (`planned_gpus`), and no `--resources gpu=N` limits
      them.
    - `training.device: cuda` or `cuda:<i>` on a local run that sees no card: its CPU jobs would run, and its first
      GPU job fail on "CUDA is not available". Refused where the count is known (`gpus` given, CUDA_VISIBLE_DEVICES
      set, no device file of a card, or the driver answers: `no_card_known`), not where a card may be there unseen.
    - `training.device: cuda:<i>` with no card of index i: locally past the visible cards (`gpus`, default this
      machine's); on a cluster any i > 0, since a job sees only the card it was given, as cuda:0.
    """
    given = gpus is not None
    gpus = visible_gpus() if gpus is None else gpus
    problems = []
    if local_exec and planned_as_cluster and not gpu_limited and local_gpu_slots(config, gpus if given else None) > 0:
        cards = f"{gpus} visible" if gpus else "one the driver does not list"
        problems.append(
            f"this local run was given --jobs with --cores: Snakemake then plans it as a cluster run, with no limit on "
            f"the GPU jobs that share a card ({cards}), which run out of its memory together. Run it with "
            f"--cores alone (one GPU job per card at a time), and add --resources gpu=N for N GPU jobs at once")
    device = config["training"]["device"]
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else None
    if local_exec and (device == "cuda" or index is not None) and gpus == 0 and (given or no_card_known()):
        problems.append(
            f"training.device: {device}: this local run sees no CUDA card, so every GPU job would fail (the jobs "
            f"before them run first); set training.device to auto (CUDA where there is a card, else the CPU) or cpu, "
            f"or run it on a machine with a card, or on a cluster (the SLURM profile gives each GPU job one)")
    elif index is not None and not local_exec and index > 0:
        problems.append(
            f"training.device: {device}: a cluster job sees only the card it was given, as cuda:0, so {device} does "
            f"not exist there; set training.device to cuda or auto")
    elif index is not None and local_exec and 0 < gpus <= index:
        problems.append(
            f"training.device: {device}: this machine shows {gpus} card(s) to the jobs (cuda:0..cuda:{gpus - 1}; "
            f"CUDA_VISIBLE_DEVICES renumbers the cards it lists from 0); set training.device to one of them, or auto")
    return problems


def local_gpu_slots(config: dict, gpus: int | None = None) -> int:
    """How many GPU jobs a local run starts at once: one per visible card with `device: auto` (each job then takes
    the card with the fewest jobs: `fedscape.models.device.resolve_device`), one with an explicit `cuda[:i]`
    (every job on that one card), none without a card (a card that may be there unseen counts: `planned_gpus`).
    `--resources gpu=N` on the command line overrides it, for jobs known to fit N to a card."""
    if config["training"]["device"] == "cpu":
        return 0
    gpus = planned_gpus() if gpus is None else gpus
    if gpu_per_job(config, gpus) == 0:
        return 0
    return gpus if config["training"]["device"] == "auto" else 1


def export_local_card_limit(config: dict, local_exec: bool, gpu_limit: int | None,
                            environ: MutableMapping[str, str] | None = None) -> None:
    """Tell the jobs this process starts how many GPU jobs of this run one card takes
    (`fedscape.core.gpus.export_card_limit`): the run's `gpu` resource `gpu_limit` (None: not set) over the cards
    its jobs use (`local_gpu_slots`) where the jobs run on this machine (`local_exec`), so that they wait for other
    workflows' jobs on a busy card; no limit (the variable removed, also one the user's shell set) where a cluster
    places the jobs, and sbatch would carry it to the nodes.

    The Snakefile calls it while it is read, with `local_exec` as planned (no executor's `--jobs`), and again in
    `onstart`, where Snakemake knows whether it executes locally: a local run given `--jobs` beside `--cores` is
    planned as a cluster run, and with `--resources gpu=N` its jobs get the limit there (without it, such a run is
    refused where a card may be there and a GPU job is about to run: `execution_problems`). The cards are counted
    only for a limit: a login node need not see any."""
    if not local_exec or gpu_limit is None:
        export_card_limit(None, 0, environ)
    else:
        export_card_limit(gpu_limit, local_gpu_slots(config), environ)


class _Kept(dict):
    """Wildcards for str.format_map that leave a missing one as it stands."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def memory_keys(rule: str, config: dict, wildcards: dict[str, str]) -> tuple[str, ...]:
    """The entries of `RuleNeeds.memory` that bound the memory of a job of `rule`: those of its kind where they
    differ by kind, all of them in turn where its kind is not known."""
    needs = RULE_NEEDS.get(rule)
    if needs is None:
        return ()
    if not isinstance(needs.memory, Mapping):
        return needs.memory
    kind = config_value(config, [part.format_map(_Kept(wildcards)) for part in needs.kind.split(".")])
    if isinstance(kind, str) and kind in needs.memory:
        return needs.memory[kind]
    return tuple(dict.fromkeys(entry for entries in needs.memory.values() for entry in entries))


def memory_hint(rule: str, config: dict, wildcards: dict[str, str]) -> str:
    """What a GPU job of `rule` (with `wildcards`) that ran out of device memory can change: the config keys that bound
    its memory (`memory_keys`, with the values `config` gives), and the other jobs on its card. It never fails
    (a job computes it before its log is open): what it cannot resolve it names as it is."""
    keys = []
    for entry in memory_keys(rule, config, wildcards):
        templates, _, least = entry.partition("=")
        paths = [[part.format_map(_Kept(wildcards)) for part in template.split(".")]
                 for template in templates.split("|")]
        # the first key the config sets: an override is what the job reads, and what the user lowers
        parts, node = next(((path, value) for path in paths if (value := config_value(config, path)) is not None),
                           (paths[-1], None))
        notes = [] if node is None else [f"now {str(node).lower() if isinstance(node, bool) else node}"]
        notes += [f"{least} uses least"] if least else []
        keys.append(f"{'.'.join(parts)} ({'; '.join(notes) or 'unset'})")
    own = f"lower what bounds this job's memory: {', '.join(dict.fromkeys(keys))}; or " if keys else ""
    return (f"{own}give it the card alone: a local run starts one GPU job per visible card unless `--resources "
            f"gpu=N` allows more, and other programs on the card (nvidia-smi lists them) take memory too")


# -- host memory: the `mem_mb` of the jobs that decode a data set, as a cluster asks for it

# The test set of a data set with a test set of its own (`fixed_test_split`), as a share of its `train_samples`: at
# most a fifth (CIFAR's 10,000 test images beside 50,000; ImageNet-200's 10,000 validation images beside 100,000).
# LEAF's and TFF's data sets (`writers`) count their test samples in `train_samples` already.
FIXED_TEST_SHARE = 0.2
# How many times a user's mean samples (`DatasetInfo.train_samples` over its `published_writers`) a user that a
# `max_clients` read reads may hold: users differ in size by orders of magnitude, and those with fewer than
# partition.min_size samples are passed over, so the users read are the larger ones.
MAX_CLIENTS_SKEW = 10
_INT64 = 8


def data_bytes(dataset: str, options: dict) -> int:
    """An upper bound of the host bytes of data set `dataset`'s tensors as a job decodes them with its
    `datasets.<name>` settings `options` (keys left out at their defaults): its train, proxy and test parts, all of
    them held at once before they are copied to the card (`fedscape.data.datasets.from_source`).

    Images: float32, or uint8 for a data set `stored: uint8` (ImageNet-200), its training images at their stored size
    where the augmentation crops them from a larger one (`resized_crop`: 256x256). Tokens: int64 ids, and int64
    targets, one per sample or (`targets: every`) one per position. The samples are the data set's `train_samples`
    (`fedscape.data.specs.DatasetInfo`), its own test set added (`FIXED_TEST_SHARE`); of a `max_clients` read, the
    share its users may hold (`MAX_CLIENTS_SKEW`): the first max_clients, and with a writers' proxy split those read
    after them as the proxy (`fedscape.data.sources.proxy_writers_after`)."""
    info = dataset_info(dataset, options)
    samples = float(info.train_samples)
    test = samples * FIXED_TEST_SHARE if info.fixed_test_split and not info.writers else 0.0
    if options.get("max_clients") and info.published_writers:
        read = int(options["max_clients"])
        if options.get("proxy_split") == PROXY_SPLITS[1]:  # its proxy: the writers the reader reads after max_clients
            read += proxy_writers_after(read, options["proxy_fraction"])
        share = min(1.0, MAX_CLIENTS_SKEW * read / info.published_writers)
        samples, test = samples * share, test * share
    if info.inputs == "tokens":
        every = resolved_targets(dataset, options) == TARGETS[1]
        train_row = test_row = _INT64 * info.image_size * (2 if every else 1) + (0 if every else _INT64)
    else:
        value = 1 if info.stored == "uint8" else 4
        stored = info.train_stored_size if options.get("augment") in STORED_IMAGE_AUGMENTATIONS else None
        train_row = value * info.in_channels * (stored or info.image_size) ** 2
        test_row = value * info.in_channels * info.image_size ** 2
    return int(samples * train_row + test * test_row)


def job_mem_mb(rule: str, datasets: list[tuple[str, dict]], attempt: int, more_bytes: int = 0) -> int:
    """The host memory (MiB, SLURM's `--mem` unit) of a job of `rule` that decodes `datasets` (name, `datasets.<name>`
    options): the rule's `RuleNeeds.host_mb`, its `host_data` copies of the data sets' tensors (`data_bytes`) and
    `more_bytes`, times `attempt`: a job killed for its memory asks for more when it is resubmitted (the profile's
    `retries`). The one formula of every rule whose memory follows its data."""
    needs = RULE_NEEDS[rule]
    if not needs.host_mb:
        raise ValueError(f"rule {rule!r} declares no host memory (RuleNeeds.host_mb): the profile sizes its jobs")
    data = needs.host_data * sum(data_bytes(name, options) for name, options in datasets) + more_bytes
    return int(attempt) * (needs.host_mb + math.ceil(data / 2**20))


def data_job_mem_mb(rule: str, config: dict, dataset: str, attempt: int = 1, copies: bool = False) -> int:
    """The host memory (MiB) of a job of analysis rule `rule` (a Hessian, plane, surface chunk or barrier job) that
    reads `dataset` with its `datasets.<name>` settings, times `attempt` (`job_mem_mb`); `COPY_MEM_MB` for a job that
    `copies` another run's result and reads no data (`by_input`)."""
    if copies:
        return COPY_MEM_MB
    return job_mem_mb(rule, [(dataset, config["datasets"][dataset])], attempt)


def kept_models(config: dict, run: Run) -> int:
    """How many models a train job of `run` holds in host memory until it writes them: the global models of its kept
    rounds (`TrainConfig.kept_rounds`: every round where `save_every` is 1) and the sampled clients' models of each
    `save_clients_at` round. meta.yaml's CIFAR-10 runs keep 501 ResNet18s, 21 GB."""
    training = run_training(config, run)
    kept = kept_rounds_of(config, run)
    rounds = int(training["rounds"]) + 1 if kept is None else len(kept)
    return rounds + len(training["save_clients_at"]) * clients_per_round(int(run.num_clients), float(run.participation))


def client_state_copies(config: dict, run: Run) -> int:
    """How many model-sized vectors a train job of `run` holds for its clients' kept state
    (`fedscape.fl.state_sizes.client_state_models`: SCAFFOLD's control variates, FedDyn's corrections, MOON's previous
    models, a kept optimiser state): each of its `num_clients` clients' (every client that took part keeps them until
    the run ends), twice: each round's state.pt is written from one more copy of them, stacked
    (`ClientStore.state_dict`), and a resumed run holds the stack it read beside the rows it replaces. 0 for FedAvg
    without a kept optimiser state."""
    spec = config["algorithms"][run.algorithm]
    hyperparameters = {k: v for k, v in spec.items() if k not in ("name", "training")}
    per_client = client_state_models(spec["name"], hyperparameters, run_training(config, run))
    return 2 * int(run.num_clients) * per_client


def train_mem_mb(config: dict, run: Run, attempt: int = 1, init: str | os.PathLike | None = None) -> int:
    """The host memory (MiB) of `run`'s train job: its data set whole (`data_bytes`), federated on the card after it
    is decoded, its kept models (`kept_models`) and its clients' kept state (`client_state_copies`), each the size of
    its init file `init` (parameters and buffers in float32; None: not counted), and `HOST_BASE_MB`, times `attempt`.

    The init file is read for its size only. Where it does not exist yet (a dry run before the init job), its
    FileNotFoundError makes Snakemake show the memory as <TBD> and evaluate it again once the file is there, before it
    submits the job."""
    held = kept_models(config, run) + client_state_copies(config, run)
    models = 0 if init is None else held * os.path.getsize(init)
    return job_mem_mb("train", [(run.dataset, config["datasets"][run.dataset])], attempt, models)


def init_mem_mb(config: dict, dataset: str, init: str, attempt: int = 1) -> int:
    """The host memory (MiB) of the init job of label `init` for `dataset`, times `attempt`: `HOST_BASE_MB` and the
    data set it decodes (`job_mem_mb`). An IID warm-up trains on `dataset`, a pretrained init on its proxy split
    (`dataset` whole) or on a `proxy_dataset` (read with its defaults); down-sampled ImageNet (`proxy_dir`) is read
    batch by batch, and a random or continue init reads no data set."""
    spec = config["inits"][init]
    datasets: list[tuple[str, dict]] = []
    if spec["kind"] == "iid_warmup" or (spec["kind"] == "pretrained" and not spec.get("proxy_dir")
                                         and not spec.get("proxy_dataset")):
        datasets.append((dataset, config["datasets"][dataset]))
    elif spec["kind"] == "pretrained" and spec.get("proxy_dataset"):
        datasets.append((spec["proxy_dataset"], {}))
    return job_mem_mb("init", datasets, attempt)
