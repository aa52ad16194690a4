"""What the figures across runs share: the run group of a line or a cell, the facets (panels) of a figure and
the rows of one model, init and setting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedscape.core.setting import format_setting, setting_order_key
from fedscape.outputs.labels import label_run, refuse_alike
from fedscape.outputs.style import NO_SEED, ONE_SEED, seeds_range

# Facets (panels) of a figure: one per combination of these fields; lines within a panel by alpha and init.
FACET_KEYS = ("algorithm", "num_clients", "participation")
# A run group: the runs that differ only in their seed (one line, bar or table cell of a figure).
CURVE_GROUP = ["dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation"]


def select_model(df: pd.DataFrame, dataset: str, model: str) -> pd.DataFrame:
    return df[(df["dataset"].astype(str) == dataset) & (df["model"].astype(str) == model)]


def facets_of(df: pd.DataFrame) -> list[dict]:
    """The distinct facet field values of `df`, in a stable order: algorithm by name, then by clients, all clients
    first (participation descending, as `setting_panels` orders settings)."""
    keys = list(FACET_KEYS)
    combos = df[keys].drop_duplicates()
    combos = combos.assign(_p=-combos["participation"].astype(float)).sort_values(
        ["algorithm", "num_clients", "_p"], kind="stable")
    return [dict(zip(keys, row, strict=True)) for row in combos[keys].itertuples(index=False)]


def facet_title(facet: dict, df: pd.DataFrame) -> str:
    shown = ["algorithm", *[k for k in ("num_clients", "participation") if df[k].nunique() > 1]]
    return label_run(facet, shown)


def in_facet(df: pd.DataFrame, facet: dict) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k, v in facet.items():
        mask &= (df[k] == v).to_numpy()
    return df[mask]


def cell_rows(df: pd.DataFrame, init: str, setting) -> pd.DataFrame:
    """Rows of one init and setting (the `alpha` column, compared in canonical text: 'iid' == inf)."""
    return df[(df["init"].astype(str) == init) & (df["alpha"].map(format_setting) == format_setting(setting))]


def setting_panels(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """((alpha, num_clients, participation), rows) per panel: by clients, all clients first, IID first."""
    settings = list(table.groupby(["alpha", "num_clients", "participation"], sort=False))
    return sorted(settings, key=lambda item: (item[0][1], -item[0][2], setting_order_key(item[0][0])))


def init_order(inits) -> list[str]:
    """Inits left to right: `random` first (the reference the papers compare against), then by name."""
    return sorted({str(i) for i in inits}, key=lambda i: (i != "random", i))


def seeds_note(n_seeds: pd.Series) -> str:
    """Title suffix saying over how many seeds the cells' mean ± std is (`seeds_range`)."""
    over = seeds_range(n_seeds)
    if over in (ONE_SEED, NO_SEED):
        return f", {over}"
    return f", mean ± std over {over}" + (" (± where 2 or more)" if "-" in over else "")


def interval_seeds(n_seeds: pd.Series) -> str:
    """Over how many seeds a figure's means and 95% t-intervals are (`seeds_range`), for its title."""
    over = seeds_range(n_seeds)
    if over in (ONE_SEED, NO_SEED):
        return over
    return f"mean and 95% t-interval over {over}" + (", no interval where one" if (n_seeds == 1).any() else "")


def common_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The rows of `per_seed` (seed x compared run group, NaN where a group has no value) where every group has a
    finite value: the seeds over which groups are compared (same seed = same partition and client sampling)."""
    return per_seed.replace([np.inf, -np.inf], np.nan).dropna()


def compared_means(common: pd.DataFrame, own: pd.Series) -> pd.Series:
    """The means by which run groups are compared: over their `common` seeds (`common_seeds`), paired, or where there
    is none, `own`, each group's mean over its own seeds. Unpaired means favour a group that lost a hard seed (its run
    diverged) against rivals whose means keep that seed."""
    return common.mean() if len(common) else own


def refuse_shared_labels(table: pd.DataFrame, cell: list[str], what: str) -> None:
    """ValueError naming the run groups of `table` (one row per group and figure column, with the CURVE_GROUP fields)
    that get one `cell` (their labels): `outputs.labels.refuse_alike`."""
    n = len(CURVE_GROUP)
    rows = table[[*CURVE_GROUP, *cell]].itertuples(index=False, name=None)
    refuse_alike(((dict(zip(CURVE_GROUP, row[:n], strict=True)), row[n:]) for row in rows), what)
