"""The host memory of every job that decodes a data set follows that data set, as a train job's does
(`fedscape.plan.resources.job_mem_mb`: Hessian, plane, surface and barrier jobs beside train and init), and a train
job's counts its clients' kept state (`fedscape.fl.state_sizes`: SCAFFOLD, FedDyn, MOON, a kept optimiser state)."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers.tiny import tiny_data
from helpers.workflow import TINY_CONFIG, copy_workflow, planned_resources, snakemake

from fedscape.core.config import load_schema
from fedscape.core.runs import build_runs
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.registry import ALGORITHM_SPECS
from fedscape.fl.settings import TrainConfig
from fedscape.fl.state_sizes import client_state_models
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import ModelMeta, save_trajectory
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.resources import RULE_NEEDS, data_bytes, data_job_mem_mb, kept_models, train_mem_mb
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
MIB = 2**20
# What the SLURM profile gave each analysis rule's computing jobs before their data sets were counted
PROFILE_MB = {"hessian": 16000, "hessian_plane": 16000, "landscape_chunk": 16000, "interpolation": 8000,
              "layer_barriers": 8000}
ANALYSIS_RULES = tuple(PROFILE_MB)


def checked(path: Path) -> dict:
    return check_config(yaml.safe_load(path.read_text()), load_schema(SCHEMA))


def mib(n_bytes: int) -> int:
    return -(-n_bytes // MIB)


# The tensors each data set decodes, counted by hand (tests/unit/test_slurm_resources.py has their sources)
DIGITS = 1797 * 1 * 8 * 8 * 4
CIFAR10 = (50_000 + 10_000) * 3 * 32 * 32 * 4
IMAGENET200 = 100_000 * 3 * 256 * 256 + 20_000 * 3 * 224 * 224


@pytest.mark.parametrize("rule", ANALYSIS_RULES)
@pytest.mark.parametrize(("config", "dataset", "data"), [
    (ROOT / "config" / "config.yaml", "digits", DIGITS),
    (ROOT / "config" / "papers" / "fedalign.yaml", "cifar10", CIFAR10),
    (ROOT / "config" / "papers" / "fedalign.yaml", "imagenet200", IMAGENET200),
])
def test_an_analysis_job_asks_for_its_data_set_beside_what_the_profile_gave_it(rule, config, dataset, data):
    # Prepare: the config as the workflow checks it; a surface chunk holds its pool and the rows it evaluates
    config = checked(config)
    copies = 2 if rule == "landscape_chunk" else 1

    # Execute
    first, second = (data_job_mem_mb(rule, config, dataset, attempt) for attempt in (1, 2))

    # Assert: the profile's old size and the data set's tensors, twice that on the resubmission after a kill; never
    # less than the profile gave (digits, CIFAR), and ImageNet-200's 21 GB pool counted where 16,000 MB cannot hold it
    assert first == PROFILE_MB[rule] + mib(copies * data)
    assert second == 2 * first
    assert first >= PROFILE_MB[rule]
    if dataset == "imagenet200":
        assert first > PROFILE_MB[rule] + 20_000


@pytest.mark.parametrize("rule", ["hessian", "hessian_plane"])
def test_a_job_that_copies_another_runs_result_asks_for_little(rule):
    # Prepare: fedalign.yaml, whose ImageNet-200 pool a computing job decodes
    config = checked(ROOT / "config" / "papers" / "fedalign.yaml")

    # Execute / Assert: a copy reads no data set, on any attempt
    assert data_job_mem_mb(rule, config, "imagenet200", 1, copies=True) == 2000
    assert data_job_mem_mb(rule, config, "imagenet200", 2, copies=True) == 2000


def test_a_rule_without_a_host_memory_of_its_own_is_refused():
    # Prepare: the default config; client_stats reads no data set, the profile sizes it
    config = checked(ROOT / "config" / "config.yaml")

    # Execute / Assert
    with pytest.raises(ValueError, match="client_stats.*profile"):
        data_job_mem_mb("client_stats", config, "digits")


def rule_block(rule: str) -> str:
    """The text of `rule`'s block in its rule file."""
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
            if block.startswith(f"rule {rule}:"):
                return block
    raise AssertionError(f"no rule {rule}")


def test_every_rule_that_reads_a_data_set_asks_for_its_memory_itself():
    # Prepare: the profile's entries, and the rules whose memory follows their data set
    resources = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())["set-resources"]
    sized = {rule for rule, needs in RULE_NEEDS.items() if needs.host_mb}

    # Assert: every data rule that runs as a job of its own (partition runs on the submitting node); none has a
    # profile entry, which would override its rule's
    assert sized == {rule for rule, needs in RULE_NEEDS.items() if needs.data} - {"partition"}
    assert sized == {"train", "init", *ANALYSIS_RULES}
    assert [rule for rule in sized if "mem_mb" in resources.get(rule, {})] == []
    for rule in ANALYSIS_RULES:
        assert re.search(rf"mem_mb=lambda wildcards(, input)?, attempt: data_job_mem_mb\(\s*\"{rule}\",\s*config,\s*",
                         rule_block(rule)), rule


def test_a_dry_run_under_the_profile_sizes_each_analysis_job_by_its_data_set(tmp_path):
    # Prepare: the workflow, the profile as typed, the tiny config on CIFAR-10 (its data is not read by a dry run),
    # with a second IID run whose round-0 Hessian and plane jobs copy the first run's
    workdir = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", workdir / "slurm")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["datasets"] = {"cifar10": {"augment": "crop_flip"}}
    config["experiments"].append({"alpha": "iid", "init": "random", "algorithm": "fedprox"})
    (workdir / "cifar.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}

    # Execute
    dry = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "cifar.yaml", env=environ, timeout=300)

    # Assert: each computing analysis job asks for the profile's old size and CIFAR-10's tensors (twice for a surface
    # chunk); the copying Hessian and plane jobs for 2,000
    memory = {rule: sorted({int(job["mem_mb"]) for job in jobs})
              for rule, jobs in planned_resources(dry.stdout).items() if rule in ANALYSIS_RULES}
    config = checked(workdir / "cifar.yaml")
    assert memory["landscape_chunk"] == [16000 + mib(2 * CIFAR10)]
    assert memory["interpolation"] == memory["layer_barriers"] == [8000 + mib(CIFAR10)]
    for rule in ("hessian", "hessian_plane"):
        assert memory[rule] == [2000, data_job_mem_mb(rule, config, "cifar10")] == [2000, 16000 + mib(CIFAR10)]


# -- the clients' kept state of a train job

def init_file(path: Path, model: torch.nn.Module) -> Path:
    """`model` written as an init job writes it (one trajectory row: its parameters and buffers in float32)."""
    meta = ModelMeta(model="mlp", num_classes=10, in_channels=1, image_size=8,
                     param_names=tuple(n for n, _ in model.named_parameters()),
                     param_shapes=tuple(tuple(p.shape) for p in model.parameters()))
    save_trajectory(path, flatten_params(model).unsqueeze(0), flatten_buffers(model).unsqueeze(0),
                    torch.zeros(1, dtype=torch.long), meta, {})
    return path


def tensor_bytes(state: object) -> int:
    """The bytes of every tensor in a (nested) state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(v) for v in state)
    return 0


# Every algorithm at its defaults, and the settings that change what a run keeps per client: each with the model it
# trains and how many of its kept vectors per client hold a whole model's parameters (the rest: MOON's head, buffers)
WIDE = {"stochdepth", "gradaug", "fedalign"}  # a ResNet's residual branches or widths
STATE_CASES = [(name, {}, {}, "resnet20" if name in WIDE else "mlp",
                {"scaffold": 1, "feddyn": 1, "moon": 1}.get(name, 0)) for name in sorted(ALGORITHM_SPECS)] + [
    ("moon", {"head": "projection"}, {}, "mlp", 1),
    ("moon", {"reference_mode": "eval"}, {}, "resnet20", 1),
    ("fedavg", {}, {"keep_optimizer_state": True}, "mlp", 1),
    ("fedavg", {}, {"keep_optimizer_state": True, "momentum": 0.0}, "mlp", 1),
    ("fedavg", {}, {"keep_optimizer_state": True, "optimizer": "adamw"}, "mlp", 2),
    ("scaffold", {}, {"keep_optimizer_state": True}, "mlp", 2),
]


@pytest.mark.parametrize(("name", "hparams", "training", "model_name", "whole"), STATE_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in STATE_CASES])
def test_the_declared_client_state_covers_what_each_algorithm_keeps(tmp_path, name, hparams, training, model_name,
                                                                    whole):
    # Prepare: the model's init file (the unit the train job's memory counts in), and one round in which every client
    # trains, with 3 clients and with 6: what a client adds to state.pt is what the run keeps for it
    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(model_name, num_classes=10, in_channels=1, image_size=8)

    unit = os.path.getsize(init_file(tmp_path / "init.pt", model()))
    params = sum(p.numel() for p in model().parameters())
    cfg = TrainConfig(**{"rounds": 1, "local_epochs": 1, "batch_size": 10, "lr": 0.05, "momentum": 0.9, "seed": 0,
                         "client_parallel": "sequential", **training})

    def kept(clients: int) -> int:
        strategy = make_strategy(name, hparams)
        progress = tmp_path / f"progress{clients}"
        run_federated(strategy.prepare_model(model(), cfg.seed).train(), tiny_data(clients, 10 * clients), strategy,
                      cfg, progress_dir=progress, progress_key="k")
        state = torch.load(progress / "state.pt", weights_only=True)
        return tensor_bytes(state["strategy"]) + tensor_bytes(state["trainer"])

    # Execute
    declared = client_state_models(name, hparams, {"optimizer": "sgd", **training})
    per_client = (kept(6) - kept(3)) / 3

    # Assert: the declared vectors hold what a client keeps, and at least the whole models it keeps are declared
    assert per_client <= declared * unit
    assert per_client >= whole * 4 * params
    assert (per_client > 0) == (declared > 0)


@pytest.mark.parametrize(("algorithm", "training", "per_client"), [
    ({"name": "fedavg"}, {}, 0),
    ({"name": "scaffold"}, {}, 1),  # c_i
    ({"name": "feddyn"}, {}, 1),  # g_k
    ({"name": "moon"}, {}, 2),  # the previous local model and its side head
    ({"name": "moon", "head": "projection"}, {}, 2),  # the previous local model, larger than its init by its head
    ({"name": "moon", "head": "projection", "reference_mode": "eval"}, {}, 3),  # and its buffers
    ({"name": "fedavg"}, {"keep_optimizer_state": True}, 1),  # SGD's momentum
    ({"name": "fedavg"}, {"keep_optimizer_state": True, "optimizer": "adamw"}, 2),  # AdamW's two moments
])
def test_a_train_job_asks_for_its_clients_kept_state(tmp_path, algorithm, training, per_client):
    # Prepare: the default config's first run (10 clients), its algorithm replaced; an init file of 1 MiB + 3 bytes
    config = copy.deepcopy(checked(ROOT / "config" / "config.yaml"))
    run = build_runs(config)[0]
    config["algorithms"][run.algorithm] = {**algorithm, "training": training}
    init = tmp_path / "init.pt"
    init.write_bytes(bytes(MIB + 3))
    size = MIB + 3

    # Execute
    got = train_mem_mb(config, run, 1, init)

    # Assert: beside the data set and the kept models, each client's kept vectors, twice (the store and the stacked
    # copy each round's state.pt is written from), each the init's size; twice all that on the resubmission
    models = kept_models(config, run) + 2 * int(run.num_clients) * per_client
    assert got == 16000 + mib(data_bytes(run.dataset, config["datasets"][run.dataset]) + models * size)
    assert train_mem_mb(config, run, 2, init) == 2 * got
