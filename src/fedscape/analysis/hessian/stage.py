"""The Hessian stage: one job per (run, round) evaluates the global model on the aggregate data (top-k
eigenpairs, Hutchinson trace, SLQ density) and on every client's data, or a seeded sample of the clients
(`hessian.clients`): top-k eigenvalues, trace and Hessian diagonal, hence HN and HD of FedAlign, Mendieta et al.
2022. One plane job per (run, round) writes the plane of the aggregate's top-2 eigenvectors (`plane_stage`)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedscape.analysis.hessian.definitions import (
    AGGREGATE,
    ALL_CLIENTS,
    CLIENTS_COLUMN,
    DENSITY_COLUMNS,
    EVAL_ALL,
    EXACT,
    EigenSettings,
    EigenStore,
    HessianJob,
    HessianPlaneJob,
    HessianSettings,
    client_columns,
    client_label,
    client_sample,
    hessian_columns,
)
from fedscape.analysis.hessian.maths import (
    EIGEN_PIECE,
    SHARPNESS_PIECE,
    DensityProbe,
    DensityResult,
    EigenResult,
    HessianReport,
    HutchinsonResult,
    NonFiniteLoss,
    SharpnessResult,
    analyse,
    analysis_pieces,
    density_piece,
    diagonal_consistency,
    eval_subset,
    orthonormal_plane,
    report_of_pieces,
    top_eigenpairs,
)
from fedscape.analysis.landscape.planes import META_KEYS, Plane, save_plane
from fedscape.core.config import with_result_version
from fedscape.core.io import write_csv, write_json
from fedscape.core.jobs import to_settings
from fedscape.core.manifest import note
from fedscape.core.runs import DIVERGED, OK
from fedscape.data.datasets import take_rows
from fedscape.data.federated import FederatedData, load_federated_data
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.device import describe_compute, job_precision, resolve_device
from fedscape.models.specs import piecewise_linear
from fedscape.stages.progress import Parts, input_digests, note_codes, parts_compute, progress_key, resume_settings

log = logging.getLogger("fedscape.hessian")


def _row(run_id: str, round_: int, data: str, report, top_k: int) -> dict:
    row = {"run_id": run_id, "round": round_, "data": data}
    values = list(report.eigen.values) if report.eigen is not None else []
    for i in range(top_k):
        row[f"lambda_{i + 1}"] = values[i] if i < len(values) else math.nan
    row.update({"trace": report.hutchinson.trace, "trace_stderr": report.hutchinson.stderr, "n_eval": report.n_eval,
                "iterations": report.eigen.total_iterations if report.eigen is not None else 0, "status": OK,
                "sharpness": report.sharpness, "adaptive_sharpness": report.adaptive_sharpness})
    return row


def _details(report) -> dict:
    out = {"n_eval": report.n_eval, "loss": report.loss, "trace": report.hutchinson.trace,
           "trace_stderr": report.hutchinson.stderr,
           # the samples the trace averages (Hutch++: the residual's probes): not the budget, settings.trace_probes
           "trace_samples": report.hutchinson.probes,
           "diagonal_estimator": report.hutchinson.diagonal_estimator,
           "hvp_products": report.products, "seconds": round(report.seconds, 3)}
    if report.eigen is not None:
        e = report.eigen
        out.update({"method": e.method, "eigenvalues": list(e.values), "iterations": list(e.iterations),
                    "converged": list(e.converged), "residuals": list(e.residuals)})
    return out


def write_eigen_plane(path: str | Path, center, center_buffers, d1, d2, meta: dict) -> None:
    """Write the eigenvector plane with the landscape stage's `save_plane` (kind `hessian`; extra meta kept)."""
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


def aggregate_eval_data(data: FederatedData, settings: HessianSettings | EigenSettings
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of the aggregate training data that a job's Hessian is evaluated on: the fixed, seeded subset of
    `eval_samples` (stream key 0), or the whole union for `all` (the split itself, without a copy of it)."""
    x_all, y_all = data.union()
    if settings.eval_samples != EVAL_ALL:
        idx = eval_subset(len(y_all), settings.eval_samples, settings.seed, key=0).to(x_all.device)
        x_all, y_all = take_rows(x_all, idx), y_all[idx]
    return x_all, y_all


def client_eval_data(data: FederatedData, settings: HessianSettings, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of client `client` that a job's Hessian is evaluated on: the fixed, seeded subset of
    `eval_samples` (stream key client + 1), or all of them; of the rows evaluations score (`FederatedData.client_rows`:
    a raw text's windows at its `eval_stride`)."""
    client_idx = data.client_rows(client)
    ix = client_idx[eval_subset(len(client_idx), settings.eval_samples, settings.seed, key=client + 1)
                    .to(client_idx.device)]
    return take_rows(data.x_train, ix), data.y_train[ix]


def _plain(report: HessianReport, vectors: bool) -> dict:
    """A part's report as tensors, lists and numbers (`_report` reads it back); the eigenvectors only with `vectors`."""
    e, h, d = report.eigen, report.hutchinson, report.density
    eigen = None if e is None else {
        "values": [float(v) for v in e.values], "iterations": [int(i) for i in e.iterations],
        "converged": [bool(c) for c in e.converged], "residuals": [float(r) for r in e.residuals],
        "method": e.method, "vectors": e.vectors.cpu() if vectors else torch.zeros(0, dtype=torch.float64)}
    hutchinson = {"trace": float(h.trace), "stderr": float(h.stderr), "samples": torch.tensor(np.asarray(h.samples)),
                  "diagonal_estimator": h.diagonal_estimator,
                  "quarters": None if h.quarters is None else list(h.quarters)}
    density = None if d is None else {"nodes": [torch.tensor(np.asarray(n)) for n in d.nodes],
                                      "weights": [torch.tensor(np.asarray(w)) for w in d.weights]}
    return {"n_eval": int(report.n_eval), "loss": float(report.loss), "products": int(report.products),
            "seconds": float(report.seconds), "sharpness": float(report.sharpness),
            "adaptive_sharpness": float(report.adaptive_sharpness), "eigen": eigen, "hutchinson": hutchinson,
            "density": density}


def _report(plain: dict) -> HessianReport:
    """The report of a part saved by `_plain` (without the diagonal, which no output reads), or of the aggregate's
    eigenpairs and trace (`_plain_piece`: no density, no sharpness)."""
    e, h, d = plain["eigen"], plain["hutchinson"], plain.get("density")
    eigen = None if e is None else EigenResult(tuple(e["values"]), e["vectors"], tuple(e["iterations"]),
                                               tuple(e["converged"]), tuple(e["residuals"]), e["method"])
    hutchinson = HutchinsonResult(h["trace"], h["stderr"], torch.zeros(0, dtype=torch.float64), h["samples"].numpy(),
                                  h["diagonal_estimator"], None if h["quarters"] is None else tuple(h["quarters"]))
    density = None if d is None else DensityResult([n.numpy() for n in d["nodes"]], [w.numpy() for w in d["weights"]])
    return HessianReport(plain["n_eval"], plain["loss"], eigen, hutchinson, density, plain["products"],
                         plain["seconds"], plain.get("sharpness", math.nan), plain.get("adaptive_sharpness", math.nan))


def _analysed(parts: Parts, name: str, analysis, compute: dict[str, str]
              ) -> tuple[HessianReport, bool, dict[str, str] | None]:
    """The report of client part `name`: saved by an earlier attempt of this job, or computed now (`analysis()`) and
    saved, with its four quarter-diagonals (HN, HD), not the diagonals or its eigenvectors; whether it was resumed;
    and where it was computed: `compute` (`describe_compute`) for a part computed now, saved with it, since an earlier
    attempt may have run on another card (the parts' key names the type of device alone); None for a part saved
    before parts recorded it."""
    saved = parts.load(name)
    if saved is not None:
        return _report(saved), True, saved.get("compute")
    report = analysis()
    parts.save(name, {**_plain(report, vectors=False), "compute": dict(compute)})
    return report, False, dict(compute)


# -- the aggregate's analysis, in parts ---------------------------------------------------------------------------
# Each piece of the aggregate's analysis (`maths.analysis_pieces`) is a part of the job of its own, so that a job
# killed in its density (most of its products) or its sharpness resumes after its last finished piece, not from the
# eigenpairs: the eigenpairs and trace are AGGREGATE's part (with the eigenvectors, kept for the plane job), each SLQ
# probe and the sharpness parts beside it. What AGGREGATE's part held besides while the analysis was one part:
_WHOLE = ("density", "sharpness", "adaptive_sharpness")


def _piece_part(piece: str) -> str:
    """The part that keeps piece `piece` of the aggregate's analysis: AGGREGATE, or one beside it."""
    return AGGREGATE if piece == EIGEN_PIECE else f"{AGGREGATE}_{piece}"


def _plain_piece(piece: HessianReport | DensityProbe | SharpnessResult) -> dict:
    """A piece of the aggregate's analysis as tensors, lists and numbers (`_piece` reads it back)."""
    if isinstance(piece, HessianReport):
        return {key: value for key, value in _plain(piece, vectors=True).items() if key not in _WHOLE}
    if isinstance(piece, DensityProbe):
        return {"nodes": torch.tensor(np.asarray(piece.nodes)), "weights": torch.tensor(np.asarray(piece.weights)),
                "products": int(piece.products), "seconds": float(piece.seconds)}
    return {"sharpness": float(piece.sharpness), "adaptive_sharpness": float(piece.adaptive_sharpness),
            "seconds": float(piece.seconds)}


def _piece(name: str, plain: dict) -> HessianReport | DensityProbe | SharpnessResult:
    """Piece `name` of the aggregate's analysis as `_plain_piece` saved it."""
    if name == EIGEN_PIECE:
        return _report(plain)
    if name == SHARPNESS_PIECE:
        return SharpnessResult(plain["sharpness"], plain["adaptive_sharpness"], plain["seconds"])
    return DensityProbe(plain["nodes"].numpy(), plain["weights"].numpy(), plain["products"], plain["seconds"])


def _named_pieces(pieces: Iterable[str], settings: HessianSettings) -> str:
    """Pieces of the aggregate's analysis as a log line names them."""
    pieces = set(pieces)
    probes = [str(i + 1) for i in range(settings.density_probes) if density_piece(i) in pieces]
    return ", ".join([*(["the eigenpairs and trace"] if EIGEN_PIECE in pieces else []),
                      *([f"SLQ probes {', '.join(probes)} of {settings.density_probes}"] if probes else []),
                      *(["the sharpness"] if SHARPNESS_PIECE in pieces else [])])


def _aggregate(parts: Parts, analysis, settings: HessianSettings, compute: dict[str, str],
               computes: dict[str, dict[str, str] | None]) -> tuple[HessianReport, bool]:
    """The report of the aggregate's analysis, each piece saved by an earlier attempt of this job, or computed now
    (`analysis(pieces, finished)`: `analyse` given the pieces saved, calling `finished` with each of the others as it
    finishes) and saved then; and whether every piece was resumed. Where each piece was computed goes into `computes`
    under its part's name, as `_analysed` says. A whole analysis that an attempt saved in one part, before its pieces
    were parts, is resumed whole."""
    saved = parts.load(AGGREGATE)
    if saved is not None and all(key in saved for key in _WHOLE):
        log.info("data %s: its analysis is resumed whole, as an earlier attempt of this job saved it in one part "
                 "(before its pieces were parts of their own)", AGGREGATE)
        computes[AGGREGATE] = saved.get("compute")
        return _report(saved), True
    names = analysis_pieces(settings, settings.density)
    pieces = {}
    for name in names:
        plain = saved if name == EIGEN_PIECE else parts.load(_piece_part(name))
        if plain is not None:
            pieces[name], computes[_piece_part(name)] = _piece(name, plain), plain.get("compute")
    if len(pieces) == len(names):
        return report_of_pieces(pieces, settings, settings.density), True
    if pieces:
        log.info("data %s: %s resumed from %s, where an earlier attempt of this job computed them; computing the rest",
                 AGGREGATE, _named_pieces(pieces, settings), parts.dir)

    def finished(name: str, piece: HessianReport | DensityProbe | SharpnessResult) -> None:
        parts.save(_piece_part(name), {**_plain_piece(piece), "compute": dict(compute)})
        computes[_piece_part(name)] = dict(compute)

    return analysis(pieces, finished), False


@job_precision(lambda settings: HessianJob.from_settings(settings).hessian.precision)
def hessian_stage(settings: dict, trajectory_path: str | Path, partition_path: str | Path,
                  outputs: dict[str, str | Path], progress_dir: str | Path | None = None,
                  eigen_store: EigenStore | None = None) -> None:
    """One (run, round) of a hessian job's `settings` (`HessianJob`): Hessian metrics on the aggregate data and on
    each client's data; writes the job's hessian.csv, hessian_clients.csv, density.csv and hessian.json. With
    `progress_dir`, each finished part is kept there until the job ends (`Parts`); with `eigen_store`, the aggregate's
    eigenpairs are kept there for its plane job."""
    t_start = time.perf_counter()
    job = HessianJob.from_settings(settings)
    hs = job.hessian
    run_id, round_ = job.run_id, job.round
    device = resolve_device(job.device)
    traj = load_trajectory(trajectory_path, run_id=run_id)
    meta = traj.model_meta
    if hs.trace_estimator == EXACT and not piecewise_linear(meta.model, meta.model_options):
        raise ValueError(f"trace_estimator exact: the Hessian's diagonal of {meta.model} {meta.model_options} is not "
                         "exact from per-sample gradients (a model piecewise linear in its parameters only); use "
                         "hutchinson, hutchpp or auto")
    reason = traj.unusable(round_)
    if reason is not None:
        _write_diverged(job, traj, reason, outputs, t_start)
        return
    model = traj.model_at(round_, device)
    data = load_federated_data(job.run, job.dataset_options, partition_path, device)
    budget = "the exact diagonal" if hs.trace_estimator == EXACT else f"{hs.trace_probes} trace probes"
    log.info("hessian of %s at round %d on %s: %d parameters, %d clients, top-%d by %s, %s",
             run_id, round_, device, traj.params.shape[1], data.num_clients, hs.top_k, hs.method, budget)

    inputs = input_digests((trajectory_path, partition_path))  # read once: the parts' and the eigenpairs' keys
    key = progress_key(resume_settings(settings, HessianJob), device=device.type, digests=inputs)
    parts = Parts(progress_dir, key)
    compute = describe_compute(device, hs.precision)
    computes = {}  # where each part was computed (`_analysed`)

    # the aggregate data: eigenpairs (kept for the plane job), trace, density, sharpness, each a part (`_aggregate`)
    try:
        agg, resumed = _aggregate(parts, lambda pieces, finished: analyse(
            model, *aggregate_eval_data(data, hs), hs, pieces=pieces, finished=finished), hs, compute, computes)
    except NonFiniteLoss as exc:  # finite weights, overflowing outputs: a diverged model all the same
        _write_diverged(job, traj, f"the model of round {round_} has finite weights but {exc}", outputs, t_start)
        parts.clear()
        return
    log.info("data %s (n=%d): lambda = %s, trace = %.6g +- %.3g (%d products, %.1f s%s)", AGGREGATE, agg.n_eval,
             ", ".join(f"{v:.6g}" for v in agg.eigen.values), agg.hutchinson.trace, agg.hutchinson.stderr,
             agg.products, agg.seconds, parts.note(resumed))
    if eigen_store is not None:
        store = _eigen_parts(eigen_store, HessianPlaneJob.of(job), inputs, device.type)
        if plane_made_of(eigen_store.plane, store.key, agg, hs):
            log.info("the eigenvector plane of these eigenpairs is made (%s): none kept for a plane job",
                     eigen_store.plane)
        elif computes[AGGREGATE] is None:  # the plane would record this attempt's compute for another's eigenpairs
            log.info("the aggregate's part was saved before parts recorded where they were computed: no eigenpairs "
                     "kept for the plane job, which computes them itself")
        else:
            store_eigenpairs(store, agg, computes[AGGREGATE])
    rows = [_row(run_id, round_, AGGREGATE, agg, hs.top_k)]
    details = {"run_id": run_id, "round": round_, **compute,
               "settings": asdict(hs), "data": {AGGREGATE: _details(agg)}}
    density_rows = []
    if agg.density is not None:
        for p, (nodes, weights) in enumerate(zip(agg.density.nodes, agg.density.weights, strict=True)):
            density_rows.extend({"run_id": run_id, "round": round_, "data": AGGREGATE, "probe": p, "node": float(n),
                                 "weight": float(w)} for n, w in zip(nodes, weights, strict=True))

    # each client's data (all, or the sample of `hessian.clients`): eigenvalues, trace and the diagonal (HN, HD)
    clients = client_sample(data.num_clients, hs.clients, hs.seed)
    if hs.clients != ALL_CLIENTS:
        log.info("per-client analyses on %d of the %d clients (hessian.clients %s, seed %d)", len(clients),
                 data.num_clients, hs.clients, hs.seed)
        details["clients"] = clients
    diagonals, diverged = [], []
    for i, k in enumerate(clients):
        try:
            rep, resumed, computes[client_label(k)] = _analysed(
                parts, client_label(k), lambda k=k: analyse(model, *client_eval_data(data, hs, k), hs, density=False),
                compute)
        except NonFiniteLoss as exc:
            # a sample of this client's outside the aggregate's evaluation subset overflows: its Hessian, and the
            # spread of the clients' diagonals, are undefined; the aggregate's results stand
            log.warning("client %d (%d/%d): %s; its Hessian is not computed (a NaN row with status %r), nor HN and "
                        "HD", k, i + 1, len(clients), exc, DIVERGED)
            diverged.append(k)
            rows.append({"run_id": run_id, "round": round_, "data": client_label(k), "status": DIVERGED})
            details["data"][client_label(k)] = {"status": DIVERGED, "reason": str(exc)}
            continue
        diagonals.append(rep.hutchinson.quarters)
        rows.append(_row(run_id, round_, client_label(k), rep, hs.top_k))
        details["data"][client_label(k)] = _details(rep)
        log.info("client %d (%d/%d, n=%d): lambda_1 = %.6g, trace = %.6g +- %.3g (%.1f s%s)", k, i + 1, len(clients),
                 rep.n_eval, rep.eigen.values[0], rep.hutchinson.trace, rep.hutchinson.stderr, rep.seconds,
                 parts.note(resumed))
    if diverged:
        hn, hd, unresolved = math.nan, math.nan, []
        details["diverged_clients"] = diverged
    else:
        hn, hd, unresolved_at = diagonal_consistency(diagonals)  # HN, HD NaN with fewer than two clients
        log.info("HN = %.6g, HD = %.6f over %d clients", hn, hd, len(diagonals))
        unresolved = [clients[i] for i in unresolved_at]
    details["hd_unresolved_clients"] = unresolved  # why HD is NaN where it is
    if unresolved and hs.trace_estimator == EXACT:
        log.warning("HD is NaN: the Hessian diagonal of client(s) %s is zero (a saturated softmax: every logit's "
                    "probability 0 or 1)", ", ".join(map(str, unresolved)))
    elif unresolved:
        log.warning("HD is NaN: %d products did not resolve the Hessian diagonal of client(s) %s (the unbiased "
                    "estimate of its squared norm is not positive); raise hessian.trace_probes", hs.trace_probes,
                    ", ".join(map(str, unresolved)))
    details.update({"hn": hn, "hd": hd})
    # the compute above is this attempt's; a part resumed from an earlier attempt was computed where, and by the code,
    # that one ran (the job's record lists the codes where they differ)
    details["parts_compute"] = parts_compute(computes, parts.codes)
    note_codes(parts.codes.values())

    not_converged = [d for d, v in details["data"].items() if "converged" in v and not all(v["converged"])]
    if not_converged and hs.method == "power":  # not max_iter: its rule stops it near a residual of sqrt(tol) |value|
        worst = max(r / abs(value) if value else math.inf for d in not_converged
                    for value, r in zip(details["data"][d]["eigenvalues"], details["data"][d]["residuals"],
                                        strict=True))
        log.warning("power iteration did not establish the eigenvalues to tol %.1e on %s: its stopping rule "
                    "(PyHessian's) bounds no error, and their residuals bound their errors by up to %.2g of the value "
                    "(maths.power_iteration); hessian.method lanczos reaches tol", hs.tol, ", ".join(not_converged),
                    worst)
    elif not_converged:
        log.warning("eigenvalues did not reach tol %.1e within max_iter %d on %s; raise hessian.max_iter",
                    hs.tol, hs.max_iter, ", ".join(not_converged))

    write_csv(pd.DataFrame(rows, columns=hessian_columns(hs.top_k)), outputs["table"])
    client_row = {"run_id": run_id, "round": round_, "hn": hn, "hd": hd, CLIENTS_COLUMN: len(clients),
                  "status": DIVERGED if diverged else OK}
    write_csv(pd.DataFrame([client_row], columns=client_columns(hs.clients)), outputs["clients"])
    write_csv(pd.DataFrame(density_rows, columns=DENSITY_COLUMNS), outputs["density"])
    details["seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(outputs["details"], details, default=float)
    parts.clear()
    log.info("done in %.1f s", details["seconds"])


def _write_diverged(job: HessianJob, traj, reason: str, outputs: dict[str, str | Path], t_start: float) -> None:
    """Skip a job whose model cannot be analysed (a diverged run), still writing every output: NaN rows with
    status `diverged`, no density and the reason in hessian.json."""
    hs = job.hessian
    run_id, round_ = job.run_id, job.round
    log.warning("run %s, round %d: %s; the Hessian is not computed (NaN rows with status %r)", run_id, round_,
                reason, DIVERGED)
    clients = client_sample(int(job.run["num_clients"]), hs.clients, hs.seed)
    rows = [{"run_id": run_id, "round": round_, "data": data, "status": DIVERGED}
            for data in [AGGREGATE, *[client_label(k) for k in clients]]]
    write_csv(pd.DataFrame(rows, columns=hessian_columns(hs.top_k)), outputs["table"])
    client_row = {"run_id": run_id, "round": round_, CLIENTS_COLUMN: len(clients), "status": DIVERGED}
    write_csv(pd.DataFrame([client_row], columns=client_columns(hs.clients)), outputs["clients"])
    write_csv(pd.DataFrame(columns=DENSITY_COLUMNS), outputs["density"])
    details = {"run_id": run_id, "round": round_, "status": DIVERGED, "reason": reason,
               "settings": asdict(hs), "seconds": round(time.perf_counter() - t_start, 3)}
    if hs.clients != ALL_CLIENTS:
        details["clients"] = clients
    write_json(outputs["details"], details, default=float)


# -- the eigenvector plane ----------------------------------------------------------------------------
def eigen_key(job: HessianPlaneJob, version: int, inputs: tuple[str, str], device_type: str) -> str:
    """The key of the aggregate's eigenpairs of plane job `job` (or of the Hessian job it is the plane job of): the
    meaning of its settings at result version `version`, the contents of its trajectory and partition (`inputs`: their
    `input_digests`), the type of device."""
    return progress_key(HessianPlaneJob.meaning(with_result_version(to_settings(job), version)), device=device_type,
                        digests=inputs)


def _eigen_parts(store: EigenStore, job: HessianPlaneJob, inputs: tuple[str, str], device_type: str) -> Parts:
    return Parts(store.directory, eigen_key(job, store.version, inputs, device_type))


def plane_directions(vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The plane's two directions, as written (float32), from the top-2 eigenvectors (`vectors`: [>= 2, P])."""
    d1, d2 = orthonormal_plane(vectors[0], vectors[1])
    return d1.cpu().float().numpy(), d2.cpu().float().numpy()


def plane_made_of(path: str | Path | None, key: str, report: HessianReport, settings: HessianSettings) -> bool:
    """Whether the plane at `path` is made of the eigenpairs of key `key` (`eigen_key`, in its meta), so that none
    need be kept for its plane job: False where there is no such plane, or it is damaged or diverged. A plane made
    before planes recorded the key (by the Hessian job itself, whose record its plane job keeps, so that no plane job
    would ever take kept eigenpairs) is made of them where it holds the aggregate's top two eigenvalues of `report`,
    bit for bit, at the same sample count, method and seed: computed again with the same settings and inputs (on a
    CPU), they are the same."""
    if path is None or not Path(path).exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:  # the meta alone, not the vectors
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError):  # damaged or of another layout: the landscape stage says so
        return False
    if "eigen_key" in meta:
        return meta["eigen_key"] == key
    return (meta.get("eigenvalues") == [float(v) for v in report.eigen.values[:2]]
            and meta.get("n_eval") == int(report.n_eval) and meta.get("method") == settings.method
            and meta.get("seed") == settings.seed)


def store_eigenpairs(store: Parts, report: HessianReport, compute: dict[str, str]) -> None:
    """Keep the aggregate's eigenvalues and plane directions of `report` in `store` for the plane job (`plane_stage`):
    its two float32 directions, not the float64 eigenvectors (a quarter of their bytes), and where they were computed
    (`describe_compute`), which the plane then records."""
    d1, d2 = plane_directions(report.eigen.vectors)
    try:
        store.save(AGGREGATE, {"values": [float(v) for v in report.eigen.values], "d1": torch.from_numpy(d1),
                               "d2": torch.from_numpy(d2), "n_eval": int(report.n_eval), "compute": dict(compute)})
    # a plane job that ran beside this one removed the folder (torch.save says so with a RuntimeError): it computed
    # its own
    except (OSError, RuntimeError) as exc:
        log.warning("the eigenpairs are not kept for the plane job (%s): it computes them itself", exc)


def _stored_eigenpairs(store: Parts) -> tuple[tuple[float, ...], np.ndarray, np.ndarray, int, dict] | None:
    saved = store.load(AGGREGATE)
    if saved is None:
        return None
    return (tuple(saved["values"]), saved["d1"].numpy(), saved["d2"].numpy(), int(saved["n_eval"]),
            dict(saved["compute"]))


@job_precision(lambda settings: HessianPlaneJob.from_settings(settings).hessian.precision)
def plane_stage(settings: dict, trajectory_path: str | Path, partition_path: str | Path, output: str | Path,
                eigen_store: EigenStore | None = None) -> None:
    """One (run, round) of a hessian_plane job's `settings` (`HessianPlaneJob`): the plane of the top-2 eigenvectors of
    the aggregate loss (FedAlign Fig. 1) at the model analysed (at the final round of an SWA run: SWA), written to
    `output`. The eigenpairs are those the Hessian job of the same settings and inputs kept in `eigen_store`, where
    it ran first, else computed here as that job computes them."""
    t_start = time.perf_counter()
    job = HessianPlaneJob.from_settings(settings)
    es = job.hessian
    device = resolve_device(job.device)
    traj = load_trajectory(trajectory_path, run_id=job.run_id)
    reason = traj.unusable(job.round)
    if reason is not None:
        write_diverged_plane(output, traj, job, reason)
        return
    store = None if eigen_store is None else _eigen_parts(
        eigen_store, job, input_digests((trajectory_path, partition_path)), device.type)
    stored = None if store is None else _stored_eigenpairs(store)
    if stored is not None:  # computed by the Hessian job, where it records
        values, d1, d2, n_eval, compute = stored
        # the job's record names that compute, as its plane file does, and its own beside it (`job_precision` noted its
        # own as `compute`); and the Hessian job's code, which a `git pull` between the two jobs makes another than
        # this job's: its record lists both
        note(compute=compute, plane_compute=describe_compute(device, es.precision))
        note_codes(store.codes.values())
        log.info("eigenpairs of %s at round %d: those the Hessian job of the same settings and inputs computed on %s "
                 "(%s), taken from %s", job.run_id, job.round, compute["device"], compute["precision_used"], store.dir)
    else:
        compute = describe_compute(device, es.precision)
        model = traj.model_at(job.round, device)
        data = load_federated_data(job.run, job.dataset_options, partition_path, device)
        x, y = aggregate_eval_data(data, es)
        log.info("top-%d eigenpairs of %s at round %d on %s by %s: %d parameters, %d samples", es.top_k, job.run_id,
                 job.round, device, es.method, traj.params.shape[1], len(y))
        try:
            eigen = top_eigenpairs(model, x, y, es)
        except NonFiniteLoss as exc:  # finite weights, overflowing outputs: a diverged model all the same
            write_diverged_plane(output, traj, job, f"the model of round {job.round} has finite weights but {exc}")
            return
        values, n_eval = eigen.values, len(y)
        d1, d2 = plane_directions(eigen.vectors)
    center, center_buffers = traj.point(job.round)  # the model analysed (at the final round of an SWA run: SWA)
    labels = [f"eigenvector 1 (lambda_1 = {values[0]:.4g})", f"eigenvector 2 (lambda_2 = {values[1]:.4g})"]
    meta = {"kind": "hessian", "runs": [job.run_id], "round": job.round, "explained_variance": None,
            "axis_labels": labels, "model_meta": traj.model_meta.to_dict(), "seed": es.seed,
            "eigenvalues": [float(v) for v in values[:2]], "data": AGGREGATE, "n_eval": n_eval, "method": es.method,
            **compute, **({} if store is None else {"eigen_key": store.key})}
    write_eigen_plane(output, center.numpy(), center_buffers.numpy(), d1, d2, meta)
    if store is not None:  # taken, or of other settings or inputs: no job reads them again
        store.clear()
    log.info("lambda = %s; done in %.1f s", ", ".join(f"{v:.6g}" for v in values[:2]), time.perf_counter() - t_start)


def write_diverged_plane(output: str | Path, traj, job: HessianPlaneJob, reason: str) -> None:
    """The plane of a model that cannot be analysed (a diverged run): all NaN, marked `diverged`, with the reason."""
    log.warning("run %s, round %d: %s; the eigenvector plane is not computed (all NaN, status %r)", job.run_id,
                job.round, reason, DIVERGED)
    nan = np.full(traj.params.shape[1], np.nan, dtype=np.float32)
    meta = {"kind": "hessian", "runs": [job.run_id], "round": job.round, "explained_variance": None,
            "axis_labels": ["eigenvector 1 (not computed: the run diverged)",
                            "eigenvector 2 (not computed: the run diverged)"],
            "model_meta": traj.model_meta.to_dict(), "seed": job.hessian.seed, "eigenvalues": [None, None],
            "data": AGGREGATE, "n_eval": None, "method": job.hessian.method, "status": DIVERGED, "reason": reason}
    write_eigen_plane(output, nan, np.full(traj.buffers.shape[1], np.nan, dtype=np.float32), nan, nan, meta)
