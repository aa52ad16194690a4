"""A local GPU job waits for a card below its workflow's limit per card (claims of other workflows' jobs fill it), the
limit reaching the jobs from the Snakefile in the environment; and the driver's GPUs are counted where /proc lists
none (containers, WSL2)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedscape.core import gpus as gpus_mod
from fedscape.core.gpus import (
    CARD_LIMIT_ENV,
    card_limit,
    card_loads,
    claim_card,
    driver_gpus,
    export_card_limit,
    jobs_per_card,
)
from fedscape.models import device as device_mod
from fedscape.plan import resources as resources_mod

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.05  # seconds between a waiting job's looks at the claims
WAITED = 10  # seconds after which a claimant that never began to wait, or never ended its wait, fails its test


class Claimant(threading.Thread):
    """A job's claim made in a thread (flock conflicts between open files of one process as between processes)."""

    def __init__(self, claim):
        super().__init__(daemon=True)
        self.claim, self.got, self.at = claim, None, None

    def run(self):
        self.got = self.claim()
        self.at = time.monotonic()


def started(claim) -> Claimant:
    thread = Claimant(claim)
    thread.start()
    return thread


class Waits:
    """The claims' sleep between two looks at the cards, held by the test: `begun` is set once a claim has found no
    card it may take (with `until()` true then), and it looks again only after `resume()`, so that a test knows that
    its claimant waits, and frees a card before the claimant's next look, without guessing how long either takes."""

    def __init__(self, monkeypatch, until=lambda: True):
        self.begun, self.resumed, self.until = threading.Event(), threading.Event(), until
        monkeypatch.setattr(gpus_mod, "time", SimpleNamespace(monotonic=time.monotonic, sleep=self.sleep))

    def sleep(self, seconds):
        if self.until():
            self.begun.set()
            self.resumed.wait(WAITED)
        time.sleep(seconds)

    def resume(self):
        self.resumed.set()


def never_waiting(monkeypatch) -> None:
    """A claim that would wait fails instead: its first sleep until the next look raises."""
    def sleep(seconds):
        raise AssertionError(f"the claim waited (a poll of {seconds} s)")

    monkeypatch.setattr(gpus_mod, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))


def test_a_second_claimant_waits_until_the_first_releases_and_holds_no_lock_meanwhile(tmp_path, monkeypatch):
    # Prepare: two cards, one job per card allowed; another workflow's jobs hold both
    names = ["GPU-a", "GPU-b"]
    first = [claim_card(2, tmp_path, names, limit=1) for _ in range(2)]
    waits = Waits(monkeypatch)

    # Execute: a job of this workflow asks for a card, and while it waits a card is freed and taken by another job,
    # then freed again
    waiter = started(lambda: claim_card(2, tmp_path, names, limit=1, poll=POLL))
    still_waiting = waits.begun.wait(WAITED)
    first[1].release()
    other = claim_card(2, tmp_path, names, card=1)  # must not block: the waiter holds no machine-wide lock
    other.release()
    released = time.monotonic()
    waits.resume()
    waiter.join(timeout=WAITED)

    # Assert: no card was shared beyond the limit; the waiter took the freed card once it was free
    assert [c.card for c in first] == [0, 1] and still_waiting
    assert not waiter.is_alive() and waiter.got.held and waiter.got.card == 1 and waiter.at >= released
    assert card_loads(2, tmp_path, names) == [1, 1]
    waiter.got.release()
    first[0].release()


@pytest.mark.parametrize(("limit", "held", "want"), [
    (None, [0], 0),     # no limit (a job outside a local run, a cluster job): the only card is shared at once
    (2, [0], 0),        # --resources gpu=2 on one card: two jobs fit
    (1, [0], 1),        # one per card: the free card, without waiting
    (1, [1], 0),
])
def test_a_card_below_the_limit_is_taken_at_once(limit, held, want, tmp_path, monkeypatch):
    # Prepare: as many cards as the case needs, the held ones claimed by another job; a claim that waits fails
    cards = max(max(held), want) + 1
    holders = [claim_card(cards, tmp_path, card=c) for c in held]
    never_waiting(monkeypatch)

    # Execute
    got = claim_card(cards, tmp_path, limit=limit, poll=POLL)

    # Assert: the card, taken without a wait
    assert got.card == want
    for claim in [got, *holders]:
        claim.release()


def test_a_job_told_its_card_waits_for_that_card(tmp_path, monkeypatch):
    # Prepare: two cards, another workflow's job on the second
    holder = claim_card(2, tmp_path, card=1)
    waits = Waits(monkeypatch)

    # Execute: a job told cuda:1
    waiter = started(lambda: claim_card(2, tmp_path, card=1, limit=1, poll=POLL))
    still_waiting = waits.begun.wait(WAITED)
    released = time.monotonic()
    holder.release()
    waits.resume()
    waiter.join(timeout=WAITED)

    # Assert: it waited, although cuda:0 was free, and then took its own card
    assert still_waiting and waiter.at >= released and waiter.got.card == 1
    waiter.got.release()


def test_a_crashed_job_s_claim_ends_the_wait(tmp_path, caplog, monkeypatch):
    # Prepare: another workflow's job (a process) holds the only card, then dies without releasing it
    code = ("import os, sys, time; from pathlib import Path; from fedscape.core.gpus import claim_card; "
            f"c = claim_card(1, Path({str(tmp_path)!r}), ['GPU-x']); print('held', flush=True); "
            "sys.stdin.readline(); os._exit(9)")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    caplog.set_level(logging.INFO, logger=gpus_mod.__name__)
    waits = Waits(monkeypatch, until=lambda: "(waiting " in caplog.text)  # once it has said so again

    # Execute: this workflow's job waits; the other job crashes
    waiter = started(lambda: claim_card(1, tmp_path, ["GPU-x"], limit=1, poll=POLL, report_every=0.1))
    still_waiting = waits.begun.wait(WAITED)
    other.stdin.write("\n")
    other.stdin.flush()
    assert other.wait(timeout=30) == 9
    waits.resume()
    waiter.join(timeout=WAITED)

    # Assert: the wait ended with the crash; the log said why the job was idle (which card, its claims, whose),
    # and said it again while it waited
    assert still_waiting and waiter.got.held and waiter.got.card == 0
    text = caplog.text
    assert "waiting for a card" in text and "cuda:0 (GPU-x): 1" in text and "limit of 1 GPU job(s) per card" in text
    assert "another workflow's or user's" in text and "--resources gpu=N" in text
    assert "(waiting " in text  # the periodic line
    assert "took cuda:0 after waiting" in text
    waiter.got.release()


@pytest.mark.parametrize(("gpu_limit", "cards", "want"), [
    (1, 1, "1"),      # the default on one card
    (4, 4, "1"),      # the default on four cards: one job each
    (4, 1, "4"),      # --resources gpu=4 on one card (or every job on training.device's card)
    (3, 2, "2"),      # rounded up: the workflow's own three jobs always find a card
    (5, 4, "2"),
    (0, 2, None),     # no GPU job runs
    (2, 0, None),     # no card (a CPU-only machine, training.device: cpu): nothing to wait for
    (None, 1, None),  # a cluster run: SLURM gives each job its card
])
def test_the_snakefile_tells_its_jobs_the_limit_per_card(gpu_limit, cards, want):
    # Prepare: a value the user's shell left, which a run must not pass on where it sets no limit
    environ = {CARD_LIMIT_ENV: "7"}

    # Execute
    export_card_limit(gpu_limit, cards, environ)

    # Assert
    assert environ.get(CARD_LIMIT_ENV) == want
    assert card_limit(environ) == (None if want is None else int(want)) == jobs_per_card(gpu_limit, cards)


@pytest.mark.parametrize(("local_exec", "gpu_limit", "visible", "want"), [
    (True, 1, 1, "1"),      # --cores alone: one GPU job per card
    (True, 2, 1, "2"),      # --jobs beside --cores with --resources gpu=2, as onstart sees it: executing locally
    (True, 4, 2, "2"),
    (False, 2, 1, None),    # a cluster run (or one planned as such, while the Snakefile is read): none on the nodes
    (True, None, 1, None),  # --jobs beside --cores without --resources gpu=N: refused where a GPU job is to run
    (True, 1, 0, None),     # a CPU-only machine: nothing to wait for
])
def test_a_run_executing_locally_tells_its_jobs_the_limit_per_card(monkeypatch, local_exec, gpu_limit, visible, want):
    # Prepare: this machine's cards, and a value the user's shell left
    monkeypatch.setattr(resources_mod, "visible_gpus", lambda: visible)
    monkeypatch.setattr(resources_mod, "no_card_known", lambda: True)
    environ = {CARD_LIMIT_ENV: "7"}

    # Execute
    resources_mod.export_local_card_limit({"training": {"device": "auto"}}, local_exec, gpu_limit, environ)

    # Assert: a local run's jobs wait for other workflows' jobs on a busy card, however Snakemake planned it
    assert environ.get(CARD_LIMIT_ENV) == want


def test_the_snakefile_tells_the_jobs_again_once_it_knows_that_it_executes_locally():
    # Prepare: the Snakefile's `onstart` (called once Snakemake executes, before any job)
    onstart = (ROOT / "Snakefile").read_text().split("\nonstart:\n", 1)[1].split("\n\n", 1)[0]

    # Assert: the limit follows where the jobs execute, not how the run was planned (`--jobs` beside `--cores`)
    assert re.search(r"export_local_card_limit\(\s*config, workflow\.local_exec, "
                     r"workflow\.global_resources\.get\(\"gpu\"\)\.value\s*\)", onstart)


def test_a_claim_touches_its_slot_file_so_that_a_tmp_cleaner_spares_it(tmp_path):
    # Prepare: a slot file and the choose.lock left by an earlier job, dated as a /tmp cleaner would delete them
    # (systemd-tmpfiles: 10 d)
    earlier = claim_card(1, tmp_path, ["GPU-0"])
    earlier.release()
    for path in (earlier.path, tmp_path / "choose.lock"):
        os.utime(path, (0, 0))
    before = time.time()

    # Execute: the next job claims the card, reusing the slot file
    claim = claim_card(1, tmp_path, ["GPU-0"])

    # Assert: their age counts from the claim (the file system's clock may trail time.time() by a tick)
    assert claim.path == earlier.path
    for path in (claim.path, tmp_path / "choose.lock"):
        stat = path.stat()
        assert min(stat.st_mtime, stat.st_atime) > before - 5, path.name
    claim.release()


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_a_bad_limit_per_card_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=f"{CARD_LIMIT_ENV}=.*--resources gpu=N"):
        card_limit({CARD_LIMIT_ENV: value})


def _one_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"GPU-{i}"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(device_mod, "_CLAIM", None)


@pytest.mark.parametrize("name", ["auto", "cuda:0", "cuda"])
def test_a_local_job_waits_for_its_card_and_one_outside_a_run_does_not(name, tmp_path, monkeypatch):
    # Prepare: one card as torch reports it, another workflow's job on it
    _one_card(monkeypatch)
    holder = claim_card(1, tmp_path, ["GPU-0"])

    # Execute: a job outside a local run (no limit: a cluster job, one run by hand), then one of a local run
    monkeypatch.delenv(CARD_LIMIT_ENV, raising=False)
    alone = device_mod.resolve_device(name, claim_dir=tmp_path)
    shared = card_loads(1, tmp_path, ["GPU-0"])
    device_mod._CLAIM.release()
    device_mod._CLAIM = None
    monkeypatch.setenv(CARD_LIMIT_ENV, "1")
    waits = Waits(monkeypatch)
    waiter = started(lambda: device_mod.resolve_device(name, claim_dir=tmp_path, poll=POLL))
    still_waiting = waits.begun.wait(WAITED)
    released = time.monotonic()
    holder.release()
    waits.resume()
    waiter.join(timeout=WAITED)

    # Assert: the first shared the card at once; the local job waited for it, then held it alone
    want = "cuda:0" if name == "auto" else name
    assert str(alone) == want and shared == [2]
    assert still_waiting and waiter.at >= released and str(waiter.got) == want
    assert card_loads(1, tmp_path, ["GPU-0"]) == [1]
    device_mod._CLAIM.release()


def test_a_bad_limit_fails_the_job_before_it_claims(tmp_path, monkeypatch):
    _one_card(monkeypatch)
    monkeypatch.setenv(CARD_LIMIT_ENV, "0")

    with pytest.raises(ValueError, match=CARD_LIMIT_ENV):
        device_mod.resolve_device("auto", claim_dir=tmp_path)
    assert device_mod._CLAIM is None and card_loads(1, tmp_path, ["GPU-0"]) == [0]


def _fake_smi(path: Path, gpus: int) -> Path:
    """An nvidia-smi at `path` that lists `gpus` GPUs as `nvidia-smi -L` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"echo 'GPU {i}: NVIDIA Fake (UUID: GPU-{i}abc)'\n" for i in range(gpus))
    path.write_text(f"#!/bin/sh\n{lines}")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("listed", "smi_on_path", "smi_in_wsl", "want"), [
    (3, 5, None, 3),        # the driver's /proc listing decides where it lists GPUs
    (0, 2, None, 2),        # an empty listing (a container): nvidia-smi on PATH
    (None, 2, None, 2),     # no listing at all
    (0, None, 1, 1),        # WSL2: empty listing, nvidia-smi only in /usr/lib/wsl/lib
    (None, None, 4, 4),
    (0, None, None, None),  # nothing answers: unknown, not 0 (a CUDA_VISIBLE_DEVICES then counts as given)
])
def test_driver_gpus_asks_nvidia_smi_where_proc_lists_none(listed, smi_on_path, smi_in_wsl, want, tmp_path,
                                                          monkeypatch):
    # Prepare: a /proc listing of `listed` GPUs (None: absent), an nvidia-smi on PATH and one where WSL2 puts it
    proc = tmp_path / "gpus"
    if listed is not None:
        proc.mkdir()
        for i in range(listed):
            (proc / f"0000:0{i + 1}:00.0").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi_on_path is not None:
        _fake_smi(bin_dir / "nvidia-smi", smi_on_path)
    wsl = tmp_path / "wsl" / "nvidia-smi"
    if smi_in_wsl is not None:
        _fake_smi(wsl, smi_in_wsl)
    monkeypatch.setenv("PATH", f"{bin_dir}:/bin:/usr/bin")
    monkeypatch.setattr(gpus_mod, "WSL_NVIDIA_SMI", wsl)
    if smi_on_path is None:  # the system's own nvidia-smi, where it has one, is not the fake machine's
        monkeypatch.setattr(gpus_mod.shutil, "which", lambda name, *a, **k: None)

    # Execute
    got = driver_gpus(proc)

    # Assert: and so a CUDA_VISIBLE_DEVICES of the first card leaves it visible (counted against 0 cards, none)
    assert got == want
    assert gpus_mod.visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}, proc) == 1
