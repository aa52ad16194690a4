"""Clear errors for unknown names: the closest valid name and every valid one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


def get_close(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid name (as it is spelled), or None when none is close.

    Case is ignored: users write the names of papers and libraries in their case (`FP32`, `CIFAR10`, `SGD`) where
    fedscape's are lower case, and difflib, comparing case-sensitively, finds no match for them or a wrong one
    (`FP32`: 'tf32', for their common `32`). A name equal to a valid one but for case is that one."""
    spelled = {}  # lower case -> the first valid name so spelled
    for v in valid:
        spelled.setdefault(str(v).lower(), str(v))
    lowered = str(name).lower()
    if lowered in spelled:
        return spelled[lowered]
    close = difflib.get_close_matches(lowered, list(spelled), n=1, cutoff=0.5)
    return spelled[close[0]] if close else None


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest valid name, or ''."""
    close = get_close(name, valid)
    return f" Did you mean {close!r}?" if close is not None else ""


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    """A ValueError naming the bad value, the closest valid one and every valid one."""
    valid = sorted(str(v) for v in valid)
    return ValueError(f"unknown {kind} {name!r}.{suggest(name, valid)} Valid {kind}s: {', '.join(valid)}")


def nearest_text(valid: Sequence[int], value: int, shown: int = 4) -> str:
    """The sorted integers `valid` in words, abridged, with the nearest below and above `value`:
    '0, 100, 200, 300, ..., 10000 (102 in all; nearest to 150: 100 and 200)'."""
    below = [v for v in valid if v < value][-1:]
    above = [v for v in valid if v > value][:1]
    listed = ", ".join(str(v) for v in valid) if len(valid) <= 2 * shown else (
        f"{', '.join(str(v) for v in valid[:shown])}, ..., {', '.join(str(v) for v in valid[-shown // 2:])}")
    return f"{listed} ({len(valid)} in all; nearest to {value}: {' and '.join(str(v) for v in below + above)})"
