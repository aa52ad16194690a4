"""Torch-free facts of the init stage: the init kinds, the keys each reads, the pretraining schedule, and the shape
of an init job's settings (`InitJob`, one dataclass per kind: `fedscape.core.jobs`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedscape.core.jobs import JobSettings, JobSettingsError
from fedscape.core.names import suggest
from fedscape.data.specs import proxy_reader_version_setting
from fedscape.fl.settings import NEUTRAL_TRAINING_KEYS, TrainConfig, TrainingSettings
from fedscape.models.specs import check_precision, is_token_model, model_option_baselines, with_new_defaults

# The keys of an `inits` entry that each kind reads (the schema fills defaults for all of them).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "random": ("kind", "seed"),
    "pretrained": ("kind", "seed", "epochs", "lr", "batch_size", "momentum", "weight_decay", "proxy_dataset",
                   "proxy_data_dir", "proxy_dir", "max_samples"),
    "iid_warmup": ("kind", "seed", "rounds", "num_clients", "partition_seed", "training"),
    "continue": ("kind", "run", "source_model"),
}
PRETRAIN_KEYS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "seed")  # the PretrainConfig fields
# How a pretrained init's `proxy_dataset` is normalised (`PretrainedInit.proxy_normalisation`): `clients`, with the
# clients' data set's per-channel statistics (its `channel_mean` / `channel_std` where set), the pixel-to-input map
# that a `proxy_dir`'s down-sampled ImageNet gets too, so that the pretrained body sees inputs of the scale and shift
# the clients feed it; `own`, with the proxy data set's own (CIFAR-100's for a CIFAR-10 init's cifar100 proxy).
PROXY_NORMALISATIONS = ("clients", "own")
# The algorithm an IID warm-up trains (`stages.init.iid_warmup`; planning checks its capture with it).
WARMUP_ALGORITHM = "fedavg"
# The `training` keys an iid_warmup init's own `training` may not give, and why: the warm-up reads them from nowhere
# (`WarmupInit.train_config` replaces them, `plan.init.init_extras` sets the runs' evaluation and keeping to their
# baselines), so a value there would be ignored while the config says it changes the warm-up. (`device` is the
# workflow's, refused for every override by `plan.train.check_training`.) Planning refuses each as
# `inits.<label>.training.<key>` (`plan.init.check`; a reason's fields are filled with `where`, `inits.<label>`, and the
# entry's keys). Every other training key is read: the warm-up trains with it.
WARMUP_UNREAD_TRAINING: dict[str, str] = {
    "rounds": "the warm-up's rounds are {where}.rounds ({rounds})",
    "swa": "an IID warm-up is plain FedAvg and keeps its last global model, not an SWA average",
    "save_clients_at": "the warm-up keeps no client models, only its last global model (the init)",
    "eval_every": "the warm-up evaluates every round: the runs' evaluation schedule is not the init's, whose only "
                  "model is its last",
    "save_every": "the warm-up keeps only its last global model (the init), whatever rounds a run keeps",
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

    @classmethod
    def of(cls, spec: dict) -> PretrainConfig:
        """The schedule of an `inits` entry or init settings (the keys of PRETRAIN_KEYS it has)."""
        return cls(**{k: spec[k] for k in PRETRAIN_KEYS if k in spec})


def kind_spec(spec: dict) -> dict:
    """The keys of an `inits` entry that its kind reads (others are schema defaults and ignored)."""
    kind = spec.get("kind", "random")
    return {k: spec[k] for k in KIND_KEYS.get(kind, ("kind",)) if k in spec}


@dataclass(frozen=True, kw_only=True)
class InitJob(JobSettings):
    """One init label's initial model for a dataset and model: the fields every kind has. A job is of one of the
    kinds below (`KIND`); `InitJob.from_settings` reads the settings of any kind as that kind's job."""

    rule = "init"
    KIND: ClassVar[str] = ""
    dataset: str
    model: str
    # the config's `model_options.<model>`, with an option whose default changed written out where it is left out
    # (`models.specs.with_new_defaults`): the jobs that computed with its old default left it out too
    model_options: dict
    in_channels: int  # the dataset's data shape (`data.specs.dataset_info`)
    image_size: int
    num_classes: int
    init: str  # the label
    kind: str  # its kind, the subclass's KIND

    @classmethod
    def meaning(cls, settings: Mapping[str, Any]) -> dict:
        """`JobSettings.meaning`, the model's options written at their baselines left out, the values a job that left
        them out computed with (`models.specs.model_option_baselines`): the defaults the model is built with
        (`resnet20: {norm: batch}` is the resnet20 built without it), and an option whose default changed at its old
        one (an init of resnet18 without norm drew `weight_init: pytorch` before the option: written out, it keeps
        that init's record). A token model's `vocab_size` and `seq_len` default to the data's, which the job holds as
        its `in_channels` and `image_size`."""
        out = super().meaning(settings)
        options, model = out.get("model_options"), out.get("model")
        if isinstance(options, Mapping) and isinstance(model, str):
            defaults = model_option_baselines(model, dict(options))
            if is_token_model(model):
                defaults |= {"vocab_size": out.get("in_channels"), "seq_len": out.get("image_size")}
            out["model_options"] = {key: value for key, value in options.items()
                                    if key not in defaults or value != defaults[key]}
        return out

    def __post_init__(self):
        if type(self) is InitJob:
            raise TypeError("an init job is of one kind: make a RandomInit, PretrainedInit, WarmupInit or ContinueInit")
        if self.kind != self.KIND:
            raise ValueError(f"{type(self).__name__} is an init of kind {self.KIND}, got kind {self.kind!r}")
        object.__setattr__(self, "model_options", with_new_defaults(self.model, dict(self.model_options)))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InitJob:
        """The job of an init's settings, as the job of its kind (`settings["kind"]`)."""
        if cls is not InitJob:
            return super().from_settings(settings)
        kind = settings.get("kind")
        if kind not in INIT_JOBS:
            raise JobSettingsError(f"init settings of unknown kind {kind!r}.{suggest(str(kind), INIT_JOBS)} "
                                   f"Valid: {', '.join(INIT_JOBS)}")
        return INIT_JOBS[kind].from_settings(settings)


@dataclass(frozen=True, kw_only=True)
class RandomInit(InitJob):
    """Seeded random weights."""

    KIND: ClassVar[str] = "random"
    seed: int


@dataclass(frozen=True, kw_only=True)
class PretrainedInit(InitJob):
    """The seeded random init trained centrally on proxy data (the `inits` entry's schedule and proxy)."""

    KIND: ClassVar[str] = "pretrained"
    seed: int
    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    proxy_dataset: str | None
    proxy_data_dir: str | None
    proxy_dir: str | None
    max_samples: int | None
    dataset_options: dict
    device: str  # training.device
    # training.precision: a later key, whose baseline is fp32 (every pretraining before it).
    precision: str = "fp32"
    # Whose statistics normalise a `proxy_dataset`'s images (PROXY_NORMALISATIONS). Its baseline is `own`, the proxy's
    # published statistics, as every such pretraining before the field; planning sets `clients` for a proxy_dataset
    # on an RGB data set (`plan.init.init_extras`), so that only those inits rerun.
    proxy_normalisation: str = "own"
    # The reader version of its proxy data, `proxy_dir`'s down-sampled ImageNet or `proxy_dataset`
    # (`data.specs.proxy_reader_version_setting`): as the `dataset_options` of the jobs of a data set hold its own, so
    # that a fix of the proxy's reader reruns the inits pretrained on it. The code's, not the config's: set from
    # proxy_dir and proxy_dataset whatever is given, as the job reads its proxy with this code's reader. Its baseline
    # None (the init's own proxy split, or a proxy at its first reader) leaves the other inits' settings as they were
    # before the field.
    proxy_reader_version: int | None = None

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "proxy_reader_version",
                           proxy_reader_version_setting(self.proxy_dataset, self.proxy_dir))
        check_precision(self.precision)
        if self.proxy_normalisation not in PROXY_NORMALISATIONS:
            raise ValueError(f"proxy_normalisation must be one of {', '.join(PROXY_NORMALISATIONS)}, got "
                             f"{self.proxy_normalisation!r}")

    def schedule(self) -> PretrainConfig:
        """The pretraining schedule."""
        return PretrainConfig(**{k: getattr(self, k) for k in PRETRAIN_KEYS})


@dataclass(frozen=True, kw_only=True)
class WarmupInit(InitJob):
    """`rounds` rounds of IID FedAvg from the seeded random init."""

    KIND: ClassVar[str] = "iid_warmup"
    # Its resolved training's neutral keys, as a train job's, and what of the runs' training it does not use: their
    # `rounds` and `save_clients_at` (its own `rounds` replace theirs, and it keeps no client models). Its `inits`
    # entry's overrides are restated by `warmup_training` (an override equal to the section's value, or written where
    # it was left out, warms up the same model). The redraws its IID split may take (`partition.max_tries`, as a
    # partition job's) bound whether the split succeeds, not the split.
    neutral = (*(f"warmup_training.{key}" for key in NEUTRAL_TRAINING_KEYS), "warmup_training.rounds",
               "warmup_training.save_clients_at", "partition.max_tries")
    restated = ("training",)
    seed: int
    rounds: int
    num_clients: int
    partition_seed: int
    training: dict  # the `inits` entry's overrides of the `training` section, as given
    dataset_options: dict
    partition: dict  # the `partition` section (the IID split's options)
    # The `training` section with those overrides (`warmup_training_of`), device included.
    warmup_training: TrainingSettings
    device: str

    def train_config(self) -> TrainConfig:
        """The warm-up's TrainConfig: its training for its `rounds` rounds, every client every round, no client
        models kept, with the dataset's augmentation and the init's seed."""
        return self.warmup_training.train_config(rounds=self.rounds, participation=1.0, save_clients_at=(),
                                                 augment=self.dataset_options.get("augment", "none"), seed=self.seed)


@dataclass(frozen=True, kw_only=True)
class ContinueInit(InitJob):
    """The final global model of another run, or its SWA average (`source_model`)."""

    KIND: ClassVar[str] = "continue"
    run: dict  # the `inits` entry's run selector, as given
    source_run_id: str  # the run it names (`fedscape.plan.init.continue_source`)
    # Whether the source run trains with SWA and so keeps an SWA average beside its final global model, which is the
    # init. Its baseline is False: before the field, an init from such a run took the SWA average, so only those
    # jobs rerun.
    source_swa: bool = False
    # Which final model of the source run is the init (the schema's `source_model`: global or swa). Its baseline is
    # `global`, the model the init took before the field, so that no finished init's settings change.
    source_model: str = "global"
    # the run selector names `source_run_id`: respelled, or given one more field, it continues the same model
    restated = ("run",)


INIT_JOBS: dict[str, type[InitJob]] = {job.KIND: job for job in (RandomInit, PretrainedInit, WarmupInit, ContinueInit)}
# The kinds that train on the configured device (their job declares it): the init jobs that take a card. A random or a
# continued model is made on the CPU.
TRAINING_KINDS: tuple[str, ...] = tuple(kind for kind, job in INIT_JOBS.items() if "device" in job.__dataclass_fields__)
