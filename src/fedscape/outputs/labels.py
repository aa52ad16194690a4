"""How runs are named in legends, titles and table rows (text only: no plotting library needed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from fedscape.core.setting import format_fraction, setting_label
from fedscape.fl.hparams.registry import display_name

# Order of the run fields in labels, legends and table rows.
LABEL_ORDER = ("dataset", "model", "algorithm", "init", "alpha", "num_clients", "participation", "seed")
LABEL_SEP = " · "  # between the fields of a label


def format_field(key: str, value) -> str:
    """One run field as legend text."""
    if key == "alpha":
        return setting_label(value)
    if key == "algorithm":
        return display_name(value)
    if key == "init":
        return f"{value} init"
    if key == "num_clients":
        return f"M={int(value)}"
    if key == "participation":
        frac = float(value)
        return "all clients" if frac >= 1.0 else f"{percent(frac)}% sampled"
    if key == "seed":
        return f"seed {int(value)}"
    return str(value)


def percent(frac: float) -> str:
    """A fraction as a percentage with every digit of its run id's text (`format_fraction`): 0.125 -> '12.5',
    0.005 -> '0.5'. Rounded, two fractions would read alike (0.12 and 0.125 both '12%') and a table would put their
    run groups in one cell."""
    return format((Decimal(format_fraction(frac)) * 100).normalize(), "f")


def label_run(fields: Mapping, keys: Sequence[str] | None = None, sep: str = LABEL_SEP) -> str:
    """Legend label of a run or run group, e.g. 'FedAvg · random init · α=0.1'.

    `keys` picks the fields shown (default: every run field present in `fields`), always in the
    order of LABEL_ORDER so that the same run reads the same in every figure.
    """
    wanted = [k for k in LABEL_ORDER if k in fields] if keys is None else [k for k in LABEL_ORDER if k in keys]
    return sep.join(format_field(k, fields[k]) for k in wanted) or "all runs"


def refuse_alike(shown: Iterable[tuple[Mapping, str | tuple[str, ...]]], what: str) -> None:
    """ValueError naming the first two run groups that `what` (a table, a figure's legend or panels) shows alike:
    `shown` holds each group's fields and what shows it (its label, or the labels of its cell). Two groups of one
    label would share a table cell, a legend would name one colour for both, two panels would read as one: a figure
    would draw one of them in the place of both (algorithm labels `fedavg` and `FedAvg`, both shown as FedAvg)."""
    seen: dict = {}
    for fields, labels in shown:
        other = seen.setdefault(labels, fields)
        differ = [k for k in fields if str(fields[k]) != str(other[k])]
        if differ:
            names = " and ".join(", ".join(f"{k} {_value_text(group[k])}" for k in differ) for group in (other, fields))
            texts = labels if isinstance(labels, tuple) else (labels,)
            raise ValueError(f"{what}: the run groups {names} have the same label{'s' if len(texts) > 1 else ''} "
                             f"({' / '.join(repr(text) for text in texts)}), so one would hide the other; rename one "
                             "of them")


def _value_text(value) -> str:
    """A run field's value as an error message names it: text quoted, a number as it reads (not np.float64(0.1))."""
    return repr(value) if isinstance(value, str) else str(value)
