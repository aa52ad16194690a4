"""The client-statistics stage: every run's per-round client statistics with the L2 distance of its global
model to the final one (client_stats.csv); and the backfill of runs trained before the engine computed them.

The backfill, for a run directory without client_updates.csv (rows for the rounds in `save_clients_at`):

    from fedscape.analysis.client_stats.stage import backfill_client_updates
    backfill_client_updates("results/train/<run_id>")
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS, ClientStatsJob
from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import write_csv
from fedscape.fl.client_stats import l2_to_final, stats_from_checkpoints
from fedscape.fl.settings import CLIENT_UPDATES_COLUMNS, STAT_KEYS
from fedscape.models.checkpoint import load_clients, load_trajectory
from fedscape.outputs.tables import read_table
from fedscape.stages.progress import Parts, note_codes, progress_key, resume_advice, resume_settings

log = logging.getLogger("fedscape.client_stats")


def client_stats_job(settings: dict, updates: list[str | Path], trajectories: list[str | Path],
                     output: str | Path, progress_dir: str | Path | None = None) -> None:
    """client_stats.csv: the per-round client statistics of every run of the job (`ClientStatsJob`: the runs,
    whose client_updates.csv and trajectory.pt are `updates` and `trajectories`, in order) with the L2 distance of
    its global model to the last global model (not the SWA model of a run with SWA: the distance is between global
    models alone, and whether the final one can be analysed is asked of it).

    One row per run and round 0..final; round 0 (the init) has no client update, so only l2_to_final. A
    diverged run (rounds up to the one where it diverged) has no final model: its l2_to_final is NaN, as is that
    of a round whose global model the run did not keep (training.save_every).

    With `progress_dir`, each run's rows are kept there until the job ends (`Parts`, keyed by `_run_inputs`): a rerun
    after a kill (meta.yaml's job reads 6 TB of trajectories for hours) does not read a finished run's trajectory
    again.
    """
    run_ids = ClientStatsJob.from_settings(settings).run_ids
    meaning = resume_settings(settings, ClientStatsJob)
    if progress_dir is not None:
        log.info(resume_advice(progress_dir, "run"))
    frames, codes = [], []  # codes: the code of each run's rows (`Parts.codes`), for the job's record (`note_codes`)
    for k, (run_id, upd, traj_path) in enumerate(zip(run_ids, updates, trajectories, strict=True), start=1):
        parts = Parts(progress_dir, progress_key(meaning, digests=_run_inputs(upd, traj_path)))
        saved = parts.load(run_id)
        if saved is None:
            df, unusable = _run_stats(run_id, upd, traj_path)
            parts.save(run_id, {"columns": {c: _plain(df[c]) for c in df.columns}, "unusable": unusable})
        else:
            df = pd.DataFrame({c: v.numpy() if isinstance(v, torch.Tensor) else pd.Series(v, dtype=object)
                               for c, v in saved["columns"].items()})
            unusable = saved["unusable"]
        if unusable is not None:  # said again for a resumed run: the log of a job resumed is that of an unbroken one
            log.warning("run %s: %s; it has no final model, so its l2_to_final is NaN", run_id, unusable)
        frames.append(df)
        codes += parts.codes.values()
        log.info("client stats %d/%d: %s (%d rounds)%s", k, len(run_ids), run_id, len(df),
                 " (resumed)" if saved is not None else "")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CLIENT_STATS_COLUMNS)
    write_csv(table, output)
    note_codes(codes)
    if progress_dir is not None:
        shutil.rmtree(progress_dir, ignore_errors=True)


def _run_stats(run_id: str, updates: str | Path, trajectory: str | Path) -> tuple[pd.DataFrame, str | None]:
    """One run's rows of client_stats.csv, and why it has no final model (None where it has one)."""
    traj = load_trajectory(trajectory, run_id=run_id)
    unusable = traj.unusable(traj.final_round, global_model=True)  # l2_to_final's reference, not the SWA model
    l2 = l2_to_final(traj.params).numpy() if unusable is None else np.full(len(traj.rounds), np.nan)
    df = pd.DataFrame({"round": traj.rounds.numpy(), "l2_to_final": l2})
    stats = read_table(updates, ["round", *STAT_KEYS], expect={"run_id": run_id})
    # outer: a run with training.save_every keeps the models of some rounds only, but has every round's statistics
    df = df.merge(stats.drop(columns=["run_id", "num_clients"], errors="ignore"), on="round",
                  how="outer").sort_values("round", kind="stable")
    df.insert(0, "run_id", run_id)
    return df[CLIENT_STATS_COLUMNS], unusable


def _run_inputs(updates: str | Path, trajectory: str | Path) -> list[str]:
    """What a run's saved rows are keyed by beside the job's settings: the contents of its client_updates.csv, and
    its trajectory.pt's size, modification time and inode. Reading is what this job's time goes to (slurm/config.yaml:
    6 TB for meta.yaml): hashing each trajectory, as `stages.progress.input_digests` does the inputs of the barrier
    and Hessian jobs, would read it once more, and a resumed run's as much as computing its rows did. A remade
    trajectory is written anew (`core.io.atomic_path`: a new file renamed into place), so its time and inode
    differ; a change that keeps all three is not seen (as in `core.fingerprints`' cache of data files' digests)."""
    stat = os.stat(trajectory)
    return [file_sha256(updates), f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"]


def _plain(column: pd.Series) -> torch.Tensor | list:
    """A column of a run's rows as a part holds it (`Parts`: plain data): a numeric one as a tensor of its dtype (the
    same numbers, bit for bit, so that the table is byte for byte an unbroken job's), any other as a list."""
    return torch.from_numpy(column.to_numpy(copy=True)) if column.dtype.kind in "biuf" else column.tolist()


def backfill_client_updates(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Write <run_dir>/client_updates.csv from trajectory.pt and clients.pt (rounds with client checkpoints).

    For runs trained before the engine computed client statistics: the rows cover the rounds in
    `save_clients_at` only, with the engine's function on the same inputs: identical to the engine's numbers for a run
    trained on the CPU; for one trained on a GPU, equal up to float64 rounding (the engine built the float64 Gram
    matrix and the norms on the training device, whose sums run in another order).
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
