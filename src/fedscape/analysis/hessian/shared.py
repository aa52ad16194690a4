"""Hessian jobs that share their result (torch-free): at round 0 the global model is the run's initial model, so
runs that differ only in the algorithm or the client participation (same dataset, model, init, partition and
seed) analyse the same model on the same data. One of them computes; the others copy its outputs with their own
run id, instead of recomputing (in a grid of many algorithms, the round-0 Hessian would otherwise be computed
once per algorithm)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path

from fedscape.analysis.hessian.definitions import JOB_FILES, HessianJob
from fedscape.analysis.landscape.definitions import read_plane_file, write_plane_file
from fedscape.core.io import atomic_write_text, write_json

log = logging.getLogger("fedscape.hessian")

CSV_KEYS = ("table", "clients", "density")


def _with_run_id(text: str, source_id: str, run_id: str, path: str | Path) -> str:
    """CSV text with the `run_id` column's `source_id` replaced; every other field kept byte for byte."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "run_id" not in rows[0]:
        raise ValueError(f"{path}: no run_id column to rewrite; delete it and run the workflow again")
    col = rows[0].index("run_id")
    for row in rows[1:]:
        if row[col] != source_id:
            raise ValueError(f"{path}: a row of run {row[col]!r}, not of {source_id!r}, the job it should be from")
        row[col] = run_id
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def copy_shared_job(run_id: str, round_: int, source_id: str, source: dict[str, str | Path],
                    outputs: dict[str, str | Path]) -> None:
    """Write the outputs of run `run_id`'s job at `round_` (hessian.csv, hessian_clients.csv, density.csv,
    eigen_plane.npz, hessian.json) from those of the job it shares its result with (of run `source_id`): the same
    numbers, this run's id."""
    log.info("round %d of %s analyses the same model on the same data as that of %s (the initial model, the same "
             "partition): its results are copied, with this run's id", round_, run_id, source_id)
    for key in CSV_KEYS:
        atomic_write_text(outputs[key], _with_run_id(Path(source[key]).read_text(), source_id, run_id, source[key]))
    arrays, meta = read_plane_file(source["plane"])
    if meta["runs"] != [source_id]:
        raise ValueError(f"{source['plane']}: the plane of runs {meta['runs']}, not of {source_id!r}")
    write_plane_file(outputs["plane"], arrays, json.dumps({**meta, "runs": [run_id]}))
    details = json.loads(Path(source["details"]).read_text())
    write_json(outputs["details"], {**details, "run_id": run_id, "shared_from": source_id})


def hessian_job(settings: dict, inputs: dict[str, str | Path], outputs: dict[str, str | Path], threads: int,
                progress_dir: str | Path | None = None) -> None:
    """One job of the hessian rule (its `settings`: a `HessianJob`): copy a shared result, or compute
    (`hessian_stage`) on `threads` CPU threads, keeping its finished parts in `progress_dir` until it ends."""
    job = HessianJob.from_settings(settings)
    if job.shared_from:
        copy_shared_job(job.run_id, job.round, job.shared_from, {key: inputs[f"source_{key}"] for key in JOB_FILES},
                        outputs)
    else:
        from fedscape.analysis.hessian.stage import hessian_stage  # lazy: torch, which a copying job does without
        from fedscape.models.device import use_threads  # lazy: as above

        use_threads(threads)
        hessian_stage(settings, inputs["trajectory"], inputs["partition"], outputs, progress_dir)
    if progress_dir is not None:  # parts a killed attempt left where this one took another way (a copy, a divergence)
        shutil.rmtree(progress_dir, ignore_errors=True)
