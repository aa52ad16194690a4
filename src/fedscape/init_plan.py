"""Torch-free planning of the `init` stage: the keys each init kind reads, its extra settings, its
inputs and the cross-key checks of the `inits` section.

Snakemake's planning (fedscape.plan, rules/common.smk) imports only this module; `fedscape.inits`
re-exports its names.
"""

from __future__ import annotations

from dataclasses import dataclass

INIT_KINDS = ("random", "pretrained", "iid_warmup", "continue")
# The keys of an `inits` entry that each kind reads (the schema fills defaults for all of them).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "random": ("kind", "seed"),
    "pretrained": ("kind", "seed", "epochs", "lr", "batch_size", "momentum", "weight_decay", "proxy_dataset",
                   "proxy_data_dir", "proxy_dir", "max_samples"),
    "iid_warmup": ("kind", "seed", "rounds", "num_clients", "partition_seed", "training"),
    "continue": ("kind", "run"),
}


@dataclass(frozen=True)
class PretrainConfig:
    """Centralised pretraining on proxy data (defaults: a short SGD schedule for small proxies)."""

    # The papers pretrain on (down-sampled) ImageNet without giving a schedule; these are fedscape's
    # short defaults: the digits proxy split reaches ~80% accuracy on the clients' data with cnn_small.
    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.9  # SGD with momentum, as every local optimiser of the FedAlign paper (Sec. 3.2)
    weight_decay: float = 5e-4  # the common CIFAR ResNet schedule (He et al. 2016)
    seed: int = 0  # random weights before pretraining and the batch order

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("pretraining needs epochs >= 1, batch_size >= 1 and lr > 0")


# -- plan ------------------------------------------------------------------------------------------
def kind_spec(spec: dict) -> dict:
    """The keys of an `inits` entry that its kind reads (others are schema defaults and ignored)."""
    kind = spec.get("kind", "random")
    return {k: spec[k] for k in KIND_KEYS.get(kind, ("kind",)) if k in spec}


def iid_partition_path(dataset: str, num_clients: int, seed: int, results: str = "results") -> str:
    """The IID partition file an iid_warmup init trains on, below the results directory `results`."""
    return f"{results}/partitions/{dataset}/clients~{int(num_clients)}/alpha~iid/seed~{int(seed)}/partition.npz"


def continue_source(config: dict, runs: list, dataset: str, model: str, init: str):
    """The run a `continue` init starts from: its selector plus this init's dataset and model."""
    from fedscape.plan import resolve_run

    selector = {**config["inits"][init]["run"], "dataset": dataset, "model": model}
    return resolve_run(runs, selector, where=f"inits.{init}.run")


def init_extras(config: dict, runs: list, dataset: str, model: str, init: str) -> dict:
    """Settings beyond the `inits` entry that a kind needs (they rerun the init job when they change)."""
    spec = config["inits"][init]
    kind = spec["kind"]
    device = config["training"].get("device", "auto")
    if kind == "pretrained":
        return {"dataset_options": config["datasets"][dataset], "device": device}
    if kind == "iid_warmup":
        training = {**config["training"], **spec.get("training", {})}
        return {"dataset_options": config["datasets"][dataset], "partition": config["partition"],
                "warmup_training": training, "device": training.get("device", device)}
    if kind == "continue":
        return {"source_run_id": continue_source(config, runs, dataset, model, init).run_id}
    return {}


def init_input_paths(config: dict, runs: list, dataset: str, model: str, init: str) -> dict[str, str]:
    """Named inputs of an init job: the IID partition of a warm-up, the source trajectory of a continue."""
    from fedscape.plan import results_root

    spec = config["inits"][init]
    results = results_root(config)
    if spec["kind"] == "iid_warmup":
        return {"partition": iid_partition_path(dataset, spec["num_clients"], spec["partition_seed"], results)}
    if spec["kind"] == "continue":
        source = continue_source(config, runs, dataset, model, init)
        return {"trajectory": f"{results}/train/{source.run_id}/trajectory.pt"}
    return {}


def check_inits(config: dict, runs: list) -> list[str]:
    """Problems of the `inits` section a schema cannot express: proxies, selectors, continue cycles."""
    from fedscape.config import ConfigError
    from fedscape.plan import DATASET_SHAPES, _train_config

    problems: list[str] = []
    used = sorted({(r.init, r.dataset, r.model) for r in runs})
    for label, spec in config["inits"].items():
        kind = spec["kind"]
        where = f"inits.{label}"
        datasets = sorted({d for i, d, _ in used if i == label})
        if kind == "pretrained":
            try:
                PretrainConfig(**{k: spec[k] for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay",
                                                        "seed") if k in spec})
            except (TypeError, ValueError) as exc:
                problems.append(f"{where}: {exc}")
            if spec.get("proxy_dataset") and spec.get("proxy_dir"):
                problems.append(f"{where}: give either proxy_dataset or proxy_dir, not both")
            for dataset in datasets:
                shape = DATASET_SHAPES[dataset][:2]
                proxy = spec.get("proxy_dataset")
                if proxy:
                    if proxy == dataset:
                        problems.append(f"{where}.proxy_dataset: {proxy} is the clients' own dataset; use its held-out "
                                        f"proxy split instead (datasets.{dataset}.proxy_fraction, proxy_dataset: null)")
                    elif DATASET_SHAPES[proxy][:2] != shape:
                        problems.append(f"{where}.proxy_dataset: {proxy} images {DATASET_SHAPES[proxy][:2]} (channels, "
                                        f"size) do not fit {dataset} models {shape}")
                elif spec.get("proxy_dir"):
                    if shape != (3, 32):
                        problems.append(f"{where}.proxy_dir: down-sampled ImageNet is 3x32x32 but {dataset} is "
                                        f"{shape[0]}x{shape[1]}x{shape[1]}")
                elif not config["datasets"][dataset].get("proxy_fraction", 0) > 0:
                    problems.append(f"{where}: pretrained init on {dataset}'s proxy split needs "
                                    f"datasets.{dataset}.proxy_fraction > 0 (or set proxy_dataset / proxy_dir)")
        elif kind == "iid_warmup":
            try:
                _train_config(config["training"], {**spec.get("training", {}), "rounds": spec["rounds"],
                                                   "save_clients_at": []})
            except (TypeError, ValueError) as exc:
                problems.append(f"{where}.training: {exc}")
        elif kind == "continue":
            if not spec.get("run"):
                problems.append(f"{where}.run: a continue init needs a run selector, e.g. "
                                "{alpha: 1.0, init: random, algorithm: fedavg}")
                continue
            for i, d, m in used:
                if i != label:
                    continue
                try:
                    continue_source(config, runs, d, m, label)
                except ConfigError as exc:
                    problems.append(str(exc))
    if not problems:
        problems.extend(_continue_cycles(config, runs, used))
    return problems


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
