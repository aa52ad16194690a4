"""Initial models of the `init` stage: random, pretrained on proxy data, IID warm-up, continue.

Every init label of the config names one kind; its output is a one-row trajectory (`init.pt`,
row 0) that every run naming the label starts from:

* ``random``: seeded weights (the model's own initialisation under ``torch.manual_seed(seed)``).
* ``pretrained``: the random init trained centrally on proxy data disjoint from the clients' data in samples
  (the pilot study's Fig. 5 and the Meta poster "Where to Begin?"): the dataset's held-out proxy
  split (``proxy_fraction``; on a data set with writers it shares writers with the clients under
  ``proxy_split: samples``, none under ``proxy_split: writers``), another dataset (``proxy_dataset``, e.g. cifar100
  for cifar10) or a
  directory of 32x32 down-sampled ImageNet ``.npz`` arrays (``proxy_dir``, as the pilot study
  pretrains on down-sampled ImageNet; streamed from disk batch by batch, `fedscape.data.imagenet32`).
  The classifier is re-initialised when the label sets differ.
* ``iid_warmup``: ``rounds`` rounds of IID FedAvg from the random init (pilot study, Fig. 6b).
* ``continue``: the final global model of another run (pilot study's alpha = 1.0*: more rounds at a
  reduced learning rate, via an algorithm label with a ``training: {lr: ...}`` override).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedscape.core.config import digest
from fedscape.core.io import atomic_path
from fedscape.core.jobs import to_settings
from fedscape.core.logs import device_failure
from fedscape.core.manifest import note
from fedscape.core.seeds import derive_seed
from fedscape.core.setting import IID
from fedscape.data.datasets import augment_batch, augmented_batch, dataset_from_options, normalisation, take_rows
from fedscape.data.federated import federate
from fedscape.data.imagenet32 import ImageNet32
from fedscape.data.locations import without_data_locations
from fedscape.data.partition import check_partition_file
from fedscape.data.specs import INIT_LOCATION_BASELINES, PROXY_SPLITS, dataset_info
from fedscape.fl.engine import run_federated
from fedscape.fl.sequential import decay_groups
from fedscape.fl.settings import MEMORY_KEYS
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import ModelMeta, load_trajectory, save_trajectory
from fedscape.models.device import describe_compute, log_compute, resolve_device, use_precision
from fedscape.models.evaluate import EvalResult, evaluate
from fedscape.models.loss import mean_loss
from fedscape.models.params import flatten_buffers, flatten_params, load_buffers, load_params
from fedscape.models.registry import build_model
from fedscape.models.specs import EVAL_BATCH_SIZE
from fedscape.stages.init_settings import WARMUP_ALGORITHM, ContinueInit, InitJob, PretrainedInit, WarmupInit
from fedscape.stages.progress import attempt_record, attempts_record, progress_key, resume_settings

log = logging.getLogger("fedscape.init")
# Within a pretraining epoch, at most one progress line per this many seconds (a whole epoch is resumed, not a part)
EPOCH_LOG_SECONDS = 60.0

_EPOCH_STREAM = 0x5EED  # batch order of pretraining epochs
_HEAD_STREAM = 0x4EAD  # re-initialised classifier head


# -- models ----------------------------------------------------------------------------------------
def random_model(job: InitJob, num_classes: int | None = None, seed: int | None = None) -> torch.nn.Module:
    """The model of an init job with seeded random weights (what a `random` init saves): `seed`, else the job's."""
    torch.manual_seed(job.seed if seed is None else seed)
    return build_model(job.model, num_classes=num_classes or job.num_classes, in_channels=job.in_channels,
                       image_size=job.image_size, **job.model_options)


def model_meta_for(job: InitJob, model: torch.nn.Module) -> ModelMeta:
    """What rebuilds `model` from a flat vector: its name, options, data shape and the layout of its parameters and
    buffers (`ModelMeta.with_layout`)."""
    return ModelMeta(model=job.model, num_classes=job.num_classes, in_channels=job.in_channels,
                     image_size=job.image_size, model_options=dict(job.model_options)).with_layout(model)


def _save(out: str | Path, model: torch.nn.Module, job: InitJob, key: str, meta: dict) -> None:
    # `meta` holds what the init is, not how a resumed job reached it: the attempts of a pretraining or warm-up
    # resumed after a kill go to the job's record (`core.manifest.note`), as a train job keeps its own out of its
    # checkpoints, so that init.pt is byte for byte an unbroken job's and the runs from it keep their progress
    # (`stages.progress.progress_key` holds its contents)
    meta = {"init": job.init, "kind": job.kind, "seed": getattr(job, "seed", None), "settings_digest": key, **meta}
    save_trajectory(out, flatten_params(model).unsqueeze(0), flatten_buffers(model).unsqueeze(0),
                    torch.zeros(1, dtype=torch.long), model_meta_for(job, model), meta)


def init_job(settings: dict, out: str | Path, inputs: dict | None = None,
             progress_dir: str | Path | None = None) -> None:
    """Make the initial model of one init label (the job of `settings`: `InitJob`, of its kind) and write it to
    `out` (a one-row trajectory)."""
    inputs = dict(inputs or {})
    job = InitJob.from_settings(settings)
    key = digest(without_data_locations(settings))  # the settings as planned: the init's record
    t0 = time.perf_counter()
    if isinstance(job, PretrainedInit):
        model, meta = pretrain(job, progress_dir, progress_key(resume_settings(settings, PretrainedInit)))
    elif isinstance(job, WarmupInit):
        model, meta = iid_warmup(job, inputs["partition"], progress_dir,
                                 progress_key(resume_settings(settings, WarmupInit), [inputs["partition"]]))
    elif isinstance(job, ContinueInit):
        model, meta = continue_from(job, inputs["trajectory"])
    else:
        model, meta = random_model(job), {}
    _save(out, model.cpu(), job, key, meta)
    if progress_dir is not None:
        shutil.rmtree(progress_dir, ignore_errors=True)
    n = sum(p.numel() for p in model.parameters())
    log.info("init %s (%s): %d parameters in %.1f s %s", job.init, job.kind, n, time.perf_counter() - t0,
             json.dumps(meta, default=str))


# -- pretrained ------------------------------------------------------------------------------------
@dataclass
class ProxyData:
    """A pretrained init's proxy data: labels on the device, images by batch (held on the device or streamed).

    Down-sampled ImageNet (``stream``) stays on disk and each batch is read and normalised on the fly,
    so memory does not grow with it; the other proxies are small and moved to the device once (``x``).
    """

    y: torch.Tensor
    num_classes: int
    source: str
    x: torch.Tensor | None = None
    stream: ImageNet32 | None = None
    mean: torch.Tensor | None = None  # [1, 3, 1, 1] normalisation of the streamed images
    std: torch.Tensor | None = None
    never_correct: tuple[int, ...] = ()  # the classes whose prediction its accuracy never credits (Dataset's)

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The (normalised) inputs of samples ``index``, on the labels' device."""
        if self.x is not None:
            return self.x[index.to(self.x.device)]
        return self.stream.batch(index, self.mean, self.std, self.y.device)

    def augmented(self, index: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
        """`batch` of ``index`` augmented with ``kind`` (from the stored images where the augmentation crops them)."""
        if self.x is not None:
            return augmented_batch(self.x, index.to(self.x.device), kind, generator)
        return augment_batch(self.batch(index), kind, generator)

    def evaluate(self, model: torch.nn.Module, batch_size: int = EVAL_BATCH_SIZE) -> EvalResult:
        """Loss and accuracy of ``model`` on every proxy sample, ``batch_size`` inputs in memory at a time."""
        if self.x is not None:
            return evaluate(model, self.x, self.y, batch_size, self.never_correct)
        loss, correct, n = 0.0, 0.0, 0
        for start in range(0, len(self), batch_size):
            index = torch.arange(start, min(start + batch_size, len(self)))
            part = evaluate(model, self.batch(index), self.y[index.to(self.y.device)], batch_size, self.never_correct)
            if part.n:  # a part with nothing counted has NaN means (`evaluate`) and weighs 0
                loss, correct, n = loss + part.loss * part.n, correct + part.acc * part.n, n + part.n
        if n == 0:
            return EvalResult(loss=math.nan, acc=math.nan, n=0)
        return EvalResult(loss=loss / n, acc=correct / n, n=n)


def proxy_data(job: PretrainedInit, device: torch.device | str = "cpu") -> ProxyData:
    """The proxy data of a pretrained init, its labels (and in-memory images) on ``device``."""
    options = job.dataset_options
    if job.proxy_dir:
        if job.proxy_dir == INIT_LOCATION_BASELINES["proxy_dir"]:
            raise ValueError("the job's proxy_dir is its planned baseline, not a folder: a job reads the config's "
                             "(fedscape.data.locations.with_data_locations)")
        if dataset_info(job.dataset).input_description != "3x32x32 images":  # ImageNet-200 is RGB too
            raise ValueError(f"proxy_dir (down-sampled ImageNet) needs a 32x32 RGB dataset, not {job.dataset}")
        mean, std = normalisation(job.dataset, options)
        stream = ImageNet32(job.proxy_dir, job.max_samples, job.seed)
        return ProxyData(torch.from_numpy(stream.labels).to(device), max(stream.num_classes, 1000),
                         "imagenet32", stream=stream,
                         mean=torch.tensor(mean).view(1, 3, 1, 1), std=torch.tensor(std).view(1, 3, 1, 1))
    if job.proxy_dataset:
        name = job.proxy_dataset
        proxy_options = {"data_dir": job.proxy_data_dir or options.get("data_dir"),
                         "download": options.get("download", False), "split_seed": options.get("split_seed", 0)}
        if job.proxy_normalisation == "clients":  # the clients' pixel-to-input map, as proxy_dir's images get above
            mean, std = normalisation(job.dataset, options)
            proxy_options |= {"channel_mean": mean, "channel_std": std}
        ds = dataset_from_options(name, proxy_options)
        x, y = ds.x_train, ds.y_train
        if job.max_samples is not None and job.max_samples < len(y):
            keep = torch.from_numpy(np.sort(np.random.default_rng(job.seed).permutation(len(y))[: job.max_samples]))
            x, y = take_rows(x, keep), y[keep]
        return ProxyData(y.to(device), ds.num_classes, f"dataset:{name}", x=x.to(device),
                         never_correct=ds.never_correct)
    ds = dataset_from_options(job.dataset, options)
    if len(ds.y_proxy) == 0:
        if options.get("proxy_split") == PROXY_SPLITS[1]:
            # proxy_fraction is above 0 (planning refuses a writers' split of 0) and holds a writer of a max_clients
            # read and of the writers its publishers count, where they do (`fedscape.plan.init.proxy_split_problem`):
            # the files hold fewer writers than planning could tell
            raise ValueError(f"the proxy split of {job.dataset} is empty: proxy_split: writers holds out "
                             f"round(proxy_fraction x writers) of the writers with training samples in its files (of "
                             f"a max_clients read, those after the first max_clients where the files hold more), 0 at "
                             f"proxy_fraction {options.get('proxy_fraction', 0):g}, as its files hold too few "
                             f"writers; set a higher datasets.{job.dataset}.proxy_fraction, proxy_split: samples, or "
                             f"a proxy_dataset / proxy_dir")
        raise ValueError(f"the proxy split of {job.dataset} is empty: set datasets.{job.dataset}."
                         "proxy_fraction > 0, or a proxy_dataset / proxy_dir")
    return ProxyData(ds.y_proxy.to(device), ds.num_classes, f"split:{job.dataset}", x=ds.x_proxy.to(device),
                     never_correct=ds.never_correct)


def pretrain(job: PretrainedInit, progress_dir: str | Path | None = None,
             key: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Centralised SGD on the proxy data from the seeded random init, in the training's precision (fp32 unless the
    job says otherwise); resumable after every epoch (progress of the job whose settings have digest `key`, by
    default the job's own)."""
    device = resolve_device(job.device)
    compute = describe_compute(device, job.precision)
    log_compute(compute)
    with use_precision(job.precision, device):
        model, meta = _pretrain(job, progress_dir, device, key or digest(to_settings(job)), attempt_record(compute))
    return model, {**meta, **compute}


def _pretrain(job: PretrainedInit, progress_dir: str | Path | None, device: torch.device, key: str,
              attempt: dict) -> tuple[torch.nn.Module, dict]:
    cfg = job.schedule()
    proxy = proxy_data(job, device)
    y, proxy_classes, source = proxy.y, proxy.num_classes, proxy.source
    same_labels = source.startswith("split:")

    def seeded() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The seeded random model and its optimiser, as a pretraining starts."""
        model = random_model(job, num_classes=job.num_classes if same_labels else proxy_classes,
                             seed=cfg.seed).to(device).train()
        # the model's undecayed parameters (char_gpt's) in a group of their own, as in local training
        return model, torch.optim.SGD(decay_groups(model), lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)

    model, opt = seeded()
    augment = job.dataset_options.get("augment", "none")
    progress = Path(progress_dir) / "state.pt" if progress_dir else None
    start, attempts = 0, []  # attempts: each call that trained epochs, in order (`attempt`, and its first epoch)
    if progress is not None and progress.exists():
        try:
            state = torch.load(progress, map_location=device, weights_only=True)
            if state.get("key") == key:
                # loaded into a model and optimiser of their own, taken only once all of the progress loads: a load
                # that fails part-way (an optimiser of other parameter groups, saved before char_gpt's undecayed
                # group; a model missing a tensor, after the others were copied) must leave the seeded init to
                # start afresh from, not the saved epochs' weights under all the epochs again
                resumed, resumed_opt = seeded()
                resumed.load_state_dict(state["model"])
                resumed_opt.load_state_dict(state["opt"])
                # Progress saved before attempts were kept: its epochs were trained by one or more earlier calls of
                # unknown compute and code, recorded as one attempt from epoch 1 without their keys, not as none,
                # which would claim them for this call's device and code
                saved = int(state["epoch"]), list(state.get("attempts", [{"from_epoch": 1}]))
                model, opt, (start, attempts) = resumed, resumed_opt, saved
                log.info("resuming pretraining after epoch %d/%d", start, cfg.epochs)
        except Exception as exc:  # a file cut short by a kill, or progress of another layout: start afresh
            if device_failure(exc):  # (not where the card failed: the progress is sound, and kept)
                raise
            log.warning("cannot resume pretraining from %s (%s): starting afresh", progress, exc)
    log.info("pretraining %s on %s (%d samples, %d classes) for %d epochs: lr %g, batch %d, momentum %g, "
             "weight decay %g, device %s", job.model, source, len(y), proxy_classes, cfg.epochs, cfg.lr,
             cfg.batch_size, cfg.momentum, cfg.weight_decay, device)
    trained = start < cfg.epochs
    if trained:  # a call that trains epochs (not one that finds them all done): its attempt
        attempts.append({**attempt, "from_epoch": start + 1})
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, _EPOCH_STREAM))
        perm = torch.randperm(len(y), generator=generator)
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on the device: no wait a step
        logged = time.perf_counter()
        for i in range(0, len(y), cfg.batch_size):
            if time.perf_counter() - logged >= EPOCH_LOG_SECONDS:  # an epoch of ImageNet32 takes long: say where it is
                log.info("pretraining epoch %d/%d: %d of %d samples, loss %.4f", epoch + 1, cfg.epochs, count, len(y),
                         float(total) / max(count, 1))
                logged = time.perf_counter()
            b = perm[i : i + cfg.batch_size]  # on the CPU: a streamed proxy reads these rows from disk
            loss = mean_loss(model(proxy.augmented(b, augment, generator)), y[b.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(b)
            count += len(b)
        epoch_loss = float(total) / max(count, 1)
        _check_finite(model, job, epoch + 1, epoch_loss)  # before its progress is kept
        if progress is not None:
            with atomic_path(progress) as tmp:
                torch.save({"key": key, "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                            "attempts": attempts}, tmp)
        log.info("pretraining epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, cfg.epochs, epoch_loss,
                 time.perf_counter() - t0)
    # a pretraining resumed after its last epoch trains none here: its weights are checked all the same
    _check_finite(model, job, cfg.epochs)
    proxy_eval = proxy.evaluate(model)
    meta = {"proxy": source, "proxy_samples": len(y), "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "proxy_loss": proxy_eval.loss,
            "proxy_acc": proxy_eval.acc, "head_reinitialised": not same_labels}
    note(**attempts_record(attempts, trained))  # in the job's record, not the init's meta (`_save`)
    if not same_labels:
        model = _with_new_head(model, job, cfg.seed).to(device)
    else:
        ds = dataset_from_options(job.dataset, job.dataset_options)
        x_pool, y_pool = ds.evaluated_train()  # the rows a run's evaluations score
        pool = evaluate(model, x_pool.to(device), y_pool.to(device), never_correct=ds.never_correct)
        test = evaluate(model, ds.x_test.to(device), ds.y_test.to(device), never_correct=ds.never_correct)
        meta.update({"clients_pool_acc": pool.acc, "test_acc": test.acc})
    log.info("pretrained on %s: proxy accuracy %.4f%s", source, proxy_eval.acc,
             f", clients' pool accuracy {meta['clients_pool_acc']:.4f}, test accuracy {meta['test_acc']:.4f}"
             if same_labels else " (classifier head re-initialised for the clients' labels)")
    return model.eval(), meta


def _check_finite(model: torch.nn.Module, job: PretrainedInit, epoch: int, loss: float | None = None) -> None:
    """Raise where the pretraining diverged by `epoch`: its epoch `loss` or a parameter or buffer (batch-norm running
    statistics) is not finite. Such weights saved as the init would make every run from it diverge at round 0, with a
    message that points at the runs' training, not at the init."""
    if loss is not None and not math.isfinite(loss):
        what = f"its loss is {loss}"
    else:
        bad = [name for name, tensor in model.state_dict().items()
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if not bad:
            return
        what = f"tensors not finite: {', '.join(bad[:3])}{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}"
    raise RuntimeError(f"the pretraining of init {job.init} diverged by epoch {epoch}/{job.epochs}: {what}; lower its "
                       f"learning rate (inits.{job.init}.lr, now {job.lr:g})")


def _with_new_head(pretrained: torch.nn.Module, job: PretrainedInit, seed: int) -> torch.nn.Module:
    """The clients' model: every pretrained tensor except the classifier, which gets seeded fresh weights."""
    model = random_model(job, seed=derive_seed(seed, _HEAD_STREAM))
    source = pretrained.state_dict()
    target = model.state_dict()
    for name, tensor in target.items():
        if not name.startswith("classifier."):
            tensor.copy_(source[name])
    model.load_state_dict(target)
    return model


# -- iid_warmup ------------------------------------------------------------------------------------
def iid_warmup(job: WarmupInit, partition_path: str | Path, progress_dir: str | Path | None = None,
               key: str | None = None) -> tuple[torch.nn.Module, dict]:
    """`rounds` rounds of FedAvg on an IID split from the seeded random init (pilot study, Fig. 6b); progress of the
    job whose settings have digest `key` (by default the job's own)."""
    device = resolve_device(job.warmup_training.device)
    cfg = job.train_config()
    compute = describe_compute(device, cfg.precision)
    log_compute(compute)
    check_partition_file(partition_path, job.dataset, job.num_clients, IID, job.partition_seed)
    data = federate(dataset_from_options(job.dataset, job.dataset_options), partition_path, device)
    model = random_model(job).to(device).train()
    log.info("IID warm-up: %d round(s) of FedAvg on %d clients (%s)", cfg.rounds, data.num_clients, partition_path)
    # as a train job's attempt: its memory keys, which a warm-up resumed after a kill may change (WarmupInit.neutral),
    # where and how precisely it computed, and its code
    attempt = {**{name: getattr(job.warmup_training, name) for name in MEMORY_KEYS}, **attempt_record(compute)}
    result = run_federated(model, data, make_strategy(WARMUP_ALGORITHM), cfg, progress_dir=progress_dir,
                           progress_key=key or digest(to_settings(job)), attempt=attempt)
    if result.status != "ok":
        raise RuntimeError(f"the IID warm-up diverged (status {result.status}); lower its learning rate")
    load_params(model, result.params[-1].to(device))
    if result.buffers.shape[1]:
        load_buffers(model, result.buffers[-1].to(device))
    final = result.rows[-1]
    note(**attempts_record(result.attempts, result.trained))  # in the job's record, not the init's meta (`_save`)
    # how its rounds trained and what capturing their steps did, as a run's meta.json says them (`fl.engine`): in the
    # job's record, whether or not it resumed (the init's bytes stay those of an eager, unbroken warm-up)
    note(execution=result.execution, **({"capture": result.capture} if result.capture is not None else {}))
    return model.eval(), {"rounds": cfg.rounds, "num_clients": data.num_clients, "partition": str(partition_path),
                          "train_acc": final["train_acc"], "test_acc": final["test_acc"], **compute}


# -- continue --------------------------------------------------------------------------------------
def continue_from(job: ContinueInit, trajectory_path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The final global model of another run (its trajectory's last row), or its SWA average (`job.source_model`)."""
    source = load_trajectory(trajectory_path, run_id=job.source_run_id)
    meta = source.model_meta
    if (meta.model, meta.num_classes, meta.in_channels, meta.image_size) != (
            job.model, job.num_classes, job.in_channels, job.image_size):
        raise ValueError(f"{trajectory_path} holds a {meta.model} for {meta.num_classes} classes of "
                         f"{meta.in_channels}x{meta.image_size}x{meta.image_size} inputs, not the init's "
                         f"{job.model}")
    if meta.model_options.get("projection_head"):
        raise ValueError(f"{trajectory_path} holds a model with MOON's classifier on its projection head (head: "
                         "projection), which the init's model has not: continue from a run of another algorithm, "
                         "or of MOON with head: side")
    status = source.meta.get("status", "ok")
    if status != "ok":
        # its last kept model is not finite, or not the one it was to end with: every run from it would diverge at
        # round 0 with nothing naming the cause
        raise ValueError(f"the source run {job.source_run_id} of init {job.init} has status {status} "
                         f"({trajectory_path}): continue from a run that trained to its end, or retrain that one "
                         "(e.g. with a lower lr)")
    final = source.final_round
    swa = job.source_model == "swa"
    if swa and not source.has_swa:
        raise ValueError(f"init {job.init} continues from the SWA average of run {job.source_run_id}, but "
                         f"{trajectory_path} holds none (a run without SWA, or whose SWA phase starts after its last "
                         "round): use source_model: global")
    # A run with SWA keeps its SWA average beside its final global model: `point` gives the average at the final
    # round, `global_model` the global model.
    model = source.model_at(final, global_model=not swa)
    extra = {"swa_rounds": list(source.swa_rounds)} if swa else {}
    # `seed`: the source run's seed (its partition's, client sampling's and batch order's: unlike a random, pretrained
    # or warm-up init, a continued one has no seed of its own), which the runs from this init record as `init_seed`
    return model, {"source_run_id": job.source_run_id, "source_round": final, "source_model": job.source_model,
                   **extra, "seed": source.meta.get("seed")}
