"""What every algorithm declares (`AlgorithmSpec`), and the server step they all share (`ServerSGDConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedscape.data.specs import TARGETS
from fedscape.models.specs import MODEL_NAMES, model_info


class AlgorithmConfig:
    """What every algorithm's hyperparameter dataclass answers besides its fields."""

    def model_options(self) -> dict:
        """Options the algorithm adds to the model it trains (`fedscape.models.registry.build_model`), so that
        its trajectory rebuilds as trained; {} for all but MOON with the classifier on its projection head."""
        return {}

    def training_problem(self, training: dict) -> str | None:
        """Why the algorithm with these hyperparameters cannot train with the (resolved) `training` settings; None:
        it can. What holds for every setting of the algorithm is `AlgorithmSpec.check_training`'s."""
        return None

    def stacked_problem(self, model: str, model_options: dict, training: dict) -> str | None:
        """What the algorithm with these hyperparameters needs that vectorised local training of ``model`` (with
        ``model_options`` and the resolved ``training``) lacks, so that its clients train one after another; None:
        nothing (an algorithm without any vectorised form says so in `AlgorithmSpec.sequential_only`). Planning
        reads it without torch; the strategy's `stacked_blocker` says the same of the built model."""
        return None

    def client_state_models(self) -> int:
        """How many vectors of its init model's size the algorithm with these hyperparameters keeps for each client
        between rounds (`fedscape.fl.state_sizes`, which a train job's host memory counts): 0 for all but those with
        client state (SCAFFOLD's control variates, FedDyn's corrections, MOON's previous models)."""
        return 0

    def result_bumps(self, model: str, model_options: dict, training: dict) -> int:
        """The result version bumps of the runs of these hyperparameters on `model` (with `model_options`) and the
        resolved `training` settings beyond their kind's (`fedscape.plan.train.RESULT_VERSIONS`): each a fix that
        changed only such runs' numbers, so that only they rerun. 0 for all but those."""
        return 0


def refuse_out_of_range(config, **ranges: tuple[bool, str]) -> None:
    """ValueError naming each hyperparameter of `config` out of its range, as "<key> must be <range>, got <value>"
    (`ranges`: key -> (whether its value is refused, the valid range in words)): one problem per bad key, all of
    them at once, so that a config's refusal (prefixed "algorithms.<label>: ") names what to change.

    A NaN is refused whatever its flag: it compares false with every bound, so that a check such as `mu < 0` passes
    it, and a run would train on NaN losses. So is an infinity, as "<key> must be a finite number, got inf": it passes
    every lower bound, and FedAdam's tau=inf, say, freezes the global model silently. (The workflow's config check
    refuses both before, `core.config.non_finite`; this refuses them where the library is called directly.)"""
    problems = []
    for key, (refused, valid) in ranges.items():
        value = getattr(config, key)
        if isinstance(value, float) and math.isinf(value):
            problems.append(f"{key} must be a finite number, got {value}")
        elif refused or (isinstance(value, float) and math.isnan(value)):
            problems.append(f"{key} must be {valid}, got {value}")
    if problems:
        raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ServerSGDConfig(AlgorithmConfig):
    """Server SGD; lr 1 and momentum 0 is exactly FedAvg's model averaging."""

    server_lr: float = 1.0  # McMahan et al. 2017: the new global model is the weighted mean
    server_momentum: float = 0.0  # FedAvgM (Hsu et al. 2019) uses 0.9

    def __post_init__(self):
        # lr 0 never moves the global model (a run of identical rounds), a negative one climbs the loss, and
        # momentum 1 or more never lets a step's weight decay.
        refuse_out_of_range(self, server_lr=(self.server_lr <= 0, "positive"),
                            server_momentum=(not 0 <= self.server_momentum < 1, "in [0, 1)"))


def own_passes(how: str) -> str:
    """Why a sequential client's objective that calls the model in its own way (`how`: its `local_backward` or
    `local_loss`) is not replayed from CUDA graphs: the check at capture compares one plain pass (model(x), its
    cross-entropy back-propagated), not the strategy's own passes. (FedSAM's two plain passes a step are checked by
    tests/unit/test_capture.py, and captured.)"""
    return (f"local objective calls the model in its own way ({how}), which the check at capture (one plain pass) "
            "does not cover")


@dataclass(frozen=True)
class AlgorithmSpec:
    """What planning knows about an algorithm without torch: hyperparameters, model needs, strategy."""

    name: str  # the `name` of an `algorithms` entry in the config
    config: type  # frozen dataclass of the hyperparameters; its defaults cite their sources
    strategy: str  # "module:Class" of the strategy below fedscape.fl.strategies
    display: str  # the name as its paper writes it (figure legends)
    paper: str
    requires: str | None = None  # the ModelInfo flag a model needs (e.g. "residual"); None = every model
    # Why the algorithm needs a fresh local optimiser every round (training.keep_optimizer_state refused); None: it
    # does not.
    fresh_optimizer: str | None = None
    # Why the algorithm's maths reads the local steps as SGD steps (training.optimizer: adamw refused); None: any
    # local optimiser.
    sgd_only: str | None = None
    # Why the algorithm's maths needs one prediction per sample, so that it refuses a sequence task (a data set's
    # `targets: every`, fedscape.models.loss); None: its loss is the mean cross-entropy, which counts per position.
    per_sample: str | None = None
    # What in its local steps a stacked (vectorised) client step does not compute, so that its clients train one
    # after another (client_parallel: vectorized refused at planning); None: it vectorises. The strategy class's
    # `vectorized` says the same (tests/unit/test_registry.py keeps them in step).
    sequential_only: str | None = None
    # Why CUDA graphs never replay its clients' local steps, by the path they train on ("sequential" or "vectorized",
    # `client_parallel` resolved): words after "<algorithm>'s" (`own_passes` for a sequential objective that runs the
    # model its own way). A path not named is captured where the check at capture finds the replay exact. Planning
    # refuses `capture: cuda_graph` for such a run and the trainers read the same (`fl.settings.uncaptured_steps`);
    # tests/unit/test_capture_planning.py checks every strategy's steps against it.
    uncaptured: tuple[tuple[str, str], ...] = ()

    def check_training(self, training: dict) -> None:
        """ValueError when the algorithm cannot train with these (resolved) `training` settings."""
        if training.get("keep_optimizer_state") and self.fresh_optimizer:
            raise ValueError(f"{self.name} cannot keep the clients' optimiser state between rounds "
                             f"(training.keep_optimizer_state): {self.fresh_optimizer}")
        optimizer = training.get("optimizer", "sgd")
        if optimizer != "sgd" and self.sgd_only:
            raise ValueError(f"{self.name} trains its clients with sgd only (training.optimizer: {optimizer}): "
                             f"{self.sgd_only}")

    def check_targets(self, targets: str, where: str) -> None:
        """ValueError when the algorithm cannot train on targets `targets` (`fedscape.data.specs.TARGETS`) of the
        data set named by `where`."""
        if targets != TARGETS[0] and self.per_sample:
            raise ValueError(f"{self.name} cannot train a model predicting every position ({where}: {targets}): "
                             f"{self.per_sample}; use {where}: {TARGETS[0]} where the data set has it, or another "
                             f"algorithm")

    def check_model(self, model: str) -> None:
        """ValueError when the algorithm cannot train `model` (e.g. StochDepth on a plain CNN)."""
        if self.requires is None or getattr(model_info(model), self.requires):
            return
        what = self.requires.replace("_", "-")
        fitting = ", ".join(n for n in MODEL_NAMES if getattr(model_info(n), self.requires))
        raise ValueError(f"{self.name} needs a {what} model; {model} is not {what} ({what} models: {fitting})")
