"""Stage functions of the barrier and client-statistics rules: checkpoints in, CSV tables and figures out.

Library code for the workflow scripts of `rules/barriers.smk` (they never pass the snakemake object
here). Also a small command line to backfill `client_updates.csv` of runs trained before the engine
computed client statistics (from their saved client checkpoints):

    python -m fedscape.barrier_stages backfill results/train          # every run lacking the file
    python -m fedscape.barrier_stages backfill results/train/<run_id>  # one run

The backfilled rows cover the rounds in `save_clients_at` only (the other rounds' client models
were not kept); client_stats.csv then has NaN statistics for the other rounds (l2_to_final is
always complete: it needs only the trajectory).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedscape.barriers import (
    BARRIER_COLUMNS,
    FULL_MODEL,
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    MODES,
    SPLITS,
    Point,
    interpolation_curve,
    interpolation_grid,
    layer_distances,
    layerwise_barriers,
    linear_barrier,
    model_layers,
)
from fedscape.checkpoint import load_clients, load_trajectory
from fedscape.client_stats import CLIENT_STATS_COLUMNS, CLIENT_UPDATES_COLUMNS, l2_to_final, stats_from_checkpoints
from fedscape.pipeline import load_run_data, resolve_device, write_csv
from fedscape.plotting import (
    LABEL_ORDER,
    MARKERS,
    PALETTE,
    RunStyle,
    alpha_number,
    diverging_cmap,
    empty_figure,
    label_run,
    pyplot,
    save_figure_outputs,
    sequential_cmap,
    varying_keys,
)

log = logging.getLogger("fedscape.barriers")


# -- shared helpers --------------------------------------------------------------------------------
def _splits(settings: dict, partition_path: str | Path, device: torch.device) -> dict:
    """{'train': the aggregate client data (union of the shards), 'test': the test set}."""
    data, _ = load_run_data(settings["data"], partition_path, device)
    return {"train": data.union(), "test": (data.x_test, data.y_test)}


def _point(traj, round_: int) -> Point:
    row = traj.row(round_)
    return Point(traj.params[row], traj.buffers[row])


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


def _nan_curve(settings: dict, rounds: list[int]) -> pd.DataFrame:
    """The rows of an interpolation that is not computed (a diverged run): every t and split, NaN loss and error."""
    rows = [{"pair_id": settings["pair_id"], "run_a": settings["run_a"], "round_a": rounds[0],
             "run_b": settings["run_b"], "round_b": rounds[1], "t": float(t), "split": split, "loss": math.nan,
             "error": math.nan} for t in interpolation_grid(settings["points"]) for split in SPLITS]
    return pd.DataFrame(rows, columns=INTERPOLATION_COLUMNS)


def _nan_layer_rows(traj, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The layer-barrier and layer-distance rows of a pair and round that is not computed (a diverged run): NaN."""
    layers = model_layers(traj.model_meta.build())
    barriers = [{**meta, "mode": mode, "layer_index": i, "layer": layer.name, "split": split,
                 "barrier_loss": math.nan, "barrier_error": math.nan}
                for mode in MODES for i, layer in enumerate(layers) for split in SPLITS]
    distances = [{**meta, "layer_index": index, "layer": name, "distance": math.nan, "cosine": math.nan}
                 for index, name in [*((layer.index, layer.name) for layer in layers), (-1, FULL_MODEL)]]
    return (pd.DataFrame(barriers, columns=LAYER_BARRIER_COLUMNS),
            pd.DataFrame(distances, columns=LAYER_DISTANCE_COLUMNS))


def parse_run_id(run_id: str) -> dict:
    """The run fields of a run_id ('digits/cnn_small/init~random/algo~fedavg/alpha~iid/...')."""
    parts = run_id.split("/")
    fields = {"dataset": parts[0], "model": parts[1]}
    for part in parts[2:]:
        key, _, value = part.partition("~")
        fields[{"algo": "algorithm", "clients": "num_clients", "part": "participation"}.get(key, key)] = value
    return fields


# -- linear interpolation --------------------------------------------------------------------------
def interpolation_stage(settings: dict, trajectory_a: str | Path, trajectory_b: str | Path,
                        partition: str | Path, output: str | Path) -> None:
    """Loss and error along the segment between two checkpoints, on train and test (Li et al. 2022, Fig. 3c)."""
    t0 = time.perf_counter()
    device = resolve_device(settings["device"])
    traj_a, traj_b = load_trajectory(trajectory_a), load_trajectory(trajectory_b)
    rounds = []
    for traj, key in ((traj_a, "round_a"), (traj_b, "round_b")):
        r = traj.final_round if settings[key] == "final" else int(settings[key])
        rounds.append(r)
    reasons = [f"{key} ({settings['run_' + key]}): {reason}"
               for key, r, tr in (("a", rounds[0], traj_a), ("b", rounds[1], traj_b))
               if (reason := tr.unusable(r)) is not None]
    if reasons:
        log.warning("pair %s: %s; the curve is not computed (NaN rows)", settings["pair_id"], "; ".join(reasons))
        write_csv(_nan_curve(settings, rounds), output)
        return
    splits = _splits(settings, partition, device)
    model = traj_a.model_meta.build().to(device).eval()
    a, b = _point(traj_a, rounds[0]).to(device), _point(traj_b, rounds[1]).to(device)
    rows = interpolation_curve(model, a, b, splits, settings["points"], settings["eval_batch_size"])
    df = pd.DataFrame(rows)
    df.insert(0, "pair_id", settings["pair_id"])
    df.insert(1, "run_a", settings["run_a"])
    df.insert(2, "round_a", rounds[0])
    df.insert(3, "run_b", settings["run_b"])
    df.insert(4, "round_b", rounds[1])
    write_csv(df[INTERPOLATION_COLUMNS], output)
    for split in SPLITS:
        sub = df[df["split"] == split]
        log.info("pair %s %s: loss barrier %.4f, error barrier %.4f", settings["pair_id"], split,
                 linear_barrier(sub["t"], sub["loss"]), linear_barrier(sub["t"], sub["error"]))
    log.info("pair %s: %d points x %d splits in %.1f s", settings["pair_id"], settings["points"], len(splits),
             time.perf_counter() - t0)


def barriers_from_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """One barrier row per (pair, split): max over t of the value minus the straight line."""
    rows = []
    for (pair, split), sub in curves.groupby(["pair_id", "split"], sort=False):
        rows.append({"pair_id": pair, "run_a": sub["run_a"].iloc[0], "run_b": sub["run_b"].iloc[0], "split": split,
                     "barrier_loss": linear_barrier(sub["t"], sub["loss"]),
                     "barrier_error": linear_barrier(sub["t"], sub["error"])})
    return pd.DataFrame(rows, columns=BARRIER_COLUMNS)


def interpolation_tables(inputs: list[str | Path], out_interpolation: str | Path, out_barriers: str | Path) -> None:
    """Concatenate the curves into interpolation.csv and compute barriers.csv from them."""
    frames = [pd.read_csv(p) for p in inputs]
    curves = pd.concat(frames, ignore_index=True) if frames else _empty(INTERPOLATION_COLUMNS)
    write_csv(curves[INTERPOLATION_COLUMNS], out_interpolation)
    write_csv(barriers_from_curves(curves), out_barriers)


# -- layer-wise mode connectivity ------------------------------------------------------------------
def layerwise_stage(settings: dict, inputs: dict, out_barriers: str | Path, out_distances: str | Path) -> None:
    """Layer-wise barriers (single/shallow/deep) and distances of one pair at one round (Adilova et al. 2023).

    `inputs`: 'partition' and 'trajectory_a' always; 'clients' for two clients of one run,
    'trajectory_b' for the global models of two runs.
    """
    t0 = time.perf_counter()
    device = resolve_device(settings["device"])
    pair, round_ = settings["pair"], settings["round"]
    traj_a = load_trajectory(inputs["trajectory_a"])
    meta = {"run_id": settings["run_id"], "round": round_, "pair": pair}
    if settings["kind"] == "clients":
        saved = load_clients(inputs["clients"])
        reason = None
        if round_ not in saved and traj_a.status == "ok":
            raise KeyError(f"pair {pair}: {inputs['clients']} holds the client models of rounds {sorted(saved)}, not "
                           f"of round {round_}, although the run did not diverge; retrain it")
        if round_ not in saved:
            reason = (f"round {round_} has no client checkpoints (the run stopped at round {traj_a.final_round}, "
                      f"status {traj_a.status!r})")
        elif not all(bool(torch.isfinite(v).all()) for v in (saved[round_].params, saved[round_].buffers)):
            reason = f"the client models of round {round_} have NaN/inf parameters (status {traj_a.status!r})"
        if reason is not None:
            log.warning("pair %s: %s; not computed (NaN rows)", pair, reason)
            barriers, distances = _nan_layer_rows(traj_a, meta)
            write_csv(barriers, out_barriers)
            write_csv(distances, out_distances)
            return
        c = saved[round_]
        ids = c.client_ids.tolist()
        absent = [k for k in settings["clients"] if k not in ids]
        if absent:
            raise ValueError(f"pair {pair}: clients {absent} did not take part in round {round_} (took part: {ids})")
        a, b = (Point(c.params[ids.index(k)], c.buffers[ids.index(k)]) for k in settings["clients"])
    else:
        traj_b = load_trajectory(inputs["trajectory_b"])
        reasons = [f"{key}: {reason}" for key, tr in (("a", traj_a), ("b", traj_b))
                   if (reason := tr.unusable(round_)) is not None]
        if reasons:
            log.warning("pair %s: %s; not computed (NaN rows)", pair, "; ".join(reasons))
            barriers, distances = _nan_layer_rows(traj_a, meta)
            write_csv(barriers, out_barriers)
            write_csv(distances, out_distances)
            return
        a, b = _point(traj_a, round_), _point(traj_b, round_)
    model = traj_a.model_meta.build().to(device).eval()
    layers = model_layers(model)
    splits = _splits(settings, inputs["partition"], device)
    rows = layerwise_barriers(model, a.to(device), b.to(device), splits, settings["eval_batch_size"], MODES, layers)
    barriers = pd.DataFrame([{**meta, **r} for r in rows], columns=LAYER_BARRIER_COLUMNS)
    distances = pd.DataFrame([{**meta, **r} for r in layer_distances(a, b, layers)], columns=LAYER_DISTANCE_COLUMNS)
    write_csv(barriers, out_barriers)
    write_csv(distances, out_distances)
    full = barriers[(barriers["mode"] == "shallow") & (barriers["layer_index"] == len(layers) - 1)]
    for _, r in full.iterrows():
        log.info("pair %s round %d %s: full-model barrier loss %.4f error %.4f", pair, round_, r["split"],
                 r["barrier_loss"], r["barrier_error"])
    log.info("pair %s round %d: %d layers x %d modes in %.1f s", pair, round_, len(layers), len(MODES),
             time.perf_counter() - t0)


# -- client-update statistics ----------------------------------------------------------------------
def client_stats_table(run_ids: list[str], updates: list[str | Path], trajectories: list[str | Path],
                       output: str | Path) -> None:
    """client_stats.csv: the per-round client statistics of every run with the L2 distance to its final model.

    One row per run and round 0..final; round 0 (the init) has no client update, so only l2_to_final. A
    diverged run (rounds up to the one where it diverged) has no final model: its l2_to_final is NaN.
    """
    frames = []
    for k, (run_id, upd, traj_path) in enumerate(zip(run_ids, updates, trajectories, strict=True), start=1):
        traj = load_trajectory(traj_path)
        reason = traj.unusable(traj.final_round)
        if reason is None:
            l2 = l2_to_final(traj.params).numpy()
        else:
            log.warning("run %s: %s; it has no final model, so its l2_to_final is NaN", run_id, reason)
            l2 = np.full(len(traj.rounds), np.nan)
        df = pd.DataFrame({"round": traj.rounds.numpy(), "l2_to_final": l2})
        stats = pd.read_csv(upd)
        df = df.merge(stats.drop(columns=["run_id", "num_clients"], errors="ignore"), on="round", how="left")
        df.insert(0, "run_id", run_id)
        frames.append(df[CLIENT_STATS_COLUMNS])
        log.info("client stats %d/%d: %s (%d rounds)", k, len(run_ids), run_id, len(df))
    table = pd.concat(frames, ignore_index=True) if frames else _empty(CLIENT_STATS_COLUMNS)
    write_csv(table, output)


def backfill_client_updates(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Write <run_dir>/client_updates.csv from trajectory.pt and clients.pt (rounds with client checkpoints).

    For runs trained before the engine computed client statistics: the rows cover the rounds in
    `save_clients_at` only; the statistics are identical to the engine's (same inputs, same function).
    """
    run_dir = Path(run_dir)
    out = run_dir / "client_updates.csv"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    traj = load_trajectory(run_dir / "trajectory.pt")
    rows = stats_from_checkpoints(traj.params, traj.rounds, load_clients(run_dir / "clients.pt"))
    df = pd.DataFrame(rows, columns=CLIENT_UPDATES_COLUMNS[1:])
    df.insert(0, "run_id", traj.meta.get("run_id", str(run_dir)))
    write_csv(df, out)
    log.info("%s: client statistics of %d saved rounds", out, len(df))
    return out


# -- figures ---------------------------------------------------------------------------------------
# Every figure follows fedscape.plotting: Okabe-Ito colours, label_run legends, colour-blind-safe heatmaps,
# PDF + PNG + the plotted data as CSV (save_figure_outputs writes the rule's named outputs).
MODE_TITLES = {"single": "one layer averaged", "shallow": "layers 0..i averaged (from input)",
               "deep": "layers i..L-1 averaged (from output)"}
FULL_MODEL_LABEL = "full model"
CLIENT_STATS_FIGURE_COLUMNS = ["alpha", "init", "round", "gradient_diversity", "update_cosine_mean", "l2_to_final",
                               "dataset", "model", "algorithm", "num_clients", "participation"]


def _run_fields(run_id: str) -> dict | None:
    """The run fields of a run_id, or None when it is not one (e.g. a hand-written label)."""
    return parse_run_id(run_id) if "/" in str(run_id) else None


def split_pair_run_id(run_id: str) -> tuple[str, str | None]:
    """(run_a, run_b) of a layer table's run_id: 'a | b' for two runs' global models, one run for two clients."""
    a, sep, b = str(run_id).partition(" | ")
    return (a, b) if sep else (a, None)


def pair_label(run_a: str, run_b: str | None = None) -> str:
    """Two runs named by the fields in which they differ ('IID vs α=0.1'), with plotting.label_run; one run
    (two of its clients) by its algorithm, init and alpha."""
    a = _run_fields(run_a)
    b = None if run_b is None or run_b == run_a else _run_fields(run_b)
    if a is None or (b is None and run_b not in (None, run_a)):
        return str(run_a) if run_b in (None, run_a) else f"{run_a} vs {run_b}"
    if b is None:
        return label_run(a, ("algorithm", "init", "alpha"))
    differ = [k for k in LABEL_ORDER if a.get(k) != b.get(k)]
    return f"{label_run(a, differ)} vs {label_run(b, differ)}"


def _heatmap_axes(ax, rounds: list, row_labels: list[str]) -> None:
    """Round ticks (at most ~8) on x, layer names on y, no grid: the layout of every layer heatmap."""
    tick_every = max(1, math.ceil(len(rounds) / 8))
    ax.set_xticks(range(0, len(rounds), tick_every), [str(r) for r in rounds[::tick_every]])
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7 if len(row_labels) <= 40 else 4)
    ax.set_xlabel("round")
    ax.grid(False)


def interpolation_figure(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Loss and error along the interpolation, one labelled curve per pair (Li et al. 2022, Figs 3c/5c)."""
    df = pd.read_csv(table)
    if df.empty:
        save_figure_outputs(empty_figure("no interpolation pairs with rows (every pair was skipped)"), outputs, df)
        return
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 5.0), squeeze=False, sharex=True, layout="constrained")
    pairs = list(dict.fromkeys(df["pair_id"]))
    legend = {}
    for j, split in enumerate(SPLITS):
        for i, value in enumerate(("loss", "error")):
            ax = axes[i, j]
            for k, pair in enumerate(pairs):
                sub = df[(df["split"] == split) & (df["pair_id"] == pair)].sort_values("t")
                if sub.empty:
                    continue
                (handle,) = ax.plot(sub["t"], sub[value], color=PALETTE[k % len(PALETTE)],
                                    marker=MARKERS[k % len(MARKERS)], markersize=3, lw=1.2)
                first = sub.iloc[0]
                rounds = "" if first["round_a"] == first["round_b"] else \
                    f" (round {first['round_a']} vs {first['round_b']})"
                legend.setdefault(f"{pair}: {pair_label(first['run_a'], first['run_b'])}{rounds}", handle)
            if i == 1:
                ax.set_xlabel("t  (0 = model a, 1 = model b)")
            ax.set_ylabel(f"{split} {value}")
            ax.set_title(f"{value} on the {'aggregate training data' if split == 'train' else 'test set'}")
    fig.suptitle("Linear interpolation between checkpoints")
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(2, len(legend)))
    save_figure_outputs(fig, outputs, df)


def layer_heatmaps(table: str | Path, pair: str, split: str, outputs: dict[str, str | Path]) -> None:
    """Heatmaps layers x rounds of the layer-wise barriers, single/shallow/deep x loss/error (Adilova et al. 2023).

    Diverging colour-blind-safe map centred at 0 (plotting.diverging_cmap: vermillion = barrier, blue = the
    mixed model is better than the ends).
    """
    from matplotlib.colors import TwoSlopeNorm

    df = pd.read_csv(table)
    df = df[(df["pair"] == pair) & (df["split"] == split)]
    if df.empty:
        save_figure_outputs(empty_figure(f"pair {pair}, {split} split: no rows (every round was skipped)"),
                            outputs, df)
        return
    plt = pyplot()
    rounds = sorted(df["round"].unique())
    layers = df.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    row_height = max(2.2, 0.13 * len(layers))  # readable labels from 5 layers (cnn_small) to >100 (resnet56)
    fig, axes = plt.subplots(2, len(MODES), figsize=(4.2 * len(MODES), 1.0 + 2 * row_height), squeeze=False,
                             layout="constrained")
    cmap = diverging_cmap()
    for i, value in enumerate(("barrier_loss", "barrier_error")):
        for j, mode in enumerate(MODES):
            ax = axes[i, j]
            grid = (df[df["mode"] == mode].pivot_table(index="layer_index", columns="round", values=value)
                    .reindex(index=range(len(layers)), columns=rounds))
            arr = grid.to_numpy(dtype=float)
            finite = np.abs(arr[np.isfinite(arr)])
            lim = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
            im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto",
                           interpolation="nearest")
            _heatmap_axes(ax, rounds, [f"{k}: {n}" for k, n in enumerate(layers)])
            ax.set_title(f"{value.split('_')[1]}: {MODE_TITLES[mode]}")
            fig.colorbar(im, ax=ax, shrink=0.8)
    run_a, run_b = split_pair_run_id(df["run_id"].iloc[0])
    who = pair_label(run_a, run_b) if run_b else f"two clients of {pair_label(run_a)}"
    fig.suptitle(f"Layer-wise barriers, pair {pair} ({who}), {split} split: L(mixed) - mean(L(a), L(b))")
    save_figure_outputs(fig, outputs, df)


def layer_distance_figure(table: str | Path, pair: str, outputs: dict[str, str | Path],
                          rounds: list[int] | None = None) -> None:
    """Per-layer L2 distance between the two models of a pair over rounds (Adilova et al. 2023): heatmap of
    layers (input at the top) x rounds with the whole model in the bottom row, log colour scale.

    `rounds`: the pair's configured rounds (skipped ones show as grey columns). Without it a pair absent
    from the table is an error; with it the pair may have no rows (every round skipped): the figure says so.
    """
    from matplotlib.colors import LogNorm

    df = pd.read_csv(table)
    missing = [c for c in LAYER_DISTANCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{table} is not a layer-distance table (results/tables/layer_distances.csv): "
                         f"it lacks columns {missing}")
    sub = df[df["pair"].astype(str) == str(pair)]
    if sub.empty:
        if rounds is None:
            known = sorted(df["pair"].astype(str).unique())
            raise ValueError(f"pair {pair!r} has no rows in {table}; its pairs: "
                             f"{', '.join(known) if known else 'none (the table is empty)'}")
        message = f"pair {pair}: no layer distances (every round was skipped; see the layer_barriers logs)"
        save_figure_outputs(empty_figure(message), outputs, sub[LAYER_DISTANCE_COLUMNS])
        return
    order = sub["layer_index"].where(sub["layer_index"] >= 0, np.iinfo(np.int64).max)  # the full model last
    data = sub.assign(_order=order).sort_values(["round", "_order"], kind="stable")[LAYER_DISTANCE_COLUMNS]
    columns = sorted({int(r) for r in data["round"]} | {int(r) for r in rounds or []})
    names = data[data["layer_index"] >= 0].drop_duplicates("layer_index").sort_values("layer_index")
    index = [*names["layer_index"].tolist(), *([-1] if (data["layer_index"] < 0).any() else [])]
    labels = [*[f"{k}: {n}" for k, n in zip(names["layer_index"], names["layer"], strict=True)],
              *([FULL_MODEL_LABEL] if index and index[-1] == -1 else [])]
    grid = (data.pivot_table(index="layer_index", columns="round", values="distance", aggfunc="first")
            .reindex(index=index, columns=columns))
    arr = grid.to_numpy(dtype=float)
    positive = arr[np.isfinite(arr) & (arr > 0)]
    vmin, vmax = (float(positive.min()), float(positive.max())) if positive.size else (1e-12, 1.0)
    if vmax <= vmin:
        vmax = vmin * 10
    zero = np.isfinite(arr) & (arr <= 0)  # identical layers (e.g. the shared init at round 0): the 'under' colour
    cmap = sequential_cmap().with_extremes(under="white")
    norm = LogNorm(vmin, vmax)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(10.0, 3.0 + 0.45 * len(columns)), 1.2 + max(2.0, 0.16 * len(index))),
                           layout="constrained")
    im = ax.imshow(np.ma.masked_invalid(np.where(zero, vmin / 10, arr)), cmap=cmap, norm=norm, aspect="auto",
                   interpolation="nearest")
    _heatmap_axes(ax, columns, labels)
    if index and index[-1] == -1 and len(index) > 1:
        ax.axhline(len(index) - 1.5, color="white", lw=2)
    if len(index) <= 16 and len(columns) <= 12:  # small grids: the numbers themselves
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if np.isfinite(arr[i, j]):
                    dark = not zero[i, j] and norm(arr[i, j]) < 0.55
                    ax.text(j, i, f"{arr[i, j]:.3g}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
    cbar = fig.colorbar(im, ax=ax, extend="min" if zero.any() else "neither")
    cbar.set_label("L2 distance ||θa - θb|| (log scale" + ("; white = 0)" if zero.any() else ")"))
    run_a, run_b = split_pair_run_id(data["run_id"].iloc[0])
    who = pair_label(run_a, run_b) if run_b else f"two clients of {pair_label(run_a)}"
    ax.set_title(f"Layer-wise L2 distance between the two models over rounds, pair {pair}\n{who}"
                 + ("; grey = round skipped" if np.isnan(arr).any() else ""))
    save_figure_outputs(fig, outputs, data)


def client_stats_figure(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Gradient diversity, update cosine and L2 to final per round; colour = alpha, line style = init.

    The bottom row of the figure of Nguyen et al. 2022 ("Where to begin?"); one row of panels per
    (dataset, model, algorithm, clients, participation), seeds averaged.
    """
    df = pd.read_csv(table)
    if df.empty:
        save_figure_outputs(empty_figure("no client statistics (client_stats.csv has no rows)"), outputs,
                            pd.DataFrame(columns=CLIENT_STATS_FIGURE_COLUMNS))
        return
    fields = pd.DataFrame([parse_run_id(r) for r in df["run_id"]], index=df.index)
    df = pd.concat([df, fields], axis=1)
    group_keys = ["dataset", "model", "algorithm", "num_clients", "participation"]
    shown = ["dataset", "model", "algorithm", *varying_keys(df, ["num_clients", "participation"])]
    stats = [("gradient_diversity", "gradient diversity"), ("update_cosine_mean", "cosine similarity of updates"),
             ("l2_to_final", "L2 distance to final weights")]
    groups = list(df.groupby(group_keys, sort=True))
    style = RunStyle(df)
    line_keys = ["alpha", *(["init"] if df["init"].nunique() > 1 else [])]
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), len(stats), figsize=(9.5, 0.6 + 2.4 * len(groups)), squeeze=False,
                             sharex=True, layout="constrained")
    legend, plotted = {}, []
    for g, (key, sub) in enumerate(groups):
        mean = (sub.replace([np.inf, -np.inf], np.nan)
                .groupby(["alpha", "init", "round"])[[s for s, _ in stats]].mean().reset_index())
        mean = mean.assign(**dict(zip(group_keys, key, strict=True)))
        plotted.append(mean)
        lines = sorted(mean.groupby(["alpha", "init"]), key=lambda item: (-alpha_number(item[0][0]),
                                                                          item[0][1] != "random", item[0][1]))
        for j, (stat, title) in enumerate(stats):
            ax = axes[g, j]
            for (alpha, init), line in lines:
                (handle,) = ax.plot(line["round"], line[stat], color=style.color(alpha),
                                    linestyle=style.linestyle(init), lw=1.2)
                legend.setdefault(label_run({"alpha": alpha, "init": init}, line_keys), handle)
            ax.set_title(title if g == 0 else "")
            ax.set_ylabel(label_run(dict(zip(group_keys, key, strict=True)), shown, sep="\n") if j == 0 else "")
            if g == len(groups) - 1:
                ax.set_xlabel("round")
    fig.suptitle("Client-update statistics per round, mean over seeds (colour: alpha, line style: init)")
    fig.legend(legend.values(), legend.keys(), loc="outside right center")
    save_figure_outputs(fig, outputs, pd.concat(plotted, ignore_index=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedscape.barrier_stages",
                                     description="Backfill client_updates.csv of runs trained before the engine "
                                                 "computed client statistics (from their client checkpoints).")
    sub = parser.add_subparsers(dest="command", required=True)
    backfill = sub.add_parser("backfill", help="write <run_dir>/client_updates.csv from its checkpoints")
    backfill.add_argument("paths", nargs="+", help="results/train/<run_id> directories, or folders searched for "
                                                   "runs without client_updates.csv (e.g. results/train)")
    backfill.add_argument("--overwrite", action="store_true", help="replace an existing client_updates.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for path in map(Path, args.paths):
        if (path / "trajectory.pt").exists():
            backfill_client_updates(path, overwrite=args.overwrite)
            continue
        runs = sorted(p.parent for p in path.rglob("trajectory.pt") if (p.parent / "clients.pt").exists())
        if not runs:
            raise FileNotFoundError(f"{path} holds no run (no trajectory.pt with clients.pt below it)")
        for run_dir in runs:
            if args.overwrite or not (run_dir / "client_updates.csv").exists():
                backfill_client_updates(run_dir, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
