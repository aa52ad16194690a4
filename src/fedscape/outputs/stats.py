"""Statistics over seeds: which runs count, and the mean with its Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from fedscape.core.runs import OK


def did_not_diverge(final):
    """The rows of a final.csv-like table whose run did not diverge: every statistic over seeds uses only these.

    A diverged run's final test accuracy (that of its last finite model, or chance) would otherwise mix
    into a mean while its NaN losses stay out.
    """
    return final[final["status"] == OK]


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """(mean, std with ddof=1, low, high, n) of the values that are not NaN (a NaN or None is a value not computed:
    left out, and not counted in n); Student-t interval of the mean.

    With one value std and the interval are NaN (no spread can be estimated); with none, all NaN. An infinite value
    counts (a +inf barrier is the worst there is, not a missing one): the mean is that infinity (NaN where both signs
    occur), and std and interval are NaN, as no spread can be estimated around an infinite mean, nor any finite
    bound given.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    infinite = x[np.isinf(x)]
    if infinite.size:
        mean = float(infinite[0]) if (infinite == infinite[0]).all() else math.nan
        return mean, math.nan, math.nan, math.nan, n
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, math.nan, 1
    std = float(x.std(ddof=1))
    from scipy.special import stdtrit  # lazy: ~0.2 s of every table and figure job, needed only over several seeds

    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half, n
