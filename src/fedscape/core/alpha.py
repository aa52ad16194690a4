"""Dirichlet alpha, the degree of label skew: one parser, one canonical text, one display label."""

from __future__ import annotations

import math

IID = math.inf
"""The value of alpha that stands for an IID (uniform random) split."""


class AlphaError(ValueError):
    """A value that is neither 'iid' nor a positive number."""


def parse_alpha(value: str | float | int) -> float:
    """Alpha as a number: inf for IID ('iid', 'inf' or inf), the positive float otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "iid":
            return IID
        try:
            value = float(text)
        except ValueError:
            raise AlphaError(f"alpha must be 'iid' or a positive number, got {value!r}") from None
    alpha = float(value)
    if not alpha > 0 or math.isnan(alpha):
        raise AlphaError(f"alpha must be 'iid' or a positive number, got {value!r}")
    return alpha


def format_alpha(alpha: str | float | int) -> str:
    """Canonical text of alpha for paths and configs: 'iid', '1.0', '0.1'."""
    alpha = parse_alpha(alpha)
    return "iid" if math.isinf(alpha) else repr(float(alpha))


def alpha_label(alpha: str | float | int) -> str:
    """Display text of alpha in figures: 'IID' or 'α=0.1'."""
    value = parse_alpha(alpha)
    return "IID" if math.isinf(value) else f"α={value:g}"


def format_fraction(value: float | str) -> str:
    """Canonical text of a fraction (participation) for paths: '1.0', '0.5'."""
    return repr(float(value))
