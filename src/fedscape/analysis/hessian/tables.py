"""The Hessian table job: per-job tables gathered into hessian.csv and hessian_clients.csv (torch-free)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from fedscape.analysis.hessian.definitions import (
    CLIENTS_COLUMN,
    HESSIAN_DATA,
    INTEGER_COLUMNS,
    REPORT,
    SHARPNESS_COLUMNS,
)
from fedscape.core.io import write_csv
from fedscape.core.paths import run_of_path
from fedscape.core.runs import OK, parse_run_id
from fedscape.outputs.tables import read_table

log = logging.getLogger("fedscape.hessian")


def gather_tables(inputs: list[str | Path], output: str | Path, columns: list[str]) -> None:
    """Concatenate per-job CSVs with exactly `columns` (in order); a diverged job's NaN rows leave the
    integer columns integers (empty where NaN)."""
    optional = ("status", CLIENTS_COLUMN)
    frames = [read_table(p, [c for c in columns if c not in optional], expect=run_of_path(p)) for p in inputs]
    # per-job tables written before the `status` column existed lack it: every such job was computed
    frames = [f if "status" in f.columns or "status" not in columns else f.assign(status=OK) for f in frames]
    # a job that analysed every client (hessian.clients all, or a bound of at least its run's clients) writes no
    # `clients` column: its HN and HD are over all of its run's clients
    frames = [f if CLIENTS_COLUMN in f.columns or CLIENTS_COLUMN not in columns
              else f.assign(**{CLIENTS_COLUMN: [int(parse_run_id(r)["num_clients"]) for r in f["run_id"]]})
              for f in frames]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for col in INTEGER_COLUMNS:
        if col in df.columns and len(df):
            df[col] = df[col].astype("Int64")
    if "status" in df.columns:
        # the rows not computed: a whole job's (a diverged model), or one client's (a loss that overflows there)
        keys = ["run_id", "round", "status", *(["data"] if "data" in df.columns else [])]
        for r in df.loc[df["status"] != OK, keys].drop_duplicates().itertuples(index=False):
            what = f", data {r.data}" if "data" in keys else ""
            log.warning("run %s, round %s%s: not computed (status %r): NaN in %s", r.run_id, r.round, what, r.status,
                        output)
    write_csv(df[columns], output)


def hessian_tables_job(tables: list[str | Path], clients: list[str | Path], out_table: str | Path,
                       out_clients: str | Path, columns: list[str], client_columns: list[str]) -> None:
    """hessian.csv (the per-job tables, `columns`) and hessian_clients.csv (the per-client rows, `client_columns`)."""
    gather_tables(tables, out_table, columns)
    gather_tables(clients, out_clients, client_columns)


def final_columns(final: pd.DataFrame, hessian: pd.DataFrame | None = None,
                  hessian_clients: pd.DataFrame | None = None) -> pd.DataFrame:
    """final.csv's Hessian columns per run of `final` (run_id, final_round): lambda_max / trace of the aggregate
    training data at the final round and at round 0 (PyHessian, Yao et al. 2020), HN / HD at the final round
    (FedAlign Table 1), and the sharpness and adaptive sharpness of the aggregate training data at the final round
    (hessian.csv's, NaN where `hessian.sharpness` was off); NaN where not computed."""
    out = pd.DataFrame({"run_id": final["run_id"]})
    for col in REPORT.columns:
        out[col] = math.nan
    final_round = dict(zip(final["run_id"], final["final_round"], strict=True))
    if hessian is not None and not hessian.empty:
        agg = hessian[hessian["data"].astype(str) == HESSIAN_DATA]
        for r in agg.itertuples(index=False):
            if r.run_id not in final_round:
                continue
            i = out.index[out["run_id"] == r.run_id][0]
            if int(r.round) == final_round[r.run_id]:
                out.loc[i, ["lambda_max", "trace", *SHARPNESS_COLUMNS]] = [r.lambda_1, r.trace, r.sharpness,
                                                                           r.adaptive_sharpness]
            if int(r.round) == 0:
                out.loc[i, ["lambda_max_init", "trace_init"]] = [r.lambda_1, r.trace]
    if hessian_clients is not None and not hessian_clients.empty:
        for r in hessian_clients.itertuples(index=False):
            if r.run_id in final_round and int(r.round) == final_round[r.run_id]:
                i = out.index[out["run_id"] == r.run_id][0]
                out.loc[i, ["hn", "hd"]] = [r.hn, r.hd]
    return out
