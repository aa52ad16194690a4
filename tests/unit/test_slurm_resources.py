"""The host memory and time a cluster job asks for: the memory of the jobs that decode a data set follows that data set
(`fedscape.plan.resources.train_mem_mb`, `init_mem_mb`), and the SLURM profile leaves it to them."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.workflow import TINY_CONFIG, copy_workflow, planned_resources, snakemake
from snakemake.iocontainers import Namedlist

from fedscape.core.config import load_schema
from fedscape.plan.resources import HOST_BASE_MB, data_bytes, init_mem_mb, train_mem_mb
from fedscape.plan.workflow import check_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
MIB = 2**20


def profile() -> dict:
    return yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())


def checked(path: Path) -> dict:
    return check_config(yaml.safe_load(path.read_text()), load_schema(SCHEMA))


def mib(n_bytes: int) -> int:
    return -(-n_bytes // MIB)


# The tensors each data set decodes, counted by hand: samples x values per sample x bytes per value
DIGITS = 1797 * 1 * 8 * 8 * 4  # all of sklearn's digits (its test split among them), float32
CIFAR10 = (50_000 + 10_000) * 3 * 32 * 32 * 4  # training and test images, float32
# ImageNet-200 as fedalign.yaml reads it (resized_crop): 100,000 training images kept as uint8 at 256x256 (the crops'
# source), its test images at 224x224 counted at a fifth of the training pool (the 10,000 validation images are less)
IMAGENET200 = 100_000 * 3 * 256 * 256 + 20_000 * 3 * 224 * 224
# Shakespeare as layerwise.yaml reads it (raw, 256 characters, every position's target): int64 ids and targets for
# each of LEAF's 4,226,158 samples, a bound of the raw texts' windows
SHAKESPEARE_RAW = 4_226_158 * 256 * 8 * 2


@pytest.mark.parametrize(("dataset", "options", "expected"), [
    ("digits", {}, DIGITS),
    ("cifar10", {"augment": "crop_flip"}, CIFAR10),
    ("imagenet200", {"augment": "resized_crop"}, IMAGENET200),
    ("imagenet200", {"augment": "none"}, 110_000 * 3 * 224 * 224 + 10_000 * 3 * 224 * 224),  # no larger images
    ("shakespeare", {"source": "raw", "seq_len": 256, "targets": "every"}, SHAKESPEARE_RAW),
])
def test_a_data_sets_host_bytes_are_its_decoded_tensors(dataset, options, expected):
    got = data_bytes(dataset, options)

    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("config", "dataset", "data"), [
    (ROOT / "config" / "config.yaml", "digits", DIGITS),
    (ROOT / "config" / "papers" / "fedalign.yaml", "cifar10", CIFAR10),
    (ROOT / "config" / "papers" / "fedalign.yaml", "imagenet200", IMAGENET200),
    (ROOT / "config" / "papers" / "layerwise.yaml", "shakespeare", SHAKESPEARE_RAW),
])
def test_a_train_job_asks_for_its_data_set_and_more_on_each_attempt(config, dataset, data):
    # Prepare: the config as the workflow checks it
    config = checked(config)

    # Execute
    first, second = (train_mem_mb(config, dataset, attempt) for attempt in (1, 2))

    # Assert: the base and the data set's tensors; twice that on the resubmission after a kill
    assert first == HOST_BASE_MB + mib(data)
    assert second == 2 * first
    if dataset == "digits":  # the data of the default run adds next to nothing to the base
        assert first <= HOST_BASE_MB + 1
    if dataset in ("imagenet200", "shakespeare"):  # the pools the fixed 16,000 MB could not hold
        assert data > 16_000 * MIB and first > 20_000


def test_an_init_job_asks_for_the_data_set_it_trains_on():
    # Prepare: the default config (digits), with a pretrained init on a proxy data set and one on down-sampled
    # ImageNet beside its own
    config = checked(ROOT / "config" / "config.yaml")
    config = copy.deepcopy(config)
    config["inits"]["on_cifar"] = {**config["inits"]["pretrained"], "proxy_dataset": "cifar10"}
    config["inits"]["on_imagenet32"] = {**config["inits"]["pretrained"], "proxy_dir": "data/imagenet32"}

    # Execute
    got = {init: init_mem_mb(config, "digits", init) for init in
           ("random", "pretrained", "warmup", "on_cifar", "on_imagenet32")}

    # Assert: the digits for a warm-up and for pretraining on their proxy split, CIFAR-10 for pretraining on it; a
    # random init and a stream of ImageNet batches hold no data set
    assert got == {"random": HOST_BASE_MB, "pretrained": HOST_BASE_MB + mib(DIGITS),
                   "warmup": HOST_BASE_MB + mib(DIGITS), "on_cifar": HOST_BASE_MB + mib(CIFAR10),
                   "on_imagenet32": HOST_BASE_MB}
    assert init_mem_mb(config, "digits", "warmup", attempt=2) == 2 * got["warmup"]


def test_the_profile_leaves_the_memory_of_train_and_init_to_their_rules():
    # Prepare: the profile's entries and the rule files
    resources = profile()["set-resources"]
    rules = {name: (ROOT / "rules" / f"{name}.smk").read_text() for name in ("train", "init")}

    # Assert: a `set-resources` memory would override the rule's; each rule asks for its data set's
    assert "mem_mb" not in resources["train"] and "mem_mb" not in resources["init"]
    assert re.search(r"mem_mb=lambda wildcards, attempt: train_mem_mb\(\s*config, wildcards\.dataset, attempt\s*\)",
                     rules["train"])
    assert re.search(r"mem_mb=lambda wildcards, attempt: init_mem_mb\(\s*config, wildcards\.dataset, "
                     r"wildcards\.init, attempt\s*\)", rules["init"])


def evaluate(expression: object, inputs: tuple[str, ...], attempt: int) -> object:
    """A profile resource value as Snakemake evaluates it for a job with the named `inputs` at `attempt`."""
    if not isinstance(expression, str):
        return expression
    namespace = {"input": Namedlist(fromdict={name: f"{name}.file" for name in inputs}), "attempt": attempt}
    return eval(expression, namespace)  # noqa: S307 - the profile's own expressions


@pytest.mark.parametrize(("inputs", "runtimes"), [(("trajectory", "partition"), (480, 960)),
                                                  (("source_details", "source_table"), (10, 10))])
def test_a_computing_hessian_job_gets_hours_more_on_its_resubmission(inputs, runtimes):
    # Prepare: the profile's runtime of a Hessian job
    runtime = profile()["set-resources"]["hessian"]["runtime"]

    # Execute
    got = tuple(evaluate(runtime, inputs, attempt) for attempt in (1, 2))

    # Assert: 8 h, then 16 h (fedalign.yaml's spectra take 5-6 h in one part a kill loses); a copy stays minutes
    assert got == runtimes


def test_a_dry_run_under_the_profile_sizes_each_job_by_its_data(tmp_path):
    # Prepare: the workflow, the profile as typed, the tiny config (digits)
    workdir = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", workdir / "slurm")
    shutil.copy(TINY_CONFIG, workdir / "tiny.yaml")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}

    # Execute
    proc = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "tiny.yaml", env=environ, timeout=300)

    # Assert: train and the pretrained init ask for the digits' memory, the random init for the base alone
    memory = {rule: {int(job["mem_mb"]) for job in jobs} for rule, jobs in planned_resources(proc.stdout).items()}
    assert memory["train"] == {HOST_BASE_MB + mib(DIGITS)}
    assert memory["init"] == {HOST_BASE_MB, HOST_BASE_MB + mib(DIGITS)}
