"""One run's partition, init and train jobs called in-process, as the workflow would run them."""

from __future__ import annotations

from pathlib import Path

from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import Run
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job


def train_run(config: dict, runs: list[Run], run: Run, directory: Path) -> tuple[Path, Path, dict[str, str]]:
    """Partition, init and train `run` of a checked config into `directory`: (partition file, init file, the train
    job's outputs by name)."""
    partition, init = directory / "partition.npz", directory / "init.pt"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  directory / "counts.csv")
    init_job(init_settings(config, runs, run.dataset, run.model, run.init), init)
    outputs = {name: str(directory / file) for name, file in TRAIN_FILE_NAMES.items()}
    train_job(train_settings(config, run), partition, init, outputs, directory / "_progress")
    return partition, init, outputs
