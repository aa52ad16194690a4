"""Client partitions of a training set, saved without pickles: IID and Dirichlet label skew (the `alphas` of a
config), and the other partition kinds of NIID-Bench (Li et al. 2022), the natural federated datasets and the
splits papers publish as files (a `partitions` entry): #C=k label skew, quantity skew, feature-noise skew, one
client per writer, and a split file."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedscape.core.io import atomic_path, remake_alone_hint, remake_hint
from fedscape.core.names import suggest
from fedscape.core.paths import PARTITION_FILE, TRAIN_DIR, TRAIN_FILE_NAMES, fill, parse_path
from fedscape.core.provenance import belongs_problem
from fedscape.core.runs import RUN_ID
from fedscape.core.seeds import derive_seed
from fedscape.core.setting import IID, is_partition_label, parse_alpha
from fedscape.data.locations import job_data_change
from fedscape.data.specs import DATASET_NAMES, DatasetInfo, dataset_info

MAX_TRIES_DEFAULT = 1000


class PartitionError(ValueError):
    """A partition that cannot be made with the requested settings."""


@dataclass(frozen=True)
class Partition:
    """Which training-set indices each client holds."""

    client_indices: tuple[np.ndarray, ...]
    alpha: float  # Dirichlet alpha, inf for IID and for the kinds whose labels are IID, NaN otherwise
    seed: int
    num_samples_total: int
    kind: str = "dirichlet"  # a name of PARTITION_KINDS; "iid" for the IID split
    options: dict = field(default_factory=dict)  # the kind's options (e.g. {"sigma": 0.1} of feature_noise)
    label: str | None = None  # the `partitions` label it was made for (None: an alpha of `alphas`)

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.client_indices], dtype=np.int64)

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """[num_clients, num_classes] label histogram of every client (sequence labels [N, T]: of the positions that
        count, IGNORE_INDEX left out)."""
        def histogram(ix: np.ndarray) -> np.ndarray:
            counted = labels[ix].ravel()
            return np.bincount(counted[counted >= 0], minlength=num_classes)

        return np.stack([histogram(ix) for ix in self.client_indices])


def iid_partition(num_samples: int, num_clients: int, seed: int, min_size: int = 1) -> Partition:
    """Uniform random split into near-equal shards (McMahan et al. 2017, IID setting)."""
    _check_counts(num_samples, num_clients, min_size)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    shards = tuple(np.sort(s).astype(np.int64) for s in np.array_split(perm, num_clients))
    return Partition(shards, IID, seed, num_samples, kind="iid")


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_tries: int = MAX_TRIES_DEFAULT,
) -> Partition:
    """Dirichlet label skew: a per-class Dirichlet over clients, the procedure of NIID-Bench (Li et al. 2022,
    its partition_data); not Hsu et al. 2019's per-client Dir(alpha p) with equal client sizes.

    For every class, shuffle its indices and draw p ~ Dir(alpha * 1_M); clients that already hold
    at least N/M samples get p_j = 0; cut the class at cumsum(p) * n_k. The whole draw is repeated
    until the smallest client holds at least `min_size` samples, at most `max_tries` times.

    A draw that gives no client under the cap any mass (exact zeros: alpha < DIRICHLET_EXACT_ZEROS_BELOW) is
    redrawn, at most DIRICHLET_REDRAWS times, then the class is spread evenly over the clients under the cap.

    The last client, M - 1, can get a class's last sample although its p_j is 0 (at the cap, or an exact zero
    draw): after p / p.sum(), cumsum(p) can end just below 1 (0.9999999999999999), so the cut before it,
    floor(cumsum(p)[M - 2] * n_k), is n_k - 1 (p = [0.27, 0.33, 0.39, 0] normalised, n_k = 5000: sizes [1363, 1667,
    1969, 1]). NIID-Bench's partition_data does the same arithmetic, and it is kept so as to stay faithful to it
    (removing it would change many Dirichlet partitions). A review measured it at M = 10, alpha 0.5, n_k = 5000: with
    client M - 1 at the cap, about 28% of the class deals gave it one sample. Only a class whose first draw had no
    mass under the cap (the redraws above) is cut to end at the last client with mass.
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
    concentration = np.full(num_clients, alpha)
    # what every try reuses, computed once: each class's indices (shuffled per try, on a copy). A try then costs its
    # draws and cuts, not a scan of the labels per class, and the clients' shards are put together for the try that
    # succeeds only (CIFAR-100-sized labels, 1000 clients at alpha 0.01: 116 s to give up, before)
    class_index = [np.flatnonzero(labels == k) for k in classes]
    smallest = 0
    for _ in range(max_tries):
        held = np.zeros(num_clients, dtype=np.int64)
        dealt: list[tuple[np.ndarray, np.ndarray]] = []  # each class's shuffled indices and its cuts
        for idx in class_index:
            idx_k = idx.copy()
            rng.shuffle(idx_k)
            under = held < cap  # never all False: the samples held so far are fewer than N = M * cap
            p = np.where(under, rng.dirichlet(concentration), 0.0)
            total = p.sum()
            no_mass = total <= 0  # only the stick-breaking draws of a tiny alpha (DIRICHLET_EXACT_ZEROS_BELOW)
            redraws = 0
            while total <= 0 and redraws < DIRICHLET_REDRAWS:
                p = np.where(under, rng.dirichlet(concentration), 0.0)
                total = p.sum()
                redraws += 1
            if total <= 0:  # never any mass under the cap: the class evenly over the clients under it
                p = under / under.sum()
            else:
                p = p / total
            cumulative = np.cumsum(p)
            # the class ends at the last client with mass: no client after it gets a sample by rounding (a draw with
            # mass keeps NIID-Bench's rounding, which can leave the last sample to client M - 1: see the docstring)
            if no_mass:
                cumulative[np.flatnonzero(p)[-1]:] = 1.0
            cuts = (cumulative * len(idx_k)).astype(np.int64)[:-1]  # non-decreasing, at most len(idx_k)
            held += np.diff(cuts, prepend=0, append=len(idx_k))  # the sizes of np.split(idx_k, cuts)
            dealt.append((idx_k, cuts))
        smallest = int(held.min())
        if smallest >= min_size:
            shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for idx_k, cuts in dealt:
                for j, part in enumerate(np.split(idx_k, cuts)):
                    shards[j].append(part)
            client_indices = tuple(np.sort(np.concatenate(s)).astype(np.int64) for s in shards)
            return Partition(client_indices, float(alpha), seed, num_samples)
    raise PartitionError(
        f"could not give every one of {num_clients} clients at least min_size={min_size} samples with "
        f"Dirichlet alpha={alpha} in {max_tries} tries (smallest client in the last try: {smallest}). "
        "Use fewer clients, a larger alpha or a smaller min_size."
    )


# numpy's Generator.dirichlet draws every alpha below 0.1 by stick-breaking over Beta variates, which gives exact
# zeros (at M=10: 13% of the entries at alpha 0.01, 1% at 0.05, 0.1% at 0.099); from 0.1 on it normalises Gamma
# variates (numpy/random/_generator.pyx, `alpha_arr.max() < 0.1`), and a Gamma(0.1) variate is 0 only below the
# smallest double, 5e-324: probability gammainc(0.1, 5e-324), about 5e-33 (numpy's comment there bounds that of one
# below the smallest normal double by 1.8e-31). Measured: 2,000,000 entries at 0.1, no zero; at 0.099, 2,675. So only
# a Dirichlet split with alpha < 0.1 ever draws no mass for every client under the cap (the redraws above).
DIRICHLET_EXACT_ZEROS_BELOW = 0.1
DIRICHLET_REDRAWS = 100

# The largest concentration of a Dirichlet draw (a `dirichlet` alpha, also each number of `alphas`, and a `quantity`
# beta; the schema's `alphas` repeat it as their `maximum`). Dir(c * 1_M) gives each share 1/M with a relative std of
# sqrt((M - 1) / (M c + 1)), below 1/sqrt(c): at 1e6 the shares spread by about 0.1% around 1/M, indistinguishable
# from an IID split, and from about 1.8e308 / M on (1e300 and more) numpy's Gamma variates sum to inf and every share it
# draws is 0 (a Dirichlet split then spreads each class evenly after its redraws, a quantity split fails every try).
MAX_CONCENTRATION = 1e6


def dirichlet_draws_exact_zeros(entry: dict) -> bool:
    """Whether a `partitions` entry ({kind: ..., <options>}: `setting_entry`'s) is a Dirichlet split whose draws
    can be exact zeros (alpha < DIRICHLET_EXACT_ZEROS_BELOW): the only splits the redraws of a draw without mass
    under the cap can change."""
    alpha = entry.get("alpha")
    return entry.get("kind") == "dirichlet" and alpha is not None and float(alpha) < DIRICHLET_EXACT_ZEROS_BELOW


def make_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 1000
) -> Partition:
    """The partition of an alpha (inf: the IID split, else Dirichlet label skew), as the partition job makes it."""
    return make_kind_partition(setting_entry(alpha)[0], labels, num_clients, seed, min_size, max_tries)


def classes_partition(labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int,
                      min_size: int = 10, max_tries: int = MAX_TRIES_DEFAULT) -> Partition:
    """#C=k label skew: every client holds exactly k classes (NIID-Bench, Li et al. 2022; not McMahan et al. 2017's
    equal-size shards of the label-sorted data, which do not guarantee k classes per client).

    Client i takes class i mod K and k - 1 more distinct classes drawn at random; each class's samples are
    shuffled and cut into equal parts, one per client holding it. Classes no client draws stay unused. The
    draw is repeated until every client holds at least `min_size` samples, at most `max_tries` times.
    """
    labels = np.asarray(labels)
    num_samples = len(labels)
    _check_counts(num_samples, num_clients, min_size)
    classes, class_sizes = np.unique(labels, return_counts=True)
    k = int(classes_per_client)
    if not 1 <= k <= len(classes):
        raise PartitionError(f"partition kind classes: classes_per_client must be in 1..{len(classes)} (the "
                             f"classes among the client pool's labels), got {classes_per_client}")
    rng = np.random.default_rng(seed)
    num_classes = len(classes)
    # what every try reuses, computed once: each class's indices (shuffled per try, on a copy) and, for each client's
    # own class, the classes its other k - 1 are drawn from. A try then costs its draws, not a scan of the labels per
    # class and of every client per class (CIFAR-100, 800 clients: ~0.4 s a try, so minutes before giving up).
    class_index = [np.flatnonzero(labels == c) for c in classes]
    other_classes = [np.delete(np.arange(num_classes), first) for first in range(num_classes)]
    smallest, problem = 0, ""
    for _ in range(max_tries):
        held = np.zeros((num_clients, num_classes), dtype=bool)  # client x class: the classes each client holds
        for i in range(num_clients):
            first = i % num_classes
            held[i, first] = True
            held[i, rng.choice(other_classes[first], size=k - 1, replace=False)] = True
        holders = held.sum(axis=0)
        short = np.flatnonzero(holders > class_sizes)
        if len(short):  # a class with fewer samples than holders would leave a client without it
            c = int(short[0])
            problem = (f"class {classes[c]} has {class_sizes[c]} samples for {holders[c]} clients")
            continue
        # each held class shuffled (every try draws its shuffles, as the seeds' partitions always have), then cut
        # into np.array_split's parts: the first n mod h of its h holders one sample more. The sizes follow from
        # the counts alone, so a try that fails cuts nothing.
        shuffled: dict[int, np.ndarray] = {}
        sizes = np.zeros(num_clients, dtype=np.int64)
        for c in np.flatnonzero(holders):
            idx_c = class_index[c].copy()
            rng.shuffle(idx_c)
            shuffled[c] = idx_c
            extra = np.arange(holders[c]) < class_sizes[c] % holders[c]
            sizes[held[:, c]] += class_sizes[c] // holders[c] + extra  # owners ascending, as array_split's parts
        smallest = int(sizes.min())
        if smallest >= min_size:
            shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for c, idx_c in shuffled.items():
                owners = np.flatnonzero(held[:, c])
                for owner, part in zip(owners, np.array_split(idx_c, len(owners)), strict=True):
                    shards[owner].append(part)
            client_indices = tuple(np.sort(np.concatenate(sh)).astype(np.int64) for sh in shards)
            return Partition(client_indices, math.nan, seed, num_samples, kind="classes",
                             options={"classes_per_client": k})
        problem = f"smallest client in the last try: {smallest} samples"
    raise PartitionError(
        f"partition kind classes: could not give each of {num_clients} clients exactly {k} classes and at least "
        f"min_size={min_size} samples in {max_tries} tries ({problem}). Use fewer clients, more classes per "
        "client or a smaller min_size.")


def quantity_partition(num_samples: int, num_clients: int, beta: float, seed: int, min_size: int = 10,
                       max_tries: int = MAX_TRIES_DEFAULT) -> Partition:
    """Quantity skew: client sizes in proportions p ~ Dir(beta), labels IID (NIID-Bench, Li et al. 2022).

    The samples are shuffled once and cut at cumsum(p) * N; p is redrawn until the smallest client holds at
    least `min_size` samples, at most `max_tries` times.
    """
    _check_counts(num_samples, num_clients, min_size)
    if not beta > 0 or math.isinf(beta):
        raise PartitionError(f"partition kind quantity: beta must be a positive number, got {beta}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    smallest = 0
    for _ in range(max_tries):
        p = rng.dirichlet(np.full(num_clients, float(beta)))
        cuts = (np.cumsum(p) * num_samples).astype(np.int64)[:-1]
        shards = np.split(perm, cuts)
        smallest = min(len(x) for x in shards)
        if smallest >= min_size:
            return Partition(tuple(np.sort(x).astype(np.int64) for x in shards), IID, seed, num_samples,
                             kind="quantity", options={"beta": float(beta)})
    raise PartitionError(
        f"partition kind quantity: could not give every one of {num_clients} clients at least min_size={min_size} "
        f"of {num_samples} samples with Dir(beta={beta}) sizes in {max_tries} tries (smallest client in the last "
        f"try: {smallest}). Use fewer clients, a larger beta or a smaller min_size.")


def feature_noise_partition(num_samples: int, num_clients: int, sigma: float, seed: int,
                            min_size: int = 10) -> Partition:
    """Feature-noise skew: an IID split whose client j = 1..M sees its inputs plus N(0, (sigma * j / M)^2) noise
    (NIID-Bench, Li et al. 2022). The noise is the kind's input transform (`_feature_noise_inputs`), added when
    the client's data is loaded, so the stored dataset and the test set stay clean."""
    if not sigma >= 0 or math.isinf(sigma):
        raise PartitionError(f"partition kind feature_noise: sigma must be a number >= 0, got {sigma}")
    part = iid_partition(num_samples, num_clients, seed, min_size)
    return Partition(part.client_indices, IID, seed, num_samples, kind="feature_noise",
                     options={"sigma": float(sigma)})


def natural_partition(writer_ids: np.ndarray | None, num_clients: int, seed: int, select: str = "first",
                      min_size: int = 10, dataset: str = "the dataset") -> Partition:
    """One client per writer (user) of a natural federated dataset (LEAF, Caldas et al. 2018).

    Writers with fewer than `min_size` samples are left out; of the others, the first `num_clients` in the
    dataset's writer order (`select: first`) or a seeded sample of them (`select: random`) become clients.
    """
    if writer_ids is None:
        raise PartitionError(f"partition kind natural needs a dataset with writer ids (e.g. femnist, shakespeare); "
                             f"{dataset} has none")
    writer_ids = np.asarray(writer_ids, dtype=np.int64)
    if num_clients < 1:
        raise PartitionError(f"num_clients must be at least 1, got {num_clients}")
    if select not in NATURAL_SELECT:
        raise PartitionError(f"partition kind natural: select must be one of {', '.join(NATURAL_SELECT)}, "
                             f"got {select!r}")
    counts = np.bincount(writer_ids) if len(writer_ids) else np.zeros(0, dtype=np.int64)
    eligible = np.flatnonzero(counts >= min_size)
    if len(eligible) < num_clients:
        raise PartitionError(
            f"partition kind natural: {num_clients} clients asked for, but only {len(eligible)} of {dataset}'s "
            f"{int((counts > 0).sum())} writers hold at least min_size={min_size} samples; use at most "
            f"{len(eligible)} clients or a smaller min_size.")
    if select == "random":
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(eligible, size=num_clients, replace=False))
    else:
        chosen = eligible[:num_clients]
    # each writer's indices, ascending, from one stable sort (not a scan of every sample per writer: FEMNIST has
    # 805,263 samples of 3,550 writers)
    order = np.argsort(writer_ids, kind="stable")
    sorted_ids = writer_ids[order]
    starts, ends = np.searchsorted(sorted_ids, chosen, "left"), np.searchsorted(sorted_ids, chosen, "right")
    shards = tuple(order[a:b].astype(np.int64) for a, b in zip(starts, ends, strict=True))
    return Partition(shards, math.nan, seed, len(writer_ids), kind="natural",
                     options={"select": select, "writers": [int(w) for w in chosen]})


NATURAL_SELECT = ("first", "random")


# A published split's image names: the index of the image in the dataset's training set and its label (the
# data/cifar10/preprocessing/save_images.py of Caldarola et al.'s repository, under github.com/debcaldarola,
# numbers CIFAR's training images in the order of the python version's batches, data_batch_1..5).
_SPLIT_IMAGE = re.compile(r"img_(\d+)_label_(\d+)\.png")


def split_file_partition(labels: np.ndarray, path: str | Path, num_clients: int, seed: int, min_size: int = 1,
                         dataset: str = "the dataset") -> Partition:
    """The client split a paper published as a file: LEAF's JSON layout (Caldas et al. 2018: ``users``,
    ``num_samples``, ``user_data: {user: {"x": [...], "y": [...]}}``) whose ``x`` name training images as
    ``img_<index>_label_<label>.png``, ``index`` counting the dataset's whole training set in its published order.

    That is how Caldarola et al. 2022 publish their CIFAR-10 and CIFAR-100 splits (their repository, under
    github.com/debcaldarola: ``data/cifar10/data/train/federated_train_alpha_<a>.json``): Hsu et al. 2020's
    Dirichlet splits, 500 images per client, alpha 0 meaning one class per client. Client k is the k-th user in
    ascending order of its id (numeric when every id is an integer). The file decides everything, so ``seed`` only
    labels the result; every image must carry the label the training set gives it, and no image may belong to two
    clients. Images the file leaves out stay with no client (the CIFAR-10 alpha 0.05 file holds 49,999 of 50,000).
    """
    labels = np.asarray(labels)
    path = Path(path)
    try:
        data = json.loads(kind_file_path(path).read_text())
    except FileNotFoundError:
        raise PartitionError(f"partition kind split_file: {path} not found (a published split in LEAF's JSON "
                             "layout, e.g. Caldarola et al.'s federated_train_alpha_0.05.json)") from None
    except json.JSONDecodeError as err:
        raise PartitionError(f"partition kind split_file: {path} is not JSON: {err}") from None
    missing = [key for key in ("users", "user_data") if key not in data]
    if missing:
        raise PartitionError(f"partition kind split_file: {path} lacks {', '.join(missing)} (LEAF's layout: "
                             "users, num_samples, user_data)")
    users = [str(u) for u in data["users"]]
    if all(u.lstrip("-").isdigit() for u in users):
        users.sort(key=int)
    else:
        users.sort()
    if len(users) != num_clients:
        raise PartitionError(f"partition kind split_file: {path} splits among {len(users)} clients, but the run has "
                             f"num_clients {num_clients}: set num_clients to {len(users)}")
    user_data = {str(u): v for u, v in data["user_data"].items()}
    shards, owner = [], np.full(len(labels), -1, dtype=np.int64)
    for client, user in enumerate(users):
        if user not in user_data:
            raise PartitionError(f"partition kind split_file: {path}: user {user} has no user_data")
        names, ys = user_data[user].get("x", []), user_data[user].get("y", [])
        if len(names) != len(ys):
            raise PartitionError(f"partition kind split_file: {path}: user {user} has {len(names)} x but {len(ys)} y")
        index = np.empty(len(names), dtype=np.int64)
        for i, (name, y) in enumerate(zip(names, ys, strict=True)):
            match = _SPLIT_IMAGE.fullmatch(Path(str(name)).name)
            if match is None:
                raise PartitionError(f"partition kind split_file: {path}: user {user}'s image {name!r} is not named "
                                     "img_<index>_label_<label>.png")
            at, named = int(match.group(1)), int(match.group(2))
            if at >= len(labels):
                raise PartitionError(
                    f"partition kind split_file: {path} names training image {at}, but {dataset}'s client pool has "
                    f"{len(labels)} images: the file indexes the whole training set, so set the dataset's "
                    "proxy_fraction to 0")
            if named != int(y) or named != int(labels[at]):
                raise PartitionError(
                    f"partition kind split_file: {path}: image {at} is labelled {named} in its name and {y} in y, "
                    f"but {dataset} labels it {int(labels[at])}: the file is not a split of this dataset (or of "
                    "its training set in the published order), or the dataset's proxy_fraction is above 0 (the "
                    "file indexes the whole training set; set proxy_fraction to 0)")
            if owner[at] >= 0:
                raise PartitionError(f"partition kind split_file: {path}: image {at} belongs to clients "
                                     f"{int(owner[at])} and {client}")
            owner[at] = client
            index[i] = at
        if len(index) < min_size:
            raise PartitionError(f"partition kind split_file: {path}: client {client} (user {user}) holds "
                                 f"{len(index)} images, fewer than partition.min_size={min_size}")
        shards.append(np.sort(index))
    return Partition(tuple(shards), math.nan, seed, len(labels), kind="split_file", options={"path": str(path)})


@dataclass(frozen=True)
class PartitionKind:
    """A partition kind: all that planning, the partition job and data loading ask of it, so that none of them
    compares kind names (a new kind is its writer, its input transform if any, and its entry in PARTITION_KINDS).

    `options`: name -> default (None = required); `paper`; `make`: the writer, (labels, num_clients, seed,
    min_size, max_tries, writer_ids, dataset, **options) -> Partition; `fits`: the check of its options against a
    dataset known without loading it ((where, options, dataset) -> problems), so that planning refuses what the
    partition job would; `needs_writers`: the writer splits by each sample's writer (`writer_ids`, None for the
    other kinds), so planning refuses a dataset whose declaration has none (data.specs `writers`); `inputs`: the
    input transform, (x_train, partition) -> the training pool as the clients see it, applied wherever a client's
    or the union's data is loaded (data.federated.client_inputs), None for the inputs as stored; `files`: the files
    its writer reads, options -> {option: path} (the partition job's inputs, so that a changed file remakes the split;
    each checked before the partition jobs start, `kind_file_problems`), None for none; `by_class`: the writer
    splits by each sample's class label, so planning refuses a dataset whose samples have none (data.specs
    `sequence_labels`: the word data sets); `concentrations`: its options that are the concentration of a Dirichlet
    draw, each refused above MAX_CONCENTRATION (`check_partition_entry`); `clients`: the client count its options fix,
    known at planning, options -> (count, the option that fixes it and how, in words: 'path (s.json) lists 4 users')
    or None where it is not known (a split file's users, where the file is there: `kind_client_count`), None for a
    kind that splits among any count; `seed_free`: (options, num_clients, dataset, dataset_options) -> why its writer
    gives every seed the same split on that data set (the words of a warning, `seed_free_reason`), or None where the
    seed draws it or may (planning cannot tell); None for a kind whose seed always does."""

    name: str
    options: dict[str, Any]
    paper: str
    make: Callable[..., Partition]
    fits: Callable[[str, dict[str, Any], str, dict[str, Any] | None], list[str]] | None = None
    needs_writers: bool = False
    by_class: bool = False
    inputs: Callable[[Any, Partition], Any] | None = None
    files: Callable[[dict[str, Any]], dict[str, str]] | None = None
    concentrations: tuple[str, ...] = ()
    clients: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None
    seed_free: Callable[[dict[str, Any], int, str, dict[str, Any] | None], str | None] | None = None


def _classes_fit(where: str, options: dict[str, Any], dataset: str,
                 dataset_options: dict[str, Any] | None = None) -> list[str]:
    # every client holds k distinct classes of those its pool's labels hold (classes_partition), at most the classes
    # of the data set as its options read it (Shakespeare from its raw texts has more characters than LEAF's)
    info = dataset_info(dataset, dataset_options)
    k, classes = int(options["classes_per_client"]), info.num_classes
    if k <= classes:
        return []
    bound = "" if _pool_holds_every_class(info) else (
        f" (a bound only: the partition job bounds k by the classes {dataset}'s client pool uses as labels, which may "
        "be fewer)")
    return [f"{where}.classes_per_client: {k} classes per client, but {dataset} has {classes} classes; set "
            f"classes_per_client to at most {classes}{bound}"]


def _feature_noise_fit(where: str, options: dict[str, Any], dataset: str,
                      dataset_options: dict[str, Any] | None = None) -> list[str]:
    # the noise perturbs float pixels (_feature_noise_inputs); token ids are categories that noise cannot move, so
    # planning refuses what the first job to load the clients' data would
    info = dataset_info(dataset)
    images = [name for name in DATASET_NAMES if dataset_info(name).inputs == "image"
              and dataset_info(name).train_stored_size is None]
    if info.inputs == "image" and info.train_stored_size is not None:
        # the noisy pool is the float pool of the centre crops: without the larger images resized_crop draws from,
        # and at 4 bytes a value where the stored pixels take 1
        size = info.train_samples * info.in_channels * info.image_size**2 * 4 / 2**30
        return [f"{where}: the kind feature_noise adds fixed noise to a float copy of the whole training pool, but "
                f"{dataset} holds its training images as {info.train_stored_size}x{info.train_stored_size} uint8 "
                f"pixels, cropped per batch: the copy would take {size:.0f} GiB and lose the larger images "
                f"resized_crop draws from; use it on {', '.join(images)} or another kind on {dataset}"]
    if info.inputs == "image":
        return []
    return [f"{where}: the kind feature_noise adds Gaussian noise to each client's inputs, but {dataset} gives "
            f"{info.input_description} (token ids, which noise cannot perturb); use it on a dataset of images "
            f"({', '.join(images)}) or another kind on {dataset}"]


def _split_file_fit(where: str, options: dict[str, Any], dataset: str,
                    dataset_options: dict[str, Any] | None = None) -> list[str]:
    # the file names images by their index in the whole training set as published (split_file_partition), which is
    # the pool the clients are split from only without a proxy split: proxy_fraction > 0 takes a seeded stratified
    # part of it away, so that the file's indices name other images (or images past the pool's end), and the file may
    # give clients images of the proxy split. A data set without a test set of its own (digits) has no published
    # training set: its pool is what its test and proxy splits leave, and a file for it indexes that pool.
    proxy = float((dataset_options or {}).get("proxy_fraction") or 0.0)
    if not dataset_info(dataset).fixed_test_split or proxy <= 0:
        return []
    return [f"{where}: the kind split_file reads a split of {dataset}'s whole training set (its images by their "
            f"index in the published order), but datasets.{dataset}.proxy_fraction {proxy:g} holds part of that set "
            f"out as the proxy split, so the file's indices would name other images; set datasets.{dataset}."
            "proxy_fraction to 0 (a pretrained init on it then needs a proxy_dataset or proxy_dir)"]


# A split file larger than this is not read at planning (the partition job checks its users): the published CIFAR
# splits (Caldarola et al.: 50,000 image names) are about 1.5 MB, which json reads in under 10 ms (measured: 7 ms).
SPLIT_FILE_PLANNING_BYTES = 32 * 2**20


@functools.lru_cache(maxsize=64)
def _split_file_users(path: str, size: int, mtime_ns: int) -> int | None:
    """The number of users the split file at `path` lists (the clients split_file_partition makes); None for a file
    it cannot read (the partition job names what is wrong). Cached by path, size and date: planning asks once per
    client count and setting, and the Snakefile is parsed more than once per call."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    users = data.get("users") if isinstance(data, dict) else None
    return len(users) if isinstance(users, list) else None


def _split_file_clients(options: dict[str, Any]) -> tuple[int, str] | None:
    # the file's users, one client each (split_file_partition), where the file is there and small enough; a missing
    # file plans as before (the rule's input leaves it out, and it is named before the partition jobs start)
    path = kind_file_path(options["path"])
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file() or stat.st_size > SPLIT_FILE_PLANNING_BYTES:
        return None
    users = _split_file_users(str(path), stat.st_size, stat.st_mtime_ns)
    return None if users is None else (users, f"path ({options['path']}) lists {users} users")


def _pool_holds_every_class(info: DatasetInfo) -> bool:
    # whether a client pool's labels hold every class the data set declares, as planning takes it: an image data
    # set's do (its test and proxy splits are stratified); a token data set's labels are the symbols its texts use,
    # which may be fewer (Shakespeare declares 80 from LEAF, 96 from its raw texts), so the declared classes are only a
    # bound on those a `classes` split finds in its pool (classes_partition)
    return info.inputs == "image"


def _classes_seed_free(options: dict[str, Any], num_clients: int, dataset: str,
                       dataset_options: dict[str, Any] | None) -> str | None:
    # client i holds class i mod K and k - 1 drawn ones; each class is shuffled and cut among its holders. With k = 1
    # and at most K clients every class has at most one holder, who takes it whole: nothing is drawn. K counts the
    # classes in the pool (classes_partition), known at planning only where the pool holds every declared class: with
    # more clients than a token pool's classes, fewer than it declares, the seed draws the split.
    info = dataset_info(dataset, dataset_options)
    num_classes = info.num_classes
    if not _pool_holds_every_class(info) or int(options["classes_per_client"]) != 1 or num_clients > num_classes:
        return None
    return (f"one class per client among no more clients than the data set's {num_classes} classes gives each "
            "client its class whole (with more clients, or more classes per client, the seed draws the split)")


def _natural_seed_free(options: dict[str, Any], num_clients: int, dataset: str,
                       dataset_options: dict[str, Any] | None) -> str | None:
    # select: first takes the first eligible writers in the data set's order; only select: random draws them
    if options["select"] != "first":
        return None
    return "select: first takes the first writers whatever the seed (select: random draws them from it)"


def _split_file_seed_free(options: dict[str, Any], num_clients: int, dataset: str,
                          dataset_options: dict[str, Any] | None) -> str | None:
    # the file decides everything; the seed only labels the partition (split_file_partition)
    return f"the file {options['path']} decides the split, and the seed only labels it"


_NOISE_STREAM = 0x4E  # keeps the feature noise apart from every other random stream of the run seed


def noise_std(partition: Partition, client_id: int) -> float:
    """The std of the Gaussian noise on client `client_id`'s inputs in a feature_noise partition: sigma * j / M
    with j = client_id + 1, in the units of the normalised inputs (per channel: mean 0, std 1). The NIID-Bench paper
    (Li et al. 2022, Sec. 3.3) writes Gau(sigma * i / N) for party i = 1..N, sigma * i / N a variance (its README:
    "maximum variance of Gaussian noise"); its code, as here, uses that level as a std (AddGaussianNoise: randn * std),
    sigma * i / (N - 1) for i = 0..N - 1 (its first party clean), on pixels in [0, 1], whose std on CIFAR-10 is about
    a quarter of the normalised inputs': a sigma taken from its runs is about a quarter of that sigma here. Its code
    also differs in what the noise is: its AddGaussianNoise transform redraws the noise every time a sample is read
    (as augmentation), and its global test set is the parties' noisy test sets concatenated; here the noise is drawn
    once per partition (`_feature_noise_inputs`) and the test set stays clean."""
    return float(partition.options["sigma"]) * (client_id + 1) / partition.num_clients


def _feature_noise_inputs(x_train, partition: Partition):
    """Client j's samples (j = 1..M) plus fixed Gaussian noise of std `noise_std` (NIID-Bench), drawn once on the CPU
    from the partition's seed, so that training and every analysis see the same data.

    Fixed, unlike NIID-Bench's code, whose AddGaussianNoise redraws it at every read of a sample (as augmentation);
    and only the clients' training pool is noisy: the test set stays clean, where NIID-Bench tests on the parties'
    noisy test sets concatenated. The noise is drawn with torch's CPU generator whenever a job loads the clients'
    data (not stored), so the train and analysis jobs of a run must run one torch version to see the same noise."""
    import torch  # lazy: only where a client's data is loaded; planning and the partition job stay torch-free

    if not x_train.is_floating_point():
        raise PartitionError(f"the partition kind feature_noise adds noise to inputs, but this dataset's inputs "
                             f"are {x_train.dtype} (e.g. token ids): use another partition kind")
    noisy = x_train.clone()
    for client, idx in enumerate(partition.client_indices):
        std = noise_std(partition, client)
        if std == 0 or len(idx) == 0:
            continue
        gen = torch.Generator().manual_seed(derive_seed(partition.seed, client, _NOISE_STREAM))
        index = torch.as_tensor(idx, dtype=torch.long)
        noise = torch.randn((len(idx), *x_train.shape[1:]), generator=gen, dtype=torch.float32)
        noisy[index.to(x_train.device)] += std * noise.to(device=x_train.device, dtype=x_train.dtype)
    return noisy


def _make_dirichlet(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, alpha):
    return dirichlet_partition(labels, num_clients, float(alpha), seed, min_size, max_tries)


def _make_iid(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset):
    return iid_partition(len(labels), num_clients, seed, min_size)


def _make_classes(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, classes_per_client):
    return classes_partition(labels, num_clients, classes_per_client, seed, min_size, max_tries)


def _make_quantity(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, beta):
    return quantity_partition(len(labels), num_clients, beta, seed, min_size, max_tries)


def _make_feature_noise(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, sigma):
    return feature_noise_partition(len(labels), num_clients, sigma, seed, min_size)


def _make_natural(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, select):
    return natural_partition(writer_ids, num_clients, seed, select, min_size, dataset)


def _make_split_file(labels, num_clients, seed, min_size, max_tries, writer_ids, dataset, path):
    return split_file_partition(labels, path, num_clients, seed, min_size, dataset)


def _split_file_files(options: dict[str, Any]) -> dict[str, str]:
    return {"path": str(options["path"])}


PARTITION_KINDS: dict[str, PartitionKind] = {k.name: k for k in (
    PartitionKind("dirichlet", {"alpha": None}, "NIID-Bench (Li et al. 2022): per-class Dirichlet over clients",
                  _make_dirichlet, by_class=True, concentrations=("alpha",)),
    PartitionKind("iid", {}, "McMahan et al. 2017", _make_iid),
    PartitionKind("classes", {"classes_per_client": None}, "NIID-Bench #C=k (Li et al. 2022)", _make_classes,
                  _classes_fit, by_class=True, seed_free=_classes_seed_free),
    PartitionKind("quantity", {"beta": None}, "NIID-Bench quantity skew (Li et al. 2022)", _make_quantity,
                  concentrations=("beta",)),
    PartitionKind("feature_noise", {"sigma": None}, "NIID-Bench noise-based feature skew", _make_feature_noise,
                  _feature_noise_fit, inputs=_feature_noise_inputs),
    PartitionKind("natural", {"select": "first"}, "LEAF (Caldas et al. 2018)", _make_natural, needs_writers=True,
                  seed_free=_natural_seed_free),
    PartitionKind("split_file", {"path": None}, "Caldarola et al. 2022's published splits (Hsu et al. 2020)",
                  _make_split_file, _split_file_fit, files=_split_file_files, by_class=True,
                  clients=_split_file_clients, seed_free=_split_file_seed_free),
)}


def partition_kind(name: str) -> PartitionKind:
    """The PartitionKind named `name` (a `partitions` entry's kind, or the kind a partition file records)."""
    if name not in PARTITION_KINDS:
        raise PartitionError(f"unknown partition kind {name!r}.{suggest(str(name), PARTITION_KINDS)} "
                             f"Valid: {', '.join(PARTITION_KINDS)}")
    return PARTITION_KINDS[name]


def setting_entry(setting: str | float, entry: dict | None = None) -> tuple[dict, str | None]:
    """The `partitions` entry ({kind: ..., <options>}) a heterogeneity setting stands for and the label its
    partition records: a `partitions` label's own `entry` (a partition job's `kind` setting) and the label; an
    alpha's kind, iid or dirichlet with that alpha, and no label (so the alphas' partitions stay as they were)."""
    if is_partition_label(setting):
        if entry is None:
            raise PartitionError(f"the partition label {setting!r} comes without its `partitions` entry")
        return entry, setting
    alpha = parse_alpha(setting)
    return ({"kind": "iid"} if math.isinf(alpha) else {"kind": "dirichlet", "alpha": alpha}), None


def kind_options(entry: dict) -> dict[str, Any]:
    """A `partitions` entry's options with the kind's defaults filled in (entry = {kind: ..., <options>}; an option
    set to None counts as not given)."""
    spec = PARTITION_KINDS[entry["kind"]]
    return {name: default if entry.get(name) is None else entry[name] for name, default in spec.options.items()}


def kind_files(entry: dict) -> list[str]:
    """The files the writer of a `partitions` entry reads (its `PartitionKind.files`; none for most kinds)."""
    spec = PARTITION_KINDS[entry["kind"]]
    return [] if spec.files is None else list(spec.files(kind_options(entry)).values())


def kind_client_count(entry: dict) -> tuple[int, str] | None:
    """The client count a `partitions` entry fixes, with the option that fixes it in words (its kind's
    `PartitionKind.clients`: a split file's users, where the file is there), or None where any count goes or the
    count is not known at planning; None for an entry `check_partition_entry` refuses."""
    spec = PARTITION_KINDS.get(entry.get("kind"))
    if spec is None or spec.clients is None or check_partition_entry("<entry>", entry):
        return None
    return spec.clients(kind_options(entry))


def seed_free_reason(entry: dict, num_clients: int, dataset: str,
                     dataset_options: dict[str, Any] | None = None) -> str | None:
    """Why a `partitions` entry's writer gives `num_clients` clients of `dataset` (a known name, read with
    `dataset_options`: the config's `datasets.<name>`) the same split for every seed (its kind's
    `PartitionKind.seed_free`: one class per client among at most the classes of an image data set, the first
    writers, a split file), or None where the seed draws it or may; None for an entry `check_partition_entry`
    refuses."""
    spec = PARTITION_KINDS.get(entry.get("kind"))
    if spec is None or spec.seed_free is None or check_partition_entry("<entry>", entry):
        return None
    return spec.seed_free(kind_options(entry), int(num_clients), dataset, dataset_options)


def kind_file_path(path: str | Path) -> Path:
    """A file that a `partitions` entry names, as its writer opens it: a relative path starts at the working
    directory (Snakemake's, the directory it runs in, where the partition job runs too)."""
    return Path.cwd() / path


def kind_file_problems(label: str, entry: dict) -> list[str]:
    """The files a `partitions` entry's kind reads that are not there, each naming its key (`partitions.<label>.
    <option>`) and, for a relative path, the folder it is read from; none for an entry `check_partition_entry`
    refuses. Checked before the partition jobs start, not by a dry run (which plans without the file)."""
    spec = PARTITION_KINDS.get(entry.get("kind"))
    if spec is None or spec.files is None or check_partition_entry(label, entry):
        return []
    problems = []
    for option, given in spec.files(kind_options(entry)).items():
        path = kind_file_path(given)
        if path.is_file():
            continue
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        where = "" if Path(given).is_absolute() else f" (relative paths start at the working directory {Path.cwd()})"
        problems.append(f"partitions.{label}.{option}: {given!r} {what}{where}: the partition kind {spec.name} reads "
                        "this file")
    return problems


def check_partition_entry(label: str, entry: dict) -> list[str]:
    """Problems of one `partitions` entry: an unknown kind (with a suggestion), a missing or foreign option, a
    Dirichlet concentration above MAX_CONCENTRATION."""
    where = f"partitions.{label}"
    kind = entry.get("kind")
    if kind not in PARTITION_KINDS:
        return [f"{where}.kind: unknown partition kind {kind!r}.{suggest(str(kind), PARTITION_KINDS)} "
                f"Valid: {', '.join(PARTITION_KINDS)}"]
    spec = PARTITION_KINDS[kind]
    problems = [f"{where}.{name}: the partition kind {kind} needs `{name}`"
                for name, default in spec.options.items() if default is None and entry.get(name) is None]
    # null stands for "not set" (the schema fills every option with it)
    foreign = sorted(k for k, v in entry.items() if k != "kind" and k not in spec.options and v is not None)
    problems += [f"{where}.{name}: not an option of the partition kind {kind} "
                 f"(its options: {', '.join(spec.options) or 'none'})" for name in foreign]
    for name in spec.concentrations:
        value = entry.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_CONCENTRATION:
            problems.append(
                f"{where}.{name}: {value:g} is above {MAX_CONCENTRATION:g}, where its Dirichlet draw gives each of the "
                f"M clients 1/M to within about 0.1%, indistinguishable from an IID split (and from about 1e300 on "
                f"numpy's draws overflow to zeros); set {name} to at most {MAX_CONCENTRATION:g}, or use the kind iid "
                "(`alphas: [iid]`) for an IID split")
    return problems


def check_partition_dataset(label: str, entry: dict, dataset: str,
                            dataset_options: dict[str, Any] | None = None) -> list[str]:
    """Problems of a `partitions` entry on `dataset` (a known name, read with `dataset_options`: the config's
    `datasets.<name>`) that the dataset's declaration shows: a kind it cannot take (one that needs writers, on a
    dataset without them) or an option beyond what it holds (classes_per_client above its classes; a split file of
    the whole training set beside a proxy split). An entry that `check_partition_entry` refuses is left to it."""
    spec = PARTITION_KINDS.get(entry.get("kind"))
    if spec is None or check_partition_entry(label, entry):
        return []
    where = f"partitions.{label}"
    problem = class_label_problem(spec.name, dataset)
    if problem:
        return [f"{where}: {problem}"]
    if spec.needs_writers and not dataset_info(dataset).writers:
        with_writers = [name for name in DATASET_NAMES if dataset_info(name).writers]
        return [f"{where}: the kind {spec.name} splits by each sample's writer, but {dataset} has no writer ids "
                f"(datasets with writers: {', '.join(with_writers) or 'none yet'})"]
    return [] if spec.fits is None else spec.fits(where, kind_options(entry), dataset, dataset_options)


def class_label_problem(kind: str, dataset: str) -> str | None:
    """Why partition kind `kind` cannot split `dataset` (a known name): it splits by class, and the dataset's samples
    have none (sequence labels); None where it can."""
    if not PARTITION_KINDS[kind].by_class or not dataset_info(dataset).sequence_labels:
        return None
    free = [name for name, spec in PARTITION_KINDS.items() if not spec.by_class]
    return (f"the kind {kind} splits by each sample's class, but {dataset}'s samples are labelled with every "
            f"position's next word (no class per sample); use a kind that does not: {', '.join(free)}")


def make_kind_partition(entry: dict, labels: np.ndarray, num_clients: int, seed: int, min_size: int = 10,
                        max_tries: int = MAX_TRIES_DEFAULT, writer_ids: np.ndarray | None = None,
                        dataset: str = "the dataset", label: str | None = None) -> Partition:
    """The partition of a `partitions` entry ({kind: ..., <options>}) of the training labels."""
    problems = check_partition_entry(label or "<entry>", entry)
    if problems:
        raise PartitionError("; ".join(problems))
    spec = PARTITION_KINDS[entry["kind"]]
    part = spec.make(np.asarray(labels), num_clients, seed, min_size, max_tries,
                     writer_ids if spec.needs_writers else None, dataset, **kind_options(entry))
    return replace(part, kind=spec.name, label=label)  # the kind its entry names (a writer may reuse another's)


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
    indices = (np.concatenate(partition.client_indices) if partition.client_indices
               else np.zeros(0, dtype=np.int64))
    offsets = np.concatenate([[0], np.cumsum(partition.sizes)]).astype(np.int64)
    # numpy's version: its Generator's streams may change between versions (NEP 19), so the same seed may draw
    # another split under another numpy
    record = {**meta, "alpha": _alpha_text(partition.alpha), "seed": partition.seed,
              "num_samples_total": partition.num_samples_total, "kind": partition.kind, "options": partition.options,
              "label": partition.label, "numpy": np.__version__}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                indices=indices,
                offsets=offsets,
                class_counts=partition.class_counts(labels, num_classes),
                labels_checksum=np.array([_labels_checksum(labels)], dtype=np.int64),
                meta=np.array(json.dumps(record, allow_nan=False)),
            )


def _alpha_text(alpha: float) -> float | str | None:
    """A partition's alpha as its metadata writes it, in strict JSON (no NaN or Infinity): NaN (no Dirichlet alpha)
    as null, inf (IID labels) as "inf"; `_stored_alpha` reads it back."""
    if math.isnan(alpha):
        return None
    return "inf" if math.isinf(alpha) else float(alpha)


def _stored_alpha(meta: dict) -> float:
    """The alpha a partition's metadata records (`_alpha_text`): null is NaN, and float() reads "inf" as well as the
    Infinity that files written before strict JSON hold (json.loads makes it inf). ValueError naming any other value
    (a file not written by `save_partition`: no writer stores "iid" or a `partitions` label there)."""
    alpha = meta.get("alpha")
    try:
        return math.nan if alpha is None else float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"its alpha {alpha!r} is none of those a partition file records: a number, \"inf\" (an IID "
                         "split) or null (a split of no Dirichlet alpha; a `partitions` label's split records its "
                         "label beside it)") from None


# What np.load raises for a file that is not a partition's .npz: truncated, pickled, another archive, a key missing.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _unreadable(path, exc: Exception) -> str:
    return f"{path} is not a readable partition file ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"


def _stored_integer(meta: dict, key: str) -> int:
    """The integer a partition file's metadata records under `key` (1.7 is no seed: int() would take 1)."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ValueError(f"its {key} {value!r} is not an integer")
    return int(value)


def load_partition(path, labels: np.ndarray | None = None, data_sha256: str | None = None) -> Partition:
    """Load a partition; with `labels`, check it was made for this dataset's training set, and with `data_sha256`
    (the fingerprint of the data set's files now: `fedscape.data.locations.job_fingerprint`) that it was made from
    these files (a partition that recorded theirs)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            indices, offsets = f["indices"], f["offsets"]
            meta = json.loads(str(f["meta"]))
            checksum = int(f["labels_checksum"][0])
        if not isinstance(meta, dict):
            raise ValueError(f"its metadata is a JSON {type(meta).__name__}, not an object")
        alpha = _stored_alpha(meta)
        seed, total = _stored_integer(meta, "seed"), _stored_integer(meta, "num_samples_total")
    except (*UNREADABLE, TypeError, OverflowError) as exc:  # a field of another type, or 10**400
        raise PartitionError(f"{_unreadable(path, exc)}; {remake_alone_hint(path)}") from None
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != total or _labels_checksum(labels) != checksum:
            raise PartitionError(
                f"partition file {path} does not match this dataset's training set "
                f"({total} samples in the partition, {len(labels)} in the dataset, or "
                f"different labels); {remake_alone_hint(path)}"
            )
    made_from = meta.get("data_sha256")
    if data_sha256 and made_from and data_sha256 != made_from:
        differ = job_data_change(meta.get("dataset"), made_from)
        raise PartitionError(
            f"partition file {path} was made from other files of {meta.get('dataset')} than those there now "
            f"(fingerprint {made_from[:12]}, now {data_sha256[:12]}{': ' + differ if differ else ''}): what was "
            "made from the old files is out of "
            "date, and this job would mix the two. `make status` lists those results with the command that remakes "
            "them (from the partition on); or put back the files it was made from")
    shards = tuple(indices[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1))
    kind = meta.get("kind") or ("iid" if math.isinf(alpha) else "dirichlet")  # files from before the kinds
    return Partition(shards, alpha, seed, total, kind=kind,
                     options=dict(meta.get("options") or {}), label=meta.get("label"))


def partition_file_problem(path, dataset: str, num_clients: int, setting: str | float, seed: int) -> str | None:
    """One line naming `path` and what is wrong, unless it is a readable partition of `dataset` into `num_clients`
    clients for this heterogeneity `setting` (an alpha, or a `partitions` label) and `seed` (None): the checks that
    need no data, so that they run before any job. The line holds no remedy: that depends on who asks (a job that
    failed on it, or the workflow before any job, when what was made from it is still there).

    A label's kind options are not compared: when they change, Snakemake remakes the partition anyway."""
    try:
        with np.load(path, allow_pickle=False) as f:
            offsets = f["offsets"]
            meta = json.loads(str(f["meta"]))
            f["indices"], f["labels_checksum"]  # noqa: B018 (present and readable)
        alpha = _stored_alpha(meta)  # ValueError naming a value no partition file records
    except UNREADABLE as exc:
        return _unreadable(path, exc)
    found = {"dataset": meta.get("dataset"), "clients": len(offsets) - 1, "seed": meta.get("seed")}
    want = {"dataset": dataset, "clients": num_clients, "seed": seed}
    if is_partition_label(setting):
        found["partition"], want["partition"] = meta.get("label"), setting
    else:
        found["alpha"], want["alpha"] = alpha, parse_alpha(setting)
        found["partition"], want["partition"] = meta.get("label"), None
    return belongs_problem(path, "the partition of this run", want, found)


def check_partition_file(path, dataset: str, num_clients: int, setting: str | float, seed: int) -> None:
    """PartitionError with `partition_file_problem`'s line and the command that makes the file again alone."""
    problem = partition_file_problem(path, dataset, num_clients, setting, seed)
    if problem is not None:
        raise PartitionError(f"{problem}; {remake_alone_hint(path)}")


def check_run_partition(path, run: dict) -> None:
    """`check_partition_file` against the fields of `run` (a Run's fields, or those parsed from its run id)."""
    check_partition_file(path, run["dataset"], int(run["num_clients"]), run["alpha"], int(run["seed"]))


def partition_numpy(path) -> str | None:
    """The numpy version that drew the partition at `path`, as its metadata records it (None: not recorded)."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["meta"])).get("numpy")


def split_sha256(path) -> str:
    """SHA-256 of the split the partition file at `path` holds: its clients' sample indices, each client's in order
    (int64 offsets, then int64 indices), not the file's bytes, whose metadata names the numpy that wrote it: a
    partition made again alone under another numpy whose streams did not change is the same split."""
    try:
        with np.load(path, allow_pickle=False) as f:
            indices, offsets = f["indices"], f["offsets"]
    except UNREADABLE as exc:
        raise PartitionError(f"{_unreadable(path, exc)}; {remake_alone_hint(path)}") from None
    digest = hashlib.sha256(np.ascontiguousarray(offsets, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()


def run_record_path(path, run: dict) -> Path | None:
    """The meta.json of `run` (its fields) in the results directory that the partition file at `path` lies in; None
    where `path` is not a partition file of the results' layout (`core.paths.PARTITION_FILE`)."""
    fields = parse_path(PARTITION_FILE, path)
    if fields is None:
        return None
    results = str(path)[: -len(fill(PARTITION_FILE, **fields))]
    return Path(results, fill(TRAIN_DIR, **run), TRAIN_FILE_NAMES["meta"])


def trained_inputs(record: Path | None) -> dict | None:
    """The files a run trained from, as its meta.json at `record` names them (`inputs`: the partition's and init's
    SHA-256, the split's, `split_sha256`, and the numpy that drew it; `stages.train`); None where it names none
    (trained before runs recorded them), or there is none to read (not trained yet, or damaged: `make verify` names
    it)."""
    try:
        inputs = json.loads(record.read_text()).get("inputs") if record is not None else None
    except (OSError, ValueError, AttributeError):
        return None
    return inputs if isinstance(inputs, dict) else None


def trained_partition_problem(path, run: dict, args: str | None = None,
                              split_of: Callable[[Any], str] = split_sha256) -> str | None:
    """Why the partition file at `path` is not the one `run` (its fields) was trained on, with the remedy that trains
    the runs again (`core.io.remake_hint`, with the user's Snakemake arguments `args` where given: `make status`), or
    None where it is, or the run is not checked (`check_trained_partition`). `split_of`: `split_sha256`, or a cache of
    it where many runs share the file (`make status`)."""
    record = run_record_path(path, run)
    inputs = trained_inputs(record)
    trained_on = inputs.get("split") if inputs is not None else None
    if not isinstance(trained_on, str) or (found := split_of(path)) == trained_on:
        return None
    now, then = partition_numpy(path), inputs.get("partition_numpy")
    drawn = f"drawn with numpy {now or 'unrecorded'}"
    if now and then and now != then:
        drawn += (f", the run's with numpy {then}: numpy's random streams may change between versions, and the same "
                  "seed then draws another split")
    return (f"partition file {path} is not the split run {fill(RUN_ID, **run)} was trained on "
            f"(split SHA-256 {found[:12]}..., where its record {record} names {trained_on[:12]}...; {drawn}): its "
            "analyses would mix the run's models with other clients' data. Train the runs on this split: "
            f"{remake_hint(path, args)}; or put back the partition file the runs were trained on")


def check_trained_partition(path, run: dict) -> None:
    """PartitionError when the partition file at `path` is not the one `run` (its fields) was trained on: its SHA-256
    is not the one the run's meta.json records (`inputs`' split: `split_sha256`, `stages.train`;
    `run_record_path`). A partition made again
    alone (`core.io.remake_alone_hint`) is bit-identical from its seed only under the numpy that drew it: numpy's
    Generator streams may change between versions (NEP 19), so the same seed may draw another split, and an analysis
    would evaluate the run's models on clients it was not trained on. The remedy trains the runs again
    (`core.io.remake_hint`). A run whose meta.json records no partition (trained before runs recorded it), or that has
    none to read (not trained yet), is not checked. `make status` names such runs before an analysis reads them
    (`trained_partition_problem`)."""
    if (problem := trained_partition_problem(path, run)) is not None:
        raise PartitionError(problem)


# Rows of labels converted to int64 at a time by `_labels_checksum`: a few MB, where the whole array's int64 copy
# (and its bytes) would be twice the labels again at int64 (Stack Overflow's 135M x 20 next-word labels: ~43 GB).
_CHECKSUM_ROWS = 1 << 16


def _labels_checksum(labels: np.ndarray) -> int:
    """CRC-32 of the labels' int64 bytes in C order, taken in chunks of rows (the same value as of the whole)."""
    labels = np.asarray(labels)
    crc = 0
    for start in range(0, max(len(labels), 1), _CHECKSUM_ROWS):
        crc = zlib.crc32(np.ascontiguousarray(labels[start:start + _CHECKSUM_ROWS], dtype=np.int64), crc)
    return crc
