"""Hessian jobs that share their result (torch-free): at round 0 the global model is the run's initial model, so
runs that differ only in the algorithm or the client participation (same dataset, model, init, partition and
seed) analyse the same model on the same data. One of them computes; the others copy its outputs with their own
run id, instead of recomputing (in a grid of many algorithms, the round-0 Hessian would otherwise be computed
once per algorithm). The entry points of the hessian and hessian_plane jobs, which copy or compute."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path

from fedscape.analysis.hessian.definitions import (
    EIGENPAIRS_DIR,
    JOB_FILES,
    PLANE_FILE,
    EigenStore,
    HessianJob,
    HessianPlaneJob,
)
from fedscape.analysis.landscape.definitions import read_plane_file, write_plane_file
from fedscape.core.config import FIRST_RESULT_VERSION, RESULT_VERSION
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
    hessian.json) from those of the job it shares its result with (of run `source_id`): the same numbers, this run's
    id."""
    log.info("round %d of %s analyses the same model on the same data as that of %s (the initial model, the same "
             "partition): its results are copied, with this run's id", round_, run_id, source_id)
    for key in CSV_KEYS:
        atomic_write_text(outputs[key], _with_run_id(Path(source[key]).read_text(), source_id, run_id, source[key]))
    details = json.loads(Path(source["details"]).read_text())
    write_json(outputs["details"], {**details, "run_id": run_id, "shared_from": source_id})


def copy_shared_plane(run_id: str, round_: int, source_id: str, source: str | Path, output: str | Path) -> None:
    """Write run `run_id`'s eigenvector plane at `round_` from that of the run it shares its round-0 result with
    (`source_id`): the same plane, this run's id."""
    log.info("round %d of %s analyses the same model on the same data as that of %s: its plane is copied, with this "
             "run's id", round_, run_id, source_id)
    arrays, meta = read_plane_file(source)
    if meta["runs"] != [source_id]:
        raise ValueError(f"{source}: the plane of runs {meta['runs']}, not of {source_id!r}")
    write_plane_file(output, arrays, json.dumps({**meta, "runs": [run_id]}))


def hessian_job(settings: dict, inputs: dict[str, str | Path], outputs: dict[str, str | Path], threads: int,
                progress_dir: str | Path | None = None, plane_version: int | None = None) -> None:
    """One job of the hessian rule (its `settings`: a `HessianJob`): copy a shared result, or compute
    (`hessian_stage`) on `threads` CPU threads, keeping its finished parts in `progress_dir` until it ends and, given
    the plane jobs' result version `plane_version`, the aggregate's eigenpairs beside its outputs for its plane job."""
    job = HessianJob.from_settings(settings)
    if job.shared_from:
        copy_shared_job(job.run_id, job.round, job.shared_from, {key: inputs[f"source_{key}"] for key in JOB_FILES},
                        outputs)
    else:
        from fedscape.analysis.hessian.stage import hessian_stage  # lazy: torch, which a copying job does without
        from fedscape.models.device import use_threads  # lazy: as above

        use_threads(threads)
        job_dir = Path(outputs["table"]).parent
        store = None if plane_version is None else EigenStore(job_dir / EIGENPAIRS_DIR, plane_version,
                                                              job_dir / PLANE_FILE)
        hessian_stage(settings, inputs["trajectory"], inputs["partition"], outputs, progress_dir, store)
    if progress_dir is not None:  # parts a killed attempt left where this one took another way (a copy, a divergence)
        shutil.rmtree(progress_dir, ignore_errors=True)


def hessian_plane_job(settings: dict, inputs: dict[str, str | Path], output: str | Path, threads: int) -> None:
    """One job of the hessian_plane rule (its `settings`: a `HessianPlaneJob` at its result version): copy a shared
    plane, or write it (`plane_stage`) on `threads` CPU threads from the eigenpairs its Hessian job kept beside it,
    or computed."""
    job = HessianPlaneJob.from_settings(settings)
    if job.shared_from:
        copy_shared_plane(job.run_id, job.round, job.shared_from, inputs["source_plane"], output)
        return
    from fedscape.analysis.hessian.stage import plane_stage  # lazy: torch, which a copying job does without
    from fedscape.models.device import use_threads  # lazy: as above

    use_threads(threads)
    store = EigenStore(Path(output).parent / EIGENPAIRS_DIR, settings.get(RESULT_VERSION, FIRST_RESULT_VERSION))
    plane_stage(settings, inputs["trajectory"], inputs["partition"], output, store)
