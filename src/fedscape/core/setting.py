"""A run's heterogeneity setting: a Dirichlet alpha (the degree of label skew), `iid`, or the label of a
`partitions` entry (another partition kind). One parser, one canonical text, one order, one display label.

The setting is the run's `setting` field (core.runs.Run); paths (`alpha~0.1`, `alpha~c2`, the `{alpha}` wildcard),
tables (the `alpha` column), selectors and job settings still name it `alpha` (core.runs.FIELD_NAMES), so that the
runs, result paths and settings of configs that use only Dirichlet alphas stay as they were.
"""

from __future__ import annotations

import math
import re

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


# A `partitions` label: lower-case, starting with a letter, so that it can never read as a number or `iid`.
PARTITION_LABEL = re.compile(r"[a-z][a-z0-9_]*")
# Lower-case labels that read as a number or as missing: float() parses inf, infinity and nan, and pandas reads nan
# and null as NaN (its default NA strings), so an alpha column holding them would merge their runs with IID's or lose
# them.
RESERVED_LABELS = ("iid", "inf", "infinity", "nan", "null")


def is_partition_label(value: object) -> bool:
    """True for the label of a `partitions` entry (text that is not `iid` and does not parse as a number)."""
    return (isinstance(value, str) and PARTITION_LABEL.fullmatch(value) is not None
            and value not in RESERVED_LABELS)


def format_setting(value: str | float | int) -> str:
    """Canonical text of a heterogeneity setting: a `partitions` label as it is, an alpha by format_alpha."""
    return value if is_partition_label(value) else format_alpha(value)


def alpha_column(value: str | float | int) -> str | float:
    """A setting as tables write it: alpha as a number (inf for IID), a `partitions` label as text."""
    return value if is_partition_label(value) else parse_alpha(value)


def setting_order_key(value: str | float | int) -> tuple:
    """Sort key of settings: IID first, then decreasing alpha (milder to more severe skew), then the other
    partition kinds by label."""
    if is_partition_label(value):
        return (1, 0.0, value)
    return (0, -parse_alpha(value), "")


def is_iid(value: str | float | int) -> bool:
    """True for the IID setting (`iid`, `inf` or inf)."""
    return not is_partition_label(value) and math.isinf(parse_alpha(value))


def setting_label(value: str | float | int) -> str:
    """Display text of a setting: 'IID', 'α=0.1', or a partition label as it is."""
    return value if is_partition_label(value) else alpha_label(value)


def format_fraction(value: float | str) -> str:
    """Canonical text of a fraction (participation) for paths: '1.0', '0.5'."""
    return repr(float(value))
