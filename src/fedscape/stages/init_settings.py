"""Torch-free facts of the init stage: the init kinds, the keys each reads, and the pretraining schedule."""

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
PRETRAIN_KEYS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "seed")  # the PretrainConfig fields


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
