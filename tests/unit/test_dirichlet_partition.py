"""Dirichlet label skew: the draws without mass under the cap (exact zeros of a tiny alpha) are redrawn and never give
a class to the clients at the cap, and every other partition is the one the loop before that fix made, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedscape.data import partition as partition_module
from fedscape.data.partition import DIRICHLET_EXACT_ZEROS_BELOW, dirichlet_partition


def frozen_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10,
                     max_tries: int = 1000) -> tuple[tuple[np.ndarray, ...] | None, bool]:
    """The loop of `dirichlet_partition` before the redraws (commit cd8c88c), frozen: its client indices (None where
    it gave up) and whether any try reached its `total <= 0` branch (a draw with no mass under the cap)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    cap = len(labels) / num_clients
    no_mass = False
    for _ in range(max_tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        held = np.zeros(num_clients, dtype=np.int64)
        for k in classes:
            idx_k = np.flatnonzero(labels == k)
            rng.shuffle(idx_k)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = np.where(held < cap, p, 0.0)
            total = p.sum()
            if total <= 0:
                no_mass = True
                p = np.full(num_clients, 1.0 / num_clients)
            else:
                p = p / total
            cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
            for j, part in enumerate(np.split(idx_k, cuts)):
                shards[j].append(part)
                held[j] += len(part)
        if held.min() >= min_size:
            return tuple(np.sort(np.concatenate(s)).astype(np.int64) for s in shards), no_mass
    return None, no_mass


def held_before(counts: np.ndarray) -> np.ndarray:
    """[clients, classes]: what each client held before each class was dealt (classes in ascending order)."""
    return np.cumsum(np.c_[np.zeros(len(counts), dtype=np.int64), counts], axis=1)[:, :-1]


@pytest.fixture(scope="module")
def skewed_labels() -> np.ndarray:
    """10 classes of 5000 samples, CIFAR-10's training set's shape (the review's reproduction)."""
    return np.repeat(np.arange(10), 5000)


@pytest.mark.parametrize(("num_classes", "num_samples"), [(10, 3000), (100, 6000)])
@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.0, 10.0])
@pytest.mark.parametrize("num_clients", [5, 10, 37])
def test_a_partition_without_a_massless_draw_is_the_one_the_loop_before_the_fix_made(num_classes, num_samples, alpha,
                                                                                     num_clients):
    labels = np.random.default_rng(num_classes).integers(0, num_classes, size=num_samples)

    for seed in range(3):
        expected, no_mass = frozen_dirichlet(labels, num_clients, alpha, seed)
        made = dirichlet_partition(labels, num_clients, alpha, seed)

        assert not no_mass  # alpha >= 0.1: Gamma variates, never an exact zero in practice
        assert len(made.client_indices) == len(expected)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype
                   for a, b in zip(made.client_indices, expected, strict=True))


def test_a_tiny_alpha_partition_without_a_massless_draw_is_unchanged_too(skewed_labels):
    # Prepare: seeds of alpha 0.01 whose tries never drew all zeros under the cap, and at least one that did
    unchanged = 0
    for seed in range(20):
        expected, no_mass = frozen_dirichlet(skewed_labels, 10, 0.01, seed)
        if no_mass or expected is None:
            continue
        unchanged += 1

        # Execute / Assert: the same partition
        made = dirichlet_partition(skewed_labels, 10, 0.01, seed)
        assert all(np.array_equal(a, b) for a, b in zip(made.client_indices, expected, strict=True)), seed

    assert unchanged >= 10


def test_the_review_reproduction_gives_no_client_at_the_cap_a_sample_of_the_class(skewed_labels):
    # Prepare: seed 18 at alpha 0.01 drew no mass under the cap for class 7, and the loop before the fix spread it over
    # all ten clients (500 each), client 0 at 9,559 samples already
    old, no_mass = frozen_dirichlet(skewed_labels, 10, 0.01, 18)
    old_counts = np.stack([np.bincount(skewed_labels[ix], minlength=10) for ix in old])
    assert no_mass and (old_counts[:, 7] >= 499).all()

    # Execute
    part = dirichlet_partition(skewed_labels, 10, 0.01, seed=18)

    # Assert: every index once, and no client at or over the cap N/M gets a sample of a class dealt after it got there
    counts = part.class_counts(skewed_labels, 10)
    at_cap = held_before(counts) >= len(skewed_labels) / 10
    assert np.array_equal(np.sort(np.concatenate(part.client_indices)), np.arange(len(skewed_labels)))
    assert at_cap.any() and not counts[at_cap].any()


@pytest.mark.parametrize(("num_clients", "seeds_with_no_mass"), [(5, 11), (10, 5)])
def test_redrawn_classes_never_reach_a_client_at_the_cap(skewed_labels, num_clients, seeds_with_no_mass):
    # Prepare: the seeds of 100 whose partition at alpha 0.01 the loop before the fix made with a draw without mass
    # under the cap (5 at M=10: 18, 45, 47, 84, 94)
    seeds = [s for s in range(100) if frozen_dirichlet(skewed_labels, num_clients, 0.01, s, max_tries=50)[1]]
    assert len(seeds) == seeds_with_no_mass

    for seed in seeds:
        # Execute
        part = dirichlet_partition(skewed_labels, num_clients, 0.01, seed, max_tries=50)

        # Assert: no client at or over the cap gets a sample of a class dealt after it got there. The last client
        # can get one by the rounding of an ordinary cut (cumsum(p)[-2] * n just below n), as it could before;
        # a redrawn class's cut ends at its last client with mass.
        counts = part.class_counts(skewed_labels, 10)
        over = held_before(counts) >= len(skewed_labels) / num_clients
        over[-1] = False
        assert not counts[over].any(), seed
        assert np.array_equal(np.sort(np.concatenate(part.client_indices)), np.arange(len(skewed_labels)))


def test_without_redraws_the_class_is_spread_evenly_over_the_clients_under_the_cap(skewed_labels, monkeypatch):
    # Prepare: no redraws, so the random stream is the old loop's and only the class without mass differs (class 7)
    monkeypatch.setattr(partition_module, "DIRICHLET_REDRAWS", 0)
    old, _ = frozen_dirichlet(skewed_labels, 10, 0.01, 18)
    old_counts = np.stack([np.bincount(skewed_labels[ix], minlength=10) for ix in old])

    # Execute
    counts = dirichlet_partition(skewed_labels, 10, 0.01, seed=18).class_counts(skewed_labels, 10)

    # Assert: the other classes as before; class 7 in near-equal parts to the clients under the cap, none to the others
    others = np.arange(10) != 7
    under = held_before(counts)[:, 7] < len(skewed_labels) / 10
    assert np.array_equal(counts[:, others], old_counts[:, others])
    assert 0 < under.sum() < 10
    assert counts[under, 7].max() - counts[under, 7].min() <= 1 and counts[under, 7].sum() == 5000
    assert not counts[~under, 7].any()


def test_numpy_draws_exact_zeros_only_below_the_threshold():
    # numpy's Generator.dirichlet: stick-breaking over Beta variates below 0.1 (exact zeros), Gamma variates from 0.1
    rng = np.random.default_rng(0)

    below = rng.dirichlet(np.full(10, math.nextafter(DIRICHLET_EXACT_ZEROS_BELOW, 0)), size=20000)
    at = rng.dirichlet(np.full(10, DIRICHLET_EXACT_ZEROS_BELOW), size=20000)

    assert (below == 0).any()
    assert not (at == 0).any()


class _GivenDraws:
    """A generator whose Dirichlet draws are given, one per class dealt, and whose shuffles keep the order."""

    def __init__(self, draws: list[list[float]]):
        self._draws = iter(draws)

    def shuffle(self, x: np.ndarray) -> None:
        pass

    def dirichlet(self, alpha: np.ndarray) -> np.ndarray:
        return np.array(next(self._draws), dtype=np.float64)


@pytest.mark.parametrize(("draws", "second_class"), [
    # client 3 at the cap after class 0 (5000 > N/M = 2500): p_3 = 0, and cumsum(p / 0.99)[2] = 0.9999999999999999
    ([[0, 0, 0, 1], [0.27, 0.33, 0.39, 0.01]], [1363, 1667, 1969, 1]),
    # the same with an exact zero draw for client 3, under the cap (1250 held)
    ([[0.25, 0.25, 0.25, 0.25], [0.27, 0.33, 0.39, 0.0]], [1363, 1667, 1969, 1]),
    # a cumsum that ends at 1.0 exactly: nothing for client 3
    ([[0, 0, 0, 1], [0.25, 0.25, 0.5, 0.01]], [1250, 1250, 2500, 0]),
])
def test_the_last_client_with_no_mass_can_get_one_sample_by_niid_bench_s_rounding(monkeypatch, draws, second_class):
    # Prepare: two classes of 5000 samples, 4 clients, these draws. The stray sample is kept on purpose (NIID-Bench's
    # partition_data rounds the same way; dirichlet_partition's docstring): a change of it changes partitions, so it
    # must come with a partition version bump.
    labels = np.repeat(np.arange(2), 5000)
    monkeypatch.setattr(np.random, "default_rng", lambda seed: _GivenDraws(draws))

    # Execute
    part = dirichlet_partition(labels, 4, 0.5, seed=0, min_size=1, max_tries=1)

    # Assert: the second class's cuts, and every index once
    assert part.class_counts(labels, 2)[:, 1].tolist() == second_class
    assert np.array_equal(np.sort(np.concatenate(part.client_indices)), np.arange(len(labels)))
