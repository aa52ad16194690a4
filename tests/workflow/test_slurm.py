"""The SLURM profile, its resources and conda environments; and the tiny workflow on a real SLURM.

The static checks run everywhere. The cluster test (marked `slurm`) runs only when selected with
`-m slurm` (`make test-slurm`, called by .ci/run as root): it installs Debian's slurmctld, slurmd,
slurm-client, munge, slurmdbd and mariadb-server, starts a one-node cluster with
tests/slurm/start_cluster.sh, runs the spine of the tiny workflow with `--profile slurm` and stops
the daemons again by PID. It skips, with the reason, where the packages cannot be installed.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.workflow import ROOT, TINY_CONFIG, copy_workflow, planned_resources, snakemake
from snakemake.iocontainers import Namedlist

from fedscape.analysis.hessian.definitions import JOB_FILES
from fedscape.core.config import load_schema
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.models.checkpoint import load_clients, load_trajectory
from fedscape.plan.resources import GPU_RULES, RULE_NEEDS, data_job_mem_mb, gpu_job_resources, init_mem_mb, train_mem_mb
from fedscape.plan.workflow import check_config
from fedscape.stages.init_settings import TRAINING_KINDS

PROFILE = ROOT / "slurm" / "config.yaml"
SLURM_DIR = ROOT / "tests" / "slurm"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
RESOURCE_KEYS = ("mem_mb", "runtime", "cpus_per_task")


def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def rule_envs() -> dict[str, str]:
    """rule name -> the conda env file named by its `conda:` directive ('' when it has none)."""
    envs = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) \w+:)", path.read_text(), flags=re.M):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if name:
                env = re.search(r"^    conda:\s*\n\s*\"([^\"]+)\"", block, flags=re.M)
                envs[name.group(1)] = env.group(1) if env else ""
    return envs


def evaluate_resource(expression: object, environ: dict[str, str] | None = None, inputs: tuple[str, ...] = ("x",),
                      attempt: int = 1) -> object:
    """A profile resource value as Snakemake evaluates it for a job: a string is a Python expression over the
    job's `input` (named `inputs`) and `attempt`, under the environment `environ` (default: this one)."""
    if not isinstance(expression, str):
        return expression
    saved = dict(os.environ)
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        namespace = {"input": Namedlist(fromdict={name: f"{name}.file" for name in inputs}), "attempt": attempt}
        return eval(expression, namespace)  # noqa: S307 - the profile's own expressions
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- static checks ---------------------------------------------------------------------------------
def test_profile_is_one_file_where_snakemake_resolves_a_bare_name():
    # `--profile slurm` resolves to ./slurm: the directory holds exactly one config file
    assert sorted(p.name for p in PROFILE.parent.iterdir()) == ["config.yaml"]
    assert profile()["executor"] == "slurm"


def test_gpu_rules_are_sized_and_use_the_cuda_env():
    envs = rule_envs()
    gpu_rules = set(GPU_RULES)

    assert {"train", "init", "landscape_chunk", "hessian"} <= gpu_rules
    for rule in gpu_rules:
        res = {key: evaluate_resource(value) for key, value in profile()["set-resources"][rule].items()}
        # the rules that read a data set size their memory by it themselves (tests/unit/test_job_memory.py)
        keys = [key for key in RESOURCE_KEYS if not (key == "mem_mb" and RULE_NEEDS[rule].host_mb)]
        assert all(key in res for key in keys), (rule, res)
        assert res.get("mem_mb", 4000) >= 4000 and res["runtime"] >= 60 and res["cpus_per_task"] >= 1
        if rule in envs:  # rules that other stages have not added yet are simply never submitted
            assert envs[rule] == "../envs/torch.yaml", rule
    for rule, env in envs.items():
        assert env in ("../envs/torch.yaml", "../envs/light.yaml"), f"rule {rule} has no conda env"
        if env == "../envs/torch.yaml":
            assert rule in gpu_rules, f"rule {rule} uses the CUDA env but asks for no GPU"


def test_conda_envs_install_torch_and_fedscape():
    torch_env = yaml.safe_load((ROOT / "envs" / "torch.yaml").read_text())
    light_env = yaml.safe_load((ROOT / "envs" / "light.yaml").read_text())

    assert any(str(d).startswith("pytorch-gpu") for d in torch_env["dependencies"])
    assert any(str(d).startswith("pytorch-cpu") for d in light_env["dependencies"])
    for name in ("torch", "light"):
        deploy = ROOT / "envs" / f"{name}.post-deploy.sh"  # Snakemake runs <env>.post-deploy.sh after creating it
        assert os.access(deploy, os.X_OK)
        assert "pip install" in deploy.read_text()


# PIL (ImageNet-200's JPEGs): conda-forge's torchvision depends on pillow, so the envs bring it without listing it (a
# changed env file would rerun every job of a conda deployment: Snakemake's software-env trigger).
CONDA_PACKAGES = {"torch": ("pytorch-gpu", "pytorch-cpu"), "torchvision": ("torchvision",), "numpy": ("numpy",),
                  "pandas": ("pandas",), "matplotlib": ("matplotlib-base", "matplotlib"), "sklearn": ("scikit-learn",),
                  "scipy": ("scipy",), "yaml": ("pyyaml",), "jsonschema": ("jsonschema",),
                  "PIL": ("pillow", "torchvision")}


# Modules that only the tools run beside Snakemake import (never a job, so never a job's env), each with the files
# allowed to: `make status` reads the config and Snakemake's metadata with Snakemake's own code, in the venv that runs
# the workflow.
HOST_ONLY = {"snakemake": {"src/fedscape/plan/status.py"}}


def third_party_imports(host_only: bool = False) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, of the library and the workflow scripts (stdlib and fedscape left
    out); with `host_only`, the HOST_ONLY modules too."""
    modules: dict[str, set[str]] = {}
    for path in [*(ROOT / "src" / "fedscape").rglob("*.py"), *(ROOT / "workflow" / "scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    return {m: files for m, files in modules.items() if m not in sys.stdlib_module_names and m != "fedscape"
            and (host_only or m not in HOST_ONLY)}


def test_host_only_modules_are_imported_only_by_their_tools():
    imported = third_party_imports(host_only=True)

    assert imported.get("snakemake")  # the scan sees make status's imports
    assert {m: files - HOST_ONLY[m] for m, files in imported.items() if m in HOST_ONLY and files - HOST_ONLY[m]} == {}


@pytest.mark.parametrize("env", ["torch", "light"])
def test_conda_envs_provide_every_module_fedscape_imports(env):
    # post-deploy installs fedscape with --no-deps: the env file itself must bring every import
    packages = {re.split(r"[\s=<>!]", str(d))[0] for d in yaml.safe_load(
        (ROOT / "envs" / f"{env}.yaml").read_text())["dependencies"]}
    modules = set(third_party_imports())

    assert modules >= {"torch", "numpy", "pandas"}  # the scan sees the imports
    unknown = modules - set(CONDA_PACKAGES)
    assert not unknown, f"map {sorted(unknown)} to their conda packages in CONDA_PACKAGES"
    missing = [m for m in sorted(modules) if not set(CONDA_PACKAGES[m]) & packages]
    assert not missing, f"envs/{env}.yaml provides no package for {missing}"


@pytest.mark.parametrize(
    ("environ", "account", "partition", "gpu_partition"),
    [
        ({}, "", "", ""),
        ({"SLURM_ACCOUNT": "proj1", "SLURM_PARTITION": "cpu"}, "proj1", "cpu", "cpu"),
        ({"SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu"}, "", "cpu", "gpu"),
    ],
)
def test_account_and_partitions_come_from_the_environment(environ, account, partition, gpu_partition):
    defaults = profile()["default-resources"]
    train = gpu_job_resources({"training": {"device": "auto"}}, cluster=True, environ=environ)

    assert evaluate_resource(defaults["slurm_account"], environ) == account
    assert evaluate_resource(defaults["slurm_partition"], environ) == partition
    assert train["slurm_partition"] == gpu_partition


def test_every_submitted_rule_uses_the_cpus_it_asks_for():
    # Prepare: the rules that go through sbatch (not `localrule: True`), and the profile
    rules = [m.group(1) for path in sorted((ROOT / "rules").glob("*.smk"))
             for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), flags=re.M | re.S)
             if "localrule: True" not in m.group(2) and m.group(1) != "all"]
    threads, resources = profile()["set-threads"], profile()["set-resources"]
    default_cpus = profile()["default-resources"]["cpus_per_task"]

    # Execute: each rule's CPUs as a computing job asks for them
    cpus = {rule: evaluate_resource(resources.get(rule, {}).get("cpus_per_task", default_cpus)) for rule in rules}

    # Assert: the profile names every such rule, with as many threads as CPUs
    assert {"train", "hessian", "client_stats", "landscape_plane"} <= set(rules)
    assert {rule: threads.get(rule) for rule in rules} == cpus


@pytest.mark.parametrize(("rule", "inputs", "size"), [
    ("hessian", ("trajectory", "partition"), (16001, 480, 4)),
    ("hessian", tuple(f"source_{key}" for key in JOB_FILES), (2000, 10, 1)),
    ("hessian_plane", ("trajectory", "partition"), (16001, 120, 4)),
    ("hessian_plane", ("source_plane",), (2000, 10, 1)),
])
def test_a_copying_hessian_or_plane_job_is_a_small_cpu_job(rule, inputs, size):
    # Prepare: the inputs of a computing job, and of a round-0 job that copies a shared result
    environ = {"SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu", "SLURM_GPU_MODEL": "a100"}

    # Execute: the profile's size of the job, and its rule's memory (for the default config's digits)
    resources = profile()["set-resources"][rule]
    res = {key: evaluate_resource(value, environ, inputs) for key, value in resources.items()}
    config = check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), load_schema(SCHEMA))
    res["mem_mb"] = data_job_mem_mb(rule, config, "digits", 1, any(name.startswith("source_") for name in inputs))

    # Assert (its card: tests/unit/test_resources.py)
    assert (res["mem_mb"], res["runtime"], res["cpus_per_task"]) == size


@pytest.mark.parametrize(("device", "card"), [("cpu", False), ("auto", True)])
def test_a_dry_run_under_the_profile_asks_for_cards_by_the_configs_device(tmp_path, device, card):
    # Prepare: the workflow, the profile as typed, the tiny config computing on `device`
    workdir = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", workdir / "slurm")
    (workdir / "tiny.yaml").write_text(TINY_CONFIG.read_text().replace("  device: cpu\n", f"  device: {device}\n"))
    environ = {"SLURM_ACCOUNT": "acc", "SLURM_PARTITION": "cpuq", "SLURM_GPU_PARTITION": "gpuq",
               "SLURM_GPU_MODEL": "a100"}

    # Execute
    proc = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "tiny.yaml", env=environ, timeout=300)

    # Assert: every train job and the pretrained init on a card in the GPU partition, or a CPU job in the CPU
    # partition (a config that computes on CPUs holds no card idle); the random init (a model made on the CPU) and
    # the partition jobs stay CPU jobs either way
    resources = {rule: {f"{job.get('gpu', '0')} {job.get('gpu_model', '')} {job['slurm_partition']}" for job in jobs}
                 for rule, jobs in planned_resources(proc.stdout).items()}
    want = "1 a100 gpuq" if card else "0  cpuq"
    assert resources["train"] == {want}
    assert resources["init"] == {want, "0  cpuq"}
    assert resources["partition"] == {"0  cpuq"}


# -- a real SLURM -----------------------------------------------------------------------------------
def _selected(config: pytest.Config) -> bool:
    expr = config.getoption("-m") or ""
    return "slurm" in expr and "not slurm" not in expr


def _free_port_base(count: int = 4) -> int:
    for base in range(27000, 40000, 16):
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports for the test cluster")


@pytest.fixture(scope="module")
def slurm_cluster(request, tmp_path_factory):
    """A running one-node cluster (environment for its clients); stopped by PID afterwards."""
    if not _selected(request.config):
        pytest.skip("installs packages and starts daemons as root: run with `make test-slurm` (pytest -m slurm)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root")
    install = subprocess.run(["bash", str(SLURM_DIR / "install_packages.sh")], capture_output=True, text=True,
                             timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install the SLURM packages: {(install.stderr or install.stdout)[-800:]}")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "FEDSCAPE_SLURM_PORT_BASE": str(_free_port_base()), "FEDSCAPE_SLURM_ACCOUNT": "fsacct",
           "FEDSCAPE_SLURM_PARTITION": "fscpu", "FEDSCAPE_SLURM_GPU_PARTITION": "fsgpu"}
    start = subprocess.run(["bash", str(SLURM_DIR / "start_cluster.sh"), str(state)], capture_output=True,
                           text=True, timeout=180, env=env)
    try:
        assert start.returncode == 0, f"cluster did not start:\n{start.stderr[-4000:]}"
        yield {"SLURM_CONF": str(state / "slurm.conf"), "state": str(state)}
    finally:
        subprocess.run(["bash", str(SLURM_DIR / "stop_cluster.sh"), str(state)], capture_output=True, timeout=120)


def _slurm(cmd: list[str], conf: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "SLURM_CONF": conf})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slurm
def test_tiny_workflow_runs_through_sbatch(slurm_cluster, tmp_path, monkeypatch):
    # Prepare: the workflow, the profile as typed, the tiny config; account and partitions from the environment
    workdir = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "slurm", workdir / "slurm")
    # device auto (CUDA where a job sees a card, else its CPUs): the jobs ask SLURM for a card; `cpu` asks for none
    (workdir / "tiny.yaml").write_text(TINY_CONFIG.read_text().replace("  device: cpu\n", "  device: auto\n"))
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    monkeypatch.setenv("SLURM_ACCOUNT", "fsacct")
    monkeypatch.setenv("SLURM_PARTITION", "fscpu")
    monkeypatch.setenv("SLURM_GPU_PARTITION", "fsgpu")
    targets = ["results/tables/rounds.csv", "results/tables/partitions.csv"]

    # Execute: test-only override, the first status check after 2 s instead of 20
    proc = snakemake(workdir, "--profile", "slurm", "--configfile", "tiny.yaml",
                     "--slurm-init-seconds-before-status-checks", "2", *targets, timeout=600)

    # Assert: outputs, and every non-light job went through sbatch into the accounting database
    config = check_config(yaml.safe_load(TINY_CONFIG.read_text()), load_schema(SCHEMA))
    runs = build_runs(config)
    for run in runs:
        assert (workdir / "results" / "train" / run.run_id / "trajectory.pt").is_file()
        meta = json.loads((workdir / "results" / "train" / run.run_id / "meta.json").read_text())
        # set-threads: the job's 4 CPUs (Snakemake caps a job's threads at its node's cores: 2 on a CI machine)
        assert meta["device_name"].endswith(f", {min(4, os.cpu_count())} threads)"), meta["device_name"]
    rounds = (workdir / "results/tables/rounds.csv").read_text().splitlines()
    assert len(rounds) == 1 + len(runs) * (config["training"]["rounds"] + 1)
    # the SLURM profile, and the workflow's default profile beside it (its rerun triggers hold under SLURM too)
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stdout + proc.stderr

    conf = slurm_cluster["SLURM_CONF"]
    rows = [line.split("|") for line in _slurm(
        ["sacct", "-X", "-n", "-P", "-S", "now-1hour", "-o", "JobID,Comment,State,Account,Partition,AllocTRES"],
        conf).splitlines() if line]
    by_rule: dict[str, list[list[str]]] = {}
    for row in rows:
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", row[1])
        assert rule, row
        by_rule.setdefault(rule.group(1), []).append(row)
    inits = {(run.dataset, run.model, run.init) for run in runs}  # one init job per dataset, model and init
    assert {rule: len(jobs) for rule, jobs in by_rule.items()} == {"init": len(inits), "train": len(runs)}
    # Each job where its resources put it: train jobs and the inits that train (pretrained) on a card in the GPU
    # partition, a random init (made on the CPU) in the CPU partition without one; 4 CPUs each; host memory by the
    # data set (16,000 MB and digits' tensors: plan.resources.train_mem_mb, init_mem_mb), a train job's with its kept
    # models, each its init's size: evaluated when it was submitted, after its init job (a dry run shows <TBD>)
    trains = {init: config["inits"][init]["kind"] in TRAINING_KINDS for _, _, init in inits}
    results = Results.of(config)
    init_files = {run: workdir / results.init_file(dataset=run.dataset, model=run.model, init=run.init) for run in runs}
    expected = {"train": sorted(("fsgpu", True, train_mem_mb(config, run, 1, init_files[run])) for run in runs),
                "init": sorted(("fsgpu" if trains[init] else "fscpu", trains[init], init_mem_mb(config, dataset, init))
                               for dataset, _, init in inits)}
    got = {}
    for rule, jobs in by_rule.items():
        for _, _, state, account, partition, tres in jobs:
            assert (state, account) == ("COMPLETED", "fsacct"), (rule, state, account)
            assert "cpu=4" in tres, tres
            mem = int(re.search(r"mem=(\d+)M", tres).group(1))
            got.setdefault(rule, []).append((partition, "gres/gpu=1" in tres, mem))
    assert {rule: sorted(jobs) for rule, jobs in got.items()} == expected
    # light rules stayed on the submitting node (localrules): no sbatch for partitions or tables
    assert not {"partition", "partitions_table", "rounds_table"} & set(by_rule)
    queued = _slurm(["squeue", "-h", "-t", "all", "-o", "%i"], conf).split()
    assert {row[0] for row in rows} <= set(queued)  # MinJobAge keeps finished jobs visible to squeue


def _job_number(job_id: str) -> int:
    """The numeric part of a SLURM job id (`123`, `123_4` or `123+0`)."""
    return int(re.match(r"\d+", job_id).group())


def _attempts_report(workdir: Path, jobs: list[list[str]], log: str) -> str:
    """What each attempt of a resumed job did, for a failure message: the SLURM rows (id, state, limit, elapsed),
    the job log's lines other than per-round progress, and each attempt's SLURM output without those lines (the
    job log holds only the last attempt: Snakemake removes a job's log before running it again)."""
    def not_rounds(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not re.search(r"round \d+/\d+ train_loss", line))

    outputs = [f"--- {path.relative_to(workdir)}\n{not_rounds(path.read_text())[-4000:]}"
               for path in sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"))]
    return "\n".join([f"SLURM jobs: {jobs}", f"job log without rounds:\n{not_rounds(log)}", *outputs])


def time_limit_config(rounds: int) -> dict:
    """One FedAvg run of `rounds` rounds of 25 local epochs (a few seconds a round on one core)."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    keys = ("datasets", "models", "num_clients", "participation", "seeds", "partition", "training")
    cfg = {key: cfg[key] for key in keys} | {"alphas": ["iid"], "algorithms": {"fedavg": {"name": "fedavg"}},
                                             "inits": {"random": {"kind": "random", "seed": 0}}}
    cfg["training"].update(rounds=rounds, local_epochs=25, batch_size=16, save_clients_at=[min(20, rounds)])
    return cfg


def trajectory_of(cfg: dict) -> str:
    """The trajectory file of the one run of time_limit_config `cfg`, below the working directory."""
    config = check_config(yaml.safe_load(yaml.safe_dump(cfg)), load_schema(SCHEMA))
    (run,) = build_runs(config)
    return Results.of(config).run_file(run, "trajectory")


# Seconds of training, on one uncontended core, that the time-limit test's run takes: beyond the first attempt's
# 1-minute limit plus the up to 30 s SLURM takes to enforce it (its limit check runs every 30 s; KillWait is 5 s),
# with room for a calibration that came out fast. A fixed number of rounds sized for the fastest CPU ran ~8 minutes
# on a slow one; sized for a slow one, it finished before the kill on a fast one (50 rounds: 81 s on an AMD EPYC).
TIME_LIMIT_TRAIN_SECONDS = 120


def rounds_outlasting(seconds: float, workdir: Path) -> int:
    """Rounds of time_limit_config that train for about `seconds` on one core here, from the per-round seconds that a
    3-round run of it logs in `workdir` (the fastest of rounds 1-3: round 0 only evaluates, and round 1 also warms
    up)."""
    cfg = time_limit_config(3)
    (workdir / "run.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, trajectory_of(cfg), "--configfile", "run.yaml", "--set-threads", "train=1", cores=1,
              timeout=600)
    log = next((workdir / "logs/train").rglob("train.log")).read_text()
    per_round = min(float(s) for s in re.findall(r"round [1-3]/3 .*seconds=([\d.]+)", log))
    return max(25, math.ceil(seconds / per_round))


@pytest.mark.slurm
def test_time_limit_kill_resubmits_and_resumes_to_identical_checkpoints(slurm_cluster, tmp_path, monkeypatch):
    # Prepare: a run longer than its first attempt's 1-minute limit on this machine (the resubmission gets 15
    # minutes, so that a slow or shared CI machine still finishes it: at 1, 2, 3 minutes all three attempts once
    # timed out), and the same run uninterrupted on the local machine, started alongside as the reference
    cfg = time_limit_config(rounds_outlasting(TIME_LIMIT_TRAIN_SECONDS, copy_workflow(tmp_path / "calibration")))
    target = trajectory_of(cfg)
    slurm_dir, local_dir = copy_workflow(tmp_path / "slurm"), copy_workflow(tmp_path / "local")
    shutil.copytree(ROOT / "slurm", slurm_dir / "slurm")
    for workdir in (slurm_dir, local_dir):
        (workdir / "run.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "run.yaml"]
    reference = subprocess.Popen(command, cwd=local_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    for key, value in (("SLURM_ACCOUNT", "fsacct"), ("SLURM_PARTITION", "fscpu"), ("SLURM_GPU_PARTITION", "fsgpu")):
        monkeypatch.setenv(key, value)
    conf = slurm_cluster["SLURM_CONF"]
    listed = _slurm(["sacct", "-X", "-n", "-P", "-S", "now-1day", "-o", "JobID"], conf).split()
    earlier = [_job_number(j) for j in listed]  # jobs of earlier tests, which reuse this run's wildcards

    # Execute: the profile as typed, with a test-only time limit on the training job, and one thread as the
    # reference has: this one-node cluster shares its cores with the reference run, where two torch threads
    # beside it would spin on an oversubscribed core (a round then takes many times longer)
    proc = snakemake(slurm_dir, target, "--profile", "slurm", "--configfile", "run.yaml", "--retries", "1",
                     "--set-resources", "train:runtime=1 if attempt == 1 else 15", "--set-threads", "train=1",
                     "--slurm-init-seconds-before-status-checks", "2", timeout=1500)

    # Assert: the first attempt hit its time limit, a resubmission completed, resuming after a saved
    # round, and the checkpoints equal the uninterrupted run's bit for bit
    assert reference.wait(timeout=1500) == 0
    rows = [line.split("|") for line in _slurm(
        ["sacct", "-X", "-n", "-P", "-S", "now-1day", "-o", "JobID,Comment,State,Timelimit,Elapsed"],
        conf).splitlines() if line]
    train = [row for row in rows if row[1].startswith("rule_train") and _job_number(row[0]) > max(earlier, default=0)]
    train.sort(key=lambda row: _job_number(row[0]))
    states = [row[2] for row in train]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", (states, proc.stderr[-3000:])
    log = next((slurm_dir / "logs/train").rglob("train.log")).read_text()
    resumed = [int(m) for m in re.findall(r"resuming after round (\d+)/", log)]
    assert resumed and resumed[0] > 0, _attempts_report(slurm_dir, train, log)
    ours, theirs = slurm_dir / target, local_dir / target
    assert torch.equal(load_trajectory(ours).params, load_trajectory(theirs).params)
    ours_clients = load_clients(ours.with_name("clients.pt"))
    theirs_clients = load_clients(theirs.with_name("clients.pt"))
    assert torch.equal(ours_clients[20].params, theirs_clients[20].params)


def test_the_profile_names_only_rules_that_exist():
    # Prepare: every rule of the workflow
    rules = set(rule_envs())

    # Execute / Assert: a renamed or removed rule leaves no stale entry behind
    assert set(profile()["set-resources"]) <= rules
    assert set(profile()["set-threads"]) <= rules
