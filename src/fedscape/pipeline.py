"""Stage functions behind the workflow's scripts: plain arguments in, files out (written atomically)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedscape.checkpoint import ModelMeta, load_trajectory, save_clients, save_trajectory
from fedscape.partition import load_partition, make_partition, parse_alpha, save_partition
from fedscape.plan import digest
from fedscape.utils import atomic_path

log = logging.getLogger("fedscape")

ROUNDS_COLUMNS = ["run_id", "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation",
                  "seed", "round", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "peak_mem_mb",
                  "status"]


def setup_logging(path: str | Path | None, threads: int | None = None) -> None:
    """Log to a file (the rule's log) and to stderr, with timestamps; use `threads` CPU threads.

    Capping torch's threads at the job's Snakemake `threads` keeps parallel jobs from
    oversubscribing the cores (small models slow down many times over when they do).
    """
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="a"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available on this node")
    return device


def load_dataset_for(dataset: str, options: dict):
    from fedscape.data import load_dataset

    return load_dataset(dataset, data_dir=options.get("data_dir"), seed=options.get("split_seed", 0),
                        test_fraction=options.get("test_fraction", 0.25),
                        proxy_fraction=options.get("proxy_fraction", 0.0), download=options.get("download", False))


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def alpha_value(alpha: str) -> float:
    """Numeric alpha for tables: inf for IID."""
    return parse_alpha(alpha)


# -- partition -------------------------------------------------------------------------------------
def partition_stage(settings: dict, out_npz: str | Path, out_csv: str | Path) -> None:
    """Split the dataset's training pool among the clients and write the partition and its counts."""
    ds = load_dataset_for(settings["dataset"], settings["dataset_options"])
    labels = ds.y_train.numpy()
    alpha = parse_alpha(settings["alpha"])
    part = make_partition(labels, settings["num_clients"], alpha, settings["seed"], settings["min_size"],
                          settings["max_tries"])
    save_partition(out_npz, part, labels, ds.num_classes, {"dataset": settings["dataset"]})
    counts = part.class_counts(labels, ds.num_classes)
    df = pd.DataFrame({"dataset": settings["dataset"], "alpha": alpha, "num_clients": part.num_clients,
                       "seed": settings["seed"], "client_id": np.arange(part.num_clients),
                       "num_samples": part.sizes})
    for k in range(ds.num_classes):
        df[f"class_{k}"] = counts[:, k]
    write_csv(df, out_csv)
    log.info("partition %s alpha=%s clients=%d seed=%d: sizes min=%d max=%d", settings["dataset"],
             settings["alpha"], part.num_clients, settings["seed"], part.sizes.min(), part.sizes.max())


# -- init ------------------------------------------------------------------------------------------
def model_meta_for(settings: dict, model: torch.nn.Module) -> ModelMeta:
    return ModelMeta(
        model=settings["model"], num_classes=settings["num_classes"], in_channels=settings["in_channels"],
        image_size=settings["image_size"], model_options=dict(settings.get("model_options", {})),
        param_names=tuple(n for n, _ in model.named_parameters()),
        param_shapes=tuple(tuple(p.shape) for p in model.parameters()),
    )


def init_stage(settings: dict, out: str | Path, inputs: dict | None = None,
               progress_dir: str | Path | None = None) -> None:
    """Make the initial model of an init label as a one-row trajectory (kinds: fedscape.inits)."""
    from fedscape.inits import make_init

    make_init(settings, out, inputs, progress_dir)


# -- train -----------------------------------------------------------------------------------------
def train_stage(settings: dict, partition_path: str | Path, init_path: str | Path, outputs: dict[str, str],
                progress_dir: str | Path) -> None:
    """Run one federated training job and write trajectory.pt, clients.pt, metrics.csv and meta.json.

    Progress is kept in `progress_dir` (not a declared output, so Snakemake does not delete it when
    a job is killed) and removed once the outputs are written.
    """
    from fedscape.fl.engine import TrainConfig, run_federated
    from fedscape.fl.strategy import make_strategy

    run, training = settings["run"], dict(settings["training"])
    device = resolve_device(training.pop("device", "auto"))
    cfg = TrainConfig(**{**training, "save_clients_at": tuple(training.get("save_clients_at", ())),
                         "augment": settings["dataset_options"].get("augment", "none"), "seed": run["seed"],
                         "participation": float(run["participation"])})  # the run's sampled fraction per round
    data, _ = load_run_data(settings, partition_path, device)
    init = load_trajectory(init_path)
    model = init.model_at(0, device).train()
    strategy = make_strategy(settings["algorithm"], settings["hyperparameters"])
    log.info("run %s on %s: %d clients, %d rounds x %d local epochs, algorithm %s", settings["run_id"], device,
             data.num_clients, cfg.rounds, cfg.local_epochs, settings["algorithm"])
    result = run_federated(model, data, strategy, cfg, progress_dir=progress_dir, progress_key=digest(settings))

    from fedscape.fl.cost import device_name  # issue 3: cost.csv names the device

    meta = {"run_id": settings["run_id"], "settings": settings, "status": result.status, "device": str(device),
            "device_name": device_name(device), "seed": run["seed"], "init_seed": init.meta.get("seed"),
            "final_round": int(result.rounds.max())}
    save_trajectory(outputs["trajectory"], result.params, result.buffers, result.rounds, init.model_meta, meta)
    save_clients(outputs["clients"], result.clients, init.model_meta, meta)
    rows = pd.DataFrame(result.rows)
    for key in ("dataset", "model", "init", "algorithm", "num_clients", "seed"):
        rows[key] = run[key]
    rows["run_id"] = settings["run_id"]
    rows["alpha"] = alpha_value(run["alpha"])
    rows["participation"] = float(run["participation"])
    write_csv(rows[ROUNDS_COLUMNS], outputs["metrics"])
    if "client_updates" in outputs:  # issue 5: client-update statistics of every round
        from fedscape.client_stats import CLIENT_UPDATES_COLUMNS

        updates = pd.DataFrame(result.client_stats, columns=CLIENT_UPDATES_COLUMNS[1:])
        updates.insert(0, "run_id", settings["run_id"])
        write_csv(updates, outputs["client_updates"])
    with atomic_path(outputs["meta"]) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(progress_dir, ignore_errors=True)
    final = result.rows[-1]
    log.info("done: status=%s final test_acc=%.4f", result.status, final["test_acc"])


# -- tables ----------------------------------------------------------------------------------------
def concat_tables(inputs: list[str | Path], output: str | Path, columns: list[str] | None = None) -> None:
    """Concatenate per-job CSVs into one table (columns kept in order)."""
    frames = [pd.read_csv(p) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])
    if columns is not None:
        df = df[columns]
    write_csv(df, output)



def load_run_data(settings: dict, partition_path: str | Path, device: torch.device | str = "cpu"):
    """(FederatedData, Dataset) of a run from its train settings and partition file, on `device`."""
    from fedscape.fl.engine import FederatedData

    run = settings["run"]
    ds = load_dataset_for(run["dataset"], settings["dataset_options"])
    part = load_partition(partition_path, ds.y_train.numpy())
    data = FederatedData(
        x_train=ds.x_train.to(device), y_train=ds.y_train.to(device),
        client_indices=[torch.as_tensor(ix, device=device) for ix in part.client_indices],
        x_test=ds.x_test.to(device), y_test=ds.y_test.to(device),
    )
    return data, ds
