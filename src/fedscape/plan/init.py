"""Planning of the init stage: each init's settings and inputs, and the checks of the `inits` section."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

from fedscape.core.config import ConfigError
from fedscape.core.jobs import declared_defaults, job_params
from fedscape.core.names import suggest
from fedscape.core.paths import PARTITION_DIR, Results
from fedscape.core.runs import Run, resolve_run
from fedscape.data.sources import proxy_writers_after
from fedscape.data.specs import (
    DATASET_NAMES,
    INIT_LOCATION_BASELINES,
    PROXY_SPLITS,
    RGB_DATASETS,
    dataset_info,
    dataset_settings,
    held_out_count,
    target_model_options,
)
from fedscape.fl.settings import RUN_ONLY_TRAINING_KEYS, TrainingSettings
from fedscape.fl.swa import swa_config
from fedscape.plan.train import (
    capture_problem,
    check_training,
    merge_training,
    run_training,
    undecayed_bumps,
    work_list_problems,
)
from fedscape.stages.init_settings import (
    INIT_JOBS,
    KIND_KEYS,
    WARMUP_ALGORITHM,
    WARMUP_UNREAD_TRAINING,
    InitJob,
    PretrainConfig,
    PretrainedInit,
    WarmupInit,
    kind_spec,
)

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params. An init
# that trains a model leaving parameters undecayed with weight decay carries plan.train's UNDECAYED_BUMPS too
# (`init_result_version`).
RESULT_VERSIONS = {"init": 1}


def planned_init(config: dict, runs: list[Run], dataset: str, model: str, init: str) -> InitJob:
    """The init job of label `init` for `dataset` and `model`: the job of its kind (`INIT_JOBS`), with the keys of
    its `inits` entry that the kind reads and what else it needs (`init_extras`)."""
    info = dataset_info(dataset, config["datasets"][dataset])
    spec = config["inits"][init]
    model_options = {**config["model_options"].get(model, {}),
                     **target_model_options(dataset, config["datasets"][dataset])}
    # a proxy folder is where the job reads, not what it trains on: at its baseline where set (with_data_locations)
    fields = {k: INIT_LOCATION_BASELINES[k] if k in INIT_LOCATION_BASELINES and v is not None else v
              for k, v in kind_spec(spec).items()}
    return INIT_JOBS[spec["kind"]](dataset=dataset, model=model, model_options=model_options,
                                   in_channels=info.in_channels, image_size=info.image_size,
                                   num_classes=info.num_classes, init=init, **fields,
                                   **init_extras(config, runs, dataset, model, init))


def init_settings(config: dict, runs: list[Run], dataset: str, model: str, init: str,
                  recorded: Iterable[str] | None = None) -> dict:
    """The settings of `planned_init` with its result version (the rule's params): Snakemake reruns the job when
    they change, not where they differ from its `recorded` params only in how it computes (`kept_record`). Keys
    sorted at every level (`canonical`), as they have always been (Snakemake records the text)."""
    job = planned_init(config, runs, dataset, model, init)
    return job_params(job, init_result_version(job), recorded, sort=True)


def init_result_version(job: InitJob) -> int:
    """The result version of an init job: RESULT_VERSIONS["init"], plus `plan.train.undecayed_bumps` of the weight
    decay it trains with (a pretraining's, an IID warm-up's local training's; none for the kinds that train nothing)."""
    decay = (job.weight_decay if isinstance(job, PretrainedInit)
             else job.warmup_training.weight_decay if isinstance(job, WarmupInit) else 0.0)
    return RESULT_VERSIONS["init"] + undecayed_bumps(job.model, decay)


def warmup_schedule_warnings(config: dict, runs: list[Run]) -> list[str]:
    """A line for each IID warm-up that the runs use whose lr follows a schedule over rounds: the warm-up trains its
    own `rounds` under it, so its lr anneals (or warms up) over those few rounds, where the runs' does over theirs; a
    pilot study's 1-round warm-up under `cosine` ends near lr 0. Valid (the warm-up is FedAvg with the `training`
    section), but rarely what a warm-up is meant to be; its own `training.lr_schedule: constant` says otherwise."""
    lines = []
    for label in sorted({run.init for run in runs}):
        spec = config["inits"][label]
        if spec["kind"] != "iid_warmup":
            continue
        training = merge_training(config["training"], spec["training"])
        over_rounds = training["lr_schedule_over"] == "rounds"
        if over_rounds and (training["lr_schedule"] != "constant" or training["lr_warmup"] > 0):
            lines.append(f"inits.{label}: the IID warm-up trains its {spec['rounds']} round(s) under lr_schedule "
                         f"{training['lr_schedule']} (lr_warmup {training['lr_warmup']}) over rounds, its own rounds, "
                         f"not the runs' {training['rounds']}: its lr is not the runs' first one; set inits.{label}."
                         "training: {lr_schedule: constant, lr_warmup: 0} to warm up at the runs' lr")
    return lines


def unread_proxy_folder_warnings(config: dict, runs: list[Run]) -> list[str]:
    """A line for each pretrained init that the runs use whose `proxy_data_dir` no job reads: it is the folder of the
    init's `proxy_dataset`, so beside `proxy_dir` (down-sampled ImageNet, which the init reads instead) or without a
    `proxy_dataset` (the init's own data set's proxy split, from that data set's `data_dir`) nothing reads it. Valid:
    a location changes nothing an init computes (`stages.init.proxy_data`)."""
    lines = []
    for label in sorted({run.init for run in runs}):
        spec = config["inits"][label]
        folder = spec.get("proxy_data_dir")
        if spec["kind"] != "pretrained" or not folder:
            continue
        where = f"inits.{label}.proxy_data_dir ({folder}) is not read"
        if spec.get("proxy_dir"):
            lines.append(f"{where}: the init pretrains on down-sampled ImageNet from proxy_dir ({spec['proxy_dir']}), "
                         "which it reads instead of any proxy_dataset; remove proxy_data_dir or proxy_dir")
        elif not spec.get("proxy_dataset"):
            lines.append(f"{where}: without proxy_dataset the init pretrains on its data set's own proxy split "
                         "(datasets.<name>.proxy_fraction), read from that data set's data_dir; set proxy_dataset to "
                         "pretrain on another data set from this folder, or remove proxy_data_dir")
    return lines


def reads_proxy_split(spec: dict) -> bool:
    """Whether the init of `inits` entry `spec` reads its data set's own proxy split: a pretrained init without another
    proxy (`proxy_dataset`, `proxy_dir`: `stages.init.proxy_data`)."""
    return spec["kind"] == "pretrained" and not spec.get("proxy_dataset") and not spec.get("proxy_dir")


def unread_proxy_split_warnings(config: dict, runs: list[Run]) -> list[str]:
    """A line for each data set of the runs whose proxy split (`proxy_fraction` > 0, the schema's default 0.2) no init
    of its runs reads (`reads_proxy_split`): the split is held out of the clients' pool all the same
    (`data.sources.load_source`), so the clients train on that much less data for nothing. Valid: results made with
    it stay valid, and setting the fraction to 0 changes the clients' data, so it reruns every job of the data set."""
    lines = []
    for dataset in sorted({run.dataset for run in runs}):
        fraction = config["datasets"][dataset]["proxy_fraction"]
        inits = sorted({run.init for run in runs if run.dataset == dataset})
        if fraction > 0 and not any(reads_proxy_split(config["inits"][label]) for label in inits):
            lines.append(f"datasets.{dataset}.proxy_fraction: a proxy split of {fraction:g} of the training samples "
                         f"is held out of the clients' pool, but no init of the runs on {dataset} reads it (they "
                         f"start from {', '.join(inits)}; only a pretrained init without proxy_dataset or proxy_dir "
                         f"does); set datasets.{dataset}.proxy_fraction: 0.0 to give those samples to the clients "
                         f"(which reruns every job of {dataset})")
    return lines


def iid_partition_path(results: Results, dataset: str, num_clients: int, seed: int) -> str:
    """The IID partition file an iid_warmup init trains on."""
    return f"{results(PARTITION_DIR, dataset=dataset, num_clients=int(num_clients), alpha='iid', seed=int(seed))}/" \
           "partition.npz"


def continue_source(config: dict, runs: list, dataset: str, model: str, init: str):
    """The run a `continue` init starts from: its selector plus this init's dataset and model."""
    selector = {**config["inits"][init]["run"], "dataset": dataset, "model": model}
    return resolve_run(runs, selector, where=f"inits.{init}.run")


def init_extras(config: dict, runs: list, dataset: str, model: str, init: str) -> dict:
    """The fields beyond the `inits` entry that a kind needs (they rerun the init job when they change)."""
    spec = config["inits"][init]
    kind = spec["kind"]
    device = config["training"]["device"]
    if kind == "pretrained":
        # a proxy data set of an RGB data set's inits takes the clients' statistics (PretrainedInit.proxy_normalisation)
        clients = {"proxy_normalisation": "clients"} if spec.get("proxy_dataset") and dataset in RGB_DATASETS else {}
        return {"dataset_options": dataset_settings(dataset, config["datasets"][dataset]), "device": device,
                "precision": config["training"]["precision"], **clients}
    if kind == "iid_warmup":
        training = TrainingSettings.of(merge_training(config["training"], spec["training"]))
        # what a run evaluates and keeps does not change the warm-up's model: at their baselines, left out
        baselines = declared_defaults(TrainingSettings)
        training = replace(training, **{key: baselines[key] for key in RUN_ONLY_TRAINING_KEYS})
        return {"dataset_options": dataset_settings(dataset, config["datasets"][dataset]),
                "partition": config["partition"],
                "warmup_training": training, "device": training.device}
    if kind == "continue":
        source = continue_source(config, runs, dataset, model, init)
        return {"source_run_id": source.run_id, "source_swa": run_training(config, source).get("swa") is not None}
    return {}


def init_input_paths(config: dict, runs: list, dataset: str, model: str, init: str) -> dict[str, str]:
    """Named inputs of an init job: the IID partition of a warm-up, the source trajectory of a continue."""
    spec = config["inits"][init]
    results = Results.of(config)
    if spec["kind"] == "iid_warmup":
        return {"partition": iid_partition_path(results, dataset, spec["num_clients"], spec["partition_seed"])}
    if spec["kind"] == "continue":
        return {"trajectory": results.run_file(continue_source(config, runs, dataset, model, init), "trajectory")}
    return {}


def given_keys(config: dict, schema: dict) -> dict[str, list[str]]:
    """The keys each `inits` entry gives, read before the schema fills every kind's defaults into it.

    An entry written by hand gives every key it holds, at its schema default or not (`lr: 0.05` on an iid_warmup is
    ignored as any other lr would be). An entry that holds every key with a default was filled by the schema (a config
    checked again): it gives the keys off their default only, so that another kind's filled defaults are not given.
    """
    keys = schema["properties"]["inits"]["additionalProperties"]["properties"]
    defaults = {k: key["default"] for k, key in keys.items() if "default" in key}
    given = {}
    inits = config.get("inits")
    for label, spec in (inits if isinstance(inits, dict) else {}).items():  # (another type: the schema says so)
        if isinstance(spec, dict):
            filled = defaults.keys() <= spec.keys()
            given[label] = [k for k, v in spec.items() if not filled or k not in defaults or v != defaults[k]]
    return given


def foreign_key_problems(config: dict, given: dict[str, list[str]]) -> list[str]:
    """Keys an `inits` entry gives that its kind does not read (`epochs` of an iid_warmup, `lr` of a random init):
    they would be ignored, and the init would not be the one the config describes."""
    problems = []
    for label, keys in given.items():
        kind = config["inits"][label]["kind"]
        foreign = [k for k in keys if k not in KIND_KEYS[kind]]
        if not foreign:
            continue
        readers = "; ".join(f"{k}: {', '.join(r for r, read in KIND_KEYS.items() if k in read) or 'no kind'}"
                            for k in foreign)
        hint = (" (the warm-up's own training keys, such as lr, go in its `training`)"
                if kind == "iid_warmup" and any(k in TrainingSettings.__dataclass_fields__ for k in foreign) else "")
        problems.append(f"inits.{label}: kind {kind} does not read {', '.join(foreign)}{hint}; the kinds that do: "
                        f"{readers}. Kind {kind} reads {', '.join(k for k in KIND_KEYS[kind] if k != 'kind')}")
    return problems


def proxy_split_size(dataset: str, options: dict) -> tuple[int, int]:
    """The samples of `dataset`'s own proxy split under its `datasets.<name>` settings `options`, and of the training
    pool it is held out of (digits: what its test split leaves). Exact where the data set's size is
    (`DatasetInfo.train_samples`); for LEAF's data sets, whose files hold fewer, an upper bound."""
    info = dataset_info(dataset, options)
    pool = info.train_samples
    if not info.fixed_test_split:
        pool -= held_out_count(pool, options["test_fraction"])
    return held_out_count(pool, options["proxy_fraction"]), pool


def _rounded_up(fraction: float) -> float:
    """`fraction` rounded up to two significant digits: the least proxy_fraction a message names."""
    scale = 10 ** (1 - math.floor(math.log10(fraction)))
    return math.ceil(fraction * scale) / scale


def _least_fraction(bound: float, holds: Callable[[float], int]) -> float:
    """The least proxy_fraction of two significant digits at which `holds` (a fraction -> the writers it holds out)
    holds a writer, where that takes a fraction above `bound`: the bound rounded up, or where it has two significant
    digits (a half rounds to even, 0: `round`), the next fraction up."""
    least = _rounded_up(bound)
    if not holds(least):
        least += 10 ** (math.floor(math.log10(least)) - 1)
    return least


def _no_proxy_writer(dataset: str, options: dict) -> str:
    """Why a writers' proxy split (`proxy_split: writers`) holds no writer ('' where it may hold one), whatever share of
    the samples proxy_fraction names.

    Of a `max_clients` read, the reader reads `proxy_writers_after` writers after the first max_clients as its proxy,
    none where that rounds to 0. Without max_clients it holds out `held_out_count` of the writers its files hold, at
    most the data set's `DatasetInfo.published_writers`: round(fraction x writers) never rises as the writers drop
    (the product does not, in floats too, and round() is monotone: a half goes to its even neighbour, between the
    values either side), so a fraction that holds none of that many holds none of fewer. So it does with a
    max_clients no smaller than that count, as files of no more writers than max_clients are read whole and split as
    without it (`data.sources._split_proxy_writers`); below the count, whether the files hold more writers than
    max_clients is known only once they are read (the init job refuses an empty split at its start:
    `stages.init.proxy_data`). Where no count is published (Shakespeare's raw texts), nothing is said."""
    if options.get("proxy_split") != PROXY_SPLITS[1]:
        return ""
    fraction = options["proxy_fraction"]
    writers = dataset_info(dataset, options).published_writers
    max_clients = options.get("max_clients")
    if max_clients is not None and (writers is None or writers > max_clients):
        if proxy_writers_after(max_clients, fraction):
            return ""
        # round() gives 1 from fraction x max_clients / (1 - fraction) above 1/2, so from a fraction above
        # 1 / (2 max_clients + 1)
        least = _least_fraction(1 / (2 * max_clients + 1), lambda f: proxy_writers_after(max_clients, f))
        return (f"the proxy split of {dataset} holds no writer (proxy_split: writers reads round(proxy_fraction x "
                f"max_clients / (1 - proxy_fraction)) writers after the first max_clients as its proxy: 0 for "
                f"proxy_fraction {fraction:g} and max_clients {max_clients}), so it is empty; set "
                f"datasets.{dataset}.proxy_fraction to at least {least:g}, or set proxy_dataset / proxy_dir")
    if writers is None or held_out_count(writers, fraction):
        return ""
    least = _least_fraction(1 / (2 * writers), lambda f: held_out_count(writers, f))  # round(f x writers) >= 1
    read_whole = "" if max_clients is None else f"; max_clients {max_clients} reads them all"
    return (f"the proxy split of {dataset} holds no writer (proxy_split: writers holds out round(proxy_fraction x "
            f"writers) of the writers in its files, at most the {writers} its publishers count{read_whole}: 0 for "
            f"proxy_fraction {fraction:g}), so it is empty; set datasets.{dataset}.proxy_fraction to at least "
            f"{least:g} (more where its files hold fewer writers), or set proxy_dataset / proxy_dir")


def proxy_split_problem(dataset: str, options: dict) -> str:
    """Why `dataset`'s proxy split is too small to pretrain on ('' where it is not): a writers' split that holds no
    writer (`_no_proxy_writer`), fewer samples than classes (a split cannot hold every class, and one stratified by
    class fails as empty at the job's start, or pretrains on a handful of images), or for samples without a class
    (`sequence_labels`) none."""
    if problem := _no_proxy_writer(dataset, options):
        return problem
    info = dataset_info(dataset, options)
    size, pool = proxy_split_size(dataset, options)
    least = 1 if info.sequence_labels else info.num_classes
    if size >= least:
        return ""
    writers = options.get("proxy_split") == PROXY_SPLITS[1]
    what = ("no sample" if info.sequence_labels else
            f"fewer than its {least} classes, which {'it' if writers else 'a split stratified by class'} cannot all "
            f"hold")
    fix = "no proxy_fraction holds that many: set"
    if least < pool:  # the fraction of the pool that holds `least` samples
        fix = f"set datasets.{dataset}.proxy_fraction to at least {_rounded_up(least / pool):g}, or set"
    # LEAF's: `DatasetInfo.train_samples` bounds what its files hold; whole writers hold about their share of the rows
    bound = "at most " if info.writers else ""
    about = "about " if writers else bound
    return (f"the proxy split of {dataset} holds {about}{size} samples (proxy_fraction {options['proxy_fraction']:g} "
            f"of {bound}{pool} training samples), {what}; {fix} proxy_dataset / proxy_dir")


def check(config: dict, runs: list) -> list[str]:
    """Problems of the `inits` section a schema cannot express: proxies, selectors, continue cycles."""
    problems: list[str] = []
    used = sorted({(r.init, r.dataset, r.model) for r in runs})
    for label, spec in config["inits"].items():
        kind = spec["kind"]
        where = f"inits.{label}"
        datasets = sorted({d for i, d, _ in used if i == label})
        if kind == "pretrained":
            try:
                PretrainConfig.of(spec)
            except (TypeError, ValueError) as exc:
                problems.append(f"{where}: {exc}")
            if spec.get("proxy_dataset") and spec.get("proxy_dir"):
                problems.append(f"{where}: give either proxy_dataset or proxy_dir, not both")
            if spec.get("max_samples") is not None and not (spec.get("proxy_dataset") or spec.get("proxy_dir")):
                problems.append(f"{where}.max_samples: a subset of proxy_dataset's or proxy_dir's images; this init "
                                "pretrains on its dataset's proxy split, whose size is the dataset's "
                                "proxy_fraction: set that instead, or remove max_samples")
            for dataset in datasets:
                info = dataset_info(dataset, config["datasets"][dataset])
                shape = (info.inputs, *info.shape[:2])
                proxy = spec.get("proxy_dataset")
                if proxy and proxy not in DATASET_NAMES:
                    problems.append(f"{where}.proxy_dataset: unknown dataset {proxy!r}.{suggest(proxy, DATASET_NAMES)} "
                                    f"Valid: {', '.join(DATASET_NAMES)}")
                elif proxy:
                    if proxy == dataset:
                        problems.append(f"{where}.proxy_dataset: {proxy} is the clients' own dataset; use its held-out "
                                        f"proxy split instead (datasets.{dataset}.proxy_fraction, proxy_dataset: null)")
                    elif (dataset_info(proxy).inputs, *dataset_info(proxy).shape[:2]) != shape:
                        # (a proxy dataset is read from its preprocessed files: stages.init.proxy_data)
                        given = dataset_info(proxy).input_description
                        problems.append(f"{where}.proxy_dataset: {proxy} gives {given}, which do not fit {dataset} "
                                        f"models ({info.input_description})")
                elif spec.get("proxy_dir"):
                    if shape != ("image", 3, 32):
                        problems.append(f"{where}.proxy_dir: down-sampled ImageNet is 3x32x32 images but {dataset} "
                                        f"gives {info.input_description}")
                elif not config["datasets"][dataset]["proxy_fraction"] > 0:
                    problems.append(f"{where}: pretrained init on {dataset}'s proxy split needs "
                                    f"datasets.{dataset}.proxy_fraction > 0 (or set proxy_dataset / proxy_dir)")
                elif problem := proxy_split_problem(dataset, config["datasets"][dataset]):
                    problems.append(f"{where}: {problem}")
        elif kind == "iid_warmup":
            for key, why in WARMUP_UNREAD_TRAINING.items():
                # (swa: null says what the warm-up does; the `training` section's SWA is its runs')
                if key in spec["training"] and not (key == "swa" and spec["training"][key] is None):
                    problems.append(f"{where}.training.{key}: {why.format(where=where, **spec)}; remove {key} from "
                                    "its training")
            warmup = merge_training(config["training"], spec["training"])
            for dataset, model in sorted({(d, m) for i, d, m in used if i == label}):
                if problem := capture_problem(config, dataset, model, WARMUP_ALGORITHM, {}, warmup,
                                              f"the warm-up of {where} ({WARMUP_ALGORITHM})"):
                    where_capture = f"{where}.training" if "capture" in spec["training"] else "training"
                    if f"{where_capture}.capture: {problem}" not in problems:
                        problems.append(f"{where_capture}.capture: {problem}")
            overrides = {**spec["training"], "rounds": spec["rounds"], "save_clients_at": []}
            try:
                check_training(config["training"], overrides, warm_up_init=True)
            except (TypeError, ValueError) as exc:
                problems.append(f"{where}.training: {exc}{_inherited_lr_warmup(config, label, overrides)}")
            for key, problem in work_list_problems(warmup, spec["num_clients"], "its warm-up rounds"):
                problems.append(f"{where}.training.{key}: {problem}")
        elif kind == "continue":
            if not spec.get("run"):
                problems.append(f"{where}.run: a continue init needs a run selector, e.g. "
                                "{alpha: 1.0, init: random, algorithm: fedavg}")
                continue
            for i, d, m in used:
                if i != label:
                    continue
                # the source is a run of the same data set and model as each run that starts from it (its weights
                # fit no other): a selector naming others would be replaced silently
                given = {key: spec["run"][key] for key in ("dataset", "model") if key in spec["run"]}
                if given and given != {key: value for key, value in (("dataset", d), ("model", m)) if key in given}:
                    problems.append(f"{where}.run: names {given}, but runs on {d} with {m} start from this init, and "
                                    f"a continue init takes its source run of their data set and model; leave dataset "
                                    "and model out of the selector, or start those runs from another init")
                    continue
                try:
                    source = continue_source(config, runs, d, m, label)
                except ConfigError as exc:
                    problems.append(str(exc))
                    continue
                if spec["source_model"] == "swa" and (problem := _no_swa_average(config, source)):
                    problems.append(f"{where}.source_model: swa, but {source.run_id} {problem}; continue from its "
                                    "final global model (source_model: global) or from a run with SWA")
    if not problems:
        problems.extend(_continue_cycles(config, runs, used))
    return problems


def _inherited_lr_warmup(config: dict, label: str, overrides: dict) -> str:
    """Where the IID warm-up `label` refuses the runs' `training.lr_warmup`, which it inherits over its own few
    rounds (under cosine, TrainConfig refuses a warm-up that leaves no round to decay over: the pilot study's 1-round
    warm-up under `lr_warmup: 1`), that it is inherited and what to set in the warm-up's own training; '' where the
    warm-up sets lr_warmup itself or the problem is another (its check with lr_warmup 0 fails too)."""
    spec = config["inits"][label]
    if "lr_warmup" in spec["training"]:
        return ""
    try:
        check_training(config["training"], {**overrides, "lr_warmup": 0}, warm_up_init=True)
    except (TypeError, ValueError):
        return ""
    return (f"; training.lr_warmup ({config['training']['lr_warmup']}) is inherited by this {spec['rounds']}-round "
            f"warm-up: set inits.{label}.training: {{lr_schedule: constant, lr_warmup: 0}} to warm up at the runs' "
            f"lr, or an lr_warmup below {spec['rounds']} there")


def _no_swa_average(config: dict, source: Run) -> str:
    """Why the run `source` ends without an SWA average ('' where it has one): no `training.swa`, or a phase that
    starts after its last round (which leaves the run plain, `fedscape.fl.swa.SWAConfig.start_round`)."""
    training = run_training(config, source)
    swa = swa_config(training.get("swa"))
    if swa is None:
        return "trains without SWA (training.swa is null)"
    rounds = int(training["rounds"])
    if swa.idle(rounds):
        return f"starts its SWA phase at round {swa.start(rounds)}, after its last round ({rounds})"
    return ""


def _continue_cycles(config: dict, runs: list, used: list) -> list[str]:
    """A continue init whose source run (transitively) starts from that init would be a DAG cycle."""
    edges: dict[tuple, tuple] = {}
    for node in used:
        label, dataset, model = node
        if config["inits"][label]["kind"] == "continue":
            source = continue_source(config, runs, dataset, model, label)
            edges[node] = (source.init, dataset, model, source.run_id)
    problems = []
    for start in edges:
        chain, node, seen = [], start, set()
        while node in edges and node not in seen:
            seen.add(node)
            target = edges[node]
            chain.append(f"init {node[0]} <- run {target[3]}")
            node = target[:3]
        if node == start:
            problems.append(f"inits.{start[0]}.run: continue chain forms a cycle ({'; '.join(chain)} starts from "
                            f"init {start[0]} itself); point the selector at a run with another init")
    return sorted(set(problems))


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: inits are reached through the runs that start from them."""
    return []
