"""Where and by which code the parts of a job resumed after a kill were computed: a Hessian job's parts (hessian.json's
`parts_compute`), a barrier job's bends and rows (the job's record) and a client-statistics job's runs (the record's
`codes`), each part's own compute and code, not the attempt's that resumed it."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from helpers.hessian import one_round_run
from helpers.resume import killed_at_call

from fedscape.analysis.hessian.definitions import JOB_FILES, EigenStore
from fedscape.core import manifest
from fedscape.core.manifest import noted, start_notes
from fedscape.models.device import describe_compute
from fedscape.plan.hessian import hessian_job_settings
from fedscape.stages import progress as progress_mod

pytestmark = pytest.mark.usefixtures("one_thread", "job_notes")

# An earlier attempt's card, and code (a `git pull` before the attempt that resumed it, which runs NOW)
CARD = {"device": "cuda:0", "device_name": "an earlier attempt's card", "precision": "fp32", "precision_used": "fp32",
        "device_uuid": "GPU-0000"}
EARLIER, NOW = "a" * 40, "b" * 40


@pytest.fixture
def job_notes(monkeypatch):
    """The notes of the jobs a test runs (`core.manifest.note`), gone with it; the code they run: NOW."""
    monkeypatch.setattr(manifest, "_NOTES", {})
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: NOW)


def cpu() -> dict:
    """This CPU's compute as a job on it records it now (its thread count: under `one_thread`, 1, whatever the
    threads were when the module was imported)."""
    return describe_compute(torch.device("cpu"), "fp32")


def _forget_compute(part_file) -> None:
    """Rewrite a saved part as code that did not record where, or by which code, parts were computed saved it."""
    saved = torch.load(part_file, weights_only=True)
    saved["part"].pop("compute", None)
    saved.pop("code", None)
    torch.save(saved, part_file)


def _killed_on_a_card(monkeypatch, module, name: str, call: int, run, code: str = EARLIER) -> list:
    """`run()` killed at the `call`-th call of `module.name`, computing as if on `CARD` by `code`; the calls from there
    on, by code NOW, with the job's notes begun afresh."""
    monkeypatch.setattr(module, "describe_compute", lambda *a: dict(CARD), raising=False)
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: code)
    calls = killed_at_call(monkeypatch, module, name, call, run)
    monkeypatch.setattr(module, "describe_compute", describe_compute, raising=False)
    monkeypatch.setattr(progress_mod, "code_version_label", lambda: NOW)
    start_notes()
    return calls


# -- the Hessian job -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One FedAvg run of the tiny config (4 clients), one round: its Hessian job's arguments at round 1."""
    made = one_round_run(tmp_path_factory.mktemp("part_compute"))
    return hessian_job_settings(made["config"], made["runs"], made["run"], 1), made["trajectory"], made["partition"]


def _outputs(folder) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    return {key: str(folder / name) for key, name in JOB_FILES.items()}


@pytest.mark.parametrize("aggregate", ["on a card", "unknown"])
def test_a_resumed_hessian_job_records_where_each_part_was_computed(trained, tmp_path, monkeypatch, aggregate):
    from fedscape.analysis.hessian import stage as stage_mod

    # Prepare: an attempt on a card killed in its third part (the aggregate and client 0 saved); client 0's part (or
    # the aggregate's) saved by code that did not record where
    progress = tmp_path / "_progress"
    calls = _killed_on_a_card(monkeypatch, stage_mod, "analyse", 3,
                              lambda: stage_mod.hessian_stage(*trained, _outputs(tmp_path / "killed"), progress))
    _forget_compute(progress / ("client_0.pt" if aggregate == "on a card" else "all.pt"))

    # Execute: resumed on this CPU, keeping the eigenpairs for the plane job
    resumed = _outputs(tmp_path / "resumed")
    stage_mod.hessian_stage(*trained, resumed, progress, EigenStore(tmp_path / "_eigenpairs", 1))

    # Assert: each part's compute and code, in the order of the parts, and the job's record every code; the job's own
    # compute is this attempt's
    details = json.loads(open(resumed["details"]).read())
    assert len(calls) == 3
    assert details.get("parts_compute") == [
        {"compute": CARD, "code": EARLIER, "parts": ["all"]} if aggregate == "on a card" else
        {"compute": None, "code": None, "parts": ["all"]},
        {"compute": None, "code": None, "parts": ["client_0"]} if aggregate == "on a card" else
        {"compute": CARD, "code": EARLIER, "parts": ["client_0"]},
        {"compute": cpu(), "code": NOW, "parts": ["client_1", "client_2", "client_3"]}]
    assert noted("codes") == ([EARLIER, "unrecorded", NOW] if aggregate == "on a card" else
                              ["unrecorded", EARLIER, NOW])
    assert {key: details[key] for key in cpu()} == cpu()
    # the eigenpairs kept for the plane job name the card that computed them; none kept where that is not known
    kept = tmp_path / "_eigenpairs"
    if aggregate == "on a card":
        assert torch.load(next(kept.rglob("all.pt")), weights_only=True)["part"]["compute"] == CARD
    else:
        assert not list(kept.rglob("all.pt"))
    # the tables of an uninterrupted job, bit for bit, which lists one compute and code, its own, and no codes
    whole = _outputs(tmp_path / "whole")
    start_notes()
    stage_mod.hessian_stage(*trained, whole)
    for key in ("table", "clients", "density"):
        pd.testing.assert_frame_equal(pd.read_csv(resumed[key]), pd.read_csv(whole[key]), check_exact=True)
    assert json.loads(open(whole["details"]).read())["parts_compute"] == [
        {"compute": cpu(), "code": NOW, "parts": ["all", "client_0", "client_1", "client_2", "client_3"]}]
    assert noted("codes") is None


# -- the barrier jobs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy and a diverged run (tests/helpers/diverged.py), trained once for this module."""
    from helpers.diverged import build_diverged_runs

    return build_diverged_runs(tmp_path_factory.mktemp("part_compute_runs"))


@pytest.mark.parametrize("old", [False, True])
def test_a_resumed_interpolation_records_where_each_bend_was_trained(runs, tmp_path, monkeypatch, old):
    from fedscape.analysis.barriers import stage as stage_mod
    from fedscape.plan.barriers import interpolation_pairs, interpolation_settings

    # Prepare: the healthy pair with curve and alignment, killed on a card while training its second bend; the first
    # bend saved by code that did not record where (old) or as now
    config = copy.deepcopy(runs.config)
    config["interpolation"].update(align=True, curve={**config["interpolation"]["curve"], "enabled": True,
                                                      "steps": 5, "batch_size": 32})
    pair = next(p for p in interpolation_pairs(config, [runs.healthy, runs.diverged]) if p.label == "ok_r1_vs_final")
    args = (interpolation_settings(config, pair), runs.trajectory(pair.run_a), runs.trajectory(pair.run_b),
            runs.partition)
    _killed_on_a_card(monkeypatch, stage_mod, "train_bend", 2,
                      lambda: stage_mod.interpolation_job(*args, tmp_path / "curve.csv", tmp_path / "_progress"))
    if old:
        _forget_compute(tmp_path / "_progress" / "bend.pt")

    # Execute
    stage_mod.interpolation_job(*args, tmp_path / "curve.csv", tmp_path / "_progress")

    # Assert: the job's record names the first bend's card and code (or none) and this CPU and code for the second,
    # and both codes; the curve is an uninterrupted job's
    assert noted("parts_compute") == [{"compute": None if old else CARD, "code": None if old else EARLIER,
                                       "parts": ["bend"]},
                                      {"compute": cpu(), "code": NOW, "parts": ["bend_aligned"]}]
    assert noted("codes") == ["unrecorded" if old else EARLIER, NOW]
    stage_mod.interpolation_job(*args, tmp_path / "whole.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "curve.csv"), pd.read_csv(tmp_path / "whole.csv"),
                                  check_exact=True)


@pytest.mark.parametrize("earlier", [EARLIER, NOW], ids=["other code", "same code"])  # a `git pull` between, or none
def test_a_resumed_layer_barriers_job_records_where_each_part_s_rows_were_computed(runs, tmp_path, monkeypatch,
                                                                                   earlier):
    from fedscape.analysis.barriers import stage as stage_mod
    from fedscape.plan.barriers import layer_pairs, layer_settings

    # Prepare: the healthy client pair with alignment, killed on a card while computing the aligned rows
    config = copy.deepcopy(runs.config)
    config["layer_barriers"].update(modes=["single"], align=True)
    pair = next(p for p in layer_pairs(config, [runs.healthy, runs.diverged]) if p.label == "ok_clients")
    inputs = {"partition": runs.partition, "trajectory_a": runs.trajectory(pair.run_a),
              "clients": runs.clients(runs.healthy)}
    settings = layer_settings(config, pair, pair.rounds[-1])
    outputs = (tmp_path / "b.csv", tmp_path / "d.csv")
    _killed_on_a_card(monkeypatch, stage_mod, "layerwise_barriers", 2,
                      lambda: stage_mod.layer_barriers_job(settings, inputs, *outputs, tmp_path / "_progress"),
                      earlier)

    # Execute
    stage_mod.layer_barriers_job(settings, inputs, *outputs, tmp_path / "_progress")

    # Assert: the job's record names the card and code of the rows as trained and this CPU and code for the aligned
    # ones, and both codes where they differ; the tables are an uninterrupted job's
    assert noted("parts_compute") == [{"compute": CARD, "code": earlier, "parts": ["as_trained"]},
                                      {"compute": cpu(), "code": NOW, "parts": ["aligned"]}]
    assert noted("codes") == (None if earlier == NOW else [EARLIER, NOW])
    stage_mod.layer_barriers_job(settings, inputs, tmp_path / "wb.csv", tmp_path / "wd.csv")
    for name, whole in (("b.csv", "wb.csv"), ("d.csv", "wd.csv")):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), pd.read_csv(tmp_path / whole), check_exact=True)


# -- the client-statistics job ---------------------------------------------------------------------
@pytest.mark.parametrize(("earlier", "codes"), [
    (EARLIER, [EARLIER, NOW]),  # a `git pull` between the attempts
    (NOW, None),  # resumed by the same code
    (None, None),  # unbroken
], ids=["other code", "same code", "unbroken"])
def test_a_resumed_client_stats_job_records_the_codes_of_its_runs_rows(runs, tmp_path, monkeypatch, earlier, codes):
    from fedscape.analysis.client_stats import stage as stage_mod

    # Prepare: the job of both runs, killed by code `earlier` while it reads the second run's trajectory (the first
    # run's rows saved), or not at all
    order = [runs.healthy, runs.diverged]
    args = ({"run_ids": [run.run_id for run in order]}, [runs.run_dir(run) / "client_updates.csv" for run in order],
            [runs.trajectory(run) for run in order], tmp_path / "client_stats.csv", tmp_path / "_progress")
    if earlier is not None:
        monkeypatch.setattr(progress_mod, "code_version_label", lambda: earlier)
        killed_at_call(monkeypatch, stage_mod, "load_trajectory", 2, lambda: stage_mod.client_stats_job(*args))
        monkeypatch.setattr(progress_mod, "code_version_label", lambda: NOW)
        start_notes()

    # Execute: by code NOW
    stage_mod.client_stats_job(*args)

    # Assert: the record lists both codes where the first run's rows were computed by another
    assert noted("codes") == codes
