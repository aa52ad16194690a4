"""The typed job kinds of the analyses (hessian, hessian_plane, interpolation, layer_barriers, landscape_plane,
landscape_chunk): every job that a shipped config plans reads back to exactly its settings, key order included
(Snakemake compares params by their text), and the declared defaults are the baselines of the first results."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from helpers.plans import analysis_settings
from helpers.workflow import ROOT

from fedscape.analysis.barriers.definitions import MODES, InterpolationJob, LayerBarriersJob
from fedscape.analysis.hessian.definitions import EigenSettings, HessianJob, HessianPlaneJob, HessianSettings
from fedscape.analysis.landscape.definitions import LandscapeChunkJob, LandscapePlaneJob
from fedscape.core.config import RESULT_VERSION
from fedscape.core.jobs import JobSettingsError, declared_defaults, to_settings
from fedscape.plan.workflow import load_config

SCHEMA_FILE = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "papers").glob("*.yaml")),
           ROOT / "tests" / "data" / "tiny_config.yaml"]
KINDS = {kind.rule: kind for kind in (HessianJob, HessianPlaneJob, InterpolationJob, LayerBarriersJob,
                                      LandscapePlaneJob, LandscapeChunkJob)}


@functools.cache
def planned_settings(path: Path) -> dict[str, list[dict]]:
    """The settings of every job of the six kinds that the config at `path` plans, by rule."""
    return analysis_settings(load_config(path, SCHEMA_FILE))


def test_the_shipped_configs_plan_jobs_of_every_kind():
    # Assert: the round trip below covers each kind (and the optional fields: shared Hessians, curves, seeds)
    every = {rule: [s for path in CONFIGS for s in planned_settings(path)[rule]] for rule in KINDS}
    assert all(every.values()), [rule for rule, jobs in every.items() if not jobs]
    assert any("shared_from" in s for s in every["hessian"])
    assert any("shared_from" in s for s in every["hessian_plane"])
    assert any("order_seed" in s for s in every["layer_barriers"])
    assert any("direction_seed" in s for s in every["layer_barriers"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("rule", sorted(KINDS))
def test_every_planned_job_reads_back_to_its_settings(path, rule):
    for settings in planned_settings(path)[rule]:
        # Prepare: the result version is the plan's, not a field
        fields = {k: v for k, v in settings.items() if k != RESULT_VERSION}

        # Execute
        again = to_settings(KINDS[rule].from_settings(settings))

        # Assert: the same text (key order included), so Snakemake reruns nothing
        assert repr(again) == repr(fields)


def test_the_declared_defaults_are_the_baselines_of_the_first_results():
    # Assert: a baseline never changes (it is what the finished jobs that omit the key computed with)
    assert declared_defaults(HessianSettings) == {
        "trace_estimator": "hutchinson", "sharpness": False, "sharpness_rho": 0.05, "sharpness_steps": 5,
        "sharpness_eta": 0.01, "precision": "fp32", "clients": "all", "sharpness_adaptive_rho": None,
        "sharpness_method": "ascent"}
    assert declared_defaults(HessianJob) == {"shared_from": None}
    assert declared_defaults(HessianPlaneJob) == {"shared_from": None}
    assert declared_defaults(EigenSettings) == {"precision": "fp32"}
    assert declared_defaults(InterpolationJob) == {"precision": "fp32", "bn_stats": "stored", "align": False,
                                                   "curve": None, "eval_samples": None, "eval_seed": None}
    assert declared_defaults(LayerBarriersJob) == {
        "precision": "fp32", "bn_stats": "stored", "modes": MODES, "align": False, "order_seed": None,
        "direction_seed": None, "direction_samples": None, "direction_moves": "both", "eval_samples": None,
        "eval_seed": None}
    assert MODES == ("single", "shallow", "deep")
    assert declared_defaults(LandscapePlaneJob) == {"plane_file": None}
    assert declared_defaults(LandscapeChunkJob) == {"precision": "fp32", "bn_stats": "stored"}


def _layer_job(**changes) -> LayerBarriersJob:
    base = {"pair": "p", "kind": "clients", "run_id": "r", "round": 1, "clients": (0, 1),
            "data": {"run": {"seed": 0}, "dataset_options": {}}, "device": "cpu", "eval_batch_size": 64}
    return LayerBarriersJob.from_settings({**base, **changes})


@pytest.mark.parametrize(("modes", "kept"), [
    (["single"], set()),
    (["single", "random"], {"order_seed"}),
    (["random_direction"], {"direction_seed", "direction_samples"}),
    (["random", "random_direction"], {"order_seed", "direction_seed", "direction_samples"}),
])
def test_a_layer_job_keeps_the_seeds_of_the_modes_it_runs_only(modes, kept):
    # Execute
    job = _layer_job(modes=modes, order_seed=3, direction_seed=4, direction_samples=5)

    # Assert: a seed the job draws nothing from is no setting (changing it reruns nothing)
    assert set(to_settings(job)) & {"order_seed", "direction_seed", "direction_samples"} == kept


def test_settings_of_another_kind_are_refused_naming_the_key():
    with pytest.raises(JobSettingsError, match="LandscapeChunkJob .*no field 'points'"):
        LandscapeChunkJob.from_settings({"points": 21, "surface_id": "a/train"})
