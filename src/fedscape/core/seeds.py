"""Seeds derived from integer keys, so every random stream is reproducible and resumable."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. run seed, round, client id). numpy's generators take all its
    bits; torch's CPU generator (mt19937) keeps only its low 32 (the seed mod 2**32), where two streams meet by chance
    (about 2**-32 a pair), not by their keys: the keys' every bit changes the whole seed, unlike a seed given to
    torch as it is written (workflow/schemas/config.schema.yaml, $defs.torch_seed).

    Deriving every random stream from (seed, round, client) makes training resumable at any
    round without saving random-generator states, and keeps runs bit-identical.

    numpy's SeedSequence drops trailing zero keys and splits a key >= 2**32 into 32-bit words, so keys alone do not
    keep two purposes apart: (s, 1) and (s, 1, 0) give one seed. A new stream takes a purpose tag in a position and a
    key count no other stream of the same seed uses (e.g. `(seed, TAG, round, client)`). The existing streams keep
    their keys, since changing one would change every result made with it; where they meet, the draws come from
    different generators or jobs, except a feature_noise partition of 79 or more clients, whose noise of client c
    (`(seed, c, 0x4E)`) shares its seed with client 78's batch order in round c (`fl.local.client_generator`).
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
