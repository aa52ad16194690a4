"""The client-statistics stage: every run's per-round client statistics with the L2 distance of its global
model to the final one (client_stats.csv); and the backfill of runs trained before the engine computed them.

The backfill, for a run directory without client_updates.csv (rows for the rounds in `save_clients_at`):

    from fedscape.analysis.client_stats.stage import backfill_client_updates
    backfill_client_updates("results/train/<run_id>")
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS, ClientStatsJob
from fedscape.core.io import write_csv
from fedscape.fl.client_stats import l2_to_final, stats_from_checkpoints
from fedscape.fl.settings import CLIENT_UPDATES_COLUMNS, STAT_KEYS
from fedscape.models.checkpoint import load_clients, load_trajectory
from fedscape.outputs.tables import read_table

log = logging.getLogger("fedscape.client_stats")


def client_stats_job(settings: dict, updates: list[str | Path], trajectories: list[str | Path],
                     output: str | Path) -> None:
    """client_stats.csv: the per-round client statistics of every run of the job (`ClientStatsJob`: the runs,
    whose client_updates.csv and trajectory.pt are `updates` and `trajectories`, in order) with the L2 distance to
    its final model.

    One row per run and round 0..final; round 0 (the init) has no client update, so only l2_to_final. A
    diverged run (rounds up to the one where it diverged) has no final model: its l2_to_final is NaN, as is that
    of a round whose global model the run did not keep (training.save_every).
    """
    run_ids = ClientStatsJob.from_settings(settings).run_ids
    frames = []
    for k, (run_id, upd, traj_path) in enumerate(zip(run_ids, updates, trajectories, strict=True), start=1):
        traj = load_trajectory(traj_path, run_id=run_id)
        reason = traj.unusable(traj.final_round)
        if reason is None:
            l2 = l2_to_final(traj.params).numpy()
        else:
            log.warning("run %s: %s; it has no final model, so its l2_to_final is NaN", run_id, reason)
            l2 = np.full(len(traj.rounds), np.nan)
        df = pd.DataFrame({"round": traj.rounds.numpy(), "l2_to_final": l2})
        stats = read_table(upd, ["round", *STAT_KEYS], expect={"run_id": run_id})
        # outer: a run with training.save_every keeps the models of some rounds only, but has every round's statistics
        df = df.merge(stats.drop(columns=["run_id", "num_clients"], errors="ignore"), on="round",
                      how="outer").sort_values("round", kind="stable")
        df.insert(0, "run_id", run_id)
        frames.append(df[CLIENT_STATS_COLUMNS])
        log.info("client stats %d/%d: %s (%d rounds)", k, len(run_ids), run_id, len(df))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CLIENT_STATS_COLUMNS)
    write_csv(table, output)


def backfill_client_updates(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Write <run_dir>/client_updates.csv from trajectory.pt and clients.pt (rounds with client checkpoints).

    For runs trained before the engine computed client statistics: the rows cover the rounds in
    `save_clients_at` only; the statistics are identical to the engine's (same inputs, same function).
    """
    run_dir = Path(run_dir)
    out = run_dir / "client_updates.csv"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    traj = load_trajectory(run_dir / "trajectory.pt")
    rows = stats_from_checkpoints(traj.params, traj.rounds, load_clients(run_dir / "clients.pt"))
    df = pd.DataFrame(rows, columns=CLIENT_UPDATES_COLUMNS[1:])
    df.insert(0, "run_id", traj.meta.get("run_id", str(run_dir)))
    write_csv(df, out)
    log.info("%s: client statistics of %d saved rounds", out, len(df))
    return out
