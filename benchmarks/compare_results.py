"""Are two finished runs' tables equal? The second check of a refactor, after `compare_plans.py`.

Compares every `tables/*.csv` of two results directories (e.g. the default workflow run at two commits): the same
files, columns and rows, text equal and numbers within `--atol`, NaN where the other has NaN. Columns that measure the
machine rather than compute a result (wall-clock seconds, peak memory, and ratios of them) and `code_version` (the
commit) are left out.

    git worktree add /tmp/old <ref>; (cd /tmp/old && snakemake --cores 2)    # and the same in this checkout
    python benchmarks/compare_results.py /tmp/old/results results

Prints one line per table and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MEASURED = ("seconds", "peak_mem", "code_version")  # a column whose name contains one of these is a measurement


def table_differences(old: pd.DataFrame, new: pd.DataFrame, atol: float) -> list[str]:
    """What differs between two tables, one line per column (empty when they are equal)."""
    if list(old.columns) != list(new.columns):
        return [f"columns differ: {sorted(set(old.columns) ^ set(new.columns)) or 'order'}"]
    if len(old) != len(new):
        return [f"{len(old)} rows against {len(new)}"]
    lines = []
    for column in old.columns:
        if any(part in column for part in MEASURED):
            continue
        a, b = old[column], new[column]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(float), b.to_numpy(float)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                lines.append(f"{column}: NaN in other rows")
                continue
            finite = np.isfinite(x) & np.isfinite(y)
            worst = float(np.max(np.abs(x[finite] - y[finite]), initial=0.0))
            if worst > atol or not np.array_equal(x[~finite & ~np.isnan(x)], y[~finite & ~np.isnan(y)]):
                lines.append(f"{column}: differs by up to {worst:.3g}")
        elif not (a.astype(str) == b.astype(str)).all():
            lines.append(f"{column}: text differs")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the first results directory")
    parser.add_argument("new", type=Path, help="the second results directory")
    parser.add_argument("--atol", type=float, default=1e-12, help="largest absolute difference of a number")
    args = parser.parse_args()
    old_tables = {p.name for p in (args.old / "tables").glob("*.csv")}
    new_tables = {p.name for p in (args.new / "tables").glob("*.csv")}
    failed = 0
    for name in sorted(old_tables ^ new_tables):
        print(f"{name}: only in {args.old if name in old_tables else args.new}")
        failed += 1
    for name in sorted(old_tables & new_tables):
        lines = table_differences(pd.read_csv(args.old / "tables" / name), pd.read_csv(args.new / "tables" / name),
                                  args.atol)
        failed += bool(lines)
        print(f"{name}: {'equal' if not lines else f'{len(lines)} columns differ'}")
        for line in lines:
            print("   ", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
