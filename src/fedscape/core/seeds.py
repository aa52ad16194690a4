"""Seeds derived from integer keys, so every random stream is reproducible and resumable."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. run seed, round, client id).

    Deriving every random stream from (seed, round, client) makes training resumable at any
    round without saving random-generator states, and keeps runs bit-identical.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
