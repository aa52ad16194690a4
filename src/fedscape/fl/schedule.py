"""Torch-free plan of a client's local training in one round: how much local work it does (epochs or
steps, equal for every client or not: system heterogeneity) and the learning rate of each of its steps.

Both client trainers (fedscape.fl.sequential, fedscape.fl.vectorized) read these, so that a client does
exactly the same work at exactly the same learning rates on either path; planning reads them without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedscape.core.seeds import derive_seed

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine")
# How a client's batches are drawn (`training.batch_sampling`): `shuffle`, each pass a permutation of its samples
# (torch's DataLoader(shuffle=True), the baseline); `replacement`, every step a batch of batch_size samples drawn
# uniformly with replacement, as nanoGPT's get_batch draws random windows per step (the layer-wise LMC authors'
# LLMC/get_llm.py), a pass being as many steps as shuffle's.
BATCH_SAMPLINGS = ("shuffle", "replacement")
LR_SCHEDULE_OVER = ("local_steps", "rounds")
WORK_KEYS = ("local_epochs", "local_steps")  # a client's local work per round: one of the two
WORK_DRAWS = ("round", "once")
DEFAULT_LOCAL_EPOCHS = 5  # the pilot study's (Li et al., Sec. 3), when neither work key is given
# Random stream of the local-work draws, as the last seed key: (seed, round, client) keys the clients'
# batch orders and (seed, round, client, 1) their stochastic layers, so a trailing 2 is never shared.
_WORK_STREAM = (0x3C, 2)


@dataclass(frozen=True)
class UniformWork:
    """Local work drawn uniformly from the integers low..high (both included), for every client either
    once for the whole run (`draw: once`: fixed but unequal work) or anew every round (`draw: round`)."""

    low: int
    high: int
    draw: str = "round"


Work = int | tuple[int, ...] | UniformWork


def parse_work(key: str, value) -> Work | None:
    """The local work of `key` (local_epochs or local_steps): an integer for every client, one integer
    per client (a list), or a uniform draw ({low, high, draw}); None when not given. ValueError naming the key."""
    if value is None or isinstance(value, UniformWork):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer >= 1, a list of them or {{low, high, draw}}, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
        return value
    if isinstance(value, list | tuple):
        if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ValueError(f"{key} as a list needs one integer >= 1 per client, got {list(value)}")
        return tuple(int(v) for v in value)
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "draw"}
        if unknown or not {"low", "high"} <= set(value):
            raise ValueError(f"{key} as a draw takes exactly low, high and optionally draw, got {sorted(value)}")
        low, high, draw = value["low"], value["high"], value.get("draw", "round")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (low, high)) or not 1 <= low <= high:
            raise ValueError(f"{key} needs integers 1 <= low <= high, got low={low!r}, high={high!r}")
        if draw not in WORK_DRAWS:
            raise ValueError(f"{key}.draw must be one of {', '.join(WORK_DRAWS)}, got {draw!r}")
        return UniformWork(low, high, draw)
    raise ValueError(f"{key} must be an integer >= 1, a list of them or {{low, high, draw}}, got {value!r}")


def most_work(work: Work) -> int:
    """The most local work (epochs or steps) a client may take in a round: the value, a list's largest, a draw's
    high end."""
    if isinstance(work, int):
        return work
    return max(work) if isinstance(work, tuple) else work.high


def work_amounts(work: Work, seed: int, round_: int, num_clients: int) -> list[int]:
    """Every client's local work (epochs or steps) in round `round_`, for all `num_clients` clients.

    Draws take a seed derived from the run seed (and the round for `draw: round`), so they do not
    depend on which clients a round samples, and a resumed run draws the same.
    """
    if isinstance(work, int):
        return [work] * num_clients
    if isinstance(work, tuple):
        if len(work) != num_clients:
            raise ValueError(f"local work lists {len(work)} values but the run has {num_clients} clients")
        return list(work)
    key = round_ if work.draw == "round" else 0  # round 0 never trains: the run-wide draw takes its key
    rng = np.random.default_rng(derive_seed(seed, key, *_WORK_STREAM))
    return [int(v) for v in rng.integers(work.low, work.high + 1, size=num_clients)]


def work_text(unit: str, work: Work) -> str:
    """A client's local work per round as text: '5 epochs', 'steps per client [1, 5, 10]',
    'steps uniform in 1..5, drawn every round'."""
    if isinstance(work, int):
        return f"{work} {unit}"
    if isinstance(work, tuple):
        return f"{unit} per client {list(work)}"
    when = "drawn every round" if work.draw == "round" else "drawn once per client"
    return f"{unit} uniform in {work.low}..{work.high}, {when}"


def lr_factor(position: float, length: float, total: float, warmup: float, schedule: str) -> float:
    """The learning rate of a step, as a fraction of the base lr, from the step's start `position` and
    `length` in a schedule of `total` units (local steps, or rounds).

    Linear warm-up over the first `warmup` units: (position + length) / warmup, so that the first step
    already moves (a zero lr would waste it) and the step ending at `warmup` has the full lr. Then
    `constant` keeps 1 and `cosine` decays as 0.5 (1 + cos(pi (position - warmup) / (total - warmup)))
    (Loshchilov & Hutter 2017, SGDR, one cycle without restart): 1 at the end of the warm-up, and above
    0 at the last step (which starts before `total`).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if position < warmup:
        return min(1.0, (position + length) / warmup)
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (position - warmup) / (total - warmup)))


def step_lrs(lr: float, schedule: str, over: str, warmup: float, rounds: int, round_: int,
             num_steps: int) -> list[float]:
    """The learning rate of each of a client's `num_steps` local steps in round `round_` (1-based).

    `over: local_steps`: the schedule restarts every round and runs over the client's own steps
    (step k of K at position k, length 1, total K). `over: rounds`: one schedule over the whole run,
    counted in rounds; step k of the client's K steps in round t sits at (t - 1) + k / K with length
    1 / K, so warm-up and decay are smooth within a round and a one-client run follows the schedule
    of centralised training step by step. `constant` without warm-up gives `lr` at every step.
    """
    if over not in LR_SCHEDULE_OVER:
        raise ValueError(f"lr_schedule_over must be one of {', '.join(LR_SCHEDULE_OVER)}, got {over!r}")
    if schedule == "constant" and warmup == 0:
        return [lr] * num_steps
    if over == "local_steps":
        return [lr * lr_factor(k, 1.0, num_steps, warmup, schedule) for k in range(num_steps)]
    return [lr * lr_factor((round_ - 1) + k / num_steps, 1.0 / num_steps, rounds, warmup, schedule)
            for k in range(num_steps)]


def effective_steps(steps: int, momentum: float) -> float:
    """sum_{k=1..K} (1 - m^k) / (1 - m): how far K heavy-ball steps with momentum m move under a
    constant gradient, in plain-SGD steps (K for m = 0; FedNova's ||a_i||_1 with momentum, Wang et al. 2020)."""
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


def update_weight(lrs: list[float], momentum: float, nesterov: bool = False) -> float:
    """sum_j sum_{k >= j} lr_k m^(k - j): the total weight of the local gradients in a client's update
    x - y = sum_j (that weight of g_j) g_j for heavy-ball SGD with momentum m at step lrs lr_k (FedNova's
    ||a_i||_1 times the lr, Wang et al. 2020, Sec. 4; SCAFFOLD's K lr of option II). With one lr it is
    exactly lr * effective_steps(K, m).

    With Nesterov momentum (torch's form: step k moves by lr_k (g_k + m b_k), b_k = m b_(k-1) + g_k) g_j weighs
    lr_j + m sum_{k >= j} lr_k m^(k - j), so the total is sum_j lr_j plus m times the heavy-ball total."""
    if not lrs:
        return 0.0
    if nesterov:
        return float(sum(lrs)) + momentum * update_weight(lrs, momentum)
    if all(v == lrs[0] for v in lrs):
        return effective_steps(len(lrs), momentum) * lrs[0]
    total, tail = 0.0, 0.0
    for lr in reversed(lrs):  # tail_j = lr_j + m tail_{j+1} = sum_{k >= j} lr_k m^(k - j)
        tail = lr + momentum * tail
        total += tail
    return total


def epoch_batches(num_samples: int, batch_size: int, drop_last: bool = False) -> int:
    """The batches of one pass over `num_samples` samples, as `fedscape.fl.local.batch_order` cuts it (either batch
    sampling): ceil(n / B), or under `drop_last` floor(n / B) but at least 1 (a pass's only batch is kept, so that
    every client trains); 0 for a client without samples."""
    if num_samples < 1:
        return 0
    end = num_samples - batch_size + 1 if drop_last and num_samples >= batch_size else num_samples
    return -(-end // batch_size)


def client_steps(num_samples: int, work: int, unit: str, batch_size: int, drop_last: bool = False) -> int:
    """A client's local steps in one round, as `fedscape.fl.local.local_plan` plans them: `work` steps where the work
    is counted in steps (`unit`: 'steps', whatever the client holds), else `work` passes of `epoch_batches` each."""
    if unit == "steps":
        return work
    return work * epoch_batches(num_samples, batch_size, drop_last)


def stacked_chunks(steps: list[int], chunk_size: int) -> list[tuple[int, int]]:
    """How a vectorised round stacks its sampled clients, whose local steps are `steps`: (clients, stacked steps) of
    each chunk, as `fedscape.fl.vectorized.VectorizedTrainer.train_round` forms them. The clients are taken longest
    first, at most `chunk_size` together (0: all in one chunk), and a chunk takes as many stacked steps as its longest
    client: a client done with its steps leaves the stack while the others go on."""
    ordered = sorted(steps, reverse=True)
    size = chunk_size if chunk_size > 0 else max(1, len(ordered))
    return [(len(ordered[i : i + size]), ordered[i]) for i in range(0, len(ordered), size)]


def stacked_client_steps(steps: list[int], chunk_size: int) -> int:
    """The client steps a vectorised round pays for: every chunk (`stacked_chunks`) its clients times its longest
    client's steps, as if each client stepped for as long as its chunk does. A stacked step's cost on a card is
    mostly fixed (launches, small kernels), not in proportion to the clients still in the stack, so a round costs
    about its chunks' stacked steps at the cost of a full chunk's step: with unequal shards (CIFAR-10's Dirichlet(0.1)
    splits among 10 clients: the largest 1.6-1.9x the mean) more than its clients' own steps (`sum(steps)`, what
    equal shards would cost), which bound it from below. Equal steps give `sum(steps)`."""
    return sum(clients * longest for clients, longest in stacked_chunks(steps, chunk_size))
