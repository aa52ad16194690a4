"""The landscape stages that need the models: a plane with its projected checkpoints and its grid, and
one chunk of a surface's grid evaluated (gather and figure are in `gather` and `figures`, torch-free)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedscape.analysis.landscape.definitions import (
    ARRAY_KEYS,
    PLANE_KIND_OF,
    POINT_COLUMNS,
    UNREAD_PLANE_FIELDS,
    LandscapeChunkJob,
    LandscapePlaneJob,
    plane_digest,
    run_labels,
)
from fedscape.analysis.landscape.grid import Grid, chunk_bounds, grid_extent
from fedscape.analysis.landscape.planes import (
    Plane,
    joint_pca_plane,
    load_plane,
    pca_plane,
    random_plane,
    save_plane,
    three_point_plane,
)
from fedscape.analysis.landscape.project import project
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings, evaluate_chunk
from fedscape.core.config import digest
from fedscape.core.io import atomic_path, atomic_write_text, remake_hint, supplied_hint
from fedscape.core.runs import DIVERGED, OK, parse_run_id
from fedscape.data.datasets import dataset_from_options
from fedscape.data.federated import federate, load_federated_data, load_test_data
from fedscape.models.checkpoint import ModelMeta, Trajectory, load_clients, load_trajectory
from fedscape.models.device import describe_compute, job_precision, resolve_device
from fedscape.models.specs import BN_STATS_BASELINE

log = logging.getLogger("fedscape.landscape")


class DivergedCheckpoint(RuntimeError):
    """A checkpoint a plane needs belongs to a diverged run: its round is missing or its model is not finite."""


@dataclass
class _Points:
    """Checkpoints to project, with one metadata row each."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    rows: list[dict]

    def add(self, vec: torch.Tensor, buf: torch.Tensor, **row) -> None:
        self.params.append(vec)
        self.buffers.append(buf)
        self.rows.append(row)


def _row_of(traj: Trajectory, round_: int | str, run_id: str) -> int:
    """The trajectory row of a round; 'final' = the last usable model (a diverged run's last good one).

    DivergedCheckpoint when the round's model cannot be used because the run diverged.
    """
    if round_ == "final":
        usable = [i for i in range(len(traj.rounds)) if traj.unusable(int(traj.rounds[i])) is None]
        if not usable:
            raise DivergedCheckpoint(f"run {run_id} has no finite model (it diverged at once)")
        if usable[-1] != len(traj.rounds) - 1 or traj.status != OK:
            log.warning("run %s has status %r: using its last finite model (round %d)", run_id, traj.status,
                        int(traj.rounds[usable[-1]]))
        return usable[-1]
    reason = traj.unusable(int(round_))
    if reason is None:
        return traj.row(int(round_))
    raise DivergedCheckpoint(f"run {run_id}: {reason}")


def _model(traj: Trajectory, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(params, buffers) of a checkpoint's model: the global model of that row, or at the final round of a run
    with SWA its SWA model (`Trajectory.point`). PCA trajectories keep the global models of every round."""
    return traj.point(int(traj.rounds[row]))


def _finite_rows(traj: Trajectory, upto: int, run_id: str) -> list[int]:
    rows = [i for i in range(upto + 1) if bool(torch.isfinite(traj.params[i]).all())]
    if len(rows) < upto + 1:
        log.warning("run %s: %d non-finite checkpoints skipped (diverged run)", run_id, upto + 1 - len(rows))
    return rows


# -- plane -----------------------------------------------------------------------------------------------
def landscape_plane_job(settings: dict, trajectories: list[str], clients: str | None, hessian_plane: str | None,
                        outputs: dict[str, str]) -> None:
    """One job of rule landscape_plane (its `settings`: a `LandscapePlaneJob`): build the plane of one `landscapes`
    entry, project its checkpoints and fix the grid.

    When a checkpoint the plane needs belongs to a diverged run (its round is missing, its model is not
    finite, or the Hessian plane was not computed), a warning is logged and an all-NaN plane marked
    `status: diverged` is written with no points; its chunks then record NaN losses without evaluating. A
    final_models plane whose models span one dimension is completed with a random direction, said
    (`_spanning_models`); one whose models are all one model is refused.
    """
    t0 = time.perf_counter()
    job = LandscapePlaneJob.from_settings(settings)
    kind, runs = job.kind, list(job.runs)
    labels = dict(zip(runs, run_labels(job.run_fields), strict=True))
    trajs = {run_id: load_trajectory(path, run_id=run_id) for run_id, path in zip(runs, trajectories, strict=True)}
    first = trajs[runs[0]]
    common = {"runs": runs, "model_meta": first.model_meta.to_dict(),
              "extra": {"label": job.label, "surface_kind": kind}}
    try:
        plane, pts = _build_plane(job, trajs, clients, hessian_plane, labels, common)
    except DivergedCheckpoint as exc:
        log.warning("surface %s: %s; writing an all-NaN plane (status %r) and no points", job.label, exc,
                    DIVERGED)
        plane, pts = _diverged_plane(job, first, common, str(exc)), _Points([], [], [])

    if pts.rows:
        proj = project(torch.stack(pts.params), plane)
        coords, distance, rel_distance = proj.coords, proj.distance, proj.rel_distance
    else:
        coords, distance, rel_distance = np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    extent = grid_extent(coords, job.margin, job.span, kind=job.kind)
    outside = [row["label"] for row, (a, b) in zip(pts.rows, coords, strict=True)
               if not (extent[0] <= a <= extent[1] and extent[2] <= b <= extent[3])]
    if outside:
        log.warning("plane %s: %d checkpoint(s) lie outside span %s and are not drawn (%s); widen the span or "
                    "leave it out (automatic: every checkpoint inside)", job.label, len(outside),
                    [round(v, 4) for v in extent], ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else ""))
    grid = Grid.from_extent(extent, job.resolution)
    save_plane(outputs["plane"], plane)
    df = pd.DataFrame(pts.rows, columns=[c for c in POINT_COLUMNS if c not in ("a", "b", "distance", "rel_distance")])
    df["a"], df["b"] = coords[:, 0], coords[:, 1]
    df["distance"], df["rel_distance"] = distance, rel_distance
    with atomic_path(outputs["points"]) as tmp:
        df[POINT_COLUMNS].to_csv(tmp, index=False)
    grid_info = {**grid.to_dict(), "extent": list(grid.extent), "resolution": job.resolution,
                 "plane_settings_digest": digest(settings)}
    atomic_write_text(outputs["grid"], json.dumps(grid_info, indent=1))
    log.info("plane %s (%s, %d checkpoints, explained variance %s): extent %s, max distance from plane %.3g "
             "(relative %.3g), %.1f s", job.label, plane.kind, len(pts.rows), plane.explained_variance,
             [round(v, 4) for v in grid.extent], float(distance.max(initial=0.0)),
             float(rel_distance.max(initial=0.0)), time.perf_counter() - t0)


def _diverged_plane(job: LandscapePlaneJob, first: Trajectory, common: dict, reason: str) -> Plane:
    """An all-NaN plane of the entry's kind marked `status: diverged` (its surfaces are all NaN)."""
    nan = torch.full((first.params.shape[1],), float("nan"))
    # no round number for `final`, nor for a kind that does not read `round` (three_points: its checkpoints name their
    # own), whose computed plane records none either
    no_round = job.round == "final" or "round" in UNREAD_PLANE_FIELDS[job.kind]
    return Plane(nan, torch.full((first.buffers.shape[1],), float("nan")), nan.clone(), nan.clone(),
                 kind=PLANE_KIND_OF[job.kind], runs=tuple(common["runs"]),
                 round=None if no_round else int(job.round),
                 axis_labels=("d1 (not computed: a run diverged)", "d2 (not computed: a run diverged)"),
                 model_meta=common["model_meta"], seed=job.seed,
                 extra={**common["extra"], "status": DIVERGED, "reason": reason})


def _build_plane(job: LandscapePlaneJob, trajs: dict[str, Trajectory], clients: str | None, hessian_plane: str | None,
                 labels: dict[str, str], common: dict) -> tuple[Plane, _Points]:
    """The plane of one entry and the checkpoints to project on it (DivergedCheckpoint: a run diverged)."""
    kind, runs, round_ = job.kind, list(job.runs), job.round
    first = trajs[runs[0]]
    meta = common["model_meta"]
    pts = _Points([], [], [])
    if kind in ("trajectory", "trajectories"):
        ends = {}
        for run_id in runs:
            traj = trajs[run_id]
            end = _row_of(traj, round_, run_id)
            ends[run_id] = end
            for i in _finite_rows(traj, end, run_id):
                t = int(traj.rounds[i])
                role = "init" if t == 0 else ("final" if i == end else "global")
                pts.add(traj.params[i], traj.buffers[i], label=f"round {t}", group=labels[run_id], role=role,
                        run_id=run_id, round=t, client=-1)
        if len(pts.params) < 2 and any(trajs[r].status != "ok" for r in runs):
            raise DivergedCheckpoint(f"run(s) {', '.join(runs)} diverged with {len(pts.params)} finite checkpoint(s) "
                                     "up to the plane's round; a PCA plane needs 2")
        center, buffers = _center(job, pts, first.params[ends[runs[0]]], first.buffers[ends[runs[0]]])
        stacked = torch.stack(pts.params)
        plane_round = None if round_ == "final" else int(round_)
        if kind == "trajectory":
            plane = pca_plane(stacked, center, buffers, round=plane_round, seed=job.seed, **common)
        else:
            plane = joint_pca_plane([stacked], center, buffers, round=plane_round, seed=job.seed, **common)
    elif kind == "final_models":
        for run_id in runs:
            traj = trajs[run_id]
            row = _row_of(traj, round_, run_id)
            pts.add(*_model(traj, row), label=labels[run_id], group=labels[run_id], role="final",
                    run_id=run_id, round=int(traj.rounds[row]), client=-1)
        row0 = _row_of(first, round_, runs[0])
        center, buffers = _center(job, pts, *_model(first, row0))
        plane = joint_pca_plane([torch.stack(pts.params)], center, buffers,
                                round=None if round_ == "final" else int(round_), seed=job.seed, **common)
        plane = _spanning_models(job, plane, pts, trajs)
    elif kind == "local":
        run_id = runs[0]
        t = int(first.final_round if round_ == "final" else round_)
        for r in (t - 1, t):  # DivergedCheckpoint when the run diverged before the end of round t
            _row_of(first, r, run_id)
        saved = load_clients(clients, run_id=run_id)
        if t not in saved:
            raise RuntimeError(f"{clients} holds the client models of rounds {sorted(saved)}, not of round {t}")
        cr = saved[t]
        start, end = first.row(t - 1), first.row(t)
        pts.add(first.params[start], first.buffers[start], label=f"round start (t={t - 1})", group="global",
                role="round_start", run_id=run_id, round=t - 1, client=-1)
        for k, cid in enumerate(cr.client_ids.tolist()):
            pts.add(cr.params[k], cr.buffers[k], label=f"client {cid}", group="client", role="client", run_id=run_id,
                    round=t, client=int(cid))
        pts.add(first.params[end], first.buffers[end], label=f"aggregate (t={t})", group="global", role="aggregate",
                run_id=run_id, round=t, client=-1)
        center, buffers = _center(job, pts, first.params[end], first.buffers[end])
        plane = pca_plane(torch.stack(pts.params), center, buffers, round=t, seed=job.seed,
                          **{**common, "extra": {**common["extra"], "client": job.client}})
    elif kind == "random":
        run_id = runs[0]
        row = _row_of(first, round_, run_id)
        pts.add(*_model(first, row), label=f"{labels[run_id]}, round {int(first.rounds[row])}",
                group=labels[run_id], role="center", run_id=run_id, round=int(first.rounds[row]), client=-1)
        plane = random_plane(*_model(first, row), first.model_meta.shapes(), job.seed,
                             round=int(first.rounds[row]), **common)
    elif kind == "hessian":
        run_id = runs[0]
        supplied_as = f"landscapes.{job.label}.plane_file" if job.plane_file else None
        plane = load_plane(hessian_plane, supplied_as)
        if plane.extra.get("status", OK) != OK:
            raise DivergedCheckpoint(f"{hessian_plane} was not computed (status {plane.extra['status']!r}: "
                                     f"{plane.extra.get('reason', 'no reason recorded')})")
        row = _row_of(first, round_, run_id)
        if plane.num_params != first.params.shape[1]:
            fix = supplied_hint(hessian_plane, supplied_as) if supplied_as else remake_hint(hessian_plane)
            raise RuntimeError(f"{hessian_plane} has {plane.num_params} parameters, run {run_id}'s model "
                               f"{first.params.shape[1]}; {fix}")
        if not plane.model_meta:
            plane = replace(plane, model_meta=meta)
        if tuple(plane.runs) != tuple(runs):
            # the surface evaluates the planned run's data (the chunk jobs' partition input), whichever run the
            # directions were computed for: a supplied plane_file may come from another run
            plane = replace(plane, runs=tuple(runs), extra={**plane.extra, "direction_runs": list(plane.runs)})
        if plane.center_buffers.numel() != first.buffers.shape[1]:
            plane = replace(plane, center_buffers=_model(first, row)[1].clone())
        pts.add(*_model(first, row), label=f"{labels[run_id]}, round {int(first.rounds[row])}",
                group=labels[run_id], role="center", run_id=run_id, round=int(first.rounds[row]), client=-1)
    elif kind == "three_points":
        vecs, bufs, names = [], [], []
        for cp in job.checkpoints:
            traj = trajs[cp.run_id]
            row = _row_of(traj, cp.round, cp.run_id)
            params, buffers = _model(traj, row)
            vecs.append(params)
            bufs.append(buffers)
            names.append(f"{labels[cp.run_id]}, round {int(traj.rounds[row])}")
            pts.add(params, buffers, label=names[-1], group=labels[cp.run_id], role="checkpoint",
                    run_id=cp.run_id, round=int(traj.rounds[row]), client=-1)
        plane = three_point_plane(vecs[0], vecs[1], vecs[2], bufs[0], labels=names, **common)
    else:
        raise ValueError(f"unknown surface kind {kind!r}")
    return plane, pts


def _spanning_models(job: LandscapePlaneJob, plane: Plane, pts: _Points, trajs: dict[str, Trajectory]) -> Plane:
    """A final_models `plane` as its models span it: kept where they span two dimensions; completed, said, where they
    span one; refused where they coincide.

    A principal direction the models do not span is a seeded random one (`pca_directions`: explained variance 0).
    With one such direction (collinear models, e.g. two runs of the three with equal models) every model still lies
    on the plane and d1 is their line: the plane is kept, with a warning naming it and `random_axes` in its file's
    meta (its axis label says so too). With two the models are one point, and the plane would be two random
    directions around it, nothing of what the entry asks for (and not even the filter-normalised ones of kind random):
    refused. Where a run diverged, its last finite model stands in for it (`_row_of`), so models that coincide there
    are the runs' shared init or so: DivergedCheckpoint, an all-NaN plane as for any diverged run; otherwise the runs
    trained to the same model (an algorithm equal to another at its settings, a field training does not read), a
    choice of runs to correct: ValueError."""
    random_axes = [f"d{k + 1}" for k, ratio in enumerate(plane.explained_variance) if ratio == 0.0]
    if not random_axes:
        return plane
    models = ", ".join(f"{row['run_id']} round {row['round']}" for row in pts.rows)
    if len(random_axes) == 2:
        diverged = [run_id for run_id in job.runs if trajs[run_id].status != OK]
        if diverged:
            raise DivergedCheckpoint(f"the models of the final_models plane are all one model ({models}) once "
                                     f"diverged run(s) {', '.join(diverged)} stand in with their last finite model")
        raise ValueError(f"landscapes.{job.label}: the final_models plane's models are all one model ({models}): no "
                         "plane goes through them (its directions would both be random); select runs whose models "
                         f"differ in landscapes.{job.label}.runs, or use kind random for the plane around one of them")
    log.warning("plane %s (final_models): its %d models span 1 dimension (%s); d2 is a random direction orthogonal "
                "to d1 (drawn from landscapes.%s.seed %d), not a principal direction of the models", job.label,
                len(pts.rows), models, job.label, job.seed)
    return replace(plane, extra={**plane.extra, "random_axes": random_axes})


def _center(job: LandscapePlaneJob, pts: _Points, final: torch.Tensor,
            final_buffers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plane's centre: the last checkpoint (Li et al. 2018) or the mean of all the plane's checkpoints."""
    if job.center == "mean":
        center = torch.stack(pts.params).double().mean(dim=0).float()
        buffers = torch.stack(pts.buffers).double().mean(dim=0).float()
        return center, buffers
    return final.clone(), final_buffers.clone()


# -- chunks ----------------------------------------------------------------------------------------------
def surface_data(dataset: str, options: dict, data: str, partition_path: str | None,
                 run: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation data `data` of a surface: the union of the clients' data (L, `train`), one client's (L_m,
    `client~<id>`) or the test set, of `dataset` with `options`, loaded as the train stage loads them
    (data.federated: the partition kind's input transform applied). `run`: the fields of the run whose partition it
    is, checked against the file (None: a plane that names no run)."""
    x, y, _, _ = surface_inputs(dataset, options, data, partition_path, run)
    return x, y


def surface_inputs(dataset: str, options: dict, data: str, partition_path: str | None, run: dict | None,
                   training_inputs: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
    """`surface_data`'s inputs and targets, with `training_inputs` the union of the clients' inputs (what a
    surface recomputes batch-norm statistics from, whatever it evaluates), the data set loaded once, and the classes
    whose prediction its accuracy never credits (`Dataset.never_correct`)."""
    if data != "train" and data != "test" and not data.startswith("client~"):
        raise ValueError(f"unknown surface data {data!r}: train, test or client~<id>")
    fed = None
    if data != "test" or training_inputs:
        fed = (federate(dataset_from_options(dataset, options), partition_path) if run is None
               else load_federated_data(run, options, partition_path))
    union = fed.union() if data == "train" or training_inputs else None
    if data == "test":  # the loaded data set's test set where the training inputs loaded it (the same tensors)
        x, y, never_correct = ((fed.x_test, fed.y_test, fed.never_correct) if fed is not None
                               else load_test_data(dataset, options))
    elif data == "train":
        (x, y), never_correct = union, fed.never_correct
    else:
        m = int(data.split("~", 1)[1])
        if not 0 <= m < fed.num_clients:
            raise ValueError(f"client {m} does not exist: the partition has {fed.num_clients} clients")
        (x, y), never_correct = fed.client(m), fed.never_correct
    return x, y, union[0] if training_inputs else None, never_correct


@job_precision(lambda settings: LandscapeChunkJob.from_settings(settings).precision)
def landscape_chunk_job(settings: dict, plane_path: str, grid_path: str, partition_path: str | None, out: str) -> None:
    """One job of rule landscape_chunk (its `settings`: a `LandscapeChunkJob`): evaluate one chunk of a surface's
    grid and write its indices, losses and accuracies (all NaN, without evaluating, when the plane is marked
    diverged)."""
    job = LandscapeChunkJob.from_settings(settings)
    plane = load_plane(plane_path)
    # the plane's arrays, as read (no second read of the file): the gather job checks it against the plane's
    evaluated_on = plane_digest({key: getattr(plane, key).numpy() for key in ARRAY_KEYS})
    grid_info = json.loads(Path(grid_path).read_text())
    grid = Grid.from_dict(grid_info)
    if plane.extra.get("status", OK) != OK:
        _write_nan_chunk(job, plane, evaluated_on, grid, out)
        return
    # the plane's first run is the one whose data it evaluates
    run = parse_run_id(plane.runs[0]) if plane.runs else None
    # the statistics come from the plane's training data whatever the surface evaluates (a client's shard, the
    # test set), as the barriers' points take theirs from the training data
    x, y, bn_x, never_correct = surface_inputs(job.dataset, job.dataset_options, job.data, partition_path, run,
                                training_inputs=job.bn_stats == "recomputed")
    device = resolve_device(job.device)
    model = ModelMeta.from_dict(plane.model_meta).build()
    sset = SurfaceSettings(batch_size=job.batch_size, points_per_batch=job.points_per_batch)
    evaluator = SurfaceEvaluator(model, plane, x, y, device, sset, bn_x=bn_x, never_correct=never_correct)
    start, stop = chunk_bounds(grid.size, job.chunks, sset.points_per_batch)[job.chunk]
    log.info("surface %s chunk %d/%d: grid points %d..%d of %d on %s (%d samples, channels_last=%s, batch-norm "
             "statistics %s)", job.surface_id, job.chunk + 1, job.chunks, start, stop, grid.size, device, len(y),
             evaluator.flat.channels_last,
             f"recomputed at every point from {len(evaluator.bn_sample)} training samples"
             if evaluator.recomputes_bn else "of the centre")
    res = evaluate_chunk(evaluator, grid, start, stop)
    meta = {"surface_id": job.surface_id, "chunk": job.chunk, "chunks": job.chunks,
            "grid_digest": digest(grid.to_dict()), "plane_digest": evaluated_on,
            "n_eval": len(y), "bn_stats": "recomputed" if evaluator.recomputes_bn else BN_STATS_BASELINE,
            **describe_compute(device, job.precision)}
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, index=res["index"], loss=res["loss"], acc=res["acc"], meta=np.array(json.dumps(meta)))


def _write_nan_chunk(job: LandscapeChunkJob, plane: Plane, evaluated_on: str, grid: Grid, out: str) -> None:
    """The chunk of a plane marked diverged: its grid points with NaN loss and accuracy, nothing evaluated."""
    start, stop = chunk_bounds(grid.size, job.chunks, job.points_per_batch)[job.chunk]
    log.warning("surface %s chunk %d/%d: the plane is marked %r (%s); grid points %d..%d recorded as NaN",
                job.surface_id, job.chunk + 1, job.chunks, plane.extra["status"],
                plane.extra.get("reason", "no reason recorded"), start, stop)
    nan = np.full(stop - start, np.nan)
    meta = {"surface_id": job.surface_id, "chunk": job.chunk, "chunks": job.chunks,
            "grid_digest": digest(grid.to_dict()), "plane_digest": evaluated_on, "n_eval": None, "device": None,
            "status": plane.extra["status"], "bn_stats": job.bn_stats}
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, index=np.arange(start, stop, dtype=np.int64), loss=nan, acc=nan.copy(),
                 meta=np.array(json.dumps(meta)))
