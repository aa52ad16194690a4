"""The host memory and time a cluster job asks for: the memory of the jobs that decode a data set follows that data set
(`fedscape.plan.resources.train_mem_mb`, `init_mem_mb`), and the SLURM profile leaves it to them."""

from __future__ import annotations

import copy
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers.workflow import TINY_CONFIG, copy_workflow, planned_resources, snakemake
from snakemake.iocontainers import Namedlist

from fedscape.core.config import load_schema
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.data.specs import DATASETS
from fedscape.plan.resources import HOST_BASE_MB, data_bytes, init_mem_mb, kept_models, train_mem_mb
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


# Stack Overflow read for its first 1,500 users (meta.yaml): int64 ids and every position's targets of the samples
# ten times their share of TFF's 342,477 users may hold (`MAX_CLIENTS_SKEW`)
def stackoverflow_read(users: int) -> float:
    return 135_818_730 * 10 * users / 342_477 * 20 * 8 * 2


@pytest.mark.parametrize(("options", "users"), [
    ({"proxy_split": "samples", "proxy_fraction": 0.1}, 1500),
    # the writers' proxy: round(0.1 x 1,500 / 0.9) = 167 users read after the first 1,500
    ({"proxy_split": "writers", "proxy_fraction": 0.1}, 1667),
    ({"proxy_split": "writers", "proxy_fraction": 0.5}, 3000),
])
def test_a_max_clients_read_counts_the_proxy_writers_it_reads_after_them(options, users):
    # Execute
    got = data_bytes("stackoverflow", {"max_clients": 1500, **options})

    # Assert
    assert got == pytest.approx(stackoverflow_read(users), rel=1e-6)


@pytest.mark.parametrize("dataset", ["stackoverflow", "reddit"])
def test_a_max_clients_read_shares_the_samples_among_the_writers_the_data_set_declares(monkeypatch, dataset):
    # Prepare: the bytes of 100 users' read, and the same data set declared with a third as many writers
    info = DATASETS[dataset]
    full = data_bytes(dataset, {"max_clients": 100})
    monkeypatch.setitem(DATASETS, dataset, replace(info, published_writers=info.published_writers // 3))

    # Execute
    fewer = data_bytes(dataset, {"max_clients": 100})

    # Assert: each user may hold three times the samples (`DatasetInfo.published_writers`, the one count)
    assert fewer == pytest.approx(full * info.published_writers / (info.published_writers // 3), rel=1e-6)


@pytest.mark.parametrize(("config", "dataset", "data"), [
    (ROOT / "config" / "config.yaml", "digits", DIGITS),
    (ROOT / "config" / "papers" / "fedalign.yaml", "cifar10", CIFAR10),
    (ROOT / "config" / "papers" / "fedalign.yaml", "imagenet200", IMAGENET200),
    (ROOT / "config" / "papers" / "layerwise.yaml", "shakespeare", SHAKESPEARE_RAW),
])
def test_a_train_job_asks_for_its_data_set_and_more_on_each_attempt(config, dataset, data):
    # Prepare: the config as the workflow checks it, one of its runs on `dataset`
    config = checked(config)
    run = next(run for run in build_runs(config) if run.dataset == dataset)

    # Execute: without its init's size (the kept models not counted)
    first, second = (train_mem_mb(config, run, attempt) for attempt in (1, 2))

    # Assert: the base and the data set's tensors; twice that on the resubmission after a kill
    assert first == HOST_BASE_MB + mib(data)
    assert second == 2 * first
    if dataset == "digits":  # the data of the default run adds next to nothing to the base
        assert first <= HOST_BASE_MB + 1
    if dataset in ("imagenet200", "shakespeare"):  # the pools the fixed 16,000 MB could not hold
        assert data > 16_000 * MIB and first > 20_000


@pytest.mark.parametrize(("config", "dataset", "algorithm", "participation", "models"), [
    # rounds 0..30 kept, and the 10 clients' models of each of rounds 1, 10 and 30 (all clients take part)
    (ROOT / "config" / "config.yaml", "digits", "fedavg", "1.0", 31 + 3 * 10),
    # half of the 10 clients per round: 5 client models a saved round
    (ROOT / "config" / "config.yaml", "digits", "fedavg", "0.5", 31 + 3 * 5),
    # meta.yaml's CIFAR-10 runs: each of 500 rounds kept, no client models saved
    (ROOT / "config" / "papers" / "meta.yaml", "cifar10", "fedavg", "0.1", 501),
    # FEMNIST's: 1500 rounds, every 100th kept (0, 100, ..., 1500)
    (ROOT / "config" / "papers" / "meta.yaml", "femnist", "fedavg_femnist", "0.003", 16),
])
def test_a_train_job_asks_for_the_models_it_keeps_each_the_size_of_its_init(tmp_path, config, dataset, algorithm,
                                                                             participation, models):
    # Prepare: a run of the config on `dataset`, and an init file of 1 MiB + 3 bytes
    config = checked(config)
    run = next(run for run in build_runs(config) if (run.dataset, run.algorithm, run.participation)
               == (dataset, algorithm, participation))
    init = tmp_path / "init.pt"
    init.write_bytes(bytes(MIB + 3))

    # Execute
    counted = kept_models(config, run)
    got, without = train_mem_mb(config, run, 1, init), train_mem_mb(config, run, 1)

    # Assert: the kept global models and saved client models, each as large as the init, on top of the data set
    assert counted == models
    assert got == HOST_BASE_MB + mib(data_bytes(dataset, config["datasets"][dataset]) + models * (MIB + 3))
    assert got > without
    assert train_mem_mb(config, run, 2, init) == 2 * got


def test_a_train_jobs_memory_is_to_be_determined_while_its_init_does_not_exist(tmp_path):
    # Prepare: the default config's first run, its init not made yet
    config = checked(ROOT / "config" / "config.yaml")
    missing = tmp_path / "init.pt"

    # Execute / Assert: the FileNotFoundError names the file, which Snakemake takes for "evaluate when it exists"
    with pytest.raises(FileNotFoundError) as info:
        train_mem_mb(config, build_runs(config)[0], 1, str(missing))
    assert info.value.filename == str(missing)


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
    assert re.search(r"mem_mb=lambda wildcards, input, attempt: train_mem_mb\(\s*config, Run\.from_wildcards\("
                     r"wildcards\), attempt, input\.init\s*\)", rules["train"])
    assert re.search(r"mem_mb=lambda wildcards, attempt: init_mem_mb\(\s*config, wildcards\.dataset, "
                     r"wildcards\.init, attempt\s*\)", rules["init"])


def evaluate(expression: object, inputs: tuple[str, ...], attempt: int, size_mb: float = 0.0) -> object:
    """A profile resource value as Snakemake evaluates it for a job with the named `inputs` (of `size_mb` MB in all)
    at `attempt`."""
    if not isinstance(expression, str):
        return expression
    job_input = Namedlist(fromdict={name: f"{name}.file" for name in inputs})
    job_input.size_mb = size_mb
    return eval(expression, {"input": job_input, "attempt": attempt})  # noqa: S307 - the profile's own expressions


@pytest.mark.parametrize(("inputs", "runtimes"), [(("trajectory", "partition"), (480, 960)),
                                                  (("source_details", "source_table"), (10, 10))])
def test_a_computing_hessian_job_gets_hours_more_on_its_resubmission(inputs, runtimes):
    # Prepare: the profile's runtime of a Hessian job
    runtime = profile()["set-resources"]["hessian"]["runtime"]

    # Execute
    got = tuple(evaluate(runtime, inputs, attempt) for attempt in (1, 2))

    # Assert: 8 h, then 16 h (fedalign.yaml's spectra take 5-6 h in one part a kill loses); a copy stays minutes
    assert got == runtimes


def test_every_time_and_memory_the_profile_gives_a_computing_job_grow_on_its_resubmission():
    # Prepare: each runtime and mem_mb of the profile, its defaults among them (every other job's)
    sizes = {"runtime", "mem_mb"}
    entries = {("default-resources", key): value for key, value in profile()["default-resources"].items()
               if key in sizes}
    entries |= {(rule, key): value for rule, resources in profile()["set-resources"].items()
                for key, value in resources.items() if key in sizes}

    # Execute: each for a computing job (not a copy of another run's Hessian result), inputs of 6 GB
    got = {entry: tuple(evaluate(value, ("trajectory", "partition"), attempt, 6000.0) for attempt in (1, 2))
           for entry, value in entries.items()}

    # Assert: a job killed at its time or memory limit is not resubmitted to be killed at the same point (a surface
    # chunk keeps no progress: 4 h, then 8 h)
    assert [entry for entry, (first, second) in got.items() if second <= first] == []
    assert got[("landscape_chunk", "runtime")] == (240, 480)
    assert {("default-resources", "runtime"), ("default-resources", "mem_mb"), ("landscape_plane", "mem_mb"),
            ("init", "runtime"), ("interpolation", "runtime"), ("layer_barriers", "runtime")} <= set(got)


def test_a_dry_run_under_the_profile_sizes_each_job_by_its_data(tmp_path):
    # Prepare: the workflow, the profile as typed, the tiny config (digits)
    workdir = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", workdir / "slurm")
    shutil.copy(TINY_CONFIG, workdir / "tiny.yaml")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}

    # Execute: a dry run before any job ran, then one after the init jobs ran (locally)
    before = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "tiny.yaml", env=environ, timeout=300)
    snakemake(workdir, "--configfile", "tiny.yaml", "--until", "init", env=environ, timeout=600)
    after = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "tiny.yaml", env=environ, timeout=300)

    # Assert: the pretrained init asks for the digits' memory, the random init for the base alone; a train job's
    # memory is to be determined until its init exists, then the digits and its kept models, each its init's size
    memory = {rule: {job["mem_mb"] for job in jobs} for rule, jobs in planned_resources(before.stdout).items()}
    assert memory["train"] == {"<TBD>"}
    assert memory["init"] == {str(HOST_BASE_MB), str(HOST_BASE_MB + mib(DIGITS))}
    config = checked(workdir / "tiny.yaml")
    results = Results.of(config)
    expected = {str(train_mem_mb(config, run, 1, workdir / results.init_file(dataset=run.dataset, model=run.model,
                                                                              init=run.init)))
                for run in build_runs(config)}
    kept_mib = {int(mem) - HOST_BASE_MB - mib(DIGITS) for mem in expected}
    assert {job["mem_mb"] for job in planned_resources(after.stdout)["train"]} == expected
    assert min(kept_mib) > 0  # rounds 0-3 and the 4 clients of rounds 1 and 3: 12 cnn_small models, over 1 MiB
