"""The federated training loop shared by every algorithm, with per-round checkpoints and resume."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedscape.core.io import atomic_path
from fedscape.core.logs import device_failure
from fedscape.data.federated import FederatedData
from fedscape.fl.client_stats import round_stats
from fedscape.fl.local import Trainer
from fedscape.fl.sequential import SequentialTrainer
from fedscape.fl.settings import DIVERGED_LOSS, TrainConfig, sample_clients
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.swa import SWA_BN_COLUMN, SWA_METRICS, ScheduledLR, SWAConfig, SWAModel
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel
from fedscape.models.batchnorm import has_batch_norm, recompute_bn_stats
from fedscape.models.checkpoint import ClientRound
from fedscape.models.device import peak_memory_mb, use_precision
from fedscape.models.evaluate import evaluate
from fedscape.models.params import FlatParams, flatten_buffers, load_buffers

log = logging.getLogger("fedscape.train")
# Between two evaluated rounds (`training.eval_every`), at most one progress line per this many seconds: a long
# run evaluated every 100 rounds would otherwise say nothing for hours.
UNEVALUATED_LOG_SECONDS = 60.0


class InitialModelDiverged(ValueError):
    """The model a run starts from has a training loss that is not finite or above DIVERGED_LOSS: every round from it
    would be a diverged run's, and the cause lies upstream (a pretraining that diverged, weights from elsewhere)."""


@dataclass
class RunResult:
    """Everything a run produced: the global trajectory (its kept rounds), metrics rows and client checkpoints."""

    params: torch.Tensor  # [kept rounds, P]: the global models of `rounds` (TrainConfig.kept_rounds)
    buffers: torch.Tensor
    rounds: torch.Tensor
    rows: list[dict]  # the evaluated rounds' (TrainConfig.evaluates)
    clients: dict[int, ClientRound] = field(default_factory=dict)
    status: str = "ok"
    client_stats: list[dict] = field(default_factory=list)  # per round: fedscape.fl.client_stats.round_stats
    swa: dict | None = None  # with SWA: SWAModel.state_dict() of the SWA model (None until a cycle has ended)
    # How the clients trained (`execution_of`): a run's seconds per round depend on it as much as on its algorithm.
    # That of the last call that trained rounds (a call that resumes a finished run trains none)
    execution: str = ""
    # Each call that trained rounds of it, in order: {**its `attempt`, "from_round": its first round, "execution": how
    # its clients trained} (`{"from_round": 1}` alone for rounds saved before attempts were kept); more than one where
    # the run resumed after a kill
    attempts: list[dict] = field(default_factory=list)
    trained: bool = True  # whether this call trained rounds (the last of `attempts` is its own)
    # What capturing the clients' steps did (`capture_of`; None where no step was to be captured: on a CPU, under
    # `training.capture: eager`, an algorithm whose steps are never captured). That of the last call that trained
    # rounds, as `execution`: a resumed run's counts are its last attempt's, not summed over its attempts, since a kill
    # takes the graphs with it and the next attempt captures anew (each attempt's own are in `attempts`)
    capture: dict | None = None


class _Progress:
    """Per-round progress files that survive a kill: round_XXXXX.pt (a round's row and statistics, its global model
    only where it is kept) plus state.pt (the latest round, with its global model to resume from)."""

    def __init__(self, directory: Path | None, key: str):
        self.dir, self.key = directory, key
        self.attempts: list[dict] = []  # saved with every round: the calls that trained the run so far

    def _load(self, path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    def restore(self, sizes: tuple[int, int]) -> tuple[dict, list[dict]] | None:
        """(state, round records 0..k) of the last completed round, or None to start afresh; `sizes`: the model's
        numbers of parameters and buffer values, which the saved global model must have."""
        if self.dir is None:
            return None
        if not (self.dir / "state.pt").exists():
            log.info("no saved round in %s: starting at round 0", self.dir)
            return None
        try:
            state = self._load(self.dir / "state.pt")
            if state.get("key") != self.key:
                log.info("progress in %s belongs to other settings: starting afresh", self.dir)
                return None
            records = [self._load(self.dir / f"round_{r:05d}.pt") for r in range(state["round"] + 1)]
        except Exception as exc:  # a file cut short by a kill: the run is simply redone
            if device_failure(exc):  # (not one the machine could not read now: the progress is kept)
                raise
            log.warning("cannot resume from %s (%s): starting afresh", self.dir, exc)
            return None
        model = state if "params" in state else records[-1]  # (progress saved before save_every: in the record)
        saved = (model["params"].numel(), model["buffers"].numel()) if "params" in model else tuple(sizes)
        if saved != tuple(sizes):  # another model under the same key (a caller's key without the model's shape)
            log.warning("progress in %s holds a model of %d parameters and %d buffer values, this run's has %d and "
                        "%d: starting afresh", self.dir, *saved, *sizes)
            return None
        return state, records

    def reset(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)

    def save(self, round_: int, record: dict, strategy: Strategy, trainer: Trainer,
             model: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Save round `round_`'s record and the state to resume from: `model` is the global (params, buffers) after
        it, which the record holds only in a round whose model is kept (`TrainConfig.kept_rounds`)."""
        if self.dir is None:
            return
        with atomic_path(self.dir / f"round_{round_:05d}.pt") as tmp:
            torch.save(record, tmp)
        with atomic_path(self.dir / "state.pt") as tmp:
            torch.save({"key": self.key, "round": round_, "strategy": strategy.state_dict(),
                        "trainer": trainer.state_dict(), "params": model[0].cpu(), "buffers": model[1].cpu(),
                        "attempts": self.attempts}, tmp)

    def clear(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_federated(
    model: torch.nn.Module,
    data: FederatedData,
    strategy: Strategy,
    cfg: TrainConfig,
    progress_dir: str | Path | None = None,
    progress_key: str = "",
    trainer: Trainer | None = None,
    swa: SWAConfig | None = None,
    attempt: dict | None = None,
) -> RunResult:
    """Run `cfg.rounds` rounds of federated training from the model's current weights, in `cfg.precision`
    (`fedscape.models.device.use_precision`: local training and the evaluations alike).

    With `progress_dir`, every completed round is saved there and a later call with the same
    `progress_key` (a digest of the run's settings) resumes after the last completed round; the
    result is bit-identical on CPU to an uninterrupted run because every random stream is derived
    from (seed, round, client), where the trainer computes as before (a train job's key leaves its memory settings
    out, `stages.progress.resume_settings`: resumed with others, a run equals one to float rounding). The global model
    is evaluated (a row) at the rounds of `cfg.evaluates`; training stops early, with status 'diverged', at an
    evaluated round whose training loss is not finite or above DIVERGED_LOSS. Where a round's model is not
    finite or its clients' mean local training loss is not finite or above DIVERGED_LOSS, its model is evaluated
    whatever the cadence, and first the model its clients started from where no evaluation has seen it, so that a run
    stops where it does with eval_every 1 (at the first of the two that is out of bounds; a round after it is undone).
    Such an evaluation off the cadence gives a row only where it stops the run (its `seconds` and `peak_mem_mb` NaN
    where its round is the one a resumed run restored).

    With `swa`, the server also keeps an SWA model (fedscape.fl.swa): the scheduled lr cycles from the
    SWA start, the SWA model takes the global model at each cycle end and is evaluated then; its metrics
    (`SWA_METRICS`) are carried in every row and its state in the round records (so a resume restores it).
    With `swa.bn_stats` recomputed and a model with batch norm, the SWA model's statistics are recomputed from
    the clients' data together after each update (`recompute_bn_stats`; Izmailov et al. 2018) and kept as its
    buffers; every row says which (`SWA_BN_COLUMN`).

    `attempt`: what the caller records of this call (plain values; a train job's memory settings, which a resumed run
    may change); the result's `attempts` list each call that trained rounds, with its first round and `execution_of`
    its trainer.
    """
    device = next(model.parameters()).device
    with use_precision(cfg.precision, device):
        flat = FlatParams(model)
        owned = trainer is None
        if owned:
            trainer = make_trainer(model, flat, data, strategy, cfg)
        try:
            return _run_federated(model, flat, data, strategy, cfg, progress_dir, progress_key, trainer, swa,
                                  dict(attempt or {}))
        finally:
            if owned:  # a trainer passed in is its caller's to close
                trainer.close()


def _run_federated(model: torch.nn.Module, flat: FlatParams, data: FederatedData, strategy: Strategy,
                   cfg: TrainConfig, progress_dir: str | Path | None, progress_key: str, trainer: Trainer,
                   swa: SWAConfig | None, attempt: dict) -> RunResult:
    device = next(model.parameters()).device
    progress = _Progress(Path(progress_dir) if progress_dir else None, progress_key)
    x_all, y_all = data.union()
    strategy.setup(data.num_clients, flat.vector.numel(), device, model=model, seed=cfg.seed,
                   client_sizes=[len(ix) for ix in data.client_indices])

    def evaluate_row(round_: int, seconds: float, peak: float) -> dict:
        train = evaluate(model, x_all, y_all, cfg.eval_batch_size, data.never_correct)
        test = evaluate(model, data.x_test, data.y_test, cfg.eval_batch_size, data.never_correct)
        ok = _within_bound(train.loss)
        return {"round": round_, "train_loss": train.loss, "train_acc": train.acc, "test_loss": test.loss,
                "test_acc": test.acc, "seconds": seconds, "peak_mem_mb": peak,
                "status": "ok" if ok else "diverged"}

    def record(round_: int, row: dict | None, params: torch.Tensor, buffers: torch.Tensor,
               clients: ClientRound | None) -> dict:
        kept = round_ in keep or (row is not None and row["status"] != "ok")  # a diverged run keeps where it stopped
        rec = {"round": round_, "row": row, **({"params": params.cpu(), "buffers": buffers.cpu()} if kept else {})}
        if clients is not None:
            rec["clients"] = {"client_ids": clients.client_ids, "num_samples": clients.num_samples,
                              "params": clients.params.cpu(), "buffers": clients.buffers.cpu()}
        return rec

    keep = set(cfg.kept_rounds(swa))
    averager = SWAModel() if swa is not None else None
    recompute_swa_bn = swa is not None and swa.bn_stats == "recomputed" and has_batch_norm(model)
    swa_bn_stats = "recomputed" if recompute_swa_bn else "stored"  # what every row's SWA metrics were measured with
    restored = progress.restore((flat.vector.numel(), flatten_buffers(model).numel()))
    if restored is not None:
        state, records = restored
        fresh = strategy.state_dict(), trainer.state_dict()  # as set up, for a run that cannot resume
        try:
            strategy.load_state_dict(_to_device(state["strategy"], device))
            trainer.load_state_dict(state.get("trainer", {}))
            if averager is not None:
                _restore_swa(averager, records, device)
                swa_metrics = _last_swa_metrics(records)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            # a state of other code's layout, or damaged: the run is redone, as where `restore` cannot read its
            # progress (else every rerun would stop on it until the folder is deleted by hand), from the state as set
            # up, which a load that failed part-way may have changed. Not where the card failed (out of memory while
            # the state is copied onto it, a device error): the progress is sound, and the job fails, keeping it.
            if device_failure(exc):
                raise
            log.warning("cannot resume from %s (%s): starting afresh", progress.dir, exc)
            strategy.load_state_dict(fresh[0])
            trainer.load_state_dict(fresh[1])
            averager = SWAModel() if swa is not None else None
            restored = None
    if restored is not None:
        log.info("resuming after round %d/%d from %s", state["round"], cfg.rounds, progress.dir)
        # Progress saved before attempts were kept: its rounds were trained by one or more earlier calls of unknown
        # compute and code, recorded as one attempt from round 1 without their keys (as `stages.init` records such
        # epochs), not as none, which would claim them for this call's device and code; saved at round 0, it trained
        # none
        progress.attempts = list(state.get("attempts", [{"from_round": 1}] if state["round"] else []))
    else:
        progress.reset()
        row0 = evaluate_row(0, 0.0, peak_memory_mb(device))
        if averager is not None:
            swa_metrics = _no_swa_metrics()
            row0.update(swa_metrics, **{SWA_BN_COLUMN: swa_bn_stats})
        records = [record(0, row0, flat.get(), flatten_buffers(model), None)]
        progress.save(0, records[0], strategy, trainer, (records[0]["params"], records[0]["buffers"]))
        _log_row(records[0]["row"], cfg.rounds)

    if records[0]["row"]["status"] != "ok":
        raise InitialModelDiverged(
            f"the initial model's training loss is {records[0]['row']['train_loss']:.6g} (not finite or above "
            f"{DIVERGED_LOSS:g}): every round from it would diverge, so nothing is trained; the initial model is "
            "broken, not the run's settings")
    last = state if restored is not None and "params" in state else records[-1]  # progress of before save_every
    global_params = last["params"].to(device)
    global_buffers = last["buffers"].to(device)
    start = len(records)
    logged = time.perf_counter()  # when the last progress line was written
    if records[-1]["row"] is not None and records[-1]["row"]["status"] != "ok":
        start = cfg.rounds + 1
    # The last round whose global model an evaluation has seen, and the seconds and peak memory of the round before
    # the current one (a row of it may be made a round later; unknown for the round a resumed run restored)
    checked = start - 1 if records[-1]["row"] is not None else -1
    timing = (math.nan, math.nan)
    trained = start <= cfg.rounds
    if trained:  # a call that trains rounds (not one that finds them all done): its attempt
        progress.attempts.append({**attempt, "from_round": start})
    for t in range(start, cfg.rounds + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        sampled = sample_clients(cfg.seed, t, data.num_clients, cfg.participation)
        lr_factor = swa.lr_factor(t, cfg.rounds) if swa is not None else 1.0
        with ScheduledLR(swa, trainer, strategy, lr_factor):
            results = trainer.train_round(global_params, global_buffers, sampled, t)
            start_params, start_buffers = global_params, global_buffers
            global_params = strategy.server_update(global_params, results)
        if global_buffers.numel():
            global_buffers = strategy.aggregate_buffers(results)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, peak = time.perf_counter() - t0, peak_memory_mb(device)
        progress.attempts[-1]["execution"] = execution_of(trainer)  # how this attempt's rounds trained
        if (captured := capture_of(trainer)) is not None:
            progress.attempts[-1]["capture"] = captured
        # Between two evaluated rounds the global model is evaluated where the run may have diverged, so that
        # eval_every decides how often a run reports, not whether and where it stops, its final model or what SWA
        # averages: a model that is not finite, or a round whose clients' local training loss (known without an
        # evaluation) is not finite or above DIVERGED_LOSS, as an exploding run's is (FedAvg on digits at lr 20: the
        # clients' 2.8e8 in the round whose global model's was 3.9e11). The evaluation decides, as with eval_every 1.
        finite = bool(torch.isfinite(global_params).all()) and bool(torch.isfinite(global_buffers).all())
        local_loss = _local_train_loss(results)
        suspect = not finite or not _within_bound(local_loss)
        if suspect and checked < t - 1:
            # The clients' loss is that of the model they started from as much as of their steps: the model of round
            # t - 1, which no evaluation has seen, may be the one that exploded, its loss showing in this round's
            # clients' first steps alone (at lr 5 there: 2.7e7 after a round whose clients' was 936). Where it did,
            # the run stops at round t - 1 as with eval_every 1, and this round is undone.
            flat.set(start_params)
            if start_buffers.numel():
                load_buffers(model, start_buffers)
            before = evaluate_row(t - 1, *timing)
            if before["status"] != "ok":
                previous = records.pop()
                for key in ("swa", "swa_metrics"):  # with eval_every 1, SWA never averaged it (at a cycle end)
                    previous.pop(key, None)
                if averager is not None:
                    averager = SWAModel()
                    _restore_swa(averager, records, device)
                    before.update(_last_swa_metrics(records), **{SWA_BN_COLUMN: swa_bn_stats})
                records.append({**previous, **record(t - 1, before, start_params, start_buffers, None)})
                # Saved as round t - 1, but the strategy's and trainer's state is round t's: its local training and
                # server step advanced the clients' kept vectors (SCAFFOLD's c_i, FedDyn's g_k, MOON's previous
                # models, a kept optimiser state) and the server's (SCAFFOLD's c, FedDyn's h, a server optimiser's
                # momentum or moments). Nothing reads it: a resumed run whose last row diverged trains no round
                # (`start` above). Saving t - 1's would take a copy of all of it before every round that may be
                # undone (each after an unevaluated one), as the undo is known only after the round.
                progress.save(t - 1, records[-1], strategy, trainer, (start_params, start_buffers))
                _log_row(before, cfg.rounds)
                _log_diverged(before)
                break
        timing = (seconds, peak)
        flat.set(global_params)
        if global_buffers.numel():
            load_buffers(model, global_buffers)
        row = None
        if cfg.evaluates(t) or suspect:
            row, checked = evaluate_row(t, seconds, peak), t
        if row is not None and not cfg.evaluates(t) and row["status"] == "ok":
            # an excursion the global model came through: the run goes on, reporting at its cadence alone
            log.warning("round %d: the clients' mean local training loss is %.6g (not finite or above %g), the "
                        "global model's %.6g: training goes on", t, local_loss, DIVERGED_LOSS, row["train_loss"])
            row = None
        clients = None
        if t in cfg.save_clients_at:
            clients = ClientRound(
                t,
                torch.tensor([r.client_id for r in results]),
                torch.tensor([r.num_samples for r in results]),
                torch.stack([r.params.cpu() for r in results]),  # stacked on the host: no [M, P] copy on a card
                torch.stack([r.buffers.cpu() for r in results]),
            )
        swa_state = None
        if averager is not None:
            if finite and (row is None or row["status"] == "ok") and swa.averages_after(t, cfg.rounds):
                averager.update(t, global_params, global_buffers)
                if recompute_swa_bn:
                    averager.buffers = _recomputed_swa_buffers(model, flat, averager, global_params, global_buffers,
                                                               x_all)
                swa_metrics = _evaluate_swa(model, flat, averager, global_params, global_buffers, x_all, y_all,
                                            data, cfg.eval_batch_size)
                swa_state = averager.state_dict()
            if row is not None:
                row.update(swa_metrics, **{SWA_BN_COLUMN: swa_bn_stats})  # unchanged until the next cycle end
        records.append(record(t, row, global_params, global_buffers, clients))
        if swa_state is not None:
            records[-1]["swa"] = swa_state
            records[-1]["swa_metrics"] = swa_metrics
        records[-1]["client_stats"] = {"num_clients": len(results), **round_stats(  # the results' rows, unstacked
            start_params, [r.params for r in results], global_params)}
        progress.save(t, records[-1], strategy, trainer, (global_params, global_buffers))
        if row is None:
            if time.perf_counter() - logged >= UNEVALUATED_LOG_SECONDS:
                _log_unevaluated(t, cfg, local_loss, seconds)
                logged = time.perf_counter()
            continue
        _log_row(row, cfg.rounds)
        logged = time.perf_counter()
        if row["status"] != "ok":
            _log_diverged(row)
            break

    clients = {}
    for rec in records:
        if "clients" in rec:
            c = rec["clients"]
            r = _round_of(rec)
            clients[r] = ClientRound(r, c["client_ids"], c["num_samples"], c["params"], c["buffers"])
    kept = [r for r in records if "params" in r]
    return RunResult(
        params=_stack_kept(kept, "params"),
        buffers=_stack_kept(kept, "buffers"),
        rounds=torch.tensor([_round_of(r) for r in kept]),
        rows=[r["row"] for r in records if r["row"] is not None],
        client_stats=[{"round": _round_of(r), **r["client_stats"]} for r in records if "client_stats" in r],
        clients=clients,
        status=records[-1]["row"]["status"],
        swa=averager.state_dict() if averager is not None and averager.count else None,
        execution=(execution_of(trainer) if trained or not progress.attempts
                   else progress.attempts[-1].get("execution", execution_of(trainer))),
        capture=capture_of(trainer) if trained or not progress.attempts else progress.attempts[-1].get("capture"),
        attempts=progress.attempts,
        trained=trained,
    )


def _stack_kept(kept: list[dict], key: str) -> torch.Tensor:
    """The kept rounds' `key` tensors stacked, each record's own tensor dropped as soon as it is copied: the run holds
    its kept models once, not twice (meta.yaml's ResNet18 kept at each of 500 rounds: 21 GB a copy)."""
    first = kept[0][key]
    out = torch.empty((len(kept), *first.shape), dtype=first.dtype)
    for i, rec in enumerate(kept):
        out[i] = rec.pop(key)
    return out


def execution_of(trainer: Trainer) -> str:
    """How `trainer` trained its clients: `vectorized` (all sampled clients at once), `vectorized, captured` (their
    stacked steps replayed from CUDA graphs), `sequential, captured` (one after another, their steps replayed from
    CUDA graphs) or `sequential`."""
    if isinstance(trainer, VectorizedTrainer):
        return "vectorized, captured" if trainer.captured else "vectorized"
    capture = getattr(trainer, "capture", None)
    return "sequential, captured" if capture is not None and capture.state == "on" else "sequential"


def capture_of(trainer: Trainer) -> dict | None:
    """What capturing `trainer`'s steps did so far: its stacked steps' counts (`StackedStepGraphs.summary`) or its
    sequential passes' (`CapturedForward.summary`); None where its steps are never captured."""
    if isinstance(trainer, VectorizedTrainer):
        return None if trainer.graphs is None else trainer.graphs.summary()
    capture = getattr(trainer, "capture", None)
    return None if capture is None else capture.summary()


def _round_of(record: dict) -> int:
    """The round of a round record (records saved before rounds could go unevaluated name it in their row only)."""
    return int(record["round"]) if "round" in record else int(record["row"]["round"])


def _last_swa_metrics(records: list[dict]) -> dict:
    """The SWA columns that the next row carries: those of the last cycle end or evaluated row among `records`."""
    metrics = _no_swa_metrics()
    for rec in records:
        if rec.get("row") is not None:
            metrics = {k: rec["row"][k] for k in SWA_METRICS}
        if "swa_metrics" in rec:
            metrics = rec["swa_metrics"]
    return metrics


def _no_swa_metrics() -> dict:
    """The SWA columns of a row before the first cycle end: no SWA model yet."""
    return {k: (0 if k == "swa_models" else math.nan) for k in SWA_METRICS}


def _recomputed_swa_buffers(model: torch.nn.Module, flat: FlatParams, averager: SWAModel,
                            global_params: torch.Tensor, global_buffers: torch.Tensor,
                            x_all: torch.Tensor) -> torch.Tensor:
    """The SWA model's batch-norm statistics recomputed from the training inputs (Izmailov et al. 2018, `bn_update`);
    the model is left holding the global one."""
    flat.set(averager.params)
    load_buffers(model, averager.buffers)
    recompute_bn_stats(model, x_all)
    buffers = flatten_buffers(model).clone()
    flat.set(global_params)
    load_buffers(model, global_buffers)
    return buffers


def _evaluate_swa(model: torch.nn.Module, flat: FlatParams, averager: SWAModel, global_params: torch.Tensor,
                  global_buffers: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor, data: FederatedData,
                  batch_size: int) -> dict:
    """The SWA model's metrics on the same data as the global model's; the model is left holding the global one."""
    flat.set(averager.params)
    if global_buffers.numel():
        load_buffers(model, averager.buffers)
    train = evaluate(model, x_all, y_all, batch_size, data.never_correct)
    test = evaluate(model, data.x_test, data.y_test, batch_size, data.never_correct)
    flat.set(global_params)
    if global_buffers.numel():
        load_buffers(model, global_buffers)
    return {"swa_train_loss": train.loss, "swa_train_acc": train.acc, "swa_test_loss": test.loss,
            "swa_test_acc": test.acc, "swa_models": averager.count}


def _restore_swa(averager: SWAModel, records: list[dict], device: torch.device) -> None:
    """The SWA model of a resumed run: the state saved at the last cycle end among the completed rounds."""
    saved = [rec["swa"] for rec in records if "swa" in rec]
    if saved:
        averager.load_state_dict(saved[-1], device)


def make_trainer(model: torch.nn.Module, flat: FlatParams, data: FederatedData, strategy: Strategy,
                 cfg: TrainConfig) -> Trainer:
    """The client trainer of `cfg.client_parallel`: all sampled clients at once where that is exact, else one by one."""
    if resolve_client_parallel(model, strategy, cfg) == "vectorized":
        trainer = VectorizedTrainer(model, data, strategy, cfg)
        log.info("client training: vectorized (%s), up to %s clients at once",
                 "the model's stacked forward" if trainer.stacked_forward else "vmap",
                 cfg.client_chunk_size or "all sampled")
        return trainer
    return SequentialTrainer(model, flat, data, strategy, cfg)


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _within_bound(loss: float) -> bool:
    """Whether a training loss leaves a run ok: finite and at most DIVERGED_LOSS (above it, the run diverged)."""
    return math.isfinite(loss) and loss <= DIVERGED_LOSS


def _local_train_loss(results: list) -> float:
    """The clients' mean local training loss of a round (each client's mean over its local steps), weighted by their
    samples: known after every round without an evaluation."""
    samples = sum(r.num_samples for r in results)
    return sum(float(r.train_loss) * r.num_samples for r in results) / max(samples, 1)


def _log_unevaluated(round_: int, cfg: TrainConfig, loss: float, seconds: float) -> None:
    """A progress line of a round whose global model is not evaluated (`training.eval_every`): the clients' mean
    local training loss (`_local_train_loss`), which costs no evaluation."""
    log.info("round %d/%d local_train_loss=%.4f seconds=%.2f (the global model is evaluated every %d rounds)",
             round_, cfg.rounds, loss, seconds, cfg.eval_every)


def _log_diverged(row: dict) -> None:
    log.error("round %d: the global model's training loss is %s (not finite or above %g): the run diverged; stopping "
              "(lower the learning rate)", row["round"], row["train_loss"], DIVERGED_LOSS)


def _log_row(row: dict, rounds: int) -> None:
    log.info("round %d/%d train_loss=%.4f train_acc=%.4f test_loss=%.4f test_acc=%.4f seconds=%.2f "
             "peak_mem_mb=%.0f", row["round"], rounds, row["train_loss"], row["train_acc"], row["test_loss"],
             row["test_acc"], row["seconds"], row["peak_mem_mb"])
