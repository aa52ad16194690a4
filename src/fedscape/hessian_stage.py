"""The Hessian stage: plan (which runs and rounds), one job per (run, round), tables and figures.

The workflow's `rules/hessian.smk` calls these functions with plain arguments; they never see the
snakemake object. One job evaluates the global model of a run at one round on the aggregate data
(top-k eigenpairs, Hutchinson trace, SLQ density, the eigenvector plane) and on every client's data
(top-k eigenvalues, trace and Hessian diagonal, hence HN and HD of FedAlign, Mendieta et al. 2022).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

# The plan (jobs, per-job settings, config checks) is torch-free (fedscape.hessian_plan, read by
# Snakemake's planning); re-exported here.
from fedscape.hessian_plan import (  # noqa: F401
    CLIENT_COLUMNS,
    HessianSettings,
    check_hessian_config,
    hessian_columns,
    hessian_job_settings,
    hessian_jobs,
    hessian_rounds,
    hessian_runs,
    settings_from_config,
)

log = logging.getLogger("fedscape.hessian")

DENSITY_COLUMNS = ["run_id", "round", "data", "probe", "node", "weight"]
AGGREGATE = "all"  # the `data` value of the aggregate training data (union of the client shards)
OK, DIVERGED = "ok", "diverged"  # the `status` of a hessian.csv row: computed, or skipped (the run diverged)
INTEGER_COLUMNS = ("round", "n_eval", "iterations")  # kept integers in the gathered tables beside NaN rows


def client_label(client: int) -> str:
    """The `data` value of client k's rows."""
    return f"client_{client}"


# -- one job ---------------------------------------------------------------------------------------
def _row(run_id: str, round_: int, data: str, report, top_k: int) -> dict:
    row = {"run_id": run_id, "round": round_, "data": data}
    values = list(report.eigen.values) if report.eigen is not None else []
    for i in range(top_k):
        row[f"lambda_{i + 1}"] = values[i] if i < len(values) else math.nan
    row.update({"trace": report.hutchinson.trace, "trace_stderr": report.hutchinson.stderr, "n_eval": report.n_eval,
                "iterations": report.eigen.total_iterations if report.eigen is not None else 0, "status": OK})
    return row


def _details(report) -> dict:
    out = {"n_eval": report.n_eval, "loss": report.loss, "trace": report.hutchinson.trace,
           "trace_stderr": report.hutchinson.stderr, "trace_probes": report.hutchinson.probes,
           "hvp_products": report.products, "seconds": round(report.seconds, 3)}
    if report.eigen is not None:
        e = report.eigen
        out.update({"method": e.method, "eigenvalues": list(e.values), "iterations": list(e.iterations),
                    "converged": list(e.converged), "residuals": list(e.residuals)})
    return out


def write_eigen_plane(path: str | Path, center, center_buffers, d1, d2, meta: dict) -> None:
    """Write the eigenvector plane with the landscape stage's `save_plane` (kind `hessian`; extra meta kept)."""
    import torch

    from fedscape.landscape import Plane, save_plane
    from fedscape.landscape.planes import META_KEYS

    def flat(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32)).reshape(-1)

    ev = meta.get("explained_variance")
    plane = Plane(
        center=flat(center), center_buffers=flat(center_buffers), d1=flat(d1), d2=flat(d2), kind=meta["kind"],
        runs=tuple(meta["runs"]), round=meta["round"], explained_variance=None if ev is None else tuple(ev),
        axis_labels=tuple(meta["axis_labels"]), model_meta=dict(meta["model_meta"]), seed=meta["seed"],
        extra={k: v for k, v in meta.items() if k not in META_KEYS},
    )
    save_plane(path, plane)


def hessian_stage(settings: dict, trajectory_path: str | Path, partition_path: str | Path,
                  outputs: dict[str, str | Path]) -> None:
    """One (run, round): Hessian metrics on the aggregate data and on each client's data; writes the
    job's hessian.csv, hessian_clients.csv, density.csv, eigen_plane.npz and hessian.json."""
    from fedscape.checkpoint import load_trajectory
    from fedscape.hessian import analyse, eval_subset, hessian_norm_direction, orthonormal_plane
    from fedscape.pipeline import load_run_data, resolve_device, write_csv
    from fedscape.utils import atomic_write_text

    t_start = time.perf_counter()
    hs = HessianSettings(**settings["hessian"])
    run_id, round_ = settings["run_id"], int(settings["round"])
    device = resolve_device(settings["device"])
    traj = load_trajectory(trajectory_path)
    reason = traj.unusable(round_)
    if reason is not None:
        _write_diverged(settings, traj, reason, outputs, t_start)
        return
    model = traj.model_at(round_, device)
    data, _ = load_run_data(settings, partition_path, device)
    log.info("hessian of %s at round %d on %s: %d parameters, %d clients, top-%d by %s, %d trace probes",
             run_id, round_, device, traj.params.shape[1], data.num_clients, hs.top_k, hs.method, hs.trace_probes)

    # the aggregate data: eigenpairs (the plane), trace, density
    x_all, y_all = data.union()
    idx = eval_subset(len(y_all), hs.eval_samples, hs.seed, key=0).to(x_all.device)
    agg = analyse(model, x_all[idx], y_all[idx], hs)
    log.info("data %s (n=%d): lambda = %s, trace = %.6g +- %.3g (%d products, %.1f s)", AGGREGATE, agg.n_eval,
             ", ".join(f"{v:.6g}" for v in agg.eigen.values), agg.hutchinson.trace, agg.hutchinson.stderr,
             agg.products, agg.seconds)
    rows = [_row(run_id, round_, AGGREGATE, agg, hs.top_k)]
    details = {"run_id": run_id, "round": round_, "device": str(device), "settings": settings["hessian"],
               "data": {AGGREGATE: _details(agg)}}
    density_rows = []
    if agg.density is not None:
        for p, (nodes, weights) in enumerate(zip(agg.density.nodes, agg.density.weights, strict=True)):
            density_rows.extend({"run_id": run_id, "round": round_, "data": AGGREGATE, "probe": p, "node": float(n),
                                 "weight": float(w)} for n, w in zip(nodes, weights, strict=True))

    # each client's data: eigenvalues, trace and the diagonal (HN, HD)
    diagonals = []
    for k, client_idx in enumerate(data.client_indices):
        sub = eval_subset(len(client_idx), hs.eval_samples, hs.seed, key=k + 1).to(client_idx.device)
        ix = client_idx[sub]
        rep = analyse(model, data.x_train[ix], data.y_train[ix], hs, density=False)
        diagonals.append(rep.hutchinson.diagonal)
        rows.append(_row(run_id, round_, client_label(k), rep, hs.top_k))
        details["data"][client_label(k)] = _details(rep)
        log.info("client %d/%d (n=%d): lambda_1 = %.6g, trace = %.6g +- %.3g (%.1f s)", k + 1, data.num_clients,
                 rep.n_eval, rep.eigen.values[0], rep.hutchinson.trace, rep.hutchinson.stderr, rep.seconds)
    hn, hd = hessian_norm_direction(diagonals)
    log.info("HN = %.6g, HD = %.6f over %d clients", hn, hd, len(diagonals))
    details.update({"hn": hn, "hd": hd})

    not_converged = [d for d, v in details["data"].items() if "converged" in v and not all(v["converged"])]
    if not_converged:
        log.warning("eigenvalues did not reach tol %.1e within max_iter %d on %s; raise hessian.max_iter",
                    hs.tol, hs.max_iter, ", ".join(not_converged))

    # the eigenvector plane of the aggregate loss (FedAlign Fig. 1)
    row = traj.row(round_)
    d1, d2 = orthonormal_plane(agg.eigen.vectors[0], agg.eigen.vectors[1])
    labels = [f"eigenvector 1 (lambda_1 = {agg.eigen.values[0]:.4g})",
              f"eigenvector 2 (lambda_2 = {agg.eigen.values[1]:.4g})"]
    meta = {"kind": "hessian", "runs": [run_id], "round": round_, "explained_variance": None, "axis_labels": labels,
            "model_meta": traj.model_meta.to_dict(), "seed": hs.seed, "eigenvalues": list(agg.eigen.values[:2]),
            "data": AGGREGATE, "n_eval": agg.n_eval, "method": hs.method}
    write_eigen_plane(outputs["plane"], traj.params[row].numpy(), traj.buffers[row].numpy(),
                      d1.cpu().numpy(), d2.cpu().numpy(), meta)

    write_csv(pd.DataFrame(rows, columns=hessian_columns(hs.top_k)), outputs["table"])
    client_row = {"run_id": run_id, "round": round_, "hn": hn, "hd": hd, "status": OK}
    write_csv(pd.DataFrame([client_row], columns=CLIENT_COLUMNS), outputs["clients"])
    write_csv(pd.DataFrame(density_rows, columns=DENSITY_COLUMNS), outputs["density"])
    details["seconds"] = round(time.perf_counter() - t_start, 3)
    atomic_write_text(outputs["details"], json.dumps(details, indent=2, default=float))
    log.info("done in %.1f s", details["seconds"])


def _write_diverged(settings: dict, traj, reason: str, outputs: dict[str, str | Path], t_start: float) -> None:
    """Skip a job whose model cannot be analysed (a diverged run), still writing every output: NaN rows with
    status `diverged`, no density, an all-NaN eigenvector plane marked `diverged` and the reason in hessian.json."""
    from fedscape.pipeline import write_csv
    from fedscape.utils import atomic_write_text

    hs = HessianSettings(**settings["hessian"])
    run_id, round_ = settings["run_id"], int(settings["round"])
    log.warning("run %s, round %d: %s; the Hessian is not computed (NaN rows with status %r)", run_id, round_,
                reason, DIVERGED)
    num_clients = int(settings["run"]["num_clients"])
    rows = [{"run_id": run_id, "round": round_, "data": data, "status": DIVERGED}
            for data in [AGGREGATE, *[client_label(k) for k in range(num_clients)]]]
    write_csv(pd.DataFrame(rows, columns=hessian_columns(hs.top_k)), outputs["table"])
    client_row = {"run_id": run_id, "round": round_, "status": DIVERGED}
    write_csv(pd.DataFrame([client_row], columns=CLIENT_COLUMNS), outputs["clients"])
    write_csv(pd.DataFrame(columns=DENSITY_COLUMNS), outputs["density"])
    nan = np.full(traj.params.shape[1], np.nan, dtype=np.float32)
    meta = {"kind": "hessian", "runs": [run_id], "round": round_, "explained_variance": None,
            "axis_labels": ["eigenvector 1 (not computed: the run diverged)",
                            "eigenvector 2 (not computed: the run diverged)"],
            "model_meta": traj.model_meta.to_dict(), "seed": hs.seed, "eigenvalues": [None, None],
            "data": AGGREGATE, "n_eval": None, "method": hs.method, "status": DIVERGED, "reason": reason}
    write_eigen_plane(outputs["plane"], nan, np.full(traj.buffers.shape[1], np.nan, dtype=np.float32), nan, nan,
                      meta)
    details = {"run_id": run_id, "round": round_, "status": DIVERGED, "reason": reason,
               "settings": settings["hessian"], "seconds": round(time.perf_counter() - t_start, 3)}
    atomic_write_text(outputs["details"], json.dumps(details, indent=2, default=float))


# -- tables ----------------------------------------------------------------------------------------
def gather_tables(inputs: list[str | Path], output: str | Path, columns: list[str]) -> None:
    """Concatenate per-job CSVs with exactly `columns` (in order); a diverged job's NaN rows leave the
    integer columns integers (empty where NaN)."""
    from fedscape.pipeline import write_csv

    frames = [pd.read_csv(p) for p in inputs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if "status" in columns and "status" not in df.columns and len(df):
        df["status"] = OK  # per-job tables written before the column existed: every job was computed
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"per-job Hessian tables lack columns {missing}; rerun the hessian jobs")
    for col in INTEGER_COLUMNS:
        if col in df.columns and len(df):
            df[col] = df[col].astype("Int64")
    if "status" in df.columns:
        skipped = df.loc[df["status"] != OK, ["run_id", "round", "status"]].drop_duplicates()
        for r in skipped.itertuples(index=False):
            log.warning("run %s, round %s: not computed (status %r): NaN in %s", r.run_id, r.round, r.status, output)
    write_csv(df[columns], output)


# -- figures ---------------------------------------------------------------------------------------
RUN_FIELDS = ("dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "seed")
_ID_KEYS = {"init": "init", "algo": "algorithm", "alpha": "alpha", "clients": "num_clients",
            "part": "participation", "seed": "seed"}


def run_fields(run_id: str) -> dict:
    """The run fields of a run_id (`{dataset}/{model}/init~../algo~../alpha~../clients~../part~../seed~..`)."""
    parts = run_id.split("/")
    out = {"dataset": parts[0], "model": parts[1]}
    for part in parts[2:]:
        key, _, value = part.partition("~")
        out[_ID_KEYS.get(key, key)] = value
    return out


def _with_fields(df: pd.DataFrame) -> pd.DataFrame:
    fields_df = pd.DataFrame([run_fields(r) for r in df["run_id"]], index=df.index)
    return pd.concat([df, fields_df[[c for c in RUN_FIELDS if c not in df.columns]]], axis=1)


def lambda_trace_figure(table: str | Path, outputs: dict, by: str) -> None:
    """lambda_max and trace of the global model on the aggregate data, per `by` (algorithm or init).

    One panel per (metric, dataset/model, round); x = the `by` field, colour = alpha (fedscape.plotting),
    one point per seed (trace with its standard error) and a bar at the mean: FedAlign Table 1 (per
    algorithm) and the Meta poster's top eigenvalue at init (per init).
    """
    from fedscape.plotting import alpha_colors, alpha_number, alpha_order, format_alpha, format_field, pyplot
    from fedscape.plotting import save_figure_outputs as save

    if by not in ("algorithm", "init"):
        raise ValueError(f"by must be 'algorithm' or 'init', got {by!r}")
    df = _with_fields(pd.read_csv(table))
    df = df[df["data"] == AGGREGATE]
    long = pd.concat([
        df.assign(metric="lambda_max", value=df["lambda_1"], stderr=math.nan),
        df.assign(metric="trace", value=df["trace"], stderr=df["trace_stderr"]),
    ], ignore_index=True)
    long["setting"] = long["dataset"] + "/" + long["model"]
    data_cols = ["metric", "setting", "round", by, "alpha", "seed", "run_id", "value", "stderr"]
    data = long[data_cols].sort_values(data_cols[:6]).reset_index(drop=True)

    plt = pyplot()
    panels = sorted({(s, int(r)) for s, r in zip(long["setting"], long["round"], strict=True)})
    metrics = ["lambda_max", "trace"]
    fig, axes = plt.subplots(len(metrics), max(1, len(panels)), figsize=(3.2 * max(1, len(panels)), 5.0),
                             squeeze=False, layout="constrained")
    alphas = alpha_order(long["alpha"].astype(str).unique())
    colors = alpha_colors(alphas)
    legend = {}
    for col, (setting, round_) in enumerate(panels):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            sub = long[(long["setting"] == setting) & (long["round"] == round_) & (long["metric"] == metric)]
            cats = sorted(sub[by].astype(str).unique())
            width = 0.8 / max(1, len(alphas))
            for i, cat in enumerate(cats):
                for j, alpha in enumerate(alphas):
                    pts = sub[(sub[by].astype(str) == cat) & (sub["alpha"].astype(str) == alpha)]
                    if pts.empty:
                        continue
                    color = colors[alpha_number(alpha)]
                    xpos = i - 0.4 + width * (j + 0.5)
                    jitter = np.linspace(-width * 0.25, width * 0.25, len(pts)) if len(pts) > 1 else np.zeros(1)
                    handle = ax.errorbar(xpos + jitter, pts["value"], yerr=pts["stderr"].fillna(0), fmt="o", ms=4,
                                         color=color, capsize=2)
                    ax.hlines(pts["value"].mean(), xpos - width * 0.4, xpos + width * 0.4, color=color)
                    legend.setdefault(format_alpha(alpha), handle)
            ax.set_xticks(range(len(cats)), [format_field(by, c) for c in cats], rotation=20)
            ax.grid(axis="x", visible=False)
            ax.set_title(f"{setting}, round {round_}")
            ax.set_ylabel("λmax" if metric == "lambda_max" else "trace (Hutchinson)")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no Hessian rows of the aggregate data", ha="center", va="center")
    fig.suptitle(f"Hessian of the global model on the aggregate data, per {by} (points: seeds)")
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside right center", title="partition")
    save(fig, outputs, data)


def density_figure(inputs: list[str | Path], outputs: dict, grid_points: int = 1000) -> None:
    """Spectral density of the aggregate-data Hessian by SLQ (Ghorbani et al. 2019): one panel per run, one line
    per round, Gaussian-smoothed as in PyHessian, log scale."""
    from fedscape.hessian import density_on_grid
    from fedscape.plotting import PALETTE, label_run, pyplot
    from fedscape.plotting import save_figure_outputs as save

    frames = [f for f in (pd.read_csv(p) for p in inputs) if len(f)]  # a diverged run's job has no density
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DENSITY_COLUMNS)
    df = df[df["data"] == AGGREGATE]
    runs = sorted(df["run_id"].unique())
    curves = []
    for run_id in runs:
        for round_, sub in df[df["run_id"] == run_id].groupby("round"):
            groups = [g for _, g in sub.groupby("probe")]
            nodes = [g["node"].to_numpy() for g in groups]
            weights = [g["weight"].to_numpy() for g in groups]
            lo, hi = float(sub["node"].min()), float(sub["node"].max())
            pad = 0.05 * max(hi - lo, 1e-3)
            grid = np.linspace(lo - pad, hi + pad, grid_points)
            curves.append(pd.DataFrame({"run_id": run_id, "round": int(round_), "eigenvalue": grid,
                                        "density": density_on_grid(nodes, weights, grid)}))
    data = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["run_id", "round", "eigenvalue", "density"])

    plt = pyplot()
    varying = [f for f in RUN_FIELDS if len({run_fields(r)[f] for r in runs}) > 1] or ["algorithm"]
    round_colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(data["round"].unique()))}
    ncols = min(3, max(1, len(runs)))
    nrows = max(1, math.ceil(len(runs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    if not runs:
        axes[0, 0].text(0.5, 0.5, "no spectral densities (density disabled or no Hessian job)", ha="center")
    for ax, run_id in zip(axes.flat, runs, strict=False):
        for round_, sub in data[data["run_id"] == run_id].groupby("round"):
            ax.semilogy(sub["eigenvalue"], np.maximum(sub["density"], 1e-12), label=f"round {round_}", lw=1,
                        color=round_colors[round_])
        ax.set_ylim(bottom=1e-6)
        ax.set_title(label_run(run_fields(run_id), varying))
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (SLQ)")
        ax.legend()
    fig.suptitle("Hessian eigenvalue density of the global model on the aggregate data")
    save(fig, outputs, data)
