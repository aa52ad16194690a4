"""A federated data set on one device: the training pool, each client's shard of it, and the test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedscape.core.seeds import derive_seed
from fedscape.data.datasets import Dataset, dataset_from_options
from fedscape.data.partition import Partition, PartitionError, check_run_partition, load_partition, noise_std

_NOISE_STREAM = 0x4E  # keeps the feature noise apart from every other random stream of the run seed


@dataclass
class FederatedData:
    """Training pool, client shards (indices into it) and test set, all resident on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    client_indices: list[torch.Tensor]
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def union(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregate training data D = union of the clients' shards (the loss L of the papers)."""
        idx = torch.cat(self.client_indices).sort().values
        if len(idx) == len(self.y_train) and bool((idx == torch.arange(len(idx), device=idx.device)).all()):
            return self.x_train, self.y_train
        return self.x_train[idx], self.y_train[idx]

    def client(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client `client_id`'s samples (its L_m)."""
        idx = self.client_indices[client_id]
        return self.x_train[idx], self.y_train[idx]


def with_feature_noise(x_train: torch.Tensor, part: Partition) -> torch.Tensor:
    """The training pool as the clients see it: for a feature_noise partition, client j's samples (j = 1..M)
    plus fixed Gaussian noise of std sigma * j / M (NIID-Bench), drawn once on the CPU from the partition's seed so that
    training and every analysis see the same data; other partitions: `x_train` itself."""
    if part.kind != "feature_noise":
        return x_train
    if not x_train.is_floating_point():
        raise PartitionError(f"the partition kind feature_noise adds noise to inputs, but this dataset's inputs "
                             f"are {x_train.dtype} (e.g. token ids): use another partition kind")
    noisy = x_train.clone()
    for client, idx in enumerate(part.client_indices):
        std = noise_std(part, client)
        if std == 0 or len(idx) == 0:
            continue
        gen = torch.Generator().manual_seed(derive_seed(part.seed, client, _NOISE_STREAM))
        index = torch.as_tensor(idx, dtype=torch.long)
        noise = torch.randn((len(idx), *x_train.shape[1:]), generator=gen, dtype=torch.float32)
        noisy[index.to(x_train.device)] += std * noise.to(device=x_train.device, dtype=x_train.dtype)
    return noisy


def federate(ds: Dataset, partition_path: str | Path, device: torch.device | str = "cpu") -> FederatedData:
    """The dataset split among clients by the partition file (checked against its labels), on `device`."""
    part = load_partition(partition_path, ds.y_train.numpy())
    return FederatedData(
        x_train=with_feature_noise(ds.x_train, part).to(device), y_train=ds.y_train.to(device),
        client_indices=[torch.as_tensor(ix, device=device) for ix in part.client_indices],
        x_test=ds.x_test.to(device), y_test=ds.y_test.to(device),
    )


def load_federated_data(run: dict, options: dict, partition_path: str | Path,
                        device: torch.device | str = "cpu") -> FederatedData:
    """The dataset of `run` (its fields; config `datasets.<name>` options) split by its partition file, on `device`;
    PartitionError naming the file when the partition is another run's (`check_run_partition`)."""
    check_run_partition(partition_path, run)
    return federate(dataset_from_options(run["dataset"], options), partition_path, device)
