"""What the analyses add to the report's final.csv: each analysis package that has headline numbers declares
them in its `definitions` module as `REPORT = FinalColumns(...)`; this module finds them (torch- and
pandas-free: planning reads the tables they need, the final_table job computes their columns).

final.csv's columns are the run's own (report.summary) followed by each contribution's, contributions in the
order of their packages' names, then code_version, then the columns the contributions appended after it
(`FinalColumns.appended`), in the same order; an analysis therefore adds its columns without touching the
report, and declares those it adds to the published tables appended, so that none of theirs moves.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import fedscape.analysis as _package


@dataclass(frozen=True)
class FinalColumns:
    """An analysis's headline columns of final.csv and the gathered tables they are computed from.

    `compute` names ("module:function", a module of the analysis package) a function called as
    `function(final, **tables)`: `final` holds run_id and final_round of every run, `tables` each table of
    `tables` read (None where the config does not make it); it returns run_id and `columns`, one row per run
    of `final`, NaN where the analysis was not computed.
    """

    columns: tuple[str, ...]  # its columns of final.csv, in order
    tables: dict[str, tuple[str, ...]]  # results/tables/<name>.csv -> the columns it reads there
    compute: str  # "module:function" below the analysis package
    summarised: tuple[str, ...] | None = None  # the columns summary.csv takes statistics of; None = every one
    # The columns whose value is one computation shared by the runs of a summary.csv group (the runs that differ
    # only in their seed), e.g. a number of the initial model on the aggregate data when every seed starts from the
    # same init: each seed's value is then the same estimate, not a draw, and its spread over seeds (0) says
    # nothing of its error. summary.csv takes their statistics over the group's distinct finite values (one
    # estimate: n = 1, a mean without std or interval; runs that differ: each distinct value once).
    shared: tuple[str, ...] = ()
    # The columns the analysis added after final.csv's code_version and summary.csv's code_versions closed the
    # tables: they follow those, in the order of `columns`, so that no column users read by position moves
    # (report.summary's FINAL_COLUMNS, SUMMARY_COLUMNS); the others precede them.
    appended: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in (*(self.summarised or ()), *self.shared, *self.appended) if c not in self.columns]
        if unknown:
            raise ValueError(f"summarised, shared and appended name columns of the REPORT's own, not {unknown} "
                             f"(its columns: {list(self.columns)})")


@dataclass(frozen=True)
class Contribution:
    """One analysis's FinalColumns with the name of its package (and of its plan module, fedscape.plan.<name>)."""

    analysis: str
    final: FinalColumns

    @property
    def summarised(self) -> tuple[str, ...]:
        return self.final.columns if self.final.summarised is None else self.final.summarised

    def function(self) -> Callable:
        """The function that computes the columns (its module imports pandas: the light final_table job only)."""
        module, _, name = self.final.compute.partition(":")
        return getattr(importlib.import_module(f"{_package.__name__}.{self.analysis}.{module}"), name)


@functools.cache
def final_contributions() -> tuple[Contribution, ...]:
    """Every analysis package whose definitions declare REPORT, by package name (found on the first call, not at
    import: the definitions modules import FinalColumns from here)."""
    found = []
    for info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        definitions = importlib.import_module(f"{_package.__name__}.{info.name}.definitions")
        if hasattr(definitions, "REPORT"):
            found.append(Contribution(info.name, definitions.REPORT))
    for what, names in (("final.csv column", [c for x in found for c in x.final.columns]),
                        ("table", [t for x in found for t in x.final.tables])):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{what}s declared twice by the analyses' REPORT: {twice}")
    return tuple(found)
