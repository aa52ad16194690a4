"""The train stage: one federated run from its partition and initial model to its checkpoints and metrics."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from fedscape.core.io import remake_hint, write_csv, write_json
from fedscape.core.jobs import to_settings
from fedscape.core.manifest import code_version_label
from fedscape.core.provenance import check_belongs
from fedscape.core.setting import alpha_column
from fedscape.data.federated import load_federated_data
from fedscape.data.partition import partition_numpy, split_sha256
from fedscape.fl.engine import InitialModelDiverged, run_federated
from fedscape.fl.settings import CLIENT_UPDATES_COLUMNS, CODE_VERSION, MEMORY_KEYS, ROUNDS_COLUMNS
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.swa import SWA_BN_COLUMN, SWA_METRICS, SWASettings
from fedscape.models.batchnorm import has_batch_norm
from fedscape.models.checkpoint import CheckpointError, load_trajectory, save_clients, save_trajectory
from fedscape.models.device import describe_compute, log_compute, resolve_device
from fedscape.stages.progress import (
    attempt_record,
    attempts_record,
    input_digests,
    progress_key,
    resume_advice,
    resume_settings,
)
from fedscape.stages.train_settings import TrainJob

log = logging.getLogger("fedscape.train")


def train_job(settings: dict, partition_path: str | Path, init_path: str | Path, outputs: dict[str, str],
              progress_dir: str | Path) -> None:
    """Run one federated training job (the job of `settings`: `TrainJob`) and write trajectory.pt, clients.pt,
    metrics.csv, meta.json and client_updates.csv.

    Progress is kept in `progress_dir` (not a declared output, so Snakemake does not delete it when
    a job is killed) and removed once the outputs are written.
    """
    job = TrainJob.from_settings(settings)
    run = job.run
    device = resolve_device(job.training.device)
    cfg = job.train_config()
    log_compute(describe_compute(device, cfg.precision))
    # not checked against the run's meta.json: this job writes it (an earlier one names the split it trained on then)
    data = load_federated_data(run, job.dataset_options, partition_path, device, trained=False)
    init = load_trajectory(init_path, run_id=job.run_id)
    # the init of the run's own label (an init records it; the model and data shape load_trajectory checks)
    check_belongs(init_path, f"the init of run {job.run_id}", {"init": run["init"]},
                  {"init": init.meta.get("init", run["init"])}, remake_hint(init_path), CheckpointError)
    strategy = make_strategy(job.algorithm, job.hyperparameters)
    model = strategy.prepare_model(init.model_at(0, device), cfg.seed).train()
    model_meta = init.model_meta.with_options(strategy.config.model_options(), model)  # as trained
    swa = None if job.training.swa is None else job.training.swa.config()
    log.info("run %s on %s: %d clients, %d rounds x %s of local %s (lr %g, %s schedule), algorithm %s",
             job.run_id, device, data.num_clients, cfg.rounds, cfg.work_text(), cfg.optimizer, cfg.lr,
             cfg.lr_schedule, job.algorithm)
    log.info(resume_advice(progress_dir, "round"))
    if cfg.save_every > 1 or cfg.eval_every > 1:
        log.info("keeping the global models of %d of the %d rounds 0..%d (training.save_every %d) and evaluating "
                 "every %d round(s) (training.eval_every)", len(cfg.kept_rounds(swa)), cfg.rounds + 1, cfg.rounds,
                 cfg.save_every, cfg.eval_every)
    if swa is not None:
        log.info("SWA at the server from round %d: cycles of %d rounds, %s lr down to %g x its value",
                 swa.start(cfg.rounds), swa.cycle, swa.scheduled_lr, swa.lr_ratio)
    # what each attempt of a run resumed after a kill records: its memory settings, where and how precisely it
    # computed (under device: auto a run killed on a card may go on where none is, or on a card without TF32:
    # cost.csv times each attempt's rounds by its own), and its code
    compute = describe_compute(device, cfg.precision)
    attempt = {**{key: settings["training"][key] for key in MEMORY_KEYS if key in settings["training"]},
               **attempt_record(compute)}
    # the contents of the files the run starts from, read once: its progress key, and its record (meta.json's
    # `inputs`), and the split it holds, which its analyses check its partition against
    # (data.partition.check_trained_partition), with the numpy that drew that split (another may draw another from the
    # same seed)
    digests = input_digests((partition_path, init_path))
    inputs = {"partition": digests[0], "split": split_sha256(partition_path),
              "partition_numpy": partition_numpy(partition_path), "init": digests[1]}
    key = progress_key(resume_settings(settings, TrainJob), digests=digests)
    try:
        result = run_federated(model, data, strategy, cfg, progress_dir=progress_dir, progress_key=key, swa=swa,
                               attempt=attempt)
    except InitialModelDiverged as exc:
        raise CheckpointError(f"{init_path}: {exc}; {remake_hint(init_path)}") from exc

    meta = {"run_id": job.run_id, "settings": settings, "status": result.status,
            **compute, "execution": result.execution, "seed": run["seed"],
            "init_seed": init.meta.get("seed"), "final_round": int(result.rounds.max()), "inputs": inputs}
    if swa is not None:  # the SWA model is the run's reported final model (fedscape.models.checkpoint)
        meta["swa"] = {**to_settings(SWASettings.of(swa, cfg.rounds, has_batch_norm(model))),
                       "models": 0 if result.swa is None else result.swa["count"],
                       "rounds": [] if result.swa is None else result.swa["rounds"]}
    save_trajectory(outputs["trajectory"], result.params, result.buffers, result.rounds, model_meta, meta,
                    swa=result.swa)
    save_clients(outputs["clients"], result.clients, model_meta, meta)
    # resumed after a kill: each attempt's first round, memory settings, device and code, in meta.json alone (so that
    # the checkpoints are those of an unbroken run); the job's record lists the codes where they differ
    meta.update(attempts_record(result.attempts, result.trained))
    # what capturing its steps did (`fl.engine.capture_of`: its last attempt's counts), in meta.json alone as
    # `attempts`: the checkpoints of a run resumed after a kill stay those of an unbroken run
    if result.capture is not None:
        meta["capture"] = result.capture
    rows = pd.DataFrame(result.rows)
    for key in ("dataset", "model", "init", "algorithm", "num_clients", "seed"):
        rows[key] = run[key]
    rows["run_id"] = job.run_id
    rows["alpha"] = alpha_column(run["alpha"])
    rows["participation"] = float(run["participation"])
    swa_columns = [*SWA_METRICS, *([SWA_BN_COLUMN] if has_batch_norm(model) else [])] if swa is not None else []
    rows[CODE_VERSION] = code_version_label()
    write_csv(rows[ROUNDS_COLUMNS + swa_columns + [CODE_VERSION]], outputs["metrics"])
    updates = pd.DataFrame(result.client_stats, columns=CLIENT_UPDATES_COLUMNS[1:])
    updates.insert(0, "run_id", job.run_id)
    write_csv(updates, outputs["client_updates"])
    write_json(outputs["meta"], meta)
    shutil.rmtree(progress_dir, ignore_errors=True)
    final = result.rows[-1]
    log.info("done: status=%s final test_acc=%.4f", result.status, final["test_acc"])
    if result.swa is not None:
        log.info("SWA model (mean of %d global models, rounds %s): test_acc=%.4f", result.swa["count"],
                 result.swa["rounds"], final["swa_test_acc"])
