"""Torch-free shape of a train job's settings (`fedscape.core.jobs`): what `fedscape.plan.train` plans and
`fedscape.stages.train.train_job` reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedscape.core.jobs import JobSettings
from fedscape.fl.hparams.registry import without_default_hyperparameters
from fedscape.fl.settings import NEUTRAL_TRAINING_KEYS, TrainConfig, TrainingSettings


@dataclass(frozen=True, kw_only=True)
class TrainJob(JobSettings):
    """One federated run: the run, its dataset's options, its algorithm with its hyperparameters and its training."""

    rule = "train"
    # how many clients train at once, and how (the memory a round takes), the evaluation's batch size, and whether
    # steps are replayed from CUDA graphs
    neutral = tuple(f"training.{key}" for key in NEUTRAL_TRAINING_KEYS)
    run: dict  # the run's fields (`core.runs.Run.fields`), as its wildcards give them
    run_id: str
    dataset_options: dict  # the config's `datasets.<dataset>` entry
    algorithm: str  # the algorithm's registry name (`fl.hparams`)
    hyperparameters: dict  # the algorithm label's hyperparameters (its entry less name and training)
    training: TrainingSettings

    @classmethod
    def meaning(cls, settings: Mapping[str, Any]) -> dict:
        """`JobSettings.meaning`, the hyperparameters written at the algorithm's defaults left out (the algorithm
        label's entry as given: `{name: fedprox, mu: 0.0001}` is FedProx at its default mu)."""
        out = super().meaning(settings)
        hyperparameters, algorithm = out.get("hyperparameters"), out.get("algorithm")
        if isinstance(hyperparameters, Mapping) and isinstance(algorithm, str):
            out["hyperparameters"] = without_default_hyperparameters(algorithm, dict(hyperparameters))
        return out

    def train_config(self) -> TrainConfig:
        """The run's TrainConfig: its training with the run's seed and participation and the dataset's
        augmentation."""
        return self.training.train_config(augment=self.dataset_options.get("augment", "none"), seed=self.run["seed"],
                                          participation=float(self.run["participation"]))
