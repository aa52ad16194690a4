"""Client partitions of a training set: IID and Dirichlet label skew, saved without pickles."""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from fedscape.core.alpha import IID
from fedscape.core.io import atomic_path, remake_alone_hint

MAX_TRIES_DEFAULT = 1000


class PartitionError(ValueError):
    """A partition that cannot be made with the requested settings."""


@dataclass(frozen=True)
class Partition:
    """Which training-set indices each client holds."""

    client_indices: tuple[np.ndarray, ...]
    alpha: float
    seed: int
    num_samples_total: int

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.client_indices], dtype=np.int64)

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """[num_clients, num_classes] label histogram of every client."""
        return np.stack([np.bincount(labels[ix], minlength=num_classes) for ix in self.client_indices])


def iid_partition(num_samples: int, num_clients: int, seed: int, min_size: int = 1) -> Partition:
    """Uniform random split into near-equal shards (McMahan et al. 2017, IID setting)."""
    _check_counts(num_samples, num_clients, min_size)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    shards = tuple(np.sort(s).astype(np.int64) for s in np.array_split(perm, num_clients))
    return Partition(shards, IID, seed, num_samples)


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_tries: int = MAX_TRIES_DEFAULT,
) -> Partition:
    """Dirichlet label skew (Hsu et al. 2019), following the NIID-Bench procedure (Li et al. 2022).

    For every class, shuffle its indices and draw p ~ Dir(alpha * 1_M); clients that already hold
    at least N/M samples get p_j = 0; cut the class at cumsum(p) * n_k. The whole draw is repeated
    until the smallest client holds at least `min_size` samples, at most `max_tries` times.
    """
    labels = np.asarray(labels)
    num_samples = len(labels)
    _check_counts(num_samples, num_clients, min_size)
    if not alpha > 0:
        raise PartitionError(f"alpha must be positive, got {alpha}")
    if math.isinf(alpha):
        return iid_partition(num_samples, num_clients, seed, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    cap = num_samples / num_clients
    smallest = 0
    for _ in range(max_tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        held = np.zeros(num_clients, dtype=np.int64)
        for k in classes:
            idx_k = np.flatnonzero(labels == k)
            rng.shuffle(idx_k)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = np.where(held < cap, p, 0.0)
            total = p.sum()
            if total <= 0:  # every client is at its cap: spread evenly instead of dividing by zero
                p = np.full(num_clients, 1.0 / num_clients)
            else:
                p = p / total
            cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
            for j, part in enumerate(np.split(idx_k, cuts)):
                shards[j].append(part)
                held[j] += len(part)
        smallest = int(held.min())
        if smallest >= min_size:
            client_indices = tuple(np.sort(np.concatenate(s)).astype(np.int64) for s in shards)
            return Partition(client_indices, float(alpha), seed, num_samples)
    raise PartitionError(
        f"could not give every one of {num_clients} clients at least min_size={min_size} samples with "
        f"Dirichlet alpha={alpha} in {max_tries} tries (smallest client in the last try: {smallest}). "
        "Use fewer clients, a larger alpha or a smaller min_size."
    )


def make_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 1000
) -> Partition:
    """IID split when alpha is inf, Dirichlet split otherwise."""
    if math.isinf(alpha):
        return iid_partition(len(labels), num_clients, seed, min_size)
    return dirichlet_partition(labels, num_clients, alpha, seed, min_size, max_tries)


def _check_counts(num_samples: int, num_clients: int, min_size: int) -> None:
    if num_clients < 1:
        raise PartitionError(f"num_clients must be at least 1, got {num_clients}")
    if min_size < 1:
        raise PartitionError(f"min_size must be at least 1, got {min_size}")
    if num_clients * min_size > num_samples:
        raise PartitionError(
            f"{num_clients} clients x min_size {min_size} = {num_clients * min_size} samples needed, "
            f"but the training set has only {num_samples}: use at most {num_samples // min_size} clients "
            "or a smaller min_size."
        )


def save_partition(path, partition: Partition, labels: np.ndarray, num_classes: int, meta: dict) -> None:
    """Save a partition as .npz (no pickled objects): a flat index array, offsets and metadata."""
    indices = np.concatenate(partition.client_indices)
    offsets = np.concatenate([[0], np.cumsum(partition.sizes)]).astype(np.int64)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                indices=indices,
                offsets=offsets,
                class_counts=partition.class_counts(labels, num_classes),
                labels_checksum=np.array([_labels_checksum(labels)], dtype=np.int64),
                meta=np.array(json.dumps({**meta, "alpha": partition.alpha, "seed": partition.seed,
                                          "num_samples_total": partition.num_samples_total})),
            )


def load_partition(path, labels: np.ndarray | None = None) -> Partition:
    """Load a partition; with `labels`, check it was made for this dataset's training set."""
    try:
        with np.load(path, allow_pickle=False) as f:
            indices, offsets = f["indices"], f["offsets"]
            meta = json.loads(str(f["meta"]))
            checksum = int(f["labels_checksum"][0])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated, pickled, foreign
        raise PartitionError(f"{path} is not a readable partition file ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0]}); {remake_alone_hint(path)}") from None
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != meta["num_samples_total"] or _labels_checksum(labels) != checksum:
            raise PartitionError(
                f"partition file {path} does not match this dataset's training set "
                f"({meta['num_samples_total']} samples in the partition, {len(labels)} in the dataset, or "
                f"different labels); {remake_alone_hint(path)}"
            )
    shards = tuple(indices[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1))
    return Partition(shards, float(meta["alpha"]), int(meta["seed"]), int(meta["num_samples_total"]))


def check_partition_file(path, dataset: str, num_clients: int, alpha: float, seed: int) -> None:
    """PartitionError naming `path` unless it is a readable partition of `dataset` into `num_clients` clients
    with this `alpha` and `seed` (the checks that need no data, so that they run when the workflow is planned)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            offsets = f["offsets"]
            meta = json.loads(str(f["meta"]))
            f["indices"], f["labels_checksum"]  # noqa: B018 (present and readable)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise PartitionError(f"{path} is not a readable partition file ({type(exc).__name__}: {exc})") from exc
    found = {"dataset": meta.get("dataset"), "clients": len(offsets) - 1, "alpha": meta.get("alpha"),
             "seed": meta.get("seed")}
    want = {"dataset": dataset, "clients": num_clients, "alpha": alpha, "seed": seed}
    if found != want:
        differ = ", ".join(f"{k} {found[k]!r} (expected {want[k]!r})" for k in want if found[k] != want[k])
        raise PartitionError(f"{path} is not the partition of this run: {differ}")


def _labels_checksum(labels: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
