"""Clear errors for unknown names: the closest valid name and every valid one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    """A ValueError naming the bad value, the closest valid one and every valid one."""
    valid = sorted(str(v) for v in valid)
    return ValueError(f"unknown {kind} {name!r}.{suggest(name, valid)} Valid {kind}s: {', '.join(valid)}")
