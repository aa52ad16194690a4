"""End-to-end: the real workflow on tiny configs in temporary directories."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.workflow import ROOT, TINY_CONFIG, copy_workflow, planned_jobs, snakemake, snakemake_records

from fedscape.core.io import CONTINUE_BY_MEANING
from fedscape.models.checkpoint import load_clients, load_trajectory

ROUNDS_COLUMNS = ["run_id", "dataset", "model", "init", "algorithm", "alpha", "num_clients", "participation", "seed",
                  "round", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "peak_mem_mb", "status",
                  "code_version"]


def tiny_config() -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text())


def test_partitions_table(tiny_run):
    cfg = tiny_config()
    df = pd.read_csv(tiny_run / "results/tables/partitions.csv")

    assert list(df.columns) == ["dataset", "alpha", "partition", "num_clients", "seed", "client_id", "num_samples",
                                *[f"class_{k}" for k in range(10)]]
    assert {"inf", "0.5"} <= set(df["alpha"].astype(str))
    assert set(df.loc[df["alpha"].astype(str) == "inf", "partition"]) == {"iid"}
    assert set(df.loc[df["alpha"].astype(str) == "0.5", "partition"]) == {"dirichlet"}
    n_train = None
    for (_, num_clients, _), part in df.groupby(["alpha", "num_clients", "seed"]):
        # one row per client, and every partition covers the same training pool
        assert sorted(part["client_id"]) == list(range(num_clients))
        assert n_train in (None, part["num_samples"].sum())
        n_train = part["num_samples"].sum()
        assert part["num_samples"].min() >= cfg["partition"]["min_size"]
    assert (df[[f"class_{k}" for k in range(10)]].sum(axis=1) == df["num_samples"]).all()


def test_rounds_table(tiny_run):
    cfg = tiny_config()
    df = pd.read_csv(tiny_run / "results/tables/rounds.csv")

    assert list(df.columns) == ROUNDS_COLUMNS
    fedavg = df[df["algorithm"] == "fedavg"]
    assert fedavg["run_id"].nunique() >= len(cfg["alphas"])
    expected_rounds = list(range(cfg["training"]["rounds"] + 1))
    assert all(rounds == expected_rounds for rounds in fedavg.groupby("run_id")["round"].apply(list))
    assert (df["status"] == "ok").all()
    assert df["test_acc"].between(0, 1).all()


def test_checkpoints_load_with_one_call(tiny_run):
    cfg = tiny_config()
    run_dir = next((tiny_run / "results/train").rglob("algo~fedavg/alpha~iid/**/trajectory.pt")).parent

    traj = load_trajectory(run_dir / "trajectory.pt")
    clients = load_clients(run_dir / "clients.pt")

    assert traj.params.shape[0] == cfg["training"]["rounds"] + 1
    assert sorted(clients) == cfg["training"]["save_clients_at"]
    assert clients[1].params.shape == (cfg["num_clients"][0], traj.params.shape[1])
    init = load_trajectory(next((tiny_run / "results/init").rglob("init~random/init.pt")))
    assert torch.equal(traj.params[0], init.params[0])


def test_second_run_plans_nothing_and_alpha_change_reruns_one_branch(tiny_run):
    proc = snakemake(tiny_run, "--configfile", "tiny.yaml", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr

    cfg = tiny_config()
    cfg["alphas"] = ["iid" if a == "iid" else 0.3 for a in cfg["alphas"]]
    for exp in cfg.get("experiments", []):
        if exp.get("alpha") not in (None, "iid"):
            exp["alpha"] = 0.3
    (tiny_run / "changed.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tiny_run, "--configfile", "changed.yaml", "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr

    planned = dict(line.split()[:2] for line in out.splitlines()
                   if len(line.split()) == 2 and line.split()[1].isdigit())
    assert planned.get("partition") == "1"
    n_train = sum(1 for _ in (tiny_run / "results/train").rglob("alpha~0.5/**/trajectory.pt"))
    assert planned.get("train") == str(n_train)


def test_rulegraph(tiny_run):
    proc = snakemake(tiny_run, "--configfile", "tiny.yaml", "--rulegraph")

    assert "digraph" in proc.stdout and "train" in proc.stdout


def test_invalid_config_fails_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    cfg = tiny_config()
    cfg["training"]["rounds"] = 0
    (workdir / "bad.yaml").write_text(yaml.safe_dump(cfg))

    proc = snakemake(workdir, "--configfile", "bad.yaml", check=False)

    assert proc.returncode != 0
    assert "training.rounds" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def test_every_output_is_planned_below_the_configured_results_dir(tmp_path):
    workdir = copy_workflow(tmp_path / "work")
    scratch = tmp_path / "scratch" / "fedscape"
    cfg = tiny_config() | {"results_dir": str(scratch)}
    (workdir / "scratch.yaml").write_text(yaml.safe_dump(cfg))

    proc = snakemake(workdir, "--configfile", "scratch.yaml", "--summary")

    outputs = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert len(outputs) > 50
    assert all(path.startswith(f"{scratch}/") for path in outputs), [p for p in outputs if str(scratch) not in p]


@pytest.mark.parametrize("bad", ["", "a/../../b", "..", "with space", "res{x}"])
def test_bad_results_dir_is_rejected(tmp_path, bad):
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(tiny_config() | {"results_dir": bad}))

    proc = snakemake(workdir, "--configfile", "bad.yaml", "-n", check=False)

    assert proc.returncode != 0
    assert "results_dir" in proc.stdout + proc.stderr


def single_run_config() -> dict:
    cfg = tiny_config()
    cfg["alphas"] = ["iid"]
    cfg["training"].update(rounds=6, local_epochs=4, save_clients_at=[2, 5])
    keys = ("datasets", "models", "alphas", "num_clients", "participation", "seeds", "partition", "training")
    return {key: cfg[key] for key in keys} | {"algorithms": {"fedavg": {"name": "fedavg"}},
                                              "inits": {"random": {"kind": "random", "seed": 0}}}


def start_snakemake(workdir: Path, config: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "results/tables/rounds.csv", "--cores", "1", "--configfile", config]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.mark.slow
def test_killed_train_job_resumes_to_identical_checkpoints(tmp_path):
    cfg = single_run_config()
    reference = copy_workflow(tmp_path / "reference")
    killed = copy_workflow(tmp_path / "killed")
    for workdir in (reference, killed):
        (workdir / "one.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(reference, "results/tables/rounds.csv", "--configfile", "one.yaml")

    proc = start_snakemake(killed, "one.yaml")
    deadline = time.time() + 300
    log = None
    while time.time() < deadline:
        logs = list((killed / "logs/train").rglob("train.log")) if (killed / "logs/train").exists() else []
        log = logs[0] if logs else None
        if log is not None and "round 3/6" in log.read_text():
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert log is not None and "round 3/6" in log.read_text()
    assert not list((killed / "results/train").rglob("trajectory.pt"))

    snakemake(killed, "--unlock", "--configfile", "one.yaml")
    snakemake(killed, "results/tables/rounds.csv", "--configfile", "one.yaml")

    assert "resuming after round" in log.read_text()
    ref_dir = next((reference / "results/train").rglob("trajectory.pt")).parent
    new_dir = next((killed / "results/train").rglob("trajectory.pt")).parent
    assert torch.equal(load_trajectory(ref_dir / "trajectory.pt").params,
                       load_trajectory(new_dir / "trajectory.pt").params)
    ref_clients, new_clients = load_clients(ref_dir / "clients.pt"), load_clients(new_dir / "clients.pt")
    assert all(torch.equal(ref_clients[r].params, new_clients[r].params) for r in (2, 5))
    assert not (new_dir / "_progress").exists()


def test_single_run_writes_only_below_the_configured_results_dir(tmp_path):
    workdir = copy_workflow(tmp_path / "work")
    scratch = tmp_path / "scratch"
    cfg = single_run_config() | {"results_dir": str(scratch)}
    cfg["training"].update(rounds=2, local_epochs=1, save_clients_at=[1])
    (workdir / "scratch.yaml").write_text(yaml.safe_dump(cfg))

    snakemake(workdir, "--configfile", "scratch.yaml")

    assert not (workdir / "results").exists()
    assert pd.read_csv(scratch / "tables/rounds.csv")["round"].max() == 2
    assert next((scratch / "train").rglob("trajectory.pt")).is_file()
    # the logs of a results_dir other than the default mirror it below logs/ (no other config writes them)
    assert next((workdir / "logs" / str(scratch).lstrip("/") / "train").rglob("train.log")).is_file()
    assert (workdir / "logs" / str(scratch).lstrip("/") / "tables" / "rounds.log").is_file()
    assert not (workdir / "logs" / "tables").exists()
    assert snakemake(workdir, "--configfile", "scratch.yaml", "-n").stdout.count("Nothing to be done") == 1
    # logs are not outputs Snakemake checks: moving them (as this layout did) reruns nothing
    shutil.rmtree(workdir / "logs")
    assert snakemake(workdir, "--configfile", "scratch.yaml", "-n").stdout.count("Nothing to be done") == 1


def test_the_advised_forcerun_remakes_a_damaged_checkpoint_where_deleting_it_does_nothing(tmp_path):
    """Snakemake does not remake a deleted intermediate file while the files made from it exist; the
    command the errors give (`snakemake --forcerun <file>`) remakes it and everything made from it."""
    from fedscape.core.io import remake_hint
    from fedscape.models.checkpoint import CheckpointError

    # Prepare: one tiny run with its tables, then its trajectory damaged
    workdir = copy_workflow(tmp_path / "work")
    cfg = single_run_config()
    cfg["training"].update(rounds=2, local_epochs=1, save_clients_at=[1])
    (workdir / "one.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, "results/tables/client_stats.csv", "--configfile", "one.yaml")
    trajectory = next((workdir / "results/train").rglob("trajectory.pt"))
    relative = trajectory.relative_to(workdir)
    table = workdir / "results/tables/client_stats.csv"
    before = table.stat().st_mtime_ns
    trajectory.unlink()
    deleted = snakemake(workdir, "results/tables/client_stats.csv", "--configfile", "one.yaml", "-n")
    trajectory.write_bytes(b"damaged")
    with pytest.raises(CheckpointError) as err:
        load_trajectory(trajectory)
    command = f"snakemake --cores 1 --forcerun {trajectory}"

    # Execute: the advised command, with the target and config of this workflow
    snakemake(workdir, "results/tables/client_stats.csv", "--configfile", "one.yaml", "--forcerun", str(relative))

    # Assert
    assert "Nothing to be done" in deleted.stdout  # why deleting is never the advice
    assert command in str(err.value) and remake_hint(trajectory) in str(err.value)
    assert load_trajectory(trajectory).final_round == 2
    assert table.stat().st_mtime_ns > before  # the table made from it was made again


def _foreign_partition(path: Path) -> None:
    """A valid partition file of another seed written over `path` (same dataset and client count)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "seed": meta["seed"] + 1}))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _cut_partition(path: Path) -> None:
    """The partition file cut short, as a full disk or a killed copy leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_a_damaged_partition_stops_the_run_before_any_job_and_its_remedy_remakes_nothing_else(tmp_path):
    """A partition damaged or replaced after its run finished is newer than the run: Snakemake plans the run again,
    and the workflow refuses before any job deletes an output (an input function that raised made Snakemake drop the
    run and what reads it, silently, and remake the tables from the rest). `make status` names the file; the remedy
    in the message makes it again alone and continues without making anything else again."""
    # Prepare: one finished run, every target of the workflow
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "one.yaml").write_text(yaml.safe_dump(single_run_config()))
    snakemake(workdir, "--configfile", "one.yaml")
    results = workdir / "results"
    partition = next((results / "partitions").rglob("partition.npz"))
    relative, own = str(partition.relative_to(workdir)), partition.read_bytes()
    # the partition job's outputs and its record
    remade = {partition, partition.with_name("counts.csv"),
              results / "_manifest" / partition.parent.relative_to(results) / "partition.json"}

    def files(but: set[Path]) -> dict[Path, tuple[bytes, int]]:
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*") if p.is_file() and p not in but}

    finished = files({partition})
    for damage, message in ((_cut_partition, "is not a readable partition file (BadZipFile: "),
                            (_foreign_partition, "is not the partition of this run: seed 1 (expected 0)")):
        # Execute: the partition damaged; a dry run, `make status` and the run
        damage(partition)
        planned = planned_jobs(workdir, "--configfile", "one.yaml")
        status = subprocess.run([sys.executable, "-m", "fedscape.plan.status", "--configfile", "one.yaml"],
                                cwd=workdir, capture_output=True, text=True, timeout=300)
        proc = snakemake(workdir, "--configfile", "one.yaml", check=False)

        # Assert: the train job is planned (its input is newer) and status names the file with the remedy; the run
        # is refused before any job with the same line, and no file was deleted, remade or touched
        assert planned["train"] == 1 and planned["rounds_table"] == 1
        remedy = f"--force {relative}`, then continue with `{CONTINUE_BY_MEANING}`"
        # status's: with the arguments it was given
        given = (f"`snakemake --cores 1 --configfile one.yaml --force {relative}`, then continue with "
                 f"`{CONTINUE_BY_MEANING.replace(' --rerun-triggers', ' --configfile one.yaml --rerun-triggers')}`")
        assert status.returncode == 0 and f"\n  {relative} {message}" in status.stdout and given in status.stdout
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "(nothing ran, no output was deleted):\n" in out
        assert f"\n  - {relative} {message}" in out and remedy in out
        assert files({partition}) == finished

        # Execute: the remedy
        snakemake(workdir, "--force", relative, "--configfile", "one.yaml", cores=1)
        snakemake(workdir, *CONTINUE_BY_MEANING.split()[1:], "--configfile", "one.yaml")

        # Assert: the partition is its own again, bit for bit, and nothing else was made again
        assert partition.read_bytes() == own
        assert files(remade) == {p: state for p, state in finished.items() if p not in remade}
        assert partition.with_name("counts.csv").read_bytes() == finished[partition.with_name("counts.csv")][0]
        finished = files({partition})


@pytest.mark.slow
def test_a_foreign_partition_or_trajectory_under_finished_analyses_stops_the_workflow_before_anything_is_deleted(
        tmp_path):
    """Where the run's train job is finished, the jobs about to run are its analyses: the partition they would read
    is checked when the workflow starts, so that none of them deletes its finished outputs and then fails (or
    computes on another run's split)."""
    # Prepare: a finished run with a Hessian analysis of its final round
    workdir = copy_workflow(tmp_path / "wf")
    cfg = single_run_config() | {"hessian": {"enabled": True, "rounds": ["final"], "trace_probes": 4,
                                             "eval_samples": 64, "max_iter": 10, "tol": 1e-2,
                                             "density": {"enabled": False}}}
    cfg["training"].update(rounds=2, local_epochs=1, save_clients_at=[1])
    (workdir / "one.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, "--configfile", "one.yaml")
    partition = next((workdir / "results/partitions").rglob("partition.npz"))
    finished = {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file() and p != partition}

    # Execute: another seed's partition put in its place (newer than everything made from it)
    _foreign_partition(partition)
    proc = snakemake(workdir, "--configfile", "one.yaml", check=False)

    # Assert: stopped with the file, what was expected and found, and the command that remakes it; nothing lost
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is not the partition of this run: seed 1 (expected 0)" in out
    assert "nothing ran, no output was deleted" in out
    assert f"--force {partition.relative_to(workdir)}" in out
    assert {p: p.read_bytes() for p in finished if p.exists()} == finished

    # Execute: the advice (remake the partition, continue by meaning)
    snakemake(workdir, "--force", str(partition.relative_to(workdir)), "--configfile", "one.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "one.yaml", *CONTINUE_BY_MEANING.split()[1:])

    # Assert: the partition is its own again, and nothing made from it would be made again
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # Execute: the run's trajectory recording another run (the Hessian job reads it)
    trajectory = next((workdir / "results/train").rglob("trajectory.pt"))
    finished = {p: p.read_bytes() for p in (workdir / "results").rglob("*") if p.is_file() and p != trajectory}
    _foreign_trajectory(trajectory)
    proc = snakemake(workdir, "--configfile", "one.yaml", check=False)

    # Assert: stopped before the Hessian job deleted its outputs
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is not the trajectory checkpoint of this job: run_id" in out and "nothing ran" in out
    assert f"--forcerun {trajectory.relative_to(workdir)}" in out
    assert {p: p.read_bytes() for p in finished if p.exists()} == finished


def _foreign_trajectory(path: Path) -> None:
    """The run's trajectory saved again recording the run of another seed (as that run's file would)."""
    from fedscape.models.checkpoint import save_trajectory

    traj = load_trajectory(path)
    other = traj.meta["run_id"].replace("seed~0", "seed~1")
    save_trajectory(path, traj.params, traj.buffers, traj.rounds, traj.model_meta, {**traj.meta, "run_id": other})


def test_every_computing_job_records_its_device_and_precision(tiny_run):
    # the train job's meta.json, each Hessian job's hessian.json and each landscape chunk (tiny config: device cpu)
    metas = [json.loads(p.read_text()) for p in (tiny_run / "results/train").rglob("meta.json")]
    metas += [json.loads(p.read_text()) for p in (tiny_run / "results/hessian").rglob("hessian.json")
              if "shared_from" not in json.loads(p.read_text())]
    metas += [json.loads(str(np.load(p)["meta"])) for p in (tiny_run / "results/landscape").rglob("chunk~*.npz")]
    assert len(metas) >= 6
    for meta in metas:
        assert (meta["device"], meta["precision"], meta["precision_used"]) == ("cpu", "fp32", "fp32")
        assert meta["device_name"].startswith("cpu (")
    # and every GPU rule's log says where and how it computed (a round-0 Hessian job that copies computes nothing)
    logs = tiny_run / "logs"
    for pattern in ("train/**/train.log", "init/**/init~pre/init.log", "hessian/**/hessian.log",
                    "landscape/**/chunk~*.log", "barriers/interpolation/*.log", "barriers/layerwise/*/round~*.log"):
        found = [p.read_text() for p in logs.glob(pattern)]
        assert found, pattern
        assert all("computing on cpu" in text and "in fp32" in text for text in found
                   if "analyses the same model on the same data" not in text), pattern


def test_every_job_records_its_outputs_and_verify_finds_the_results_intact(tiny_run):
    # Prepare: the records below results/_manifest/ and the jobs' logs
    records = {p.relative_to(tiny_run / "results/_manifest").with_suffix(""): json.loads(p.read_text())
               for p in (tiny_run / "results/_manifest").rglob("*.json")}
    logs = {p.relative_to(tiny_run / "logs").with_suffix("") for p in (tiny_run / "logs").rglob("*.log")}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout

    # Execute: `make verify`'s command
    proc = subprocess.run([sys.executable, "-c", "import sys; from fedscape.core.manifest import main; "
                           "sys.exit(main(sys.argv[1]))", "results"], cwd=tiny_run, capture_output=True, text=True)

    # Assert: one record per job, each output hashed; a train job's names the torch it ran and this checkout
    assert set(records) == logs
    train = next(r for r in records.values() if r["log"].endswith("/train.log"))
    assert {Path(p).name for p in train["outputs"]} == {"trajectory.pt", "clients.pt", "metrics.csv", "meta.json",
                                                        "client_updates.csv"}
    assert train["software"]["torch"] == torch.__version__
    assert train["code"]["commit"] == commit.strip() and commit.strip()
    assert train["compute"]["precision_used"] == "fp32"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 changed, missing or foreign" in proc.stdout


def test_every_job_with_settings_records_those_it_computed_with_and_their_digest(tiny_run):
    # Prepare: Snakemake's record of each job's params, by its log; and fedscape's records below results/_manifest/
    params = {}
    for meta in snakemake_records(tiny_run):
        for log in meta.get("log") or []:
            params[log] = meta["params"]
    records = [json.loads(p.read_text()) for p in (tiny_run / "results/_manifest").rglob("*.json")]

    # Execute: the records of the rules whose params carry settings
    with_settings = [r for r in records if "settings" in r]

    # Assert: each holds the settings of its params, as Snakemake compares them (one settings dict, or a rule's
    # params one by one: client_stats), and their digest
    rules = {Path(r["log"]).parts[1] for r in with_settings}
    assert rules >= {"partitions", "init", "train", "hessian", "landscape", "barriers", "tables"}
    for record in with_settings:
        values = json.loads(json.dumps([ast.literal_eval(text) for text in params[record["log"]]], default=str))
        dicts = [value for value in values if isinstance(value, dict)]
        assert dicts.count(record["settings"]) == 1 or values == list(record["settings"].values()), record["log"]
    assert not [r["log"] for r in records if "/train.log" in r["log"] and "settings" not in r]
    # an init's model file names the digest of the settings it was made from, as the job's record does
    inits = [r for r in with_settings if r["log"].startswith("logs/init/")]
    assert inits
    for record in inits:
        (model,) = record["outputs"]
        meta = load_trajectory(tiny_run / "results" / model).meta
        assert record["settings_digest"] == meta["settings_digest"], record["log"]
