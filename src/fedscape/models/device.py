"""Where and how precisely a job computes: the torch device (and, on a machine with several cards, which one), its
CPU threads, its float32 precision, its name and its peak memory."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import resource
from collections.abc import Callable, Iterator

import torch

from fedscape.core.gpus import CLAIM_DIR, POLL_SECONDS, CardClaim, card_limit, claim_card, visible_entries
from fedscape.core.manifest import note
from fedscape.models.specs import check_precision

log = logging.getLogger("fedscape")

# The claim of this process's job on its card, held until the process ends (fedscape.core.gpus).
_CLAIM: CardClaim | None = None
_WARNED: list[str] = []  # the card `_warn_card_unused` said this job holds unused


def resolve_device(name: str, claim_dir=CLAIM_DIR, poll: float = POLL_SECONDS) -> torch.device:
    """'auto' -> CUDA when available, else CPU; explicit names are checked.

    'auto' takes the visible card with the fewest fedscape jobs on it (`claim_card`, the cards named by their UUIDs),
    so that the jobs of a local run spread over the cards instead of all starting on cuda:0, and a job on its one
    card counts for the jobs of other workflows that see it under another index. A cluster job sees the one card it
    was given. An explicit `cuda:<i>` (or `cuda`, the current card) is taken as it is, and claimed too, so that the
    'auto' jobs of another workflow count it. Where no claim can be written the job goes on, on cuda:0 under
    'auto', unclaimed. The card is resolved once per process: every later call (the precision check, the stage)
    returns the same one.

    A job of a local Snakemake run waits, polling every `poll` seconds, while every card it may take (its own under
    an explicit name) holds as many claims as the run allows per card (`fedscape.core.gpus.card_limit`, which the
    Snakefile sets): other workflows' jobs there make it wait rather than share the card beyond what the user said
    fits. Outside one (a job run by hand, a cluster job) it never waits.

    A card is also made the process's current CUDA device: torch's calls that name no device (a CUDA graph's
    capture stream and synchronisation, the default generator's state, a tensor made on "cuda") then act on the
    job's card. Left at cuda:0, they would capture on another card's stream than the model's kernels run on, and
    open a second context on cuda:0 in every job of a multi-card machine.
    """
    global _CLAIM
    if name == "auto":
        if not torch.cuda.is_available():
            _warn_card_unused()
            return torch.device("cpu")
        if _CLAIM is None:
            cards = torch.cuda.device_count()
            _CLAIM = _claim(cards, claim_dir, None, poll)
            if _CLAIM.held:
                log.info("took cuda:%d, the card with the fewest fedscape jobs of the %d visible", _CLAIM.card, cards)
        return _made_current(torch.device("cuda", _CLAIM.card))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available on this node")
    if device.type == "cuda" and _CLAIM is None and (cards := torch.cuda.device_count()) > 0:
        card = torch.cuda.current_device() if device.index is None else device.index
        if card < cards:  # else CUDA itself says so on the job's first tensor there
            _CLAIM = _claim(cards, claim_dir, card, poll)
    return _made_current(device)


def _given_card() -> str | None:
    """The variable (`name=value`) that gives this process a card: CUDA_VISIBLE_DEVICES where it lists one (not an
    empty or `-1` value, which hides them: `fedscape.core.gpus.visible_entries`), else SLURM's of a job given a GPU
    (SLURM_JOB_GPUS, SLURM_STEP_GPUS: their indices; SLURM_GPUS_ON_NODE: their count); None where none does."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None and visible_entries(value):
        return f"CUDA_VISIBLE_DEVICES={value}"
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            return f"{name}={value}"
    return None


def _warn_card_unused() -> None:
    """Warn, once per process, where `auto` falls back to the CPU while the job was given a card (`_given_card`): a
    CPU-only torch in a GPU job (or a driver torch cannot use) would compute for hours on the CPU, holding the card,
    with only the log's `computing on cpu` line to tell."""
    given = _given_card()
    if given is None or _WARNED:
        return
    _WARNED.append(given)
    log.warning("training.device: auto: %s gives this job a card, but torch %s (GPU build: %s) finds no CUDA device, "
                "so the job computes on the CPU, many times slower, while the card stays idle: install a CUDA build "
                "of torch (--sdm conda uses envs/torch.yaml for the GPU rules) or check the driver "
                "(nvidia-smi), or set training.device: cpu so that the jobs ask for no card", given,
                torch.__version__, torch.version.cuda or getattr(torch.version, "hip", None) or "none, CPU only")


def _claim(cards: int, claim_dir, card: int | None, poll: float) -> CardClaim:
    """A claim on card `card` (None: the one with the fewest claims), once one is below the run's limit per card, or,
    where the claims cannot be written, that card (None: cuda:0) unclaimed: the claims spread jobs, and a job runs
    without one."""
    limit = card_limit()  # a bad value fails the job here, before it loads anything
    try:
        return claim_card(cards, claim_dir, card_uuids(cards), card=card, limit=limit, poll=poll)
    except OSError as exc:
        chosen = 0 if card is None else card
        log.warning("could not claim a card in %s (%s): taking cuda:%d unclaimed", claim_dir, exc, chosen)
        return CardClaim.unheld(chosen)


def _made_current(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def card_uuids(cards: int) -> list[str]:
    """What identifies each of the `cards` visible CUDA devices machine-wide (`card_uuid`)."""
    return [card_uuid(card) for card in range(cards)]


def card_uuid(card: int) -> str:
    """What identifies visible CUDA device `card` machine-wide: its UUID (an index depends on CUDA_VISIBLE_DEVICES),
    else its index."""
    try:
        return str(torch.cuda.get_device_properties(card).uuid)
    except (AttributeError, RuntimeError):  # a torch without the property, a driver that does not say
        return str(card)


def use_threads(threads: int | None) -> None:
    """Cap torch's CPU threads at the job's Snakemake `threads`.

    Parallel jobs that each use every core oversubscribe them (small models slow down many times over).
    """
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))


def precision_used(precision: str, device: torch.device | str) -> str:
    """The precision a job asking for `precision` computes in on `device`: TF32 exists on CUDA cards of compute
    capability 8.0 and later (Ampere) only, so a CPU or an older card (V100: 7.0, T4: 7.5) computes `tf32` in fp32;
    fp32 and bf16 are what they say everywhere (bf16 by autocast, on a CPU too)."""
    check_precision(precision)
    if precision == "tf32" and torch.device(device).type != "cuda":
        return "fp32"
    # (without CUDA there is no card to ask: the job fails on its first CUDA tensor anyway)
    if precision == "tf32" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] < 8:
        return "fp32"
    return precision


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    # The legacy switches: once torch's newer `fp32_precision` API is used, reading these raises (a mix of the two
    # APIs), and torch and user code still read them.
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def use_precision(precision: str, device: torch.device | str) -> Iterator[str]:
    """Compute the float32 work inside in `precision` on `device`; yields the precision used (`precision_used`).

    - fp32: TF32 off for matmuls and cuDNN convolutions. PyTorch's own default runs cuDNN convolutions in TF32
      (10-bit mantissa) on Ampere and later: vectorised and sequential CUDA rounds then differed by 1.3e-2
      instead of ~1e-7, so fp32 must be set, not assumed.
    - tf32: TF32 on for both (CUDA only).
    - bf16: forward passes under bf16 autocast (the losses and reductions autocast keeps in float32), TF32 off for
      the rest; parameters, gradients and optimiser state stay float32.

    float64 work is unaffected by all three. The switches are restored on exit.

    On CUDA, cuDNN's benchmark mode is on inside: fedscape's GPU work repeats a few fixed shapes many times (a
    run's local steps, a surface's grid points, a Hessian's products), and the mode times cuDNN's algorithms for
    each shape once and keeps the fastest, within the precision set here (it never turns TF32 on). PyTorch's
    default heuristic choice can be several times slower for a shape (the plain-torch references of the GPU
    profile in ../shared/gpu ran with the mode on). The choice may differ between processes, so CUDA results are
    reproducible to rounding, not bit for bit (CPU results are unaffected).
    """
    used = precision_used(precision, device)
    device_type = torch.device(device).type
    with _switches(used, device_type):
        # No cast cache: autocast keeps the bf16 copy of a weight until its region ends, and a region around a whole
        # run would train on the first copy forever (the weights are updated in place between forward passes).
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=used == "bf16", cache_enabled=False):
            yield used


@contextlib.contextmanager
def _switches(used: str, device_type: str) -> Iterator[None]:
    """The global switches `use_precision` sets for precision `used` on a device of `device_type` (TF32, cuDNN's
    benchmark mode), restored on exit; `describe_compute` reads what is in effect under them."""
    saved, saved_benchmark = _tf32(), torch.backends.cudnn.benchmark
    _set_tf32(used == "tf32", used == "tf32")
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        _set_tf32(*saved)
        torch.backends.cudnn.benchmark = saved_benchmark


def device_name(device: torch.device | str) -> str:
    """A readable name of the training device: the GPU model, or the CPU's processor/machine."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def describe_compute(device: torch.device, precision: str) -> dict[str, str | bool]:
    """What a job records of where it computed: the device, its name, and the precision asked for and used; on a
    card also its UUID (`device_uuid`), which names it machine-wide where the index is the job's own (cuda:0 of a
    SLURM job, or of CUDA_VISIBLE_DEVICES=2, is the machine's third card).

    Also what decides whether its numbers repeat bit for bit: the torch that computed them (`torch`: an attempt of a
    job resumed after an upgrade computed by another torch than the one that finished it), cuDNN's benchmark mode
    (`cudnn_benchmark`) and torch's deterministic algorithms (`deterministic_algorithms`), read under the switches
    `use_precision` sets for the job's work, so that they are what was in effect there, wherever this is called.
    (The version as a plain str: torch's own TorchVersion is no type that a part saved with the record, loaded with
    `weights_only`, may hold.)"""
    device = torch.device(device)
    used = precision_used(precision, device)
    with _switches(used, device.type):
        in_effect = {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    compute = {"device": str(device), "device_name": device_name(device), "precision": precision,
               "precision_used": used, "torch": str(torch.__version__), **in_effect}
    if device.type == "cuda" and torch.cuda.is_available():
        compute["device_uuid"] = card_uuid(torch.cuda.current_device() if device.index is None else device.index)
    return compute


def log_compute(compute: dict[str, str | bool]) -> None:
    """One log line of `describe_compute`, so every job's log says where and how precisely it computed; the job's
    record (fedscape.core.manifest) gets it too."""
    note(compute=compute)
    asked = "" if compute["precision"] == compute["precision_used"] else f" (asked {compute['precision']})"
    log.info("computing on %s [%s] in %s%s", compute["device"], compute["device_name"], compute["precision_used"],
             asked)


def job_precision(precision_of: Callable[[dict], str]) -> Callable[[Callable], Callable]:
    """Decorate a stage function `f(settings, ...)` to run in `use_precision(precision_of(settings), device)` on the
    settings' `device`, after logging both (`log_compute`). The precision is read and checked first: settings that
    fail there (an unknown precision) fail before an `auto` job waits for a card (`resolve_device`)."""
    def decorate(stage: Callable) -> Callable:
        @functools.wraps(stage)
        def run(settings: dict, *args, **kwargs):
            precision = precision_of(settings)
            check_precision(precision)
            device = resolve_device(settings["device"])
            log_compute(describe_compute(device, precision))
            with use_precision(precision, device):
                return stage(settings, *args, **kwargs)
        return run
    return decorate


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
