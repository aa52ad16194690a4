"""What every client trainer shares: the seeded batch order of a client's local epochs, and the
`Trainer` interface the engine calls once per round."""

from __future__ import annotations

from typing import Protocol

import torch

from fedscape.core.seeds import derive_seed
from fedscape.fl.strategies.base import ClientResult


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


def client_generator(seed: int, round_: int, client_id: int) -> torch.Generator:
    """The CPU generator behind a client's batch order and augmentation in one round."""
    return torch.Generator().manual_seed(derive_seed(seed, round_, client_id))


def batch_order(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches for `epochs` shuffled passes over n samples (the last batch may be smaller)."""
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


def layer_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed of a client's stochastic layers (if any) in one round, apart from its batch order."""
    return derive_seed(seed, round_, client_id, 1)
