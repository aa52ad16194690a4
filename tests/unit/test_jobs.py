"""The typed job contract (fedscape.core.jobs): settings leave out fields at their declared defaults, and read back
to the same job."""

from __future__ import annotations

import dataclasses

import pytest

from fedscape.core.config import RESULT_VERSION
from fedscape.core.jobs import JobSettings, JobSettingsError, declared_defaults, to_settings


@dataclasses.dataclass(frozen=True)
class Curve:
    bends: int
    lr: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner(JobSettings):
    rule = "inner"
    points: int
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example(JobSettings):
    rule = "example"
    run_id: str
    rounds: tuple[int, ...]
    data: Inner
    options: dict
    curve: Curve | None = None
    seed: int | None = None
    modes: tuple[str, ...] = ("a", "b")


def _example(**changes) -> Example:
    base = {"run_id": "r", "rounds": (0, 5), "data": Inner(points=3), "options": {"z": 1, "a": [1, 2]}}
    return Example(**{**base, **changes})


def test_settings_leave_out_fields_at_their_defaults_nested_included():
    # Execute
    settings = to_settings(_example())

    # Assert: required fields in full (tuples as lists), defaulted ones absent, in declaration order (Snakemake
    # records the settings as text), a mapping as given
    assert settings == {"run_id": "r", "rounds": [0, 5], "data": {"points": 3}, "options": {"z": 1, "a": [1, 2]}}
    assert list(settings) == ["run_id", "rounds", "data", "options"] and list(settings["options"]) == ["z", "a"]


@pytest.mark.parametrize("changes, key, written", [
    ({"seed": 7}, "seed", 7),
    ({"modes": ("a",)}, "modes", ["a"]),
    ({"curve": Curve(bends=1, lr=0.1)}, "curve", {"bends": 1, "lr": 0.1}),
    ({"data": Inner(points=3, precision="tf32")}, "data", {"points": 3, "precision": "tf32"}),
])
def test_a_field_off_its_default_is_written_and_reads_back(changes, key, written):
    # Prepare
    job = _example(**changes)

    # Execute
    settings = to_settings(job)

    # Assert
    assert settings[key] == written
    assert Example.from_settings(settings) == job


def test_adding_a_defaulted_field_changes_no_existing_jobs_settings():
    # Prepare: the same kind, later, with one more field at its baseline
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Later(Example):
        bn_stats: str = "stored"

    old = _example(seed=3)

    # Execute
    new = Later(**{f.name: getattr(old, f.name) for f in dataclasses.fields(old)})

    # Assert: the settings text is unchanged, so Snakemake reruns nothing; the old settings read back
    assert to_settings(new) == to_settings(old)
    assert Later.from_settings(to_settings(old)).bn_stats == "stored"
    assert declared_defaults(Later)["bn_stats"] == "stored"


def test_a_result_version_is_not_a_field():
    settings = {**to_settings(_example()), RESULT_VERSION: 2}

    assert Example.from_settings(settings) == _example()


@pytest.mark.parametrize("settings, message", [
    ({"run_id": "r", "rounds": [0], "data": {"points": 1}, "options": {}, "sed": 1},
     r"no field 'sed'\. Did you mean 'seed'"),
    ({"run_id": "r", "data": {"points": 1}, "options": {}}, "lack the required 'rounds'"),
    ({"run_id": "r", "rounds": [0], "data": {"point": 1}, "options": {}}, "Inner .*no field 'point'"),
])
def test_settings_that_do_not_fit_the_kind_fail_naming_the_key(settings, message):
    with pytest.raises(JobSettingsError, match=message):
        Example.from_settings(settings)


def test_to_settings_refuses_a_plain_dict():
    with pytest.raises(TypeError, match="JobSettings"):
        to_settings({"run_id": "r"})
