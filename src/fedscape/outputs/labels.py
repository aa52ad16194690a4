"""How runs are named in legends, titles and table rows (text only: no plotting library needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
