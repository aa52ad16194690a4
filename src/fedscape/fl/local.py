"""What every client trainer shares: the seeded batch order of a client's local epochs or steps, the
learning rates of its steps, and the `Trainer` interface the engine calls once per round."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Protocol

import torch

from fedscape.core.seeds import derive_seed
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientResult

log = logging.getLogger("fedscape.train")


class Trainer(Protocol):
    """Trains the sampled clients of one round from the global model (sequentially or all at once)."""

    def train_round(self, global_params: torch.Tensor, global_buffers: torch.Tensor, sampled: list[int],
                    round_: int) -> list[ClientResult]:
        """Local training of the `sampled` clients; results in `sampled` order."""
        ...

    def state_dict(self) -> dict:
        """What the trainer keeps between rounds (saved with the run's progress); {} when nothing."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` when a run resumes."""
        ...

    def close(self) -> None:
        """Undo what the trainer changed on the model for its rounds (a captured forward); called once, at the end."""
        ...


def client_generator(seed: int, round_: int, client_id: int) -> torch.Generator:
    """The CPU generator behind a client's batch order and augmentation in one round."""
    return torch.Generator().manual_seed(derive_seed(seed, round_, client_id))


def batch_order(n: int, batch_size: int, epochs: int, generator: torch.Generator,
                drop_last: bool = False, sampling: str = "shuffle") -> list[torch.Tensor]:
    """Index batches for `epochs` shuffled passes over n samples (the last batch may be smaller; `drop_last`: left
    out, unless it is the pass's only batch, so that every client trains). The same draws either way.

    `sampling="replacement"` (fedscape.fl.schedule.BATCH_SAMPLINGS): as many batches per pass, each of batch_size
    samples drawn uniformly with replacement (nanoGPT's get_batch), so none is smaller."""
    batches = []
    end = n - batch_size + 1 if drop_last and n >= batch_size else n
    for _ in range(epochs):
        if sampling == "replacement":
            batches.extend(torch.randint(n, (batch_size,), generator=generator) for _ in range(0, end, batch_size))
            continue
        perm = torch.randperm(n, generator=generator)
        batches.extend(perm[i : i + batch_size] for i in range(0, end, batch_size))
    return batches


def step_batches(n: int, batch_size: int, steps: int, generator: torch.Generator,
                 drop_last: bool = False, sampling: str = "shuffle") -> list[torch.Tensor]:
    """Exactly `steps` index batches, cycling through shuffled passes over n samples as `batch_order` makes them
    (a pass's last batch may be smaller, or dropped: `drop_last`); the pass cut short draws its whole permutation,
    like a full one. `sampling`: as `batch_order`'s."""
    if n < 1:
        raise ValueError("a client without samples cannot take local steps")
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches.extend(batch_order(n, batch_size, 1, generator, drop_last, sampling))
    return batches[:steps]


@dataclass(frozen=True)
class LocalPlan:
    """A client's local training in one round, drawn ahead: its batches and the lr of each step."""

    batches: list[torch.Tensor]  # indices into the client's samples, one tensor per step
    lrs: list[float]  # the learning rate of each step (fedscape.fl.schedule.step_lrs)


def local_plan(cfg: TrainConfig, n: int, work: int, round_: int, generator: torch.Generator) -> LocalPlan:
    """The batches of a client with n samples doing `work` epochs or steps (`cfg.work_unit`), and their lrs."""
    if cfg.work_unit == "steps":
        batches = step_batches(n, cfg.batch_size, work, generator, cfg.drop_last, cfg.batch_sampling)
    else:
        batches = batch_order(n, cfg.batch_size, work, generator, cfg.drop_last, cfg.batch_sampling)
    return LocalPlan(batches, cfg.step_lrs(round_, len(batches)))


def round_work(cfg: TrainConfig, round_: int, sampled: list[int], num_clients: int) -> list[int]:
    """The local work of the `sampled` clients in a round; logs its spread when the clients' work differs."""
    work = cfg.client_work(round_, num_clients)
    amounts = [work[c] for c in sampled]
    if not cfg.equal_work and amounts:
        log.info("round %d local work (%s): min %d, median %g, max %d %s over %d clients", round_, cfg.work_text(),
                 min(amounts), statistics.median(amounts), max(amounts), cfg.work_unit, len(amounts))
    return amounts


def layer_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of a client's stochastic layers (if any) in one round, apart from its batch order."""
    return derive_seed(seed, round_, client_id, 1)
