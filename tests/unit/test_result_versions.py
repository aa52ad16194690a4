"""Reruns follow meaning: each job kind's result version is part of its jobs' settings (left out at the first version,
so declaring versions reran nothing), and the default profile leaves out Snakemake's `code` trigger."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from helpers.workflow import ROOT

from fedscape.core.config import (
    FIRST_RESULT_VERSION,
    RESULT_VERSION,
    load_schema,
    result_version_params,
    with_result_version,
)
from fedscape.core.runs import build_runs
from fedscape.plan import barriers, hessian, init, landscape, partition, train
from fedscape.plan.resources import GPU_RULES
from fedscape.plan.workflow import check_config, result_versions

# The rules whose jobs compute results that no other job recomputes: each declares a result version.
COMPUTING_RULES = {*GPU_RULES, "partition", "landscape_plane", "client_stats"}


@pytest.fixture(scope="module")
def default_config() -> dict:
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), schema)


def test_every_computing_rule_declares_a_result_version_of_at_least_the_first():
    versions = result_versions()

    assert COMPUTING_RULES <= set(versions)
    assert all(isinstance(v, int) and v >= FIRST_RESULT_VERSION for v in versions.values())


def test_every_versioned_rule_exists_in_the_rule_files():
    rule_names = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk")),
                                re.MULTILINE))

    assert set(result_versions()) <= rule_names


@pytest.mark.parametrize(("version", "expected"), [(1, {}), (2, {RESULT_VERSION: 2}), (17, {RESULT_VERSION: 17})])
def test_the_first_version_is_left_out_of_the_settings_and_later_ones_are_carried(version, expected):
    assert result_version_params(version) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.0, "2", True, None])
def test_a_result_version_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ValueError, match="a result version is an integer"):
        result_version_params(bad)


def test_the_first_version_keeps_the_settings_text_and_a_bump_changes_only_the_version():
    # Snakemake compares params by their text: at the first version the dict (and its key order) is unchanged
    settings = {"run_id": "x", "a": 1, "round": 3}

    same = with_result_version(settings, 1)
    bumped = with_result_version(settings, 2)

    assert same is settings and list(same) == ["run_id", "a", "round"]
    assert bumped == {**settings, RESULT_VERSION: 2} and settings == {"run_id": "x", "a": 1, "round": 3}


def _job_settings(config: dict) -> dict[str, list[dict]]:
    """The settings of a few jobs of each versioned job kind of the default config."""
    runs = build_runs(config)
    run = runs[0]
    plans = landscape.landscape_plans(config, runs)
    label = next(iter(config["interpolation"]["pairs"]))
    return {
        "partition": [partition.partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed)],
        "init": [init.init_settings(config, runs, run.dataset, run.model, run.init)],
        "train": [train.train_settings(config, r) for r in runs],
        "hessian": [hessian.hessian_job_settings(config, runs, r, 0) for r in runs],
        "interpolation": [barriers.interpolation_settings(config, barriers.interpolation_pair(config, runs, label))],
        "landscape_plane": [landscape.plane_settings(config, p) for p in plans],
        "landscape_chunk": [landscape.chunk_settings(config, p, p.data[0], 0) for p in plans],
    }


def _without_version(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != RESULT_VERSION}


@pytest.mark.parametrize("rule", ["partition", "init", "train", "hessian", "interpolation", "landscape_plane",
                                  "landscape_chunk"])
def test_bumping_a_version_puts_it_into_exactly_that_job_kinds_settings(default_config, monkeypatch, rule):
    # Prepare: every job kind's settings at the declared versions
    module = {"partition": partition, "init": init, "train": train, "hessian": hessian, "interpolation": barriers,
              "landscape_plane": landscape, "landscape_chunk": landscape}[rule]
    before = _job_settings(copy.deepcopy(default_config))
    versions = result_versions()
    for kind, jobs in before.items():  # a kind's version is in its settings from the second on
        assert all(s.get(RESULT_VERSION, FIRST_RESULT_VERSION) == versions[kind] for s in jobs), kind

    # Execute: one job kind's version bumped
    monkeypatch.setitem(module.RESULT_VERSIONS, rule, module.RESULT_VERSIONS[rule] + 1)
    after = _job_settings(copy.deepcopy(default_config))

    # Assert: that kind's settings carry the new version and nothing else changed; the others are as they were
    for kind, jobs in after.items():
        if kind == rule:
            assert jobs and all(s[RESULT_VERSION] == module.RESULT_VERSIONS[rule] for s in jobs)
            assert [_without_version(s) for s in jobs] == [_without_version(s) for s in before[kind]]
        else:
            assert jobs == before[kind], kind


@pytest.mark.parametrize("profile", ["profiles/default", "slurm"])
def test_each_profile_drops_only_the_code_trigger(profile):
    settings = yaml.safe_load((ROOT / profile / "config.yaml").read_text())

    assert set(settings["rerun-triggers"]) == {"mtime", "params", "input", "software-env"}
