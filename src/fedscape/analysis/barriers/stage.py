"""The barrier stages: loss and error along the segment (and a trained Bezier curve) between two checkpoints, and
layer-wise barriers and distances of a pair of models at one round (checkpoints in, per-job CSV tables out)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch

from fedscape.analysis.barriers.alignment import align_points
from fedscape.analysis.barriers.curve import bezier_curve, train_bend
from fedscape.analysis.barriers.definitions import (
    BEZIER,
    FULL_MODEL,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    LINEAR,
    PAIR_SEPARATOR,
    SPLITS,
    InterpolationJob,
    LayerBarriersJob,
    format_averaged,
    grid_t,
    interpolation_grid,
    linear_barrier,
    mode_entries,
)
from fedscape.analysis.barriers.maths import (
    Point,
    eval_splits,
    interpolation_curve,
    layer_distances,
    layerwise_barriers,
    model_layers,
)
from fedscape.core.io import remake_hint, write_csv
from fedscape.core.manifest import note
from fedscape.core.runs import OK
from fedscape.data.federated import FederatedData, load_federated_data
from fedscape.models.batchnorm import has_batch_norm
from fedscape.models.checkpoint import load_clients, load_trajectory
from fedscape.models.device import describe_compute, job_precision, resolve_device
from fedscape.stages.progress import Parts, note_codes, parts_compute, progress_key, resume_settings

log = logging.getLogger("fedscape.barriers")


def _splits_of(federated: FederatedData) -> dict:
    """{'train': the aggregate client data as evaluations score it (`FederatedData.union`), 'test': the test set},
    whole (a job evaluates its points on their `eval_splits`)."""
    return {"train": federated.union(), "test": (federated.x_test, federated.y_test)}


def _point(traj, round_: int) -> Point:
    """The model of `round_`: the global model, or at the final round of a run with SWA its SWA model."""
    return Point(*traj.point(round_))


def _bn_x(job: InterpolationJob | LayerBarriersJob, splits: dict, model: torch.nn.Module) -> torch.Tensor | None:
    """The training inputs every evaluated model's batch-norm statistics are recomputed from (`bn_stats:
    recomputed`), or None to keep the stored ones; a model without batch norm is never recomputed. `splits`: the
    whole splits, whatever `eval_samples` evaluates, so that a subset changes the sample a loss is measured on, never
    the models measured."""
    if job.bn_stats != "recomputed" or not has_batch_norm(model):
        return None
    return splits["train"][0]


def _note_parts_compute(computes: dict[str, dict[str, str] | None], parts: Parts) -> None:
    """Record in the job's record (beside its own `describe_compute` and code, which are this attempt's: its tables
    hold none) where and by which code each of its parts was computed (`parts_compute`, `note_codes`): a part resumed
    from an earlier attempt of the job was computed where that one ran, perhaps on another card (the parts' key names
    the type of device alone), and by the code it ran."""
    if computes:
        note(parts_compute=parts_compute(computes, parts.codes))
        note_codes(parts.codes.values())


def _nan_curve(job: InterpolationJob, rounds: list[int]) -> pd.DataFrame:
    """The rows of an interpolation that is not computed (a diverged run): every t and split, NaN loss and error."""
    rows = [{"pair_id": job.pair_id, "run_a": job.run_a, "round_a": rounds[0], "run_b": job.run_b,
             "round_b": rounds[1], "t": grid_t(t), "split": split, "loss": math.nan, "error": math.nan,
             "aligned": aligned, "path": path, "bn_stats": job.bn_stats}
            for path in job.paths for aligned in job.alignments
            for t in interpolation_grid(job.points) for split in SPLITS]
    return pd.DataFrame(rows, columns=INTERPOLATION_COLUMNS)


def _order_seed(job: LayerBarriersJob) -> int:
    """The seed of the random orders (any value where the job runs no mode random: it draws nothing)."""
    return 0 if job.order_seed is None else job.order_seed


def _directions(job: LayerBarriersJob) -> tuple[int, int, str]:
    """The seed, the sample count and the moved models of the random directions of mode random_direction (any
    values where the job runs no control mode: it draws none)."""
    return (0 if job.direction_seed is None else job.direction_seed,
            1 if job.direction_samples is None else job.direction_samples, job.direction_moves)


def _nan_layer_rows(traj, meta: dict, job: LayerBarriersJob) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The layer-barrier and layer-distance rows of a pair and round that is not computed (a diverged run): NaN."""
    layers = model_layers(traj.model_meta.build())
    barriers = [{**meta, "mode": mode, "layer_index": i, "layer": layers[i].name, "split": split,
                 "barrier_loss": math.nan, "barrier_error": math.nan, "aligned": aligned,
                 "averaged": format_averaged(group), "bn_stats": job.bn_stats}
                for aligned in job.alignments for mode in job.modes
                for i, group in mode_entries(len(layers), mode, _order_seed(job)) for split in SPLITS]
    distances = [{**meta, "layer_index": index, "layer": name, "distance": math.nan, "cosine": math.nan,
                  "aligned": aligned}
                 for aligned in job.alignments
                 for index, name in [*((layer.index, layer.name) for layer in layers), (-1, FULL_MODEL)]]
    return (pd.DataFrame(barriers, columns=LAYER_BARRIER_COLUMNS),
            pd.DataFrame(distances, columns=LAYER_DISTANCE_COLUMNS))


# -- linear interpolation --------------------------------------------------------------------------
@job_precision(lambda settings: InterpolationJob.from_settings(settings).precision)
def interpolation_job(settings: dict, trajectory_a: str | Path, trajectory_b: str | Path,
                      partition: str | Path, output: str | Path, progress_dir: str | Path | None = None) -> None:
    """One job of rule interpolation (its `settings`: an `InterpolationJob`): loss and error along the segment
    between two checkpoints, on train and test (Li et al. 2022, Fig. 3c), and along a trained quadratic Bezier curve
    when the job carries `curve` (Garipov et al. 2018). With `progress_dir`, each trained bend is kept there until the
    job ends (`Parts`): a rerun after a kill does not train it again."""
    t0 = time.perf_counter()
    job = InterpolationJob.from_settings(settings)
    device = resolve_device(job.device)
    inputs = (trajectory_a, trajectory_b, partition)
    parts = Parts(progress_dir, progress_key(resume_settings(settings, type(job)), inputs, device.type))
    traj_a = load_trajectory(trajectory_a, run_id=job.run_a)
    traj_b = load_trajectory(trajectory_b, run_id=job.run_b)
    rounds = [traj.final_round if r == "final" else int(r) for traj, r in ((traj_a, job.round_a),
                                                                           (traj_b, job.round_b))]
    reasons = [f"{key} ({run_id}): {reason}"
               for key, run_id, r, tr in (("a", job.run_a, rounds[0], traj_a), ("b", job.run_b, rounds[1], traj_b))
               if (reason := tr.unusable(r)) is not None]
    if reasons:
        log.warning("pair %s: %s; the curve is not computed (NaN rows)", job.pair_id, "; ".join(reasons))
        write_csv(_nan_curve(job, rounds), output)
        parts.clear()  # bends a killed attempt trained from other checkpoints
        return
    federated = load_federated_data(job.data.run, job.data.dataset_options, partition, device)
    whole = _splits_of(federated)
    splits = eval_splits(whole, job.eval_samples, job.eval_seed)
    model = traj_a.model_meta.build().to(device).eval()
    a, b = _point(traj_a, rounds[0]).to(device), _point(traj_b, rounds[1]).to(device)
    ends = {False: b}
    if job.align:
        t1 = time.perf_counter()
        ends[True], _ = align_points(model, a, b)
        log.info("pair %s: model b aligned to a by weight matching in %.1f s (distance %.4g -> %.4g)",
                 job.pair_id, time.perf_counter() - t1, float((b.params - a.params).norm()),
                 float((ends[True].params - a.params).norm()))
    bn_x = _bn_x(job, whole, model)
    rows = [{**r, "aligned": aligned, "path": LINEAR} for aligned, end in ends.items()
            for r in interpolation_curve(model, a, end, splits, job.points, job.eval_batch_size, bn_x,
                                         federated.never_correct)]
    computes = {}  # where each bend was trained: this attempt, or one before it (None: saved before bends recorded it)
    if job.curve is not None:
        curve = job.curve
        compute = describe_compute(device, job.precision)
        # a bend trains on every training sample, as the runs do (a raw text's windows at every start), where the
        # evaluations score the union's evaluated rows
        pool = whole["train"] if federated.eval_rows is None else federated.union(evaluated=False)
        for aligned, end in ends.items():
            t1 = time.perf_counter()
            name = "bend_aligned" if aligned else "bend"
            saved = parts.load(name)
            if saved is not None:  # its seconds as trained (parts saved before they were kept: NaN)
                theta, losses = saved["theta"].to(device), saved["losses"].tolist()
                seconds = float(saved.get("seconds", math.nan))
                computes[name] = saved.get("compute")
            else:
                theta, losses = train_bend(model, a, end, *pool, curve, train_mode=bn_x is not None)
                seconds = time.perf_counter() - t1
                parts.save(name, {"theta": theta.cpu(), "losses": torch.tensor(losses, dtype=torch.float64),
                                  "seconds": seconds, "compute": dict(compute)})
                computes[name] = dict(compute)
            tail = losses[-max(1, len(losses) // 10):]
            log.info("pair %s%s: Bezier bend trained in %d steps in %.1f s (mean loss of the last %d steps %.4g; "
                     "bend moved %.4g from the midpoint)%s", job.pair_id, " (aligned)" if aligned else "",
                     curve.steps, seconds, len(tail), sum(tail) / len(tail) if losses else math.nan,
                     float((theta - 0.5 * (a.params + end.params)).norm()), parts.note(saved is not None))
            rows += [{**r, "aligned": aligned, "path": BEZIER} for r in bezier_curve(
                model, a, theta, end, splits, job.points, job.eval_batch_size, bn_x, federated.never_correct)]
    df = pd.DataFrame(rows).assign(bn_stats="stored" if bn_x is None else "recomputed")
    df.insert(0, "pair_id", job.pair_id)
    df.insert(1, "run_a", job.run_a)
    df.insert(2, "round_a", rounds[0])
    df.insert(3, "run_b", job.run_b)
    df.insert(4, "round_b", rounds[1])
    write_csv(df[INTERPOLATION_COLUMNS], output)
    _note_parts_compute(computes, parts)
    parts.clear()
    for (path, aligned, split), sub in df.groupby(["path", "aligned", "split"], sort=False):
        log.info("pair %s %s %s%s: loss barrier %.4f, error barrier %.4f", job.pair_id, path, split,
                 " (aligned)" if aligned else "", linear_barrier(sub["t"], sub["loss"]),
                 linear_barrier(sub["t"], sub["error"]))
    log.info("pair %s: %d points x %d splits in %.1f s", job.pair_id, job.points, len(splits),
             time.perf_counter() - t0)


# -- layer-wise mode connectivity ------------------------------------------------------------------
@job_precision(lambda settings: LayerBarriersJob.from_settings(settings).precision)
def layer_barriers_job(settings: dict, inputs: dict, out_barriers: str | Path, out_distances: str | Path,
                       progress_dir: str | Path | None = None) -> None:
    """One job of rule layer_barriers (its `settings`: a `LayerBarriersJob`): layer-wise barriers (the configured
    modes) and distances of one pair at one round (Adilova et al. 2023),
    and of the pair with b aligned to a by weight matching when the job asks for it (Ainsworth et al. 2023).

    `inputs`: 'partition' and 'trajectory_a' always; 'clients' for two clients of one run,
    'trajectory_b' for the global models of two runs; neither for a run's global models at rounds `round` and
    `round` + 1 (kind `consecutive`: Adilova et al. 2023, Sec. 2.1, the average of consecutive epochs). With
    `progress_dir`, the rows of the pair as trained and of the aligned pair are kept there until the job ends
    (`Parts`): a rerun after a kill does not compute a finished one (nor its weight matching) again.
    """
    t0 = time.perf_counter()
    job = LayerBarriersJob.from_settings(settings)
    device = resolve_device(job.device)
    read = [inputs[k] for k in sorted(inputs)]
    parts = Parts(progress_dir, progress_key(resume_settings(settings, type(job)), read, device.type))
    pair, round_ = job.pair, job.round
    run_ids = job.run_id.split(PAIR_SEPARATOR)  # one run, or two for a pair of runs
    traj_a = load_trajectory(inputs["trajectory_a"], run_id=run_ids[0])
    meta = {"run_id": job.run_id, "round": round_, "pair": pair}
    if job.kind == "clients":
        saved = load_clients(inputs["clients"], run_id=run_ids[0])
        reason = None
        if round_ not in saved and traj_a.status == OK:
            raise KeyError(f"pair {pair}: {inputs['clients']} holds the client models of rounds {sorted(saved)}, not "
                           f"of round {round_}, although the run did not diverge; {remake_hint(inputs['clients'])}")
        if round_ not in saved:
            reason = (f"round {round_} has no client checkpoints (the run stopped at round {traj_a.final_round}, "
                      f"status {traj_a.status!r})")
        elif not all(bool(torch.isfinite(v).all()) for v in (saved[round_].params, saved[round_].buffers)):
            reason = f"the client models of round {round_} have NaN/inf parameters (status {traj_a.status!r})"
        elif (diverged := traj_a.unusable(round_, global_model=True)) is not None:
            # the clients of the round whose aggregate diverged (a finite loss above the bound): refused as that
            # round's global models are by the global pairs and the landscapes
            reason = f"its global model is not analysed: {diverged}"
        if reason is not None:
            log.warning("pair %s: %s; not computed (NaN rows)", pair, reason)
            barriers, distances = _nan_layer_rows(traj_a, meta, job)
            write_csv(barriers, out_barriers)
            write_csv(distances, out_distances)
            parts.clear()  # rows a killed attempt computed from other checkpoints
            return
        c = saved[round_]
        ids = c.client_ids.tolist()
        absent = [k for k in job.clients if k not in ids]
        if absent:
            raise ValueError(f"pair {pair}: clients {absent} did not take part in round {round_} (took part: {ids})")
        a, b = (Point(c.params[ids.index(k)], c.buffers[ids.index(k)]) for k in job.clients)
    else:  # two runs' global models at one round, or one run's global models at rounds t and t + 1
        consecutive = job.kind == "consecutive"
        traj_b = traj_a if consecutive else load_trajectory(inputs["trajectory_b"], run_id=run_ids[-1])
        round_b = round_ + 1 if consecutive else round_
        # a consecutive pair's models are the global ones (below), also at the final round of an SWA run
        reasons = [f"{key}: {reason}" for key, tr, r in (("a", traj_a, round_), ("b", traj_b, round_b))
                   if (reason := tr.unusable(r, global_model=consecutive)) is not None]
        if reasons:
            log.warning("pair %s: %s; not computed (NaN rows)", pair, "; ".join(reasons))
            barriers, distances = _nan_layer_rows(traj_a, meta, job)
            write_csv(barriers, out_barriers)
            write_csv(distances, out_distances)
            parts.clear()  # rows a killed attempt computed from other checkpoints
            return
        if consecutive:  # two global models of the trajectory, at t + 1 = R too (not the SWA model there)
            a, b = Point(*traj_a.global_point(round_)), Point(*traj_a.global_point(round_b))
        else:
            a, b = _point(traj_a, round_), _point(traj_b, round_b)
    model = traj_a.model_meta.build().to(device).eval()
    layers = model_layers(model)
    federated = load_federated_data(job.data.run, job.data.dataset_options, inputs["partition"], device)
    whole = _splits_of(federated)
    splits = eval_splits(whole, job.eval_samples, job.eval_seed)
    modes, seed = list(job.modes), _order_seed(job)
    a, b = a.to(device), b.to(device)
    barrier_rows, distance_rows = [], []
    bn_x = _bn_x(job, whole, model)
    bn_stats = "stored" if bn_x is None else "recomputed"
    compute = describe_compute(device, job.precision)
    computes = {}  # where each part's rows were computed: this attempt, or one before it (`_note_parts_compute`)
    for aligned in job.alignments:
        name = "aligned" if aligned else "as_trained"
        saved = parts.load(name)
        if saved is None:
            end = b
            if aligned:
                t1 = time.perf_counter()
                end, _ = align_points(model, a, b)
                log.info("pair %s round %d: model b aligned to a by weight matching in %.1f s (distance %.4g -> "
                         "%.4g)", pair, round_, time.perf_counter() - t1, float((b.params - a.params).norm()),
                         float((end.params - a.params).norm()))
            saved = {"barriers": [{**meta, **r, "aligned": aligned, "bn_stats": bn_stats} for r in layerwise_barriers(
                         model, a, end, splits, job.eval_batch_size, modes, layers, seed, bn_x, *_directions(job),
                         federated.never_correct)],
                     "distances": [{**meta, **r, "aligned": aligned} for r in layer_distances(a, end, layers)],
                     "compute": dict(compute)}
            parts.save(name, saved)
        else:
            log.info("pair %s round %d: the rows %s%s", pair, round_, "with b aligned to a" if aligned else
                     "as trained", parts.note(True))
        computes[name] = saved.get("compute")
        barrier_rows += saved["barriers"]
        distance_rows += saved["distances"]
    barriers = pd.DataFrame(barrier_rows, columns=LAYER_BARRIER_COLUMNS)
    distances = pd.DataFrame(distance_rows, columns=LAYER_DISTANCE_COLUMNS)
    write_csv(barriers, out_barriers)
    write_csv(distances, out_distances)
    _note_parts_compute(computes, parts)
    parts.clear()
    full = barriers[barriers["averaged"] == format_averaged(range(len(layers)))].drop_duplicates(["aligned", "split"])
    for _, r in full.iterrows():
        log.info("pair %s round %d %s%s: full-model barrier loss %.4f error %.4f", pair, round_, r["split"],
                 " (aligned)" if r["aligned"] else "", r["barrier_loss"], r["barrier_error"])
    log.info("pair %s round %d: %d layers x %d modes x %d alignments in %.1f s", pair, round_, len(layers),
             len(modes), len(job.alignments), time.perf_counter() - t0)
