"""A Hessian job killed in the aggregate's analysis resumes after its last finished piece (`maths.analysis_pieces`:
the eigenpairs and trace, each SLQ probe of the density, the sharpness, each a part of the job: `stage._aggregate`),
with the outputs of an unbroken job, bit for bit; a part of other settings is not resumed, and the aggregate's part
of an attempt that saved its analysis whole is."""

from __future__ import annotations

import copy
import json
import logging

import pandas as pd
import pytest
import torch
from helpers.hessian import CHEAP, one_round_run
from helpers.resume import killed_at_call

from fedscape.analysis.hessian import maths as maths_mod
from fedscape.analysis.hessian import stage as stage_mod
from fedscape.analysis.hessian.definitions import JOB_FILES, EigenStore
from fedscape.plan.hessian import hessian_job_settings

pytestmark = pytest.mark.usefixtures("one_thread")

PROBES = 3
# the aggregate alone (no client: every count below is its), a density of PROBES probes and both sharpnesses
HESSIAN = {**CHEAP, "method": "lanczos", "clients": 0,
           "density": {"enabled": True, "lanczos_steps": 6, "probes": PROBES},
           "sharpness": {"enabled": True, "steps": 2}}
# what computes each piece: the eigensolver (one Lanczos run, `method: lanczos`) and the trace with the diagonal; one
# Lanczos run per SLQ probe; two sharpness searches (SAM's and the adaptive)
COUNTED = ("top_eigen", "trace_and_diagonal", "lanczos", "sharpness")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One FedAvg run of the tiny config, one round: its Hessian job's settings and inputs at round 1, and the outputs
    and kept eigenpairs of the unbroken job."""
    tmp = tmp_path_factory.mktemp("hessian_resume")
    made = one_round_run(tmp, HESSIAN)
    args = (hessian_job_settings(made["config"], made["runs"], made["run"], 1), made["trajectory"], made["partition"])
    whole = _outputs(tmp / "whole")
    stage_mod.hessian_stage(*args, whole, eigen_store=EigenStore(tmp / "whole_eigenpairs", 1))
    return {"args": args, "whole": whole, "kept": tmp / "whole_eigenpairs"}


def _outputs(folder) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    return {key: str(folder / name) for key, name in JOB_FILES.items()}


def _counted(monkeypatch) -> dict[str, list]:
    """Count the calls of each of COUNTED from now on: each list grows by one per call."""
    counts = {name: [] for name in COUNTED}
    for name, calls in counts.items():
        real = getattr(maths_mod, name)
        monkeypatch.setattr(maths_mod, name, lambda *a, real=real, calls=calls, **k: calls.append(1) or real(*a, **k))
    return counts


def _details(path) -> dict:
    """A job's hessian.json without its measured times, and where its parts were computed."""
    details = json.loads(open(path).read())
    details.pop("seconds")
    details["parts"] = [part for group in details.pop("parts_compute") for part in group["parts"]]
    for part in details["data"].values():
        part.pop("seconds")
    return details


def _assert_as_unbroken(outputs: dict[str, str], kept, trained, parts: list[str] | None = None) -> None:
    """The outputs of a resumed job and the eigenpairs it kept for the plane job are the unbroken job's, bit for bit,
    its parts (`parts_compute`) those of the unbroken job, or `parts`."""
    whole = trained["whole"]
    for key in ("table", "clients", "density"):
        pd.testing.assert_frame_equal(pd.read_csv(outputs[key]), pd.read_csv(whole[key]), check_exact=True)
    expected = _details(whole["details"])
    assert _details(outputs["details"]) == {**expected, "parts": expected["parts"] if parts is None else parts}
    resumed, unbroken = (torch.load(next(folder.rglob("all.pt")), weights_only=True)["part"]
                         for folder in (kept, trained["kept"]))
    assert resumed["values"] == unbroken["values"] and resumed["compute"] == unbroken["compute"]
    assert torch.equal(resumed["d1"], unbroken["d1"]) and torch.equal(resumed["d2"], unbroken["d2"])


@pytest.mark.parametrize(("killed_in", "call", "computed", "resumed"), [
    # the eigensolver's run is Lanczos's first: the third is the density's second probe
    ("lanczos", 3, {"lanczos": 2, "sharpness": 2}, "the eigenpairs and trace, SLQ probes 1 of 3 resumed"),
    ("lanczos", 2, {"lanczos": 3, "sharpness": 2}, "the eigenpairs and trace resumed"),
    ("sharpness", 2, {"lanczos": 0, "sharpness": 2}, "the eigenpairs and trace, SLQ probes 1, 2, 3 of 3 resumed"),
])
def test_a_job_killed_after_its_eigenpairs_resumes_after_its_last_piece_with_the_unbroken_outputs(
        trained, tmp_path, monkeypatch, caplog, killed_in, call, computed, resumed):
    # Prepare: the job killed in its density (at a probe) or its sharpness (at the adaptive one)
    progress = tmp_path / "_progress"
    killed_at_call(monkeypatch, maths_mod, killed_in, call,
                   lambda: stage_mod.hessian_stage(*trained["args"], _outputs(tmp_path / "killed"), progress))
    counts = _counted(monkeypatch)

    # Execute
    outputs = _outputs(tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="fedscape.hessian"):
        stage_mod.hessian_stage(*trained["args"], outputs, progress, EigenStore(tmp_path / "_eigenpairs", 1))

    # Assert: the eigenpairs and trace not computed again, only the pieces after the last saved; the log says which
    # were resumed; the unbroken job's outputs and eigenpairs for the plane job; the parts removed at the end
    assert {name: len(calls) for name, calls in counts.items()} == {"top_eigen": 0, "trace_and_diagonal": 0,
                                                                     **computed}
    assert resumed in caplog.text
    _assert_as_unbroken(outputs, tmp_path / "_eigenpairs", trained)
    assert not progress.exists()


@pytest.mark.parametrize(("changed", "computed"), [
    # how it computes (a neutral field): every piece saved is resumed
    (("batch_size", 32), {"top_eigen": 0, "lanczos": PROBES - 1}),
    # what it computes: nothing saved is resumed, the eigenpairs and every probe computed again
    (("sharpness_rho", 0.1), {"top_eigen": 1, "lanczos": 1 + PROBES}),
])
def test_a_piece_is_resumed_by_a_job_of_its_settings_only(trained, tmp_path, monkeypatch, changed, computed):
    # Prepare: the job killed in its density's second probe; then one of its settings changed
    progress = tmp_path / "_progress"
    killed_at_call(monkeypatch, maths_mod, "lanczos", 3,
                   lambda: stage_mod.hessian_stage(*trained["args"], _outputs(tmp_path / "killed"), progress))
    counts = _counted(monkeypatch)
    settings = copy.deepcopy(trained["args"][0])
    key, value = changed
    settings["hessian"][key] = value

    # Execute
    stage_mod.hessian_stage(settings, *trained["args"][1:], _outputs(tmp_path / "resumed"), progress)

    # Assert
    assert {name: len(counts[name]) for name in computed} == computed


def _as_saved_whole(progress) -> None:
    """Rewrite the aggregate's parts in `progress` as one part, its analysis whole, as an attempt saved it before
    its pieces were parts: the density's probes and the sharpness in AGGREGATE's part, its products and seconds those
    of the whole analysis."""
    whole = torch.load(progress / "all.pt", weights_only=True)
    probes = [torch.load(progress / f"all_density_{i}.pt", weights_only=True)["part"] for i in range(PROBES)]
    sharp = torch.load(progress / "all_sharpness.pt", weights_only=True)["part"]
    part = whole["part"]
    part.update(density={"nodes": [p["nodes"] for p in probes], "weights": [p["weights"] for p in probes]},
                sharpness=sharp["sharpness"], adaptive_sharpness=sharp["adaptive_sharpness"],
                products=part["products"] + sum(p["products"] for p in probes),
                seconds=part["seconds"] + sum(p["seconds"] for p in probes) + sharp["seconds"])
    torch.save(whole, progress / "all.pt")
    for piece in [*(f"all_density_{i}.pt" for i in range(PROBES)), "all_sharpness.pt"]:
        (progress / piece).unlink()


def test_an_aggregate_part_saved_whole_is_resumed_whole(trained, tmp_path, monkeypatch, caplog):
    # Prepare: the job killed once its analysis was saved (writing its outputs), its parts as an attempt that saved
    # the analysis whole left them
    progress = tmp_path / "_progress"
    killed_at_call(monkeypatch, stage_mod, "write_csv", 1,
                   lambda: stage_mod.hessian_stage(*trained["args"], _outputs(tmp_path / "killed"), progress))
    _as_saved_whole(progress)
    counts = _counted(monkeypatch)

    # Execute
    outputs = _outputs(tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="fedscape.hessian"):
        stage_mod.hessian_stage(*trained["args"], outputs, progress, EigenStore(tmp_path / "_eigenpairs", 1))

    # Assert: nothing computed again, the log says so, the unbroken job's outputs (of one aggregate part)
    assert {name: len(calls) for name, calls in counts.items()} == dict.fromkeys(COUNTED, 0)
    assert "its analysis is resumed whole" in caplog.text
    _assert_as_unbroken(outputs, tmp_path / "_eigenpairs", trained, parts=["all"])
