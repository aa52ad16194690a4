"""Torch-free round settings of federated training: TrainConfig, the clients sampled each round, and
the metrics every round reports (the columns of metrics.csv after the run fields).

Planning (config checks, which clients a layer-wise pair can compare) reads these without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from fedscape.core.jobs import JobSettings
from fedscape.core.names import nearest_text
from fedscape.core.runs import RUN_FIELDS
from fedscape.core.seeds import derive_seed
from fedscape.fl.hparams.registry import ALGORITHM_SPECS
from fedscape.fl.schedule import (
    BATCH_SAMPLINGS,
    DEFAULT_LOCAL_EPOCHS,
    LR_SCHEDULE_OVER,
    LR_SCHEDULES,
    OPTIMIZERS,
    UniformWork,
    Work,
    most_work,
    parse_work,
    step_lrs,
    work_amounts,
    work_text,
)
from fedscape.fl.swa import SWAConfig, SWASettings
from fedscape.models.specs import DEFAULT_PRECISION, EVAL_BATCH_SIZE, check_precision

CLIENT_PARALLEL = ("auto", "sequential", "vectorized")
# How local steps run (fedscape.fl.capture): "auto" replays a sequential client's forward and backward passes, and a
# vectorised chunk's whole SGD steps of a recurring shape, from CUDA graphs on a CUDA device wherever the replay is
# checked equal to the eager step, else eagerly; "eager" always eagerly; "cuda_graph" insists (an error where it
# cannot be captured, or is not exact).
CAPTURE_MODES = ("auto", "eager", "cuda_graph")
# The local steps that CUDA graphs never replay, by the strategy class that takes them ("module:Class" below
# fedscape.fl.strategies, as `AlgorithmSpec.strategy` names it: `strategy_ref`) and by the path its clients train on
# ("sequential" or "vectorized", `client_parallel` resolved): why, in words after "<algorithm>'s", as each algorithm
# declares it (`AlgorithmSpec.uncaptured`). A strategy or path not named here is captured where the check at capture
# finds the replay exact. The one declaration both sides read: planning (torch-free: `plan.train` refuses
# `capture: cuda_graph` for such a run before any job) and the trainers (`fl.capture.capture_blocker`,
# `fl.vectorized.VectorizedTrainer`), so that a config planning passes is never refused by its train job for this;
# tests/unit/test_capture_planning.py checks every registered strategy's steps against it.
UNCAPTURED_STEPS: dict[str, dict[str, str]] = {spec.strategy: dict(spec.uncaptured)
                                               for spec in ALGORITHM_SPECS.values() if spec.uncaptured}
# What the vectorised trainer's stacked AdamW step lacks for a CUDA graph, whatever the algorithm.
UNCAPTURED_STACKED_ADAMW = "the stacked AdamW step is not captured (its step count changes every step)"
ADAMW_KEYS = ("adamw_beta1", "adamw_beta2", "adamw_eps")  # the options only optimizer adamw reads
# The training keys that bound a run's device memory and change how its rounds compute, not what: which clients train
# together and how many (vectorised and sequential training agree to float rounding, tests/unit/test_vectorized.py),
# and the evaluation's batch size. A killed run resumes its saved rounds across a change of them
# (`stages.progress.resume_settings`), so that one out of device memory continues where it stopped once its memory hint
# is followed (plan.resources.RULE_NEEDS names them to such a job).
MEMORY_KEYS = ("client_chunk_size", "client_parallel", "eval_batch_size")
# What each attempt of a run (a call that trained rounds: resumed after a kill, it may be on another device) records
# of where and how precisely it computed (`fedscape.models.device.describe_compute`'s keys), beside its memory keys
# and its `execution`; results/tables/cost.csv times each attempt's rounds under its own. Its torch too: a run resumed
# after an upgrade of torch trained its first rounds by another torch than the one its job's record names (`software`).
ATTEMPT_COMPUTE = ("device", "device_name", "device_uuid", "precision_used", "torch")
# The training keys that change how a run's steps execute and not what they compute, so that changing them reruns no
# finished run or warm-up (their jobs' `JobSettings.neutral`): the memory keys, and `capture`, since a step replayed
# from a CUDA graph is checked at capture to agree with the eager step to float rounding (fedscape.fl.capture) and a
# CPU never captures. Capture also holds device memory (its graphs' pools), so a train job out of memory names it too
# (plan.resources.RULE_NEEDS).
NEUTRAL_TRAINING_KEYS = (*MEMORY_KEYS, "capture")
# Keys of how often a run evaluates and keeps its global model. save_every changes no model; eval_every none of a run
# that does not diverge, and a run that does stops where it does with eval_every 1 wherever its clients' local
# training loss shows the explosion, as an exploding run's does (fl.engine evaluates such a round, and the model its
# clients started from, whatever the cadence). An IID warm-up init (which evaluates every round and keeps its last
# model) leaves them at their baselines (out of its settings).
RUN_ONLY_TRAINING_KEYS = ("eval_every", "save_every")
# What the engine measures after every evaluated round (`TrainConfig.evaluates`; round 0 = the initial model);
# `status` is ok or diverged.
ROUND_METRICS = ("round", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "peak_mem_mb", "status")
NUMERIC_ROUND_METRICS = tuple(m for m in ROUND_METRICS if m != "status")  # numbers (NaN where a run diverged)
# Client-update statistics the engine computes every round (fedscape.fl.client_stats), and the columns of
# a run's client_updates.csv.
STAT_KEYS: tuple[str, ...] = ("drift_from_start", "drift_from_aggregate", "gradient_diversity", "update_cosine_mean")
CLIENT_UPDATES_COLUMNS = ["run_id", "round", "num_clients", *STAT_KEYS]
# Columns of a run's metrics.csv and of results/tables/rounds.csv: the run, then one row per evaluated round.
ROUNDS_COLUMNS = ["run_id", *RUN_FIELDS, *ROUND_METRICS]
# The last column of a run's metrics.csv (after the SWA model's metrics, where there are some), of rounds.csv and of
# final.csv: the fedscape commit that trained the run (`core.manifest.code_version_label`), empty in the rows of runs
# trained before it was recorded. Rows from two fedscape versions in one table are told apart by it.
CODE_VERSION = "code_version"
# A round whose global model has a training loss above this (or not finite) marks the run diverged: training
# stops there and every statistic over seeds leaves the run out from that round on. 1e3 nats of cross-entropy
# put a probability below e^-1000 on the true class on average: no model that is still learning gets there,
# while an exploding run passes it within a round or two (a run at lr 5.0 reached 2.3e19).
DIVERGED_LOSS = 1e3
_SAMPLING_STREAM = 0x5A  # keeps client sampling independent of the clients' own random streams


@dataclass(frozen=True)
class TrainConfig:
    """Round and local-training settings shared by every algorithm.

    Defaults are the pilot study's (Li et al., Sec. 3): 100 rounds x 5 local epochs of SGD with
    lr 0.01 and batch size 16, full participation.
    """

    rounds: int = 100
    # Local work per round (fedscape.fl.schedule.parse_work): epochs or minibatch steps, one of the two; an
    # integer, one per client (a list) or a seeded uniform draw. Neither given: DEFAULT_LOCAL_EPOCHS epochs.
    local_epochs: int | tuple[int, ...] | UniformWork | None = None
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.0  # the pilot study uses plain SGD; FedAlign uses 0.9
    # Nesterov momentum (Sutskever et al. 2013, torch.optim.SGD's form): the FedAlign code's client SGD uses it.
    nesterov: bool = False
    # Drop each pass's last, smaller batch, as torch's DataLoader(drop_last=True) of the FedAlign code's client
    # loaders (data_preprocessing/data_loader.py) does; a client smaller than one batch keeps its one batch.
    drop_last: bool = False
    # How each step's batch is drawn (fedscape.fl.schedule.BATCH_SAMPLINGS): shuffled passes, or with replacement
    # per step as the layer-wise LMC authors' GPT training draws its windows.
    batch_sampling: str = "shuffle"
    weight_decay: float = 0.0
    participation: float = 1.0  # fraction of clients sampled each round (pilot study Fig. 7: 0.2/0.5/0.8)
    save_clients_at: tuple[int, ...] = ()  # rounds whose client models are kept (local scope, layer-wise LMC)
    augment: str = "none"  # "crop_flip" for CIFAR
    eval_batch_size: int = EVAL_BATCH_SIZE
    seed: int = 0  # client sampling and every client's batch order derive from it
    # How the clients of a round are trained (fedscape.fl.vectorized): "auto" trains them all at once
    # whenever that is exact (an algorithm with vectorised local training; batch norm only in a model's
    # stacked forward) and, on a CPU, measured faster; else one after another; "sequential" always one
    # after another; "vectorized" insists.
    client_parallel: str = "auto"
    client_chunk_size: int = 64  # clients trained together at most (bounds memory); 0 = all sampled clients
    # How local steps are taken (CAPTURE_MODES), one client after another or stacked. "auto": at the papers' batch
    # sizes a GPU step is bound by kernel launches (a resnet20 step: ~8 ms for ~1 ms of arithmetic on an H100), which
    # a CUDA graph replays in one launch; the replay runs the eager step's kernels, so it is taken only where a check
    # at capture finds it equal to the eager step (fedscape.fl.capture), and results do not depend on it.
    capture: str = "auto"
    # The float32 precision of the run's computations (fedscape.models.device.use_precision): fp32, tf32 (CUDA) or
    # bf16 autocast. fp32 on every device by default: at the pilot's batch sizes (16-32) a step is bound by kernel
    # launches, not by FLOPs, so TF32 buys little there, while it moved vectorised against sequential CUDA rounds
    # by 1.3e-2 (against ~1e-7 in fp32) and would make a GPU run's trajectory differ from a CPU run's.
    precision: str = DEFAULT_PRECISION
    # Each client's local SGD momentum (or AdamW state) carries over from the last round it took part in, instead of a
    # fresh optimiser every round. With one client holding all data this is centralised training with
    # a checkpoint every `local_epochs` epochs (the layer-wise paper's centralised runs, Adilova et al.).
    keep_optimizer_state: bool = False
    # Exactly this many minibatch steps per round (the Meta poster's "number of local updates"), cycling
    # through seeded shuffles of the client's data; instead of local_epochs.
    local_steps: int | tuple[int, ...] | UniformWork | None = None
    # The clients' local optimiser: "sgd" (torch.optim.SGD with momentum and coupled weight decay) or "adamw"
    # (torch.optim.AdamW, Loshchilov & Hutter 2019: weight_decay is then decoupled from the gradient).
    optimizer: str = "sgd"
    adamw_beta1: float = 0.9  # Kingma & Ba 2015 and torch.optim.AdamW's default
    adamw_beta2: float = 0.999  # Kingma & Ba 2015 and torch.optim.AdamW's default
    adamw_eps: float = 1e-8  # Kingma & Ba 2015 and torch.optim.AdamW's default
    # Learning rate of each local step (fedscape.fl.schedule.step_lrs): constant or cosine decay after a linear
    # warm-up of lr_warmup units, over each round's local steps or over the run's rounds.
    lr_schedule: str = "constant"
    lr_schedule_over: str = "rounds"
    lr_warmup: float = 0.0
    # The global model is evaluated (a row of metrics.csv) every `eval_every` rounds, at round 0 and at the last
    # round: Caldarola et al. 2022 evaluate every 100 of their 10,000 rounds (--eval-every 100 in their script), where
    # evaluating on the full training and test sets every round would cost more than the round's local work.
    eval_every: int = 1
    # The global model is kept (a row of trajectory.pt) every `save_every` rounds and at the rounds `kept_rounds`
    # adds: every round's model of a convnet is 0.9 MB, 9.3 GB a run at Caldarola et al.'s 10,000 rounds.
    save_every: int = 1

    def __post_init__(self):
        self._check_local_training()
        check_precision(self.precision)
        if self.client_parallel not in CLIENT_PARALLEL:
            raise ValueError(f"client_parallel must be auto, sequential or vectorized, got {self.client_parallel!r}")
        if self.capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {', '.join(CAPTURE_MODES)}, got {self.capture!r}")
        if self.client_chunk_size < 0:
            raise ValueError(f"client_chunk_size must be >= 0, got {self.client_chunk_size}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        for key in ("eval_every", "save_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1 (1 = every round), got {value!r}")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {self.participation}")
        bad = [r for r in self.save_clients_at if not 1 <= r <= self.rounds]
        if bad:
            raise ValueError(f"save_clients_at has rounds {bad} outside 1..{self.rounds}")

    def _check_local_training(self) -> None:
        """Parse the local work and check the optimiser and schedule keys (errors name the key)."""
        epochs, steps = parse_work("local_epochs", self.local_epochs), parse_work("local_steps", self.local_steps)
        if epochs is not None and steps is not None:
            raise ValueError(f"local_epochs ({self.local_epochs}) and local_steps ({self.local_steps}) are both "
                             "given: a client's local work is counted in one of them; remove one")
        if epochs is None and steps is None:
            epochs = DEFAULT_LOCAL_EPOCHS
        object.__setattr__(self, "local_epochs", epochs)
        object.__setattr__(self, "local_steps", steps)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        # the schema's bounds of these keys (workflow/schemas/config.schema.yaml, whose check refuses every non-finite
        # number too), for callers of the library: a batch size of 0 would fail deep in the batching, an lr of inf
        # or NaN train a diverging run
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.batch_sampling not in BATCH_SAMPLINGS:
            raise ValueError(f"batch_sampling must be one of {', '.join(BATCH_SAMPLINGS)}, got "
                             f"{self.batch_sampling!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError(f"nesterov needs optimizer sgd with a momentum > 0 (torch.optim.SGD's rule), got "
                             f"optimizer {self.optimizer} with momentum {self.momentum}: set momentum (e.g. 0.9) "
                             "or nesterov: false")
        if not (0 <= self.adamw_beta1 < 1 and 0 <= self.adamw_beta2 < 1) or self.adamw_eps <= 0:
            raise ValueError(f"adamw_beta1 and adamw_beta2 must be in [0, 1) and adamw_eps > 0, got "
                             f"{self.adamw_beta1}, {self.adamw_beta2} and {self.adamw_eps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule_over not in LR_SCHEDULE_OVER:
            raise ValueError(f"lr_schedule_over must be one of {', '.join(LR_SCHEDULE_OVER)}, "
                             f"got {self.lr_schedule_over!r}")
        if self.lr_warmup < 0:
            raise ValueError(f"lr_warmup must be >= 0, got {self.lr_warmup}")
        if self.lr_schedule_over == "rounds" and self.lr_warmup >= self.rounds and self.lr_schedule == "cosine":
            raise ValueError(f"lr_warmup ({self.lr_warmup} rounds) leaves no round of the {self.rounds} for the "
                             "cosine decay: make it smaller than rounds")

    def warmup_problem(self, over_rounds: bool = True) -> str | None:
        """Why a run's lr warm-up is longer than what it warms up over (its rounds, or a round's local steps where
        those are given), so that no step takes the full lr, or as long under a cosine schedule, so that none decays;
        None where it is not. The step that ends at lr_warmup takes the full lr and the decay starts after it
        (`schedule.lr_factor`). Not a check of every TrainConfig: an IID warm-up init inherits the runs' schedule over
        its own few rounds, and is warned about instead (`plan.init`): it is checked without `over_rounds`."""
        if self.lr_schedule_over == "rounds":
            if not over_rounds:
                return None
            unit, length = "rounds", self.rounds
        elif self.local_steps is not None:  # (over local epochs the steps follow each client's data: not known here)
            unit, length = "local steps (a round's most)", most_work(self.local_steps)
        else:
            return None
        if self.lr_warmup == 0 or self.lr_warmup < length or self.lr_warmup == length and self.lr_schedule != "cosine":
            return None
        what = "no step takes the full lr" if self.lr_warmup > length else "it leaves no step for the cosine decay"
        return (f"lr_warmup ({self.lr_warmup}) is not shorter than the {length} {unit} it warms up over: {what}; "
                "make it smaller")

    def evaluates(self, round_: int) -> bool:
        """Whether the global model of `round_` is evaluated: round 0, every `eval_every`-th round and the last."""
        return round_ % self.eval_every == 0 or round_ == self.rounds

    def kept_rounds(self, swa: SWAConfig | None = None) -> tuple[int, ...]:
        """The rounds whose global models the run keeps, sorted: round 0, every `save_every`-th round, the last round,
        the cycle ends of server-side SWA (the models its average is made of), and each round of `save_clients_at`
        with the round before it (the local scope and the client statistics go from the model after round t - 1
        to the clients' models of round t). A run that diverges also keeps the round where it stopped."""
        kept = {0, self.rounds, *range(self.save_every, self.rounds + 1, self.save_every)}
        kept.update(r for c in self.save_clients_at for r in (c - 1, c))
        if swa is not None:
            kept.update(t for t in range(swa.start(self.rounds), self.rounds + 1) if swa.averages_after(t, self.rounds))
        return tuple(sorted(kept))

    def unkept_round(self, round_: int, swa: SWAConfig | None = None) -> str | None:
        """Why the global model of `round_` will not be kept (`kept_rounds`) with the nearest kept rounds, or None."""
        if self.save_every == 1 or not 0 <= round_ <= self.rounds:
            return None
        kept = self.kept_rounds(swa)
        if round_ in kept:
            return None
        return (f"round {round_} is not kept: training.save_every {self.save_every} keeps the global models of rounds "
                f"{nearest_text(kept, round_)}; name a kept round, add {round_} to training.save_clients_at, or make "
                f"save_every a divisor of {round_}")

    def ignored_optimizer_options(self) -> str | None:
        """What the chosen local optimiser would silently ignore, in words with the fix; None when nothing.

        SGD reads no adamw_* option, and AdamW has no SGD momentum (`local_train` and the vectorised step give it
        none): a value set for the other optimiser would otherwise change nothing while the config says it does.
        """
        defaults = {f.name: f.default for f in fields(self)}
        if self.optimizer == "adamw":
            if self.momentum == 0:
                return None
            return (f"momentum {self.momentum} is ignored by optimizer adamw (AdamW has no SGD momentum: its moments "
                    "are adamw_beta1 and adamw_beta2): set momentum: 0, or optimizer: sgd")
        changed = [k for k in ADAMW_KEYS if getattr(self, k) != defaults[k]]
        if not changed:
            return None
        values = " and ".join(f"{k} {getattr(self, k)}" for k in changed)
        back = ", ".join(f"{k}: {defaults[k]}" for k in changed)
        return (f"{values} {'is' if len(changed) == 1 else 'are'} ignored by optimizer {self.optimizer} (only adamw "
                f"reads {', '.join(ADAMW_KEYS[:-1])} and {ADAMW_KEYS[-1]}): set optimizer: adamw, or {back} (the "
                f"default{'s' if len(changed) > 1 else ''})")

    @property
    def work_unit(self) -> str:
        """'epochs' or 'steps': what a client's local work per round counts."""
        return "steps" if self.local_steps is not None else "epochs"

    @property
    def work(self) -> Work:
        """The local work per round in `work_unit` (an integer, one per client, or a draw)."""
        return self.local_steps if self.local_steps is not None else self.local_epochs

    @property
    def equal_work(self) -> bool:
        """Whether every client does the same local work every round."""
        return isinstance(self.work, int)

    def work_text(self) -> str:
        """The local work per round as text ('5 epochs', 'steps uniform in 1..5, drawn every round')."""
        return work_text(self.work_unit, self.work)

    def client_work(self, round_: int, num_clients: int) -> list[int]:
        """Every client's local work (in `work_unit`) in round `round_`."""
        return work_amounts(self.work, self.seed, round_, num_clients)

    def step_lrs(self, round_: int, num_steps: int) -> list[float]:
        """The learning rate of each of a client's `num_steps` local steps in round `round_`."""
        return step_lrs(self.lr, self.lr_schedule, self.lr_schedule_over, self.lr_warmup, self.rounds, round_,
                        num_steps)


@dataclass(frozen=True, kw_only=True)
class TrainingSettings(JobSettings):
    """The `training` settings of a train job (and of an IID warm-up init's `warmup_training`): the config's
    `training` section with the algorithm's overrides, as the job's settings carry it (`fedscape.core.jobs`).

    The fields without a default are the keys of the first results; every later key's default is its baseline, the
    behaviour of every run before the key existed, so `to_settings` leaves it out there and finished runs keep their
    settings (tests/unit/test_job_contracts.py and test_settings_baselines.py record the baselines: a new field needs
    a default, equal to its baseline).

    Why beside TrainConfig and not TrainConfig itself: TrainConfig's defaults are the pilot study's, a convenience for
    library callers and tests that may change with the config's; a baseline never changes. TrainConfig also holds the
    run's own fields (seed, participation, the dataset's augmentation), which are not training settings, and the job
    holds keys TrainConfig has not (device, bf16_autocast, swa). So the job's shape is declared here once and
    `train_config` is the one place a TrainConfig is made from it (or from a config's `training`: `of`).
    """

    rule = "train"
    # The keys of the first results: written in every job's settings.
    rounds: int
    local_epochs: int | list | dict | None  # None where local_steps counts the work (fedscape.fl.schedule)
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    save_clients_at: tuple[int, ...]
    eval_batch_size: int
    device: str
    client_parallel: str
    client_chunk_size: int
    # Replaced by `precision: bf16`; only its default, false, is accepted, and it stays in the settings of every train
    # job, so that finished runs keep theirs.
    bf16_autocast: bool
    # Later keys, each at its baseline.
    keep_optimizer_state: bool = False
    local_steps: int | list | dict | None = None
    optimizer: str = "sgd"
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999
    adamw_eps: float = 1e-8
    lr_schedule: str = "constant"
    lr_schedule_over: str = "rounds"
    lr_warmup: float = 0.0
    precision: str = "fp32"
    eval_every: int = 1
    save_every: int = 1
    nesterov: bool = False
    drop_last: bool = False
    batch_sampling: str = "shuffle"
    capture: str = "auto"
    swa: SWASettings | None = None  # the train job's server-side SWA (fedscape.fl.swa), None without

    def __post_init__(self):
        check_precision(self.precision)

    @classmethod
    def of(cls, training: dict, swa: SWASettings | None = None) -> TrainingSettings:
        """The settings of a config's resolved `training` (every key of the schema's `training` section, the
        algorithm's overrides applied: `fedscape.plan.train.merge_training`), its `swa` given resolved or None."""
        declared = {f.name for f in fields(cls)} - {"swa"}
        values = {k: v for k, v in training.items() if k in declared}
        # A set of rounds: [30, 10] and [10, 30, 30] keep the same clients as [10, 30], and the job's settings (compared
        # as text) say so.
        values["save_clients_at"] = tuple(sorted(set(values.get("save_clients_at", ()))))
        return cls(**values, swa=swa)

    def train_config(self, **run_fields) -> TrainConfig:
        """The TrainConfig of these settings (less the job's own keys: device, bf16_autocast, swa), with `run_fields`
        on top (the run's seed, participation and augmentation; a warm-up's rounds)."""
        kept = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if hasattr(self, f.name)}
        return TrainConfig(**{**kept, **run_fields})


def strategy_ref(cls: type) -> str:
    """A strategy class as `AlgorithmSpec.strategy` and `UNCAPTURED_STEPS` name it: "module:Class" for a class of
    fedscape.fl.strategies, its full module's name otherwise (a test's or a user's class, which no algorithm names)."""
    package = "fedscape.fl.strategies."
    module = cls.__module__.removeprefix(package) if cls.__module__.startswith(package) else cls.__module__
    return f"{module}:{cls.__qualname__}"


def uncaptured_steps(strategy: str, name: str, path: str, optimizer: str = "sgd") -> str | None:
    """Why CUDA graphs do not replay the local steps of algorithm `name` (its strategy class `strategy`, as
    `strategy_ref` names it) on `path` (how its clients train: sequential or vectorized) with the local `optimizer`,
    in words; None where they may (the check at capture decides the rest). `UNCAPTURED_STEPS` declares it."""
    if path not in ("sequential", "vectorized"):
        raise ValueError(f"a client path is sequential or vectorized, got {path!r}")
    reason = UNCAPTURED_STEPS.get(strategy, {}).get(path)
    if reason is not None:
        return f"{name}'s {reason}"
    if path == "vectorized" and optimizer == "adamw":
        return UNCAPTURED_STACKED_ADAMW
    return None


def clients_per_round(num_clients: int, participation: float) -> int:
    """How many clients take part in a round: max(1, round(p * M)), at most M. Python's round takes a half to the even
    neighbour (0.5 of 5: 2, of 7: 4); floor would take 0.29 of 100 to 28."""
    return min(num_clients, max(1, int(round(participation * num_clients))))


def sample_clients(seed: int, round_: int, num_clients: int, participation: float) -> list[int]:
    """Clients taking part in a round: a seeded sample of `clients_per_round` without replacement."""
    m = clients_per_round(num_clients, participation)
    if m >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(derive_seed(seed, round_, _SAMPLING_STREAM))
    return sorted(int(c) for c in rng.choice(num_clients, size=m, replace=False))
