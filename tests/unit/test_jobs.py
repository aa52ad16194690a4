"""The typed job contract (fedscape.core.jobs): settings leave out fields at their declared defaults, and read back
to the same job."""

from __future__ import annotations

import dataclasses

import pytest

from fedscape.core.config import RESULT_VERSION
from fedscape.core.jobs import JobSettings, JobSettingsError, declared_defaults, kept_record, to_settings


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


# -- the card index: placement, not meaning --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class Training(JobSettings):
    lr: float
    device: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Placed(JobSettings):
    rule = "placed"
    run_id: str
    device: str
    training: Training
    warmup: Training | None = None
    options: dict


def _placed(device: str, nested: str | None = None, options_device: str = "cuda:1") -> dict:
    """Settings of a Placed job on `device`, its trainings' on `nested` (else the same), a free mapping's `device`
    key at `options_device`."""
    nested = device if nested is None else nested
    return {"run_id": "r", "device": device, "training": {"lr": 0.1, "device": nested},
            "warmup": {"lr": 0.2, "device": nested}, "options": {"device": options_device}}


@pytest.mark.parametrize(("recorded", "now", "same"), [
    ("cuda:0", "cuda:1", True),  # another card
    ("cuda:3", "cuda", True),
    ("cuda", "cuda:12", True),
    ("cuda", "cpu", False),  # another kind of device: the results differ to float rounding
    ("cuda:0", "auto", False),
    ("cpu", "auto", False),
])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_card_index_is_no_part_of_a_job_s_meaning(recorded, now, same, where):
    # Prepare: the device of the job, or that of its nested trainings (a train job's `training.device`)
    before, after = (_placed(recorded), _placed(now)) if where == "top" else \
        (_placed("cpu", recorded), _placed("cpu", now))

    # Execute
    meanings = Placed.meaning(before), Placed.meaning(after)

    # Assert
    assert (meanings[0] == meanings[1]) is same
    assert before != after  # the settings' text differs every time (the test can tell)


def test_a_device_key_of_a_free_mapping_is_meaning():
    # only the declared device fields are placement: a mapping given as it is keeps its values
    assert Placed.meaning(_placed("cuda", options_device="cuda:0")) != Placed.meaning(_placed("cuda"))


@pytest.mark.parametrize(("now", "kept"), [("cuda:1", True), ("cuda", True), ("cpu", False)])
def test_a_finished_job_moved_to_another_card_keeps_its_recorded_text(now, kept):
    # Prepare: Snakemake's record of the job as it ran on cuda:0
    before = _placed("cuda:0")
    recorded = [repr(before), repr("results/progress")]

    # Execute
    planned = kept_record(_placed(now), recorded, Placed.meaning)

    # Assert: the recorded text where only the card changed, the settings of now otherwise; the values of now both ways
    assert (repr(planned) == repr(before)) is kept
    assert planned == _placed(now)
