"""A federated data set on one device: the training pool, each client's shard of it, and the test set.

Every stage that needs a run's client or union data loads it here (`load_federated_data`), so that the partition
kind's input transform (`client_inputs`: e.g. feature noise) reaches training and every analysis alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedscape.data.datasets import Dataset, Images, StoredImages, dataset_from_options, take_rows
from fedscape.data.locations import job_fingerprint
from fedscape.data.partition import (
    Partition,
    check_run_partition,
    check_trained_partition,
    load_partition,
    partition_kind,
)


@dataclass
class FederatedData:
    """Training pool, client shards (indices into it) and test set, all resident on one device.

    ``eval_rows``: the pool's rows that evaluations score, sorted (`Dataset.eval_rows`; None: every row): `union`
    and `client` give those of their shards, what every evaluation of the training data reads, while training draws
    from the whole shards (`client_indices`). ``never_correct``: the classes whose prediction its accuracy never
    credits (`Dataset.never_correct`), which every evaluation of it passes on."""

    x_train: Images  # a StoredImages for a dataset stored as uint8: indexing gives the normalised float rows
    y_train: torch.Tensor
    client_indices: list[torch.Tensor]
    x_test: Images
    y_test: torch.Tensor
    eval_rows: torch.Tensor | None = None
    never_correct: tuple[int, ...] = ()

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def union(self, evaluated: bool = True) -> tuple[Images, torch.Tensor]:
        """The aggregate training data D = union of the clients' shards (the loss L of the papers), its rows that
        evaluations score (`eval_rows`); `evaluated` False: every row, what a training on D draws from."""
        idx = self._evaluated(torch.cat(self.client_indices).sort().values, evaluated)
        if len(idx) == len(self.y_train) and bool((idx == torch.arange(len(idx), device=idx.device)).all()):
            return self.x_train, self.y_train
        return take_rows(self.x_train, idx), self.y_train[idx]

    def client(self, client_id: int) -> tuple[Images, torch.Tensor]:
        """Client `client_id`'s samples that evaluations score (its L_m: `client_rows`)."""
        idx = self.client_rows(client_id)
        return take_rows(self.x_train, idx), self.y_train[idx]

    def client_rows(self, client_id: int) -> torch.Tensor:
        """The rows of client `client_id`'s shard that evaluations score (`eval_rows`)."""
        return self._evaluated(self.client_indices[client_id])

    def _evaluated(self, idx: torch.Tensor, evaluated: bool = True) -> torch.Tensor:
        """The rows of `idx` that evaluations score (all of them without `eval_rows` or with `evaluated` False)."""
        return idx if self.eval_rows is None or not evaluated else idx[torch.isin(idx, self.eval_rows)]


def client_inputs(x_train: Images, part: Partition) -> Images:
    """The training pool as the clients see it: the input transform of the partition's kind
    (`PartitionKind.inputs`, e.g. feature_noise's fixed Gaussian noise per client) applied, or `x_train` itself for
    a kind without one. A transform rewrites float inputs: a pool stored as uint8 is made float for it."""
    transform = partition_kind(part.kind).inputs
    if transform is None:
        return x_train
    return transform(x_train.materialise() if isinstance(x_train, StoredImages) else x_train, part)


def federate(ds: Dataset, partition_path: str | Path, device: torch.device | str = "cpu") -> FederatedData:
    """The dataset split among clients by the partition file (checked against its labels), on `device`."""
    part = load_partition(partition_path, ds.sample_labels(ds.y_train).numpy(), job_fingerprint(ds.name))
    return FederatedData(
        x_train=client_inputs(ds.x_train, part).to(device), y_train=ds.y_train.to(device),
        client_indices=[torch.as_tensor(ix, device=device) for ix in part.client_indices],
        x_test=ds.x_test.to(device), y_test=ds.y_test.to(device),
        eval_rows=None if ds.eval_rows is None else torch.as_tensor(ds.eval_rows, device=device),
        never_correct=ds.never_correct,
    )


def load_federated_data(run: dict, options: dict, partition_path: str | Path,
                        device: torch.device | str = "cpu", trained: bool = True) -> FederatedData:
    """The dataset of `run` (its fields; config `datasets.<name>` options) split by its partition file, on `device`;
    PartitionError naming the file when the partition is another run's (`check_run_partition`), or, for a `trained`
    run (its analyses), not the split its meta.json records it was trained on (`check_trained_partition`). The train
    job, which writes that record, passes False."""
    check_run_partition(partition_path, run)
    if trained:
        check_trained_partition(partition_path, run)
    return federate(dataset_from_options(run["dataset"], options), partition_path, device)


def load_test_data(dataset: str, options: dict,
                   device: torch.device | str = "cpu") -> tuple[Images, torch.Tensor, tuple[int, ...]]:
    """The test set of `dataset` (config `datasets.<name>` options) on `device`: no client's, so no partition and
    no input transform (the same tensors as `FederatedData.x_test`, `y_test`), and its `never_correct` classes."""
    ds = dataset_from_options(dataset, options)
    return ds.x_test.to(device), ds.y_test.to(device), ds.never_correct
