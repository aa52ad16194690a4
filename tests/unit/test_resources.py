"""GPUs as a scheduled resource: how many cards are visible, which card a job claims, which rules ask for one, and
that the precision settings reach the jobs' settings only when they are not the default."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from snakemake.iocontainers import Namedlist

from fedscape.core import gpus as gpus_mod
from fedscape.core.config import ConfigError, load_schema
from fedscape.core.gpus import CLAIM_DIR, card_loads, claim_card, no_card_known, parse_visible_devices, visible_gpus
from fedscape.core.runs import build_runs
from fedscape.models import device as device_mod
from fedscape.plan import resources as resources_mod
from fedscape.plan.barriers import interpolation_pair, interpolation_settings
from fedscape.plan.hessian import hessian_inputs, hessian_job_settings, hessian_jobs, plane_inputs, shared_source
from fedscape.plan.init import init_settings
from fedscape.plan.landscape import chunk_settings, landscape_plans
from fedscape.plan.resources import (
    COPYING_RULES,
    DATA_RULES,
    GPU_RULES,
    RULE_NEEDS,
    by_init,
    by_input,
    computes_on_device,
    cpu_job_resources,
    execution_problems,
    gpu_job_resources,
    gpu_per_job,
    local_gpu_slots,
    memory_hint,
)
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config, check_execution

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 1), ("0,1", 2), ("3,1,2", 3), ("", 0), ("-1", 0), ("0,-1,1", 1), ("GPU-8f2e,GPU-11aa", 2),
    ("MIG-4b1c", 1), ("0,x,1", 1), (" 1 , 0 ", 2),
])
def test_cuda_visible_devices_counts_as_cuda_enumerates_it(value, expected):
    assert parse_visible_devices(value) == expected


def test_visible_gpus_reads_the_environment_first_then_the_driver(tmp_path, monkeypatch):
    # Prepare: a driver listing with three cards
    proc = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (proc / bus).mkdir(parents=True)

    # Execute / Assert
    assert visible_gpus({}, proc) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, proc) == 1  # a SLURM job sees the card it was given
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, proc) == 0
    # CUDA stops at an index the machine does not have: two jobs would otherwise start on the one card it shows
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3,0"}, proc) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,GPU-8d2f,1"}, proc) == 3
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(gpus_mod, "WSL_NVIDIA_SMI", tmp_path / "absent-smi")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path / "absent") == 2  # no driver listing: as given


@pytest.mark.parametrize("value", ["MIG-4b1c,MIG-77d0,MIG-9e2a", "MIG-4b1c,MIG-77d0"])
def test_a_list_of_mig_instances_is_one_slot_since_cuda_enumerates_one(value, tmp_path, caplog, monkeypatch):
    # Prepare: one physical card in MIG mode, several of its instances listed for the workflow
    monkeypatch.setattr(gpus_mod, "_WARNED", set())  # warned once per process
    proc = tmp_path / "gpus"
    (proc / "0000:07:00.0").mkdir(parents=True)
    unused = value.split(",")[1:]

    # Execute
    slots = local_gpu_slots({"training": {"device": "auto"}}, visible_gpus({"CUDA_VISIBLE_DEVICES": value}, proc))

    # Assert: each job would see one device, the same instance: one job at a time, and the log names the idle ones
    assert parse_visible_devices(value) == 1 and slots == 1
    assert "enumerates only one" in caplog.text and all(name in caplog.text for name in unused)


def _mig_machine(tmp_path: Path, instances: list[int]) -> tuple[Path, Path]:
    """A driver listing of len(instances) GPUs, GPU i holding instances[i] MIG GPU instances (0: not in MIG mode),
    as /proc/driver/nvidia lists them (gpus/<bus>/, capabilities/gpu<minor>/mig/gi<id>/)."""
    proc, capabilities = tmp_path / "gpus", tmp_path / "capabilities"
    for minor, count in enumerate(instances):
        (proc / f"0000:0{minor + 1}:00.0").mkdir(parents=True)
        (capabilities / f"gpu{minor}" / "mig").mkdir(parents=True)
        (capabilities / f"gpu{minor}" / "mig" / "config").touch()  # MIG-capable, whether or not in MIG mode
        for gi in range(count):
            (capabilities / f"gpu{minor}" / "mig" / f"gi{gi + 1}" / "ci0").mkdir(parents=True)
    return proc, capabilities


@pytest.mark.parametrize(("instances", "expected"), [
    ([0, 0], 2),         # no MIG: every GPU
    ([3, 0], 2),         # one GPU in MIG mode: its first instance, and the other GPU
    ([2, 7, 0, 0], 3),   # two in MIG mode count as one device together
    ([4, 4], 1),
])
def test_without_cuda_visible_devices_the_gpus_in_mig_mode_count_as_one(instances, expected, tmp_path, caplog,
                                                                       monkeypatch):
    # Prepare
    proc, capabilities = _mig_machine(tmp_path, instances)
    monkeypatch.setattr(gpus_mod, "_WARNED", set())  # warned once per process

    # Execute
    got = visible_gpus({}, proc, capabilities)

    # Assert: a CUDA process enumerates one MIG instance in all; counted as two, two jobs would share it
    assert got == expected
    assert ("enumerates only one MIG instance" in caplog.text) is any(instances)
    # a CUDA_VISIBLE_DEVICES still decides alone (SLURM's one instance per job)
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}, proc, capabilities) == 1


def test_the_card_claims_do_not_follow_tmpdir():
    # Snakemake gives each job a TMPDIR of its own `tmpdir` resource: claims there would miss other workflows' jobs
    code = "from fedscape.core.gpus import CLAIM_DIR; print(CLAIM_DIR)"

    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**__import__("os").environ, "TMPDIR": "/var/tmp"}).stdout.strip()

    assert got == str(CLAIM_DIR) == "/tmp/fedscape-gpu-claims"


def test_visible_gpus_is_zero_without_a_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(gpus_mod, "WSL_NVIDIA_SMI", tmp_path / "absent-smi")

    assert visible_gpus({}, tmp_path / "absent") == 0


def test_claims_spread_over_the_cards_and_end_with_their_holder(tmp_path):
    # Execute: five jobs on two cards
    claims = [claim_card(2, tmp_path) for _ in range(5)]

    # Assert: alternating cards, the lowest index first; a released claim frees its card for the next job
    assert [c.card for c in claims] == [0, 1, 0, 1, 0]
    assert card_loads(2, tmp_path) == [3, 2]
    claims[1].release()
    claims[3].release()
    assert card_loads(2, tmp_path) == [3, 0]
    assert claim_card(2, tmp_path).card == 1


def test_a_killed_job_leaves_no_claim(tmp_path):
    # Prepare: another process claims a card and dies without releasing it
    code = ("import os, sys; from fedscape.core.gpus import claim_card; "
            f"c = claim_card(1, __import__('pathlib').Path({str(tmp_path)!r})); print(c.card, flush=True); "
            "os._exit(9)")

    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    # Assert: it held card 0, and now nobody does
    assert out.stdout.strip() == "0"
    assert card_loads(1, tmp_path) == [0]


def test_claim_needs_a_card(tmp_path):
    with pytest.raises(ValueError, match="at least one card"):
        claim_card(0, tmp_path)


def test_claims_name_cards_by_uuid_so_workflows_that_see_other_cards_count_each_other(tmp_path):
    # Prepare: workflow A sees only the machine's second card (CUDA_VISIBLE_DEVICES=1: its cuda:0), workflow B all
    # three; A's job and B's first job hold a card each
    machine = ["GPU-a", "GPU-b", "GPU-c"]
    a = claim_card(1, tmp_path, ["GPU-b"])
    b1 = claim_card(3, tmp_path, machine)

    # Execute
    b2 = claim_card(3, tmp_path, machine)

    # Assert: B's second job takes the third card, not A's (which is B's cuda:1: by index it would look free)
    assert (a.card, b1.card, b2.card) == (0, 0, 2)
    assert card_loads(3, tmp_path, machine) == [1, 1, 1]
    with pytest.raises(ValueError, match="2 card names for 3 cards"):
        claim_card(3, tmp_path, machine[:2])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_auto_takes_the_visible_card_with_the_fewest_claims_named_by_its_uuid(count, tmp_path, monkeypatch):
    # Prepare: a machine with `count` CUDA devices as torch reports them, another job on the first of them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"GPU-{i}{i}"))
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(d)))
    monkeypatch.setattr(device_mod, "_CLAIM", None)
    monkeypatch.delenv(gpus_mod.CARD_LIMIT_ENV, raising=False)  # outside a local run: no limit per card
    uuids = [f"GPU-{i}{i}" for i in range(count)]
    held = claim_card(count, tmp_path, uuids) if count else None

    # Execute
    got = device_mod.resolve_device("auto", claim_dir=tmp_path)

    # Assert: the free card where there is one (without a run's limit per card the only card is shared: the job does
    # not wait, as a cluster job or one run by hand; with one it waits: test_gpu_claims_wait); the same card for the
    # rest of the job, made the current device; its claim names the card's UUID
    want = {0: "cpu", 1: "cuda:0", 3: "cuda:1"}[count]
    assert str(got) == want
    assert str(device_mod.resolve_device("auto", claim_dir=tmp_path)) == want
    assert current == ([] if count == 0 else [want, want])
    if held is not None:
        assert device_mod._CLAIM.path.name.startswith(f"card{uuids[got.index]}.slot")
        assert card_loads(count, tmp_path, uuids)[got.index] == 1 + (count == 1)
        held.release()
        device_mod._CLAIM.release()


@pytest.mark.parametrize(("environ", "given"), [
    ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),  # a card given, and a CPU-only torch
    ({"CUDA_VISIBLE_DEVICES": "GPU-5f1c", "SLURM_JOB_GPUS": "3"}, "CUDA_VISIBLE_DEVICES=GPU-5f1c"),
    ({"SLURM_JOB_GPUS": "3"}, "SLURM_JOB_GPUS=3"),            # SLURM's, without CUDA_VISIBLE_DEVICES
    ({"SLURM_GPUS_ON_NODE": "1"}, "SLURM_GPUS_ON_NODE=1"),
    ({}, None),                                               # a CPU machine: the CPU is what it has
    ({"CUDA_VISIBLE_DEVICES": ""}, None),                     # every card hidden
    ({"CUDA_VISIBLE_DEVICES": "-1", "SLURM_GPUS_ON_NODE": "0"}, None),
])
def test_auto_on_the_cpu_warns_where_the_job_was_given_a_card(monkeypatch, caplog, environ, given):
    # Prepare: torch finds no CUDA device; the environment the job was started in
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_WARNED", [])  # said once per process
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    # Execute: the job's first call and a later one (its stage after its precision check)
    got = [device_mod.resolve_device("auto") for _ in range(2)]

    # Assert: the job computes on the CPU (not an error: the job runs), and says once, loudly, that its card idles
    assert [str(device) for device in got] == ["cpu", "cpu"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (given is not None)
    if given is not None:
        assert f"{given} gives this job a card" in warnings[0] and "computes on the CPU" in warnings[0]


@pytest.mark.parametrize(("device", "gpus", "per_job", "slots"), [
    ("auto", 0, 0, 0),   # a CPU-only machine: scheduled by cores alone
    ("auto", 1, 1, 1),
    ("auto", 4, 1, 4),   # one job per card, each claims its own
    ("cpu", 4, 0, 0),    # the jobs will not touch the cards
    ("cuda:2", 4, 1, 1),  # every job on that one card
    ("cuda", 0, 0, 0),   # no card to take (a local run is refused before any job: execution_problems)
])
def test_gpu_resources_of_a_local_run(device, gpus, per_job, slots):
    config = {"training": {"device": device}}

    assert gpu_per_job(config, gpus) == per_job
    assert local_gpu_slots(config, gpus) == slots


@pytest.mark.parametrize(("device", "planned_as_cluster", "local_exec", "gpu_limited", "gpus", "refused"), [
    # a local run planned as a cluster (--jobs beside --cores): no per-card limit
    ("auto", True, True, False, 1, "given --jobs with --cores"),
    ("auto", True, True, True, 1, None),      # --resources gpu=N limits the GPU jobs itself
    ("auto", True, True, False, 0, None),     # no card to share
    ("cpu", True, True, False, 2, None),      # the jobs do not touch the cards
    ("auto", False, True, True, 2, None),     # --cores alone: the Snakefile's limit
    ("auto", True, False, False, 0, None),    # a cluster run: SLURM places the jobs
    # an explicit card that the jobs will not see
    ("cuda:1", True, False, False, 0, "a cluster job sees only the card it was given"),
    ("cuda:0", True, False, False, 0, None),
    ("cuda", True, False, False, 0, None),
    ("cuda:2", False, True, True, 2, "shows 2 card(s) to the jobs (cuda:0..cuda:1"),
    ("cuda:1", False, True, True, 2, None),
    # a local run that sees no card: its first GPU job would fail on "CUDA is not available"
    ("cuda:3", False, True, True, 0, "this local run sees no CUDA card"),
    ("cuda", False, True, False, 0, "set training.device to auto (CUDA where there is a card, else the CPU) or cpu"),
    ("cuda:0", True, True, False, 0, "this local run sees no CUDA card"),
    ("auto", False, True, False, 0, None),    # the jobs compute on the CPU
    ("cpu", False, True, False, 0, None),
    ("cuda", False, True, False, 1, None),
])
def test_a_run_started_so_that_jobs_would_share_or_miss_a_card_is_refused(device, planned_as_cluster, local_exec,
                                                                         gpu_limited, gpus, refused):
    problems = execution_problems({"training": {"device": device}}, planned_as_cluster, local_exec, gpu_limited, gpus)

    assert (len(problems), refused is None or refused in problems[0]) == (int(refused is not None), True)


@pytest.mark.parametrize(("known", "refused"), [(True, True), (False, False)])
def test_an_explicit_cuda_device_on_this_machine_is_refused_only_where_it_is_known_to_see_no_card(monkeypatch, known,
                                                                                                  refused):
    # Prepare: this machine shows no card (visible_gpus 0), known to be none or a count no driver answered
    monkeypatch.setattr(resources_mod, "visible_gpus", lambda: 0)
    monkeypatch.setattr(resources_mod, "no_card_known", lambda: known)

    # Execute: a local run with its count left to the machine (gpus None)
    problems = execution_problems({"training": {"device": "cuda"}}, False, True, False)

    # Assert
    assert [p.split(":")[0] for p in problems] == (["training.device"] if refused else [])


@pytest.mark.parametrize(("device", "known", "per_job", "slots"), [
    ("auto", False, 1, 1),  # a card may be there unseen (a ROCm machine, a container hiding the driver): one
    ("cuda", False, 1, 1),
    ("cpu", False, 0, 0),   # the jobs will not touch it
    ("auto", True, 0, 0),   # a CPU-only machine: scheduled by cores alone, as before
    ("cuda", True, 0, 0),   # no card (a local run is refused before any job: execution_problems)
])
def test_a_card_that_may_be_there_unseen_is_planned_as_one(monkeypatch, caplog, device, known, per_job, slots):
    # Prepare: this machine shows no card (visible_gpus 0), known to be none or a count no driver answered
    monkeypatch.setattr(resources_mod, "visible_gpus", lambda: 0)
    monkeypatch.setattr(resources_mod, "no_card_known", lambda: known)
    monkeypatch.setattr(resources_mod, "_UNSEEN_WARNED", [])  # said once per process
    config = {"training": {"device": device}}

    # Execute: the planner's questions, with the count left to the machine (gpus None), each more than once
    got = [(gpu_per_job(config), local_gpu_slots(config), gpu_job_resources(config, cluster=False)) for _ in range(2)]

    # Assert: the GPU jobs hold one card's `gpu` resource and run one at a time; said once where it counts one
    assert got == [(per_job, slots, {"gpu": per_job})] * 2
    assert caplog.text.count("this machine lists no NVIDIA card") == per_job


@pytest.mark.parametrize(("known", "refused"), [(False, True), (True, False)])
def test_a_local_run_planned_as_a_cluster_is_refused_where_a_card_may_be_there_unseen(monkeypatch, known, refused):
    # Prepare: a machine that shows no card; --jobs beside --cores, and no --resources gpu=N
    monkeypatch.setattr(resources_mod, "visible_gpus", lambda: 0)
    monkeypatch.setattr(resources_mod, "no_card_known", lambda: known)

    # Execute
    problems = execution_problems({"training": {"device": "auto"}}, True, True, False)

    # Assert: every GPU job would find the unseen card at once, with no limit per card
    assert ["given --jobs with --cores" in p and "one the driver does not list" in p for p in problems] == (
        [True] if refused else [])


# How Snakemake was started against the cards: training.device, the cards this machine shows, and
# (planned_as_cluster, local_exec, gpu_limited); and what execution_problems says of it where a GPU job is to run
STARTS = {
    "no card": ("cuda", 0, (False, True, False), "this local run sees no CUDA card"),
    "--jobs with --cores": ("auto", 1, (True, True, False), "given --jobs with --cores"),
    "cluster cuda:1": ("cuda:1", 0, (True, False, False), "a cluster job sees only the card it was given"),
}


def _named_jobs(config: dict, runs: list) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Jobs of the default config as the Snakefile's onstart names them (rule, wildcards as text), by kind."""
    run = runs[0]
    fields = {key: str(value) for key, value in run.fields().items()}
    copying = next(r for r in runs if shared_source(config, runs, r, 0) is not None)
    copied = {**{key: str(value) for key, value in copying.fields().items()}, "round": "0"}
    init = {"dataset": run.dataset, "model": run.model}
    return {
        # light rules, and heavy ones on the CPU (a partition, a PCA plane)
        "tables": [("final_table", {}), ("curves_figure", {}), ("hessian_tables", {}),
                   ("partition", {key: str(value) for key, value in run.partition_fields.items()}),
                   ("landscape_plane", {**fields, "landscape": "pca"})],
        "train": [("train", fields)],
        "init pretrained": [("init", {**init, "init": "pretrained"})],
        "init warmup": [("init", {**init, "init": "warmup"})],
        "init random": [("init", {**init, "init": "random"})],
        "hessian copies": [("hessian", copied), ("hessian_plane", copied)],
        "hessian computes": [("hessian", {**fields, "round": "0"})],
    }


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize(("jobs", "device_job"), [
    ("tables", False),                         # tables and figures remade on a laptop from a cluster's results
    ("tables+train", True),
    ("init pretrained", True),                 # trains on its proxy data
    ("init warmup", True),
    ("init random", False),                    # made on the CPU
    ("init random+hessian copies", False),     # copies another run's round-0 result: computes nothing
    ("hessian computes", True),
])
def test_the_cards_concern_a_run_only_where_a_job_about_to_run_computes_on_the_device(default_config, monkeypatch,
                                                                                      start, jobs, device_job):
    # Prepare: the default config on the start's device, a machine showing the start's cards, the jobs to run
    device, gpus, started, message = STARTS[start]
    monkeypatch.setattr(resources_mod, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(resources_mod, "no_card_known", lambda: gpus == 0)
    config = copy.deepcopy(default_config[0])
    config["training"]["device"] = device
    runs = build_runs(config)
    named = [job for kind in jobs.split("+") for job in _named_jobs(config, runs)[kind]]

    # Execute and Assert: refused before any job exactly where one of them would take a card
    with pytest.raises(ConfigError, match=re.escape(message)) if device_job else contextlib.nullcontext():
        check_execution(config, runs, named, *started)


@pytest.mark.parametrize(("environ", "files", "driver", "known"), [
    ({}, (), None, True),                                # no device file a card could be reached through
    ({"CUDA_VISIBLE_DEVICES": ""}, ("nvidiactl",), None, True),  # the variable hides every card
    ({}, ("nvidiactl",), 0, True),                       # nvidia-smi answers: no GPU
    ({}, ("nvidiactl",), None, False),                   # the driver's device, and no answer: a card may be there
    ({}, ("kfd",), None, False),                         # ROCm, whose torch names its cards cuda
])
def test_no_card_is_known_where_the_environment_the_device_files_or_the_driver_say_so(monkeypatch, tmp_path, environ,
                                                                                      files, driver, known):
    # Prepare: device files in a folder of their own, and the driver's answer
    for name in files:
        (tmp_path / name).touch()
    monkeypatch.setattr(gpus_mod, "driver_gpus", lambda: driver)

    # Execute
    got = no_card_known(environ, tuple(str(tmp_path / name) for name in ("nvidiactl", "dxg", "kfd")))

    # Assert
    assert got == known


@pytest.mark.parametrize("cluster", [True, False])
def test_only_the_inits_that_train_take_a_card(cluster):
    # Prepare: an init of each kind, the init rule's resource callables
    config = {"inits": {"r": {"kind": "random"}, "p": {"kind": "pretrained"}, "w": {"kind": "iid_warmup"},
                        "c": {"kind": "continue"}}}
    gpu_job = gpu_job_resources({"training": {"device": "auto"}}, True, ENVIRON) if cluster else {"gpu": 1}
    cpu_job = cpu_job_resources(cluster, ENVIRON)

    # Execute
    got = {init: {key: by_init(key, config, gpu_job, cpu_job)(SimpleNamespace(init=init)) for key in gpu_job}
           for init in config["inits"]}

    # Assert: a random or continued model is made on the CPU, and holds no card
    assert got == {"r": cpu_job, "p": gpu_job, "w": gpu_job, "c": cpu_job}


def _rules_with_gpu() -> set[str]:
    rules = set()
    for path in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", path.read_text()):
            match = re.match(r"rule (\w+):", block)
            declared = r"\n    resources:\n(        #[^\n]*\n)*        \*\*(GPU_JOB|\{key: by_(input|init))"
            if match and re.search(declared, block):
                rules.add(match.group(1))
    return rules


def test_the_gpu_rules_declare_their_card_and_the_slurm_profile_only_sizes_them():
    profile = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    sized = set(profile["set-resources"])
    cards = {rule for rule, res in profile["set-resources"].items()
             if {"gpu", "gpu_model", "slurm_partition", "gres"} & set(res)}

    assert _rules_with_gpu() == set(GPU_RULES)
    # every GPU rule is sized; CPU rules only where the default is too small (a PCA plane's checkpoints, the
    # client statistics' time to read every trajectory)
    assert set(GPU_RULES) <= sized <= set(RULE_NEEDS)
    assert cards == set()  # the profile would override the config's device


ENVIRON = {"SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu", "SLURM_GPU_MODEL": "a100"}


@pytest.mark.parametrize(("device", "cluster", "environ", "expected"), [
    ("auto", True, ENVIRON, {"gpu": 1, "gpu_model": "a100", "slurm_partition": "gpu"}),
    ("cuda:1", True, {"SLURM_PARTITION": "cpu"}, {"gpu": 1, "gpu_model": "", "slurm_partition": "cpu"}),
    ("auto", True, {}, {"gpu": 1, "gpu_model": "", "slurm_partition": ""}),  # the cluster's defaults
    ("cpu", True, ENVIRON, {"gpu": 0, "gpu_model": "", "slurm_partition": "cpu"}),  # a CPU job: no card held idle
    ("cpu", False, ENVIRON, {"gpu": 0}),
])
def test_a_gpu_rules_job_asks_a_cluster_for_a_card_unless_the_config_computes_on_cpus(device, cluster, environ,
                                                                                      expected):
    assert gpu_job_resources({"training": {"device": device}}, cluster, environ) == expected


@pytest.mark.parametrize("model", ["a100-sxm4-80gb", "a100 80gb", "h100:2"])
def test_a_gpu_model_the_slurm_plugin_would_refuse_is_refused_as_the_jobs_are_planned(model):
    environ = {**ENVIRON, "SLURM_GPU_MODEL": model}

    with pytest.raises(ConfigError, match=f"SLURM_GPU_MODEL={re.escape(model)}: .*SLURM_GPU_PARTITION"):
        gpu_job_resources({"training": {"device": "auto"}}, True, environ)
    # a CPU job asks for no model, and a local run none
    assert gpu_job_resources({"training": {"device": "cpu"}}, True, environ)["gpu_model"] == ""
    assert "gpu_model" not in gpu_job_resources({"training": {"device": "auto"}}, False, environ)


def test_a_local_gpu_rules_job_asks_for_a_card_only_where_one_is_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    assert gpu_job_resources({"training": {"device": "auto"}}, cluster=False) == {"gpu": 0}


@pytest.mark.parametrize("cluster", [True, False])
def test_a_job_that_copies_a_result_takes_the_cpu_resources(cluster):
    # Prepare: a Hessian job's resource callables, for a computing job's input and a copying one's
    gpu_job = gpu_job_resources({"training": {"device": "auto"}}, True, ENVIRON) if cluster else {"gpu": 1}
    cpu_job = cpu_job_resources(cluster, ENVIRON)
    computing, copying = (Namedlist(fromdict={name: f"{name}.file" for name in names})
                          for names in (("trajectory", "partition"), ("source_details", "source_table")))

    # Execute
    got = {name: {key: by_input(key, "source_details", gpu_job, cpu_job)(None, inputs) for key in gpu_job}
           for name, inputs in (("computing", computing), ("copying", copying))}

    # Assert
    assert got == {"computing": gpu_job, "copying": cpu_job}
    assert cpu_job == ({"gpu": 0, "gpu_model": "", "slurm_partition": "cpu"} if cluster else {"gpu": 0})


def _rule_blocks() -> dict[str, str]:
    return {m.group(1): block for path in (ROOT / "rules").glob("*.smk")
            for block in re.split(r"\n(?=rule )", path.read_text()) if (m := re.match(r"rule (\w+):", block))}


def test_a_job_of_a_copying_rule_computes_on_the_device_exactly_where_its_resources_give_it_a_card(default_config):
    # Prepare: the rules whose resources follow a copied input (`by_input`) and that input's name, and both jobs of
    # every Hessian job of the default config (some copy another run's round 0)
    config, _ = default_config
    runs = build_runs(config)
    copies = {rule: m.group(1) for rule, block in _rule_blocks().items()
              if (m := re.search(r'by_input\(key, "(\w+)"', block))}
    inputs = {"hessian": hessian_inputs, "hessian_plane": plane_inputs}
    jobs = [(rule, run, round_) for run, round_ in hessian_jobs(config, runs) for rule in COPYING_RULES]

    # Execute
    got = [computes_on_device(config, runs, rule, {**run.fields(), "round": str(round_)}) for rule, run, round_ in jobs]

    # Assert: a job computes where its inputs are not a copy's, and some copy
    assert set(copies) == set(COPYING_RULES)
    assert got == [copies[rule] not in inputs[rule](config, runs, run, round_) for rule, run, round_ in jobs]
    assert not all(got)


def test_every_heavy_rule_is_declared_once_and_has_its_threads_on_slurm():
    # Prepare: the rules that run as jobs of their own (not `localrule: True`), and the SLURM profile's entries
    blocks = _rule_blocks()
    heavy = {rule for rule, block in blocks.items() if "localrule: True" not in block}
    profile = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())

    # Assert: each is declared in RULE_NEEDS (which names only real rules) and given its threads on SLURM
    assert heavy <= set(RULE_NEEDS) <= set(blocks)
    assert heavy <= set(profile["set-threads"]), heavy - set(profile["set-threads"])
    assert set(DATA_RULES) >= set(GPU_RULES)  # a rule on the device computes on data


def test_every_rule_that_resolves_a_device_is_a_gpu_rule():
    # The scripts of the rules whose library code picks a torch device (resolve_device, directly or through the
    # job_precision decorator) are exactly the GPU rules'.
    stages = {"train_job", "init_job", "landscape_chunk_job", "hessian_job", "hessian_plane_job",
              "interpolation_job", "layer_barriers_job"}
    scripts = {p.stem for p in (ROOT / "workflow" / "scripts").glob("*.py")
               if any(re.search(rf"\b{s}\(", p.read_text()) for s in stages)}
    script_of = {}
    for path in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", path.read_text()):
            rule, script = re.match(r"rule (\w+):", block), re.search(r'workflow/scripts/(\w+)\.py"', block)
            if rule and script:
                script_of[rule.group(1)] = script.group(1)

    assert {rule for rule, script in script_of.items() if script in scripts} == set(GPU_RULES)


@pytest.fixture(scope="module")
def default_config() -> dict:
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return check_config(config, schema), schema


def _with(default_config, edit) -> tuple[dict, list]:
    config, schema = default_config
    config = copy.deepcopy(config)
    edit(config)
    return check_config(config, schema), build_runs(config)


def _job_settings(config: dict, runs: list) -> dict[str, dict]:
    run = runs[0]
    plan = landscape_plans(config, runs)[0]
    return {
        "train": train_settings(config, run),
        "init": init_settings(config, runs, run.dataset, run.model, "pretrained"),
        "hessian": hessian_job_settings(config, runs, run, 30),
        "interpolation": interpolation_settings(config, interpolation_pair(config, runs, "iid_vs_1.0")),
        "landscape_chunk": chunk_settings(config, plan, plan.data[0], 0),
    }


def with_precisions(training: str, hessian: str, interpolation: str):
    """A config edit setting the training's, the Hessian's and the interpolation's precision, and every
    landscape's to the training's."""
    def edit(c):
        c["training"]["precision"] = training
        c["hessian"]["precision"] = hessian
        c["interpolation"]["precision"] = interpolation
        for spec in c["landscapes"].values():
            spec["precision"] = training
    return edit


def test_fp32_adds_nothing_to_finished_jobs_settings(default_config):
    # Prepare: the default config, and the same config with every precision spelled out as fp32
    config, schema = default_config
    runs = build_runs(config)

    # Execute
    before = _job_settings(config, runs)
    after = _job_settings(*_with(default_config, with_precisions("fp32", "fp32", "fp32")))

    # Assert: identical settings, none mentioning precision (jobs made before the setting existed are not rerun)
    assert before == after
    assert "precision" not in repr(before)


def test_a_precision_reaches_exactly_the_jobs_it_concerns(default_config):
    jobs = _job_settings(*_with(default_config, with_precisions("bf16", "tf32", "tf32")))

    assert jobs["train"]["training"]["precision"] == "bf16"
    assert jobs["init"]["precision"] == "bf16"  # the pretrained init trains too
    assert jobs["hessian"]["hessian"]["precision"] == "tf32"
    assert jobs["interpolation"]["precision"] == "tf32"
    assert jobs["landscape_chunk"]["precision"] == "bf16"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["training"].update(bf16_autocast=True), "replaced by precision: bf16"),
    (lambda c: c["training"].update(precision="fp16"), "fp16"),
    (lambda c: c["hessian"].update(precision="bf16"), "bf16"),  # an 8-bit mantissa cannot hold 1e-4
])
def test_bad_precisions_are_rejected_at_planning(default_config, edit, message):
    with pytest.raises(ConfigError, match=message):
        _with(default_config, edit)


@pytest.mark.parametrize(("section", "edit"), [
    ("algorithms.fedprox.training", lambda c: c["algorithms"]["fedprox"]["training"].update(device="cuda:0")),
    ("inits.warmup.training", lambda c: c["inits"]["warmup"]["training"].update(device="cpu")),
])
def test_the_device_is_the_workflows_and_no_label_overrides_it(default_config, section, edit):
    # Prepare: the default config has a FedProx label and an IID warm-up init, the device set once for the workflow
    config, _ = default_config
    assert config["algorithms"]["fedprox"]["name"] == "fedprox" and config["inits"]["warmup"]["kind"] == "iid_warmup"

    # Execute / Assert: a label of its own device is refused where the label is named, not planned on the other's
    # resources (a local run's `gpu` and the SLURM request read training.device alone)
    with pytest.raises(ConfigError, match=re.escape(f"{section}: device: the device is the workflow's: set "
                                                    "training.device; GPU planning and SLURM requests read it")):
        _with(default_config, edit)


def test_every_gpu_rule_names_the_config_keys_that_bound_its_memory(default_config):
    # Prepare: the default config, and a job of each GPU rule's wildcards
    config, _ = default_config
    wildcards = {"init": {"init": "pretrained"}, "landscape_chunk": {"surface": "global_0.1"}}

    # Execute
    hints = {rule: memory_hint(rule, config, wildcards.get(rule, {})) for rule in GPU_RULES}

    # Assert: every GPU rule has keys, only they; each key is a key of the config, its value in the message
    assert {rule for rule, needs in RULE_NEEDS.items() if needs.memory} == set(GPU_RULES)
    for hint in hints.values():
        assert hint.startswith("lower what bounds this job's memory: ") and "unset" not in hint, hint
        assert "--resources gpu=N" in hint
    assert "training.client_chunk_size (now 64), training.client_parallel (now auto; sequential uses least)" in \
        hints["train"]
    assert "inits.pretrained.batch_size (now 16)" in hints["init"]
    assert "training.client_chunk_size" not in hints["init"]
    assert "landscapes.global_0.1.points_per_batch (now 1)" in hints["landscape_chunk"]
    assert "hessian.cache_graph (now true; false uses least)" in hints["hessian"]


def test_an_iid_warm_up_s_hint_names_its_rounds_keys_where_it_reads_them(default_config):
    # Prepare: the warm-up overrides its chunk size and evaluation batch; the other two come from `training`
    config, _ = default_config
    config = copy.deepcopy(config)
    config["inits"]["warmup"]["training"] = {"client_chunk_size": 5, "eval_batch_size": 300}

    # Execute
    hint = memory_hint("init", config, {"init": "warmup"})

    # Assert: its rounds' keys, each where the config sets it; nothing of a pretraining
    assert hint.startswith("lower what bounds this job's memory: inits.warmup.training.client_chunk_size (now 5), "
                           "training.client_parallel (now auto; sequential uses least), "
                           "inits.warmup.training.eval_batch_size (now 300), "
                           "training.capture (now auto; eager uses least); or give it the card alone"), hint
    assert "batch_size (now 16)" not in hint


def test_a_memory_hint_never_fails_and_names_what_it_cannot_resolve():
    hint = memory_hint("init", {"training": {}}, {})

    # an init of no known kind: every kind's keys, each once
    assert hint.startswith("lower what bounds this job's memory: inits.{init}.batch_size (unset), "
                           "training.eval_batch_size (unset), training.client_chunk_size (unset), "
                           "training.client_parallel (sequential uses least), training.capture (eager uses least); "
                           "or give it the card alone"), hint
    assert memory_hint("partition", {}, {}).startswith("give it the card alone")


def test_every_gpu_rule_s_script_logs_its_memory_hint():
    scripts = {rule: (ROOT / "workflow" / "scripts" / f"{rule}.py").read_text() for rule in GPU_RULES}
    missing = [rule for rule, text in scripts.items()
               if f'memory_hint("{rule}", sm.config, dict(sm.wildcards.items()))' not in text]

    assert missing == []


def test_a_job_that_cannot_claim_a_card_runs_on_the_first(tmp_path, monkeypatch, caplog):
    # Prepare: two cards as torch reports them, and a claim directory that cannot be made (a file is in its place)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"GPU-{i}"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(device_mod, "_CLAIM", None)
    (tmp_path / "claims").write_text("not a directory")

    # Execute: the job's first call, then a later one (its stage after its precision check) that could claim
    got = device_mod.resolve_device("auto", claim_dir=tmp_path / "claims")
    (tmp_path / "claims").unlink()
    other = claim_card(2, tmp_path / "claims", ["GPU-0", "GPU-1"], card=0)  # another job came to cuda:0 since
    again = device_mod.resolve_device("auto", claim_dir=tmp_path / "claims")

    # Assert: the job goes on, on cuda:0, says why it holds no claim, and stays on the card it recorded
    assert str(got) == str(again) == "cuda:0" and not device_mod._CLAIM.held
    assert "could not claim a card" in caplog.text
    assert card_loads(2, tmp_path / "claims", ["GPU-0", "GPU-1"]) == [1, 0]
    other.release()


@pytest.mark.parametrize("name", ["cuda:1", "cuda"])
def test_an_explicit_card_is_claimed_so_that_auto_jobs_count_it(name, tmp_path, monkeypatch):
    # Prepare: two cards as torch reports them, the second current (as CUDA_VISIBLE_DEVICES order or a set_device
    # would leave it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"GPU-{i}"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(device_mod, "_CLAIM", None)

    # Execute: a job told its card, then another process's auto job
    got = device_mod.resolve_device(name, claim_dir=tmp_path)
    explicit = device_mod._CLAIM
    device_mod._CLAIM = None
    auto = device_mod.resolve_device("auto", claim_dir=tmp_path)

    # Assert: the explicit job computes where it was told and holds a claim there, so the auto job takes the other
    assert str(got) == name and explicit.held and explicit.card == 1
    assert str(auto) == "cuda:0" and card_loads(2, tmp_path, ["GPU-0", "GPU-1"]) == [1, 1]
    explicit.release()
    device_mod._CLAIM.release()


@pytest.mark.parametrize(("name", "current"), [("cuda:1", ["cuda:1"]), ("cuda", []), ("cpu", [])])
def test_an_explicit_card_is_made_the_current_device(name, current, monkeypatch):
    # Prepare: CUDA as torch reports it, with no card to claim; which device the process makes current
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(device_mod, "_CLAIM", None)
    made = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made.append(str(d)))

    # Execute
    got = device_mod.resolve_device(name)

    # Assert: a named card is current (calls that name no device go to it); "cuda" is the current one already
    assert str(got) == name and made == current


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cards_are_claimed_by_their_uuids(tmp_path, monkeypatch):
    # Prepare: the real cards of this machine, and no claim of this process yet
    monkeypatch.setattr(device_mod, "_CLAIM", None)
    cards = torch.cuda.device_count()

    # Execute
    uuids = device_mod.card_uuids(cards)
    got = device_mod.resolve_device("auto", claim_dir=tmp_path)

    # Assert: one distinct name per card, not its index; the job's claim is on the card it computes on
    assert len(set(uuids)) == cards and all(u and u != str(i) for i, u in enumerate(uuids))
    assert got.type == "cuda" and device_mod._CLAIM.path.name.startswith(f"card{uuids[got.index]}.slot")
    assert torch.cuda.current_device() == got.index
    assert card_loads(cards, tmp_path, uuids)[got.index] == 1
    device_mod._CLAIM.release()


def test_a_claim_opens_another_users_slot_file_without_creating_it(tmp_path, monkeypatch):
    # Prepare: a slot file that exists, and Linux's fs.protected_regular as another user sees it in a sticky folder:
    # O_CREAT on an existing file of someone else is refused
    from fedscape.core import gpus

    names = ["GPU-0"]
    first = claim_card(1, tmp_path, names)
    first.release()
    real_open = os.open

    def protected_open(path, flags, *args):
        if flags & os.O_CREAT and os.path.exists(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(gpus.os, "open", protected_open)

    # Execute
    claim = claim_card(1, tmp_path, names)

    # Assert: the existing slot is claimed, not refused
    assert claim.held and claim.path == first.path and card_loads(1, tmp_path, names) == [1]
    claim.release()
