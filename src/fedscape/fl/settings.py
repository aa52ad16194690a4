"""Torch-free round settings of federated training: TrainConfig, the clients sampled each round, and
the metrics every round reports (the columns of metrics.csv after the run fields).

Planning (config checks, which clients a layer-wise pair can compare) reads these without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedscape.core.runs import RUN_FIELDS
from fedscape.core.seeds import derive_seed
from fedscape.models.specs import EVAL_BATCH_SIZE

CLIENT_PARALLEL = ("auto", "sequential", "vectorized")
# What the engine measures after every round (round 0 = the initial model); `status` is ok or diverged.
ROUND_METRICS = ("round", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "peak_mem_mb", "status")
# Client-update statistics the engine computes every round (fedscape.fl.client_stats), and the columns of
# a run's client_updates.csv.
STAT_KEYS: tuple[str, ...] = ("drift_from_start", "drift_from_aggregate", "gradient_diversity", "update_cosine_mean")
CLIENT_UPDATES_COLUMNS = ["run_id", "round", "num_clients", *STAT_KEYS]
# Columns of a run's metrics.csv and of results/tables/rounds.csv: the run, then one row per round.
ROUNDS_COLUMNS = ["run_id", *RUN_FIELDS, *ROUND_METRICS]
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
    local_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.0  # the pilot study uses plain SGD; FedAlign uses 0.9
    weight_decay: float = 0.0
    participation: float = 1.0  # fraction of clients sampled each round (pilot study Fig. 7: 0.2/0.5/0.8)
    save_clients_at: tuple[int, ...] = ()  # rounds whose client models are kept (local scope, layer-wise LMC)
    augment: str = "none"  # "crop_flip" for CIFAR
    eval_batch_size: int = EVAL_BATCH_SIZE
    seed: int = 0  # client sampling and every client's batch order derive from it
    # How the clients of a round are trained (fedscape.fl.vectorized): "auto" trains them all at once
    # whenever that is exact (no batch norm, an algorithm with vectorised local training), else one
    # after another; "sequential" always one after another; "vectorized" insists.
    client_parallel: str = "auto"
    client_chunk_size: int = 64  # clients trained together at most (bounds memory); 0 = all sampled clients
    bf16_autocast: bool = False  # CUDA only: bf16 autocast of the vectorised forward passes (not exact)
    # Each client's local SGD momentum carries over from the last round it took part in, instead of a
    # fresh optimiser every round. With one client holding all data this is centralised training with
    # a checkpoint every `local_epochs` epochs (the layer-wise paper's centralised runs, Adilova et al.).
    keep_optimizer_state: bool = False

    def __post_init__(self):
        if self.client_parallel not in CLIENT_PARALLEL:
            raise ValueError(f"client_parallel must be auto, sequential or vectorized, got {self.client_parallel!r}")
        if self.client_chunk_size < 0:
            raise ValueError(f"client_chunk_size must be >= 0, got {self.client_chunk_size}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {self.participation}")
        bad = [r for r in self.save_clients_at if not 1 <= r <= self.rounds]
        if bad:
            raise ValueError(f"save_clients_at has rounds {bad} outside 1..{self.rounds}")


def sample_clients(seed: int, round_: int, num_clients: int, participation: float) -> list[int]:
    """Clients taking part in a round: a seeded sample of max(1, round(p * M)) without replacement."""
    m = max(1, int(round(participation * num_clients)))
    if m >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(derive_seed(seed, round_, _SAMPLING_STREAM))
    return sorted(int(c) for c in rng.choice(num_clients, size=m, replace=False))
