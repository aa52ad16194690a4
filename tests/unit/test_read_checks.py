"""The check that the workflow makes when it starts (`plan.workflow.check_read_files`): every result that a job about
to run reads is readable and its job's, or nothing runs, so that no job deletes its finished outputs and then fails
on (or computes on) a damaged or foreign file. Torch-free readers (`core.provenance`) against the real writers.
Partitions (`plan.workflow.partition_problems`) are checked there and by `make status`."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.configs import SCHEMA, config_with
from helpers.workflow import ROOT

from fedscape.core.config import ConfigError
from fedscape.core.io import CONTINUE_BY_MEANING, remake_alone_hint, remake_hint, shell_words
from fedscape.core.paths import PARTITION_DIR, Results, fill
from fedscape.core.provenance import checkpoint_record
from fedscape.core.runs import Run
from fedscape.core.setting import parse_alpha
from fedscape.data.partition import make_partition, save_partition
from fedscape.models.checkpoint import ModelMeta, save_clients, save_trajectory
from fedscape.plan.train import train_inputs
from fedscape.plan.workflow import (
    check_config,
    check_read_files,
    config_partition_files,
    partition_problems,
)

RUN_ID = "digits/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~4/part~1.0/seed~0"
OTHER = RUN_ID.replace("seed~0", "seed~1")
META = ModelMeta("cnn_small", 10, 1, 8)


def trajectory(path: Path, run_id: str = RUN_ID) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trajectory(path, torch.zeros(3, 4), torch.zeros(3, 0), torch.arange(3), META, {"run_id": run_id})
    return path


def init_file(path: Path, label: str) -> Path:
    """An init's checkpoint, as the init job writes it: its label, no run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trajectory(path, torch.zeros(1, 4), torch.zeros(1, 0), torch.zeros(1, dtype=torch.long), META,
                    {"init": label, "kind": "pretrained", "seed": 0})
    return path


def record(path: Path, **fields) -> Path:
    """A job's JSON record (meta.json, hessian.json) of these fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**fields, "status": "ok"}))
    return path


def metrics(path: Path, run_id: str = RUN_ID) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("run_id,round,test_acc\n" + "".join(f"{run_id},{r},0.5\n" for r in range(3)))
    return path


def cut_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def chunk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, loss=np.zeros((2, 2)), meta=np.array(json.dumps({"chunk": 0})))
    return path


# (the file below results/, how it is made, how it is damaged, what the message says)
DAMAGES = {
    "another run's trajectory": (f"train/{RUN_ID}/trajectory.pt", lambda p: trajectory(p, OTHER), None,
                                 f"is not the trajectory checkpoint of this job: run_id '{OTHER}' "
                                 f"(expected '{RUN_ID}')"),
    "a cut trajectory": (f"train/{RUN_ID}/trajectory.pt", trajectory, cut_half, "is not a readable checkpoint"),
    "another init label's init": ("init/digits/cnn_small/init~random/init.pt", lambda p: init_file(p, "pretrained"),
                                  None, "init 'pretrained' (expected 'random')"),
    "a clients file as trajectory": (f"train/{RUN_ID}/trajectory.pt", lambda p: save_clients(
        p, {}, META, {"run_id": RUN_ID}) or p, None, "kind 'clients' (expected 'trajectory')"),
    "a metrics.csv cut mid-row": (f"train/{RUN_ID}/metrics.csv", metrics,
                                  lambda p: p.write_text(p.read_text()[:-5]), "line 4: cut short"),
    "another run's metrics.csv": (f"train/{RUN_ID}/metrics.csv", lambda p: metrics(p, OTHER), None,
                                  f"line 2 is not a table of run_id {RUN_ID}"),
    "an empty hessian.csv": (f"hessian/{RUN_ID}/round~2/hessian.csv", metrics, lambda p: p.write_text(""),
                             "hessian.csv is empty"),
    "a cut landscape chunk": ("landscape/d/m/s/train/chunks/chunk~0.npz", chunk, cut_half,
                              "is not a readable .npz file"),
    "a damaged JSON file": ("landscape/d/m/s/grid.json", lambda p: p.write_text("{}") or p,
                            lambda p: p.write_text('{"a": '), "is not a readable JSON file"),
    "another run's meta.json": (f"train/{RUN_ID}/meta.json", lambda p: record(p, run_id=OTHER), None,
                                f"is not the record of this job: run_id '{OTHER}' (expected '{RUN_ID}')"),
    "another round's hessian.json": (f"hessian/{RUN_ID}/round~3/hessian.json", lambda p: record(p, run_id=RUN_ID,
                                                                                             round=0), None,
                                     "is not the record of this job: round '0' (expected '3')"),
    "another round's hessian.csv": (f"hessian/{RUN_ID}/round~3/hessian.csv", metrics, None,
                                    "line 2 is not a table of round 3"),
}


def test_an_init_of_its_own_label_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = init_file(Path("results/init/digits/cnn_small/init~random/init.pt"), "random")

    check_read_files([str(path)], ["results/tables/out.csv"], "results")


@pytest.mark.parametrize("case", DAMAGES)
def test_a_damaged_or_foreign_result_stops_the_workflow_naming_it(tmp_path, monkeypatch, case):
    # Prepare: the file a job about to run reads, made by its writer, then damaged
    monkeypatch.chdir(tmp_path)
    relative, make, damage, message = DAMAGES[case]
    path = Path("results") / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    if damage is not None:
        damage(path)

    # Execute
    with pytest.raises(ConfigError) as err:
        check_read_files([str(path)], ["results/tables/out.csv"], "results")

    # Assert: nothing ran; the file, what is wrong, and the command that remakes it
    assert "nothing ran, no output was deleted" in str(err.value)
    assert message in str(err.value) and str(path) in str(err.value)
    assert remake_hint(path) in str(err.value)


def test_whole_results_of_their_own_job_pass_and_remade_or_outside_files_are_not_read(tmp_path, monkeypatch):
    # Prepare: a run's own files; a damaged file that a job about to run makes again; one outside the results
    monkeypatch.chdir(tmp_path)
    own = [trajectory(Path("results/train", RUN_ID, "trajectory.pt")), metrics(Path("results/train", RUN_ID,
                                                                                    "metrics.csv")),
           chunk(Path("results/landscape/d/m/s/train/chunks/chunk~0.npz")),
           trajectory(Path("results/init/digits/cnn_small/init~random/init.pt"), run_id=""),
           record(Path("results/train", RUN_ID, "meta.json"), run_id=RUN_ID),
           record(Path("results/hessian", RUN_ID, "round~2", "hessian.json"), run_id=RUN_ID, round=2)]
    remade = metrics(Path("results/train", OTHER, "metrics.csv"))
    remade.write_text("cut")
    outside = Path("data/table.csv")
    outside.parent.mkdir()
    outside.write_text("cut")

    # Execute / Assert: no error
    check_read_files([*map(str, own), str(remade), str(outside)], [str(remade)], "results")


def test_a_checkpoints_record_reads_without_torch_and_refuses_other_pickles(tmp_path):
    # Prepare: a checkpoint, and a torch file holding an object of another class
    path = trajectory(tmp_path / "trajectory.pt")
    other = tmp_path / "other.pt"
    torch.save({"x": Path("a")}, other)

    # Execute
    record = checkpoint_record(path)

    # Assert: the plain values of the checkpoint; another class is never built
    assert record["kind"] == "trajectory" and json.loads(record["meta"]) == {"run_id": RUN_ID}
    assert "params" not in record
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        checkpoint_record(other)


# -- partitions: checked before any job runs (the onstart) and by `make status` --------------------------------------
PARTITION = {"dataset": "digits", "num_clients": 4, "alpha": "0.5", "seed": 0}


def partition(fields: dict | None = None, **made) -> Path:
    """The partition file of `fields` (PARTITION's by default) below results/, written by the partition job's writer
    for the fields `made` changes (another run's file where they differ)."""
    fields = PARTITION | (fields or {})
    content = fields | made
    labels = np.repeat(np.arange(4), 25)
    path = Path("results", fill(PARTITION_DIR, **fields), "partition.npz")
    save_partition(path, make_partition(labels, content["num_clients"], parse_alpha(content["alpha"]), content["seed"],
                                        min_size=2), labels, 4, {"dataset": content["dataset"]})
    return path


def pickled(path: Path) -> None:
    """A partition's keys, its indices a pickled object (np.load refuses to build it)."""
    with open(path, "wb") as fh:
        np.savez(fh, indices=np.array([{"not": "an index"}], dtype=object), offsets=np.array([0, 1]),
                 meta=np.array("{}"))


# (how the file at PARTITION's path is made or damaged, what the line says)
PARTITION_DAMAGES = {
    "cut in half": (lambda: cut_half(partition()), "is not a readable partition file (BadZipFile: "),
    "a pickle": (lambda: pickled(partition()), "is not a readable partition file (ValueError: "),
    "another seed's": (lambda: partition(seed=1), "is not the partition of this run: seed 1 (expected 0)"),
    "another client count's": (lambda: partition(num_clients=5), "is not the partition of this run: clients 5 "
                                                                 "(expected 4)"),
    "another alpha's": (lambda: partition(alpha="iid"), "is not the partition of this run: alpha inf (expected 0.5)"),
}


@pytest.mark.parametrize("case", PARTITION_DAMAGES)
def test_a_damaged_or_foreign_partition_is_one_line_with_the_commands_that_remake_it_alone(tmp_path, monkeypatch,
                                                                                           case):
    # Prepare
    monkeypatch.chdir(tmp_path)
    damage, message = PARTITION_DAMAGES[case]
    damage()
    path = str(Path("results", fill(PARTITION_DIR, **PARTITION), "partition.npz"))

    # Execute
    lines = partition_problems([path, "results/tables/rounds.csv"])
    with pytest.raises(ConfigError) as err:
        check_read_files([path], ["results/tables/out.csv"], "results")

    # Assert: one line naming the file and what is wrong, then the partition's remedy: made again alone (its runs
    # kept), then continued by meaning; the workflow's error lists that line under "nothing ran"
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"{path} {message}")
    assert ("make it again alone (bit-identical from its seed with the numpy it records) with `snakemake --cores 1 "
            f"--force "
            f"{path}`, then continue with `{CONTINUE_BY_MEANING}`") in lines[0]
    assert str(err.value) == ("a file that the jobs about to run read is damaged or not theirs (nothing ran, no output "
                              f"was deleted):\n  - {lines[0]}")


def test_intact_missing_remade_and_other_files_give_no_partition_line(tmp_path, monkeypatch):
    # Prepare: the partitions of four runs, whole; a damaged one that a job about to run makes again; one not there
    monkeypatch.chdir(tmp_path)
    intact = [partition(), partition({"alpha": "iid"}), partition({"num_clients": 5}), partition({"seed": 1})]
    remade = partition({"seed": 2})
    cut_half(remade)
    missing = Path("results", fill(PARTITION_DIR, **PARTITION | {"seed": 3}), "partition.npz")

    # Execute
    lines = partition_problems([*intact, remade, missing, intact[0].with_name("counts.csv")], remade=[remade])

    # Assert: no line; and the workflow's check passes too
    assert lines == []
    check_read_files([*map(str, intact), str(remade), str(missing)], [str(remade)], "results")


def test_one_line_per_damaged_partition_beside_the_other_damaged_files(tmp_path, monkeypatch):
    # Prepare: two damaged partitions (each read by two jobs), one whole, and a cut metrics.csv
    monkeypatch.chdir(tmp_path)
    cut, foreign, whole = partition(), partition({"alpha": "iid"}, seed=1), partition({"num_clients": 5})
    cut_half(cut)
    table = metrics(Path("results/train", RUN_ID, "metrics.csv"))
    table.write_text(table.read_text()[:-5])

    # Execute
    with pytest.raises(ConfigError) as err:
        check_read_files([str(cut), str(table), str(foreign), str(cut), str(whole), str(foreign)], [], "results")

    # Assert: each damaged file once, the partitions with their remedy, the table with its own
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 3
    assert lines[0].startswith(f"  - {cut} is not a readable partition file") and "--force" in lines[0]
    assert lines[1].startswith(f"  - {foreign} is not the partition of this run: seed 1 (expected 0)")
    assert "--force" in lines[1]
    assert lines[2].startswith(f"  - {table}, line 4: cut short") and lines[2].endswith(remake_hint(table))


@pytest.mark.parametrize("args", ["", "-d 'my work' --configfile c.yaml", "--config 'hessian={top_k: 3}'"])
def test_the_remedies_carry_the_users_arguments_where_given(args):
    # Prepare: a partition file, and a table, below a folder of the user's
    path, table = "results/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz", "results/tables/final.csv"

    # Execute
    alone, remade = remake_alone_hint(path, args), remake_hint(table, args)

    # Assert: the commands with the arguments, each as the shell reads it; the --configfile wording gone
    force, go_on = (shlex.split(command) for command in alone.split("`")[1::2])
    assert force == ["snakemake", "--cores", "1", *shlex.split(args), "--force", path]
    # (its cores before the arguments, so that a --cores of the user's wins; its triggers after them, so that they win)
    assert go_on == ["snakemake", "--cores", "all", *shlex.split(args), *CONTINUE_BY_MEANING.split()[3:]]
    assert CONTINUE_BY_MEANING.split()[1:3] == ["--cores", "all"]
    assert shlex.split(remade.split("`")[1]) == ["snakemake", "--cores", "1", *shlex.split(args), "--forcerun", table]
    assert "--configfile you run with" not in alone + remade
    # and without them, where not known: the wording
    assert "(each with the --configfile you run with)" in remake_alone_hint(path)
    assert "(plus the --configfile you run with)" in remake_hint(table)


WORDS = ["results/hessian/a/round~0/hessian.csv", "~/results/x.csv", "results_dir=~/r", "a:~/b", "/scratch/my runs/x",
         "it's", "$HOME/r", "*.csv", "a;b", "", "--config=hessian={top_k: 3}", "résultats/x"]


def test_shell_words_quote_only_where_the_shell_would_change_a_word():
    # Execute: bash reads the command line back, each argument on a line of its own
    line = shell_words(WORDS)
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, check=True).stdout

    # Assert: every word back as given, and fedscape's paths with their inner `~` unquoted
    assert out.split("\0")[:-1] == WORDS
    assert line.startswith("results/hessian/a/round~0/hessian.csv '~/results/x.csv' 'results_dir=~/r' 'a:~/b' ")


def test_continuing_by_meaning_is_the_default_profiles_rerun_triggers_without_file_dates():
    # the remedy's second command: what was made from a remade partition is older than it, and its scripts may be
    # newer than it (a fresh clone): neither may make it again
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())

    triggers = CONTINUE_BY_MEANING.split("--rerun-triggers ")[1].split()

    assert set(triggers) == set(profile["rerun-triggers"]) - {"mtime"}
    assert "code" not in triggers


def test_the_configs_partition_files_are_its_runs_and_its_warm_ups(tmp_path):
    # Prepare: IID and alpha 0.5 runs from a random init, and a 0.5 run from an IID warm-up on 6 clients, seed 3
    config = check_config(config_with({"warm": {"kind": "iid_warmup", "num_clients": 6, "partition_seed": 3}},
                                      [{"alpha": "iid"}, {"alpha": 0.5}, {"alpha": 0.5, "init": "warm"}],
                                      results_dir=str(tmp_path / "res")), SCHEMA)

    # Execute
    files = config_partition_files(config)

    # Assert: each run's partition once (two runs share alpha 0.5's), and the warm-up's
    assert sorted(files) == [f"{tmp_path}/res/partitions/digits/clients~4/alpha~0.5/seed~0/partition.npz",
                             f"{tmp_path}/res/partitions/digits/clients~4/alpha~iid/seed~0/partition.npz",
                             f"{tmp_path}/res/partitions/digits/clients~6/alpha~iid/seed~3/partition.npz"]


def test_a_train_jobs_inputs_read_no_file(tmp_path, monkeypatch):
    """Snakemake 9 takes an error from an input function, where the job's outputs exist, for "no job makes this
    file" and silently plans without the job: the input function only names the files."""
    # Prepare: a damaged partition of a run
    monkeypatch.chdir(tmp_path)
    path = partition()
    cut_half(path)
    run = Run(dataset="digits", model="cnn_small", init="random", algorithm="fedavg", setting="0.5", num_clients=4,
              participation="1.0", seed=0)

    # Execute
    inputs = train_inputs(Results("results"), run)

    # Assert
    assert inputs == {"partition": str(path), "init": "results/init/digits/cnn_small/init~random/init.pt"}
