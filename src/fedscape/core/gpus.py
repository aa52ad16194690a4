"""The GPUs of this machine as the scheduler sees them, without torch: how many are visible, and which card a job
takes when several are.

Snakemake schedules local jobs by cores alone unless a resource says otherwise: on a workstation, every GPU job that
has a core would start at once on the same card (14 Hessian jobs of 5.9 GB each on one 80 GB card ran out of memory).
The Snakefile therefore limits the `gpu` resource of a local run to the visible cards, and each GPU job claims the card
with the fewest fedscape jobs on it (`claim_card`): at most one job per card unless the user allows more with
`--resources gpu=N`. Claims name a card by what identifies it machine-wide (its UUID: `fedscape.models.device`), not
by its index, so two workflows that see different cards (CUDA_VISIBLE_DEVICES) count each other's jobs on the card
they share. A cluster places GPU jobs itself (each GPU rule's job asks it for a card:
`plan.resources.gpu_job_resources`, and SLURM sets CUDA_VISIBLE_DEVICES), so the limit does not apply there, and a
job's claim on its one card changes nothing.

The `gpu` resource bounds one workflow's jobs only: two workflows on one workstation (two `snakemake --cores N`, or
two users) each start their GPU jobs, and on one card both would run on it at once, out of its memory together. So a
local GPU job waits for a card whose live claims are below the limit of its workflow (`claim_card`'s `limit`):
several GPU jobs at once never share a card unless the user said they fit.

- The limit is what the workflow allows per card that its jobs use, ceil(gpu / cards) (`jobs_per_card`): `gpu` is the
  run's `gpu` global resource (one per card by default, N with `--resources gpu=N`), the cards those the jobs take
  (the visible ones under `training.device: auto`, the one named otherwise: `plan.resources.local_gpu_slots`). The
  Snakefile's main process exports it as CARD_LIMIT_ENV (`export_card_limit`), and its local jobs inherit it
  (Snakemake runs a `script:` job as a subprocess of the main process with a copy of its os.environ, and spawns a
  `run:` job from it), where `resolve_device` reads it (`card_limit`). A workflow's own jobs never fill every card
  (ceil(gpu / cards) * cards >= gpu), so a job that waits waits for another workflow's or user's jobs.
- Where the variable is absent a job never waits, as before the limit: a job run outside Snakemake, and a cluster job,
  which SLURM gives its card (the Snakefile removes the variable in a cluster run's main process, so that sbatch,
  which exports the submitting environment, cannot carry one from the user's shell to the nodes). A local run given
  `--jobs` beside `--cores` is planned as a cluster run too (`plan.resources.execution_problems`): its jobs wait
  only where `--resources gpu=N` sets the limit, which the Snakefile's `onstart` then exports
  (`plan.resources.export_local_card_limit`).
- The wait holds no lock: the choice is made under the machine-wide choose.lock, which is let go between polls
  (every POLL_SECONDS), so that other jobs claim and release meanwhile. The job logs when it starts waiting and every
  REPORT_SECONDS after (the cards, their claims, the limit), so a user sees why it is idle. Jobs are not queued in
  order: a freed card goes to whichever waiting job polls first.
- A job told its card (`training.device: cuda:<i>`) waits for that card.
- A claim is an flock, which the kernel drops when its process ends, killed or crashed, so no wait outlives the job it
  waits for (a child forked by the job, which inherits the open file, holds it until it ends too).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO

# Where the NVIDIA driver lists one directory per GPU of the machine (all of them, not only the visible ones).
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
# Where the driver lists each GPU's MIG GPU instances, as capabilities (NVIDIA's MIG user guide, "Device Nodes and
# Capabilities"): capabilities/gpu<minor>/mig/gi<id>/ for every GPU instance made on GPU <minor>.
NVIDIA_CAPABILITIES = Path("/proc/driver/nvidia/capabilities")
# Where WSL2 puts nvidia-smi (with the driver's libraries, not on every PATH); its /proc lists no GPU.
WSL_NVIDIA_SMI = Path("/usr/lib/wsl/lib/nvidia-smi")
# Machine-wide, so that two users' or two workflows' jobs on one workstation see each other's claims: a fixed path,
# not tempfile's, which follows TMPDIR (Snakemake sets each job's TMPDIR to its `tmpdir` resource, and a user may set
# another): jobs with different TMPDIRs would claim in different folders and never see each other.
CLAIM_DIR = Path("/tmp/fedscape-gpu-claims")
# How many GPU jobs a local run allows on one card, set by the Snakefile for its jobs (`export_card_limit`).
CARD_LIMIT_ENV = "FEDSCAPE_GPU_JOBS_PER_CARD"
# How often a job waiting for a card looks again, and how often it says that it still waits (seconds).
POLL_SECONDS = 5.0
REPORT_SECONDS = 300.0
log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # the MIG warnings already given (the planner asks more than once)


def visible_entries(value: str, cards: int | None = None) -> list[str]:
    """The entries of a CUDA_VISIBLE_DEVICES value that CUDA reads on a machine with `cards` GPUs (None: not known).

    CUDA reads the comma-separated entries (indices, `GPU-<uuid>` or `MIG-<uuid>`) up to the first invalid one, an
    index the machine does not have among them; an empty value or one starting at `-1` hides every device.
    """
    entries = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        if entry.isdigit() and cards is not None and int(entry) >= cards:
            break
        entries.append(entry)
    return entries


def parse_visible_devices(value: str, cards: int | None = None) -> int:
    """The number of devices a CUDA_VISIBLE_DEVICES value leaves visible on a machine with `cards` GPUs (None: not
    known): its entries (`visible_entries`), and one where they name a MIG instance.

    A CUDA process enumerates a single MIG device however many the variable lists (NVIDIA's MIG user guide, "CUDA
    Device Enumeration": "CUDA can only enumerate a single compute instance"), so every job of a list of N instances
    would see one device, the same one: counted as N, N jobs would share that one slice.
    """
    entries = visible_entries(value, cards)
    return 1 if any(entry.startswith("MIG-") for entry in entries) else len(entries)


def visible_gpus(environ: dict[str, str] | None = None, proc: Path = NVIDIA_PROC,
                 capabilities: Path = NVIDIA_CAPABILITIES) -> int:
    """How many CUDA devices a job started from here would see: those CUDA_VISIBLE_DEVICES leaves where it is set,
    else the driver's GPUs (/proc, else `nvidia-smi -L`), 0 on a machine without an NVIDIA driver. Without
    CUDA_VISIBLE_DEVICES, the GPUs in MIG mode count as one device together (`cuda_devices`).

    It must not import torch: it runs while Snakemake plans, and on a login node.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        # An index past the machine's cards ends the list for CUDA: counted, it would start two jobs on one card.
        value = environ["CUDA_VISIBLE_DEVICES"]
        cards = driver_gpus(proc)
        mig = [entry for entry in visible_entries(value, cards) if entry.startswith("MIG-")]
        if len(mig) > 1:
            _warn_mig(f"CUDA_VISIBLE_DEVICES lists {len(mig)} MIG instances", f"{', '.join(mig[1:])} stay unused")
        return parse_visible_devices(value, cards)
    return cuda_devices(driver_gpus(proc) or 0, mig_gpus(capabilities))


def cuda_devices(gpus: int, mig: int) -> int:
    """The devices a CUDA process enumerates on a machine of `gpus` GPUs, `mig` of them in MIG mode with instances:
    the others, and one MIG instance however many there are (NVIDIA's MIG user guide, "CUDA Device Enumeration": a
    CUDA process "can only enumerate a single MIG device"). Counted as `gpus`, the jobs of the MIG GPUs would all
    start on that one instance."""
    if mig <= 0:
        return gpus
    _warn_mig(f"{mig} GPU(s) of this machine are in MIG mode", "their other instances stay unused")
    return max(gpus - mig, 0) + 1


def _warn_mig(what: str, unused: str) -> None:
    """Warn once per process that `what` counts as one GPU slot, since a CUDA process enumerates one MIG instance."""
    if what not in _WARNED:
        _WARNED.add(what)
        log.warning("%s, but a CUDA process enumerates only one MIG instance (NVIDIA's MIG user guide): fedscape "
                    "counts one GPU slot, and %s; to use each, run one job per instance with CUDA_VISIBLE_DEVICES set "
                    "to it (as SLURM does)", what, unused)


def mig_gpus(capabilities: Path = NVIDIA_CAPABILITIES) -> int:
    """How many GPUs of this machine hold MIG GPU instances (capabilities/gpu<minor>/mig/gi<id>/); 0 where the driver
    lists none, or no capabilities (a machine without MIG, a container that hides them)."""
    try:
        return sum(1 for gpu in capabilities.glob("gpu*") if any((gpu / "mig").glob("gi*")))
    except OSError:
        return 0


def driver_gpus(proc: Path = NVIDIA_PROC) -> int | None:
    """The GPUs of this machine as its NVIDIA driver lists them (/proc, else `nvidia-smi -L`); None where neither
    answers.

    Some containers and WSL2 have a /proc listing without the GPUs (or none): there nvidia-smi answers, found on PATH or
    where WSL2 puts it (WSL_NVIDIA_SMI). An empty listing without nvidia-smi is no answer (None), not 0 GPUs: counted
    as 0, every index of a CUDA_VISIBLE_DEVICES would be past the cards (`visible_entries`).
    """
    with contextlib.suppress(OSError):
        listed = sum(1 for entry in proc.iterdir() if entry.is_dir())
        if listed:
            return listed
    smi = shutil.which("nvidia-smi")
    if smi is None and os.access(WSL_NVIDIA_SMI, os.X_OK):
        smi = str(WSL_NVIDIA_SMI)
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


# The device files through which CUDA reaches a card: the NVIDIA driver's control device (in a container given cards
# too), WSL2's paravirtualised GPU, and ROCm's kernel driver (a ROCm torch calls its cards cuda). Without any of them
# no job can find a card, whatever the driver's listing says.
CUDA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def no_card_known(environ: Mapping[str, str] | None = None, device_files: tuple[str, ...] = CUDA_DEVICE_FILES) -> bool:
    """Whether this machine's count of no visible card (`visible_gpus` 0) is known to be none: CUDA_VISIBLE_DEVICES
    says which cards the jobs see, or no device file CUDA could reach a card through exists (`CUDA_DEVICE_FILES`), or
    the driver answers (`driver_gpus`). Where a device file exists and no driver answers (a container that hides the
    driver's listing and nvidia-smi, a ROCm machine), 0 stands for "no answer", and CUDA may still find a card."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ or not any(Path(path).exists() for path in device_files):
        return True
    return driver_gpus() is not None


def jobs_per_card(gpu_limit: int | None, cards: int) -> int | None:
    """How many GPU jobs at once a local run whose `gpu` resource is `gpu_limit` allows on each of the `cards` cards its
    jobs use: ceil(gpu_limit / cards), so that the workflow's own jobs always find a card; None (no limit) without a
    card or a `gpu` limit."""
    if gpu_limit is None or gpu_limit < 1 or cards < 1:
        return None
    return -(-int(gpu_limit) // cards)


def export_card_limit(gpu_limit: int | None, cards: int, environ: MutableMapping[str, str] | None = None) -> None:
    """Tell the jobs that a process starts from here how many GPU jobs one card takes (`jobs_per_card`), in
    CARD_LIMIT_ENV, or that none waits (the variable removed, also one the user's shell set)."""
    environ = os.environ if environ is None else environ
    limit = jobs_per_card(gpu_limit, cards)
    if limit is None:
        environ.pop(CARD_LIMIT_ENV, None)
    else:
        environ[CARD_LIMIT_ENV] = str(limit)


def card_limit(environ: Mapping[str, str] | None = None) -> int | None:
    """The GPU jobs one card takes as this job's workflow set it (`export_card_limit`); None where it set none."""
    environ = os.environ if environ is None else environ
    value = environ.get(CARD_LIMIT_ENV)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{CARD_LIMIT_ENV}={value!r}: the GPU jobs allowed on one card must be a whole number of at "
                         f"least 1; the Snakefile sets it from --resources gpu=N (use that), or unset it so that "
                         f"the job waits for no card")
    return int(value)


class CardClaim:
    """A job's claim on one card: an exclusive lock on a slot file of that card, held until `release` or until the
    process ends (the kernel drops the lock of a killed job, so no claim outlives its job)."""

    def __init__(self, card: int, handle: IO[bytes] | None, path: Path | None):
        self.card, self._handle, self.path = card, handle, path

    @classmethod
    def unheld(cls, card: int) -> CardClaim:
        """A job's card taken without a claim (the claims could not be written): other jobs do not count it."""
        return cls(card, None, None)

    @property
    def held(self) -> bool:
        return self._handle is not None and not self._handle.closed

    def release(self) -> None:
        if self.held:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _open_lock(path: Path) -> IO[bytes]:
    try:
        # an existing file without O_CREAT: in the sticky, world-writable claim folder Linux refuses O_CREAT on
        # another user's file where fs.protected_regular is set (systemd's default), though it may be opened
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):  # past the umask, so that other users' jobs can lock it too
            os.chmod(path, 0o666)
    return os.fdopen(fd, "r+b")


def _held(path: Path) -> bool:
    """Whether another process holds the slot file `path` (a probe: a free slot is locked and released at once)."""
    if not path.exists():
        return False
    with _open_lock(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _slot_prefix(name: str) -> str:
    """The start of the slot files' names of the card named `name` (a UUID, or an index)."""
    return "card" + re.sub(r"[^A-Za-z0-9-]", "_", name)


def _names(cards: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [str(card) for card in range(cards)]
    if len(names) != cards:
        raise ValueError(f"{len(names)} card names for {cards} cards")
    return [str(name) for name in names]


def card_loads(cards: int, claim_dir: Path = CLAIM_DIR, names: Sequence[str] | None = None) -> list[int]:
    """How many live claims each of `cards` cards has; `names`: what identifies each card machine-wide (its UUID),
    by default its index."""
    return [sum(_held(p) for p in claim_dir.glob(f"{_slot_prefix(name)}.slot*")) for name in _names(cards, names)]


def claim_card(cards: int, claim_dir: Path = CLAIM_DIR, names: Sequence[str] | None = None,
               card: int | None = None, limit: int | None = None, poll: float = POLL_SECONDS,
               report_every: float = REPORT_SECONDS) -> CardClaim:
    """Claim the card (of `cards` visible ones, named `names` machine-wide as in `card_loads`) with the fewest live
    claims, the lowest index among equals, or card `card` where given (a job told its card: it counts for the jobs
    that choose); the claim's `card` is the card's index among the visible ones.

    With a `limit`, only a card with fewer than `limit` live claims is taken: where none has, the job waits, polling
    every `poll` seconds and saying so every `report_every` (the module's docstring). Without one (a job outside a
    local Snakemake run) jobs are not refused: the card is shared.

    Each choice is made under one machine-wide lock, so two jobs starting together never both count the same free
    card; the lock is let go while the job waits.
    """
    if cards < 1:
        raise ValueError(f"claim_card needs at least one card, got {cards}")
    if card is not None and not 0 <= card < cards:
        raise ValueError(f"card {card} is not one of the {cards} visible")
    names = _names(cards, names)
    candidates = range(cards) if card is None else [card]
    started = reported = None
    while True:
        claim_dir.mkdir(parents=True, exist_ok=True)  # each time: a /tmp cleaner may remove it while the job waits
        with contextlib.suppress(OSError):
            claim_dir.chmod(0o1777)
        with _open_lock(claim_dir / "choose.lock") as chooser:
            fcntl.flock(chooser, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):  # as a slot file (`_take_slot`): a /tmp cleaner spares a recent one
                os.utime(chooser.fileno())
            loads = None if card is not None and limit is None else card_loads(cards, claim_dir, names)
            free = [c for c in candidates if limit is None or loads[c] < limit]
            if free:
                chosen = min(free, key=lambda c: (0 if loads is None else loads[c], c))
                if started is not None:
                    log.info("took cuda:%d after waiting %.0f s for a card", chosen, time.monotonic() - started)
                return _take_slot(chosen, names[chosen], claim_dir)
        now = time.monotonic()
        if started is None or now - reported >= report_every:
            _log_wait(candidates, names, loads, limit, claim_dir, card is not None,
                      None if started is None else now - started)
            started = now if started is None else started
            reported = now
        time.sleep(poll)


def _take_slot(card: int, name: str, claim_dir: Path) -> CardClaim:
    """Lock the first free slot file of card `card` (named `name`); the caller holds the choose.lock."""
    slot = 0
    while True:
        path = claim_dir / f"{_slot_prefix(name)}.slot{slot}"
        handle = _open_lock(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            slot += 1
            continue
        # A slot file is made once and then only opened and locked, so its times would stay those of its making: a
        # /tmp cleaner (systemd-tmpfiles' `q /tmp ... 10d`) would delete a held one, and the next job take its card
        # at once. Touched, its age counts from this claim.
        with contextlib.suppress(OSError):
            os.utime(handle.fileno())
        return CardClaim(card, handle, path)


def _log_wait(candidates: Sequence[int], names: Sequence[str], loads: Sequence[int], limit: int, claim_dir: Path,
              told: bool, waited: float | None) -> None:
    """Say why a job is idle: the cards it may take are full, with whose claims, and what lets it start."""
    held = ", ".join(f"cuda:{c}{'' if names[c] == str(c) else f' ({names[c]})'}: {loads[c]}" for c in candidates)
    what = "its card (training.device)" if told else "a card"
    since = "" if waited is None else f" (waiting {waited:.0f} s)"
    log.warning("waiting for %s%s: the cards it may take hold this workflow's limit of %d GPU job(s) per card or "
                "more (the fedscape jobs on each, from the claims in %s: %s). This workflow's own jobs never fill "
                "every card, so these are another workflow's or user's jobs on this machine; the job starts when one "
                "of them ends (a killed job's claim ends with it). Where the jobs fit together on a card, start the "
                "workflows with --resources gpu=N (N GPU jobs at once)", what, since, limit, claim_dir, held)
