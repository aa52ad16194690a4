"""The check that the workflow makes when it starts (`plan.workflow.check_read_files`): every result that a job about
to run reads is readable and its job's, or nothing runs, so that no job deletes its finished outputs and then fails
on (or computes on) a damaged or foreign file. Torch-free readers (`core.provenance`) against the real writers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedscape.core.config import ConfigError
from fedscape.core.io import remake_hint
from fedscape.core.provenance import checkpoint_record
from fedscape.models.checkpoint import ModelMeta, save_clients, save_trajectory
from fedscape.plan.workflow import check_read_files

RUN_ID = "digits/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~4/part~1.0/seed~0"
OTHER = RUN_ID.replace("seed~0", "seed~1")
META = ModelMeta("cnn_small", 10, 1, 8)


def trajectory(path: Path, run_id: str = RUN_ID) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trajectory(path, torch.zeros(3, 4), torch.zeros(3, 0), torch.arange(3), META, {"run_id": run_id})
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
}


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
           trajectory(Path("results/init/digits/cnn_small/init~random/init.pt"), run_id="")]
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
