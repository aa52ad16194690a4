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
    INTERPOLATION_COLUMNS,
    LAYER_BARRIER_COLUMNS,
    LAYER_DISTANCE_COLUMNS,
    MODES,
    SPLITS,
    Point,
    interpolation_curve,
    layer_distances,
    layerwise_barriers,
    linear_barrier,
    model_layers,
)
from fedscape.checkpoint import load_clients, load_trajectory
from fedscape.client_stats import CLIENT_STATS_COLUMNS, CLIENT_UPDATES_COLUMNS, l2_to_final, stats_from_checkpoints
from fedscape.pipeline import load_run_data, resolve_device, write_csv
from fedscape.utils import atomic_path

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
    missing = [(k, r) for k, r, tr in (("a", rounds[0], traj_a), ("b", rounds[1], traj_b)) if r > tr.final_round]
    if missing:
        log.warning("pair %s: round(s) %s are past the end of the run (it diverged); writing no rows",
                    settings["pair_id"], missing)
        write_csv(_empty(INTERPOLATION_COLUMNS), output)
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
        if round_ not in saved:
            log.warning("pair %s: round %d has no client checkpoints (the run stopped at round %d); writing no rows",
                        pair, round_, traj_a.final_round)
            write_csv(_empty(LAYER_BARRIER_COLUMNS), out_barriers)
            write_csv(_empty(LAYER_DISTANCE_COLUMNS), out_distances)
            return
        c = saved[round_]
        ids = c.client_ids.tolist()
        absent = [k for k in settings["clients"] if k not in ids]
        if absent:
            raise ValueError(f"pair {pair}: clients {absent} did not take part in round {round_} (took part: {ids})")
        a, b = (Point(c.params[ids.index(k)], c.buffers[ids.index(k)]) for k in settings["clients"])
    else:
        traj_b = load_trajectory(inputs["trajectory_b"])
        if round_ > min(traj_a.final_round, traj_b.final_round):
            log.warning("pair %s: round %d is past the end of a run (it diverged); writing no rows", pair, round_)
            write_csv(_empty(LAYER_BARRIER_COLUMNS), out_barriers)
            write_csv(_empty(LAYER_DISTANCE_COLUMNS), out_distances)
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

    One row per run and round 0..final; round 0 (the init) has no client update, so only l2_to_final.
    """
    frames = []
    for k, (run_id, upd, traj_path) in enumerate(zip(run_ids, updates, trajectories, strict=True), start=1):
        traj = load_trajectory(traj_path)
        df = pd.DataFrame({"round": traj.rounds.numpy(), "l2_to_final": l2_to_final(traj.params).numpy()})
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
def _save_figure(fig, data: pd.DataFrame, outputs: dict[str, str | Path]) -> None:
    """Write the figure as PNG and PDF and its plotted data as CSV, atomically."""
    import matplotlib.pyplot as plt

    for key in ("png", "pdf"):
        with atomic_path(outputs[key]) as tmp:
            fig.savefig(tmp, format=key, dpi=150, bbox_inches="tight")
    plt.close(fig)
    write_csv(data, outputs["csv"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interpolation_figure(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Loss and error along the interpolation, one labelled curve per pair (Li et al. 2022, Figs 3c/5c)."""
    plt = _pyplot()
    df = pd.read_csv(table)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    for j, split in enumerate(SPLITS):
        for i, value in enumerate(("loss", "error")):
            ax = axes[i, j]
            for pair, sub in df[df["split"] == split].groupby("pair_id", sort=False):
                ax.plot(sub["t"], sub[value], marker="o", markersize=3, label=pair)
            ax.set_xlabel("t  (0 = model a, 1 = model b)")
            ax.set_ylabel(f"{split} {value}")
            ax.set_title(f"{value} on the {'aggregate training data' if split == 'train' else 'test set'}")
            ax.grid(alpha=0.3)
    if len(df):
        axes[0, 0].legend(fontsize=8)
    else:
        fig.text(0.5, 0.5, "no interpolation pairs with rows", ha="center")
    fig.suptitle("Linear interpolation between checkpoints")
    fig.tight_layout()
    _save_figure(fig, df, outputs)


def layer_heatmaps(table: str | Path, pair: str, split: str, outputs: dict[str, str | Path]) -> None:
    """Heatmaps layers x rounds of the layer-wise barriers, single/shallow/deep x loss/error (Adilova et al. 2023).

    Diverging colour map centred at 0 (red = barrier, blue = the mixed model is better than the ends).
    """
    from matplotlib.colors import TwoSlopeNorm

    plt = _pyplot()
    df = pd.read_csv(table)
    df = df[(df["pair"] == pair) & (df["split"] == split)]
    rounds = sorted(df["round"].unique())
    layers = df.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    row_height = max(2.2, 0.13 * len(layers))  # readable labels from 5 layers (cnn_small) to >100 (resnet56)
    fig, axes = plt.subplots(2, len(MODES), figsize=(4.2 * len(MODES), 1.0 + 2 * row_height), squeeze=False)
    tick_every = max(1, math.ceil(len(rounds) / 8))
    for i, value in enumerate(("barrier_loss", "barrier_error")):
        for j, mode in enumerate(MODES):
            ax = axes[i, j]
            grid = (df[df["mode"] == mode].pivot_table(index="layer_index", columns="round", values=value)
                    .reindex(index=range(len(layers)), columns=rounds))
            arr = grid.to_numpy(dtype=float)
            finite = np.abs(arr[np.isfinite(arr)])
            lim = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
            im = ax.imshow(arr, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto",
                           interpolation="nearest")
            ax.set_xticks(range(0, len(rounds), tick_every), [str(r) for r in rounds[::tick_every]])
            ax.set_yticks(range(len(layers)), [f"{k}: {n}" for k, n in enumerate(layers)],
                          fontsize=7 if len(layers) <= 40 else 4)
            ax.set_xlabel("round")
            label = {"single": "one layer averaged", "shallow": "layers 0..i averaged (from input)",
                     "deep": "layers i..L-1 averaged (from output)"}[mode]
            ax.set_title(f"{value.split('_')[1]}: {label}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    if df.empty:
        fig.text(0.5, 0.5, "no rows (every round was skipped)", ha="center")
    fig.suptitle(f"Layer-wise barriers, pair {pair}, {split} split: L(mixed) - mean(L(a), L(b))")
    fig.tight_layout()
    _save_figure(fig, df, outputs)


def client_stats_figure(table: str | Path, outputs: dict[str, str | Path]) -> None:
    """Gradient diversity, update cosine and L2 to final per round; colour = alpha, line style = init.

    The bottom row of the figure of Nguyen et al. 2022 ("Where to begin?"); one row of panels per
    (dataset, model, algorithm, clients, participation), seeds averaged.
    """
    plt = _pyplot()
    df = pd.read_csv(table)
    fields = pd.DataFrame([parse_run_id(r) for r in df["run_id"]], index=df.index)
    df = pd.concat([df, fields], axis=1)
    group_keys = ["dataset", "model", "algorithm", "num_clients", "participation"]
    stats = [("gradient_diversity", "gradient diversity"), ("update_cosine_mean", "cosine similarity of updates"),
             ("l2_to_final", "L2 distance to final weights")]
    groups = list(df.groupby(group_keys, sort=True)) if len(df) else []
    fig, axes = plt.subplots(max(len(groups), 1), len(stats), figsize=(13, 3.4 * max(len(groups), 1)),
                             squeeze=False)
    alphas = sorted(df["alpha"].unique(), key=lambda a: math.inf if a == "iid" else float(a)) if len(df) else []
    colors = {a: plt.get_cmap("viridis")(k / max(len(alphas) - 1, 1)) for k, a in enumerate(alphas)}
    inits = sorted(df["init"].unique()) if len(df) else []
    styles = {init: ("-", "--", ":", "-.")[k % 4] for k, init in enumerate(sorted(inits, key=lambda s: s != "random"))}
    plotted = []
    for g, (key, sub) in enumerate(groups):
        mean = (sub.replace([np.inf, -np.inf], np.nan)
                .groupby(["alpha", "init", "round"])[[s for s, _ in stats]].mean().reset_index())
        mean = mean.assign(**dict(zip(group_keys, key, strict=True)))
        plotted.append(mean)
        for j, (stat, title) in enumerate(stats):
            ax = axes[g, j]
            for (alpha, init), line in mean.groupby(["alpha", "init"]):
                ax.plot(line["round"], line[stat], color=colors[alpha], linestyle=styles[init],
                        label=f"alpha={alpha}, init={init}")
            ax.set_xlabel("round")
            ax.set_title(title if g == 0 else "")
            ax.set_ylabel(" / ".join(str(k) for k in key[:3]) if j == 0 else "")
            ax.grid(alpha=0.3)
    if groups:
        axes[0, -1].legend(fontsize=7)
    fig.suptitle("Client-update statistics per round (colour: alpha, line style: init)")
    fig.tight_layout()
    data = pd.concat(plotted, ignore_index=True) if plotted else pd.DataFrame()
    _save_figure(fig, data, outputs)


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
