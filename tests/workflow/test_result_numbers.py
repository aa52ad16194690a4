"""The result versions guard the numbers: the tiny run's headline numbers of each job kind equal those recorded for
its current result versions (tests/data/result_numbers.json). A change of a computation that moves them, made without
bumping the kind's version in its plan module, fails here and names the kind; a bumped version without recorded
numbers fails too, with the command that records them."""

from __future__ import annotations

import json

import pytest
from helpers.result_numbers import NUMBERS, RECORD, UPSTREAM, differences, headline_numbers, version_key

from fedscape.plan.workflow import result_versions

RECORD_COMMAND = "python tests/helpers/result_numbers.py --record"


@pytest.fixture(scope="module")
def made(tiny_run) -> dict[str, dict[str, float]]:
    return headline_numbers(tiny_run)


# Versioned kinds without numbers of their own to guard: final.csv, summary.csv and the tables gathered from the jobs'
# files (GATHERED) hold the other kinds' numbers, a surface its chunks' (guarded as landscape_chunk's, read from the
# gathered surface), and cost.csv holds wall-clock seconds and memory, which differ from run to run. Nor the figures
# (every rule named `*_figure` or `*_figures`): the numbers they draw are those of the tables they read, guarded as
# their kinds'; a figure's version covers its drawing and the layout of the CSV beside it, which an image comparison
# would confuse with the fonts and the matplotlib version.
GATHERED = ("partitions_table", "rounds_table", "hessian_tables", "interpolation_tables", "layer_barrier_tables",
            "layer_consecutive_table", "surfaces_table")
# paired_differences.csv: final.csv's numbers, differenced
UNGUARDED = ("final_table", "summary_table", "paired_differences_table", "cost_table", "landscape_gather", *GATHERED)
FIGURES = ("_figure", "_figures")


def test_every_versioned_job_kind_of_the_tiny_run_has_recorded_numbers():
    versions = result_versions()

    assert set(NUMBERS) == set(UPSTREAM) == {k for k in versions if k not in UNGUARDED and not k.endswith(FIGURES)}


@pytest.mark.parametrize("kind", sorted(NUMBERS))
def test_the_numbers_of_each_job_kind_are_those_of_its_result_version(made, kind):
    # Prepare: the numbers recorded under the current versions of the kind and of the kinds it reads
    key = version_key(kind, result_versions())
    recorded = json.loads(RECORD.read_text()).get(kind, {})
    assert key in recorded, (f"{kind}: no numbers recorded for the result versions {key}; after bumping a version, "
                             f"record them with `{RECORD_COMMAND}`")

    # Execute / Assert: the tiny run's numbers are those (counts exactly, floats to the recorded tolerance)
    problems = differences(kind, recorded[key], made[kind])
    assert made[kind], f"{kind}: the tiny run made no numbers"
    assert not problems, (f"the numbers of {kind} changed at the same result versions ({key}): bump "
                          f"RESULT_VERSIONS['{kind}'] in its plan module if its meaning changed, then "
                          f"`{RECORD_COMMAND}`; else undo the change:\n" + "\n".join(problems[:20]))


@pytest.mark.parametrize(("expected", "found", "problem"), [
    ({"x": 1.0}, {"x": 1.0 + 5e-4}, None),
    ({"x": 1.0}, {"x": 1.002}, "x = 1.002"),
    ({"n": 10}, {"n": 11}, "n = 11"),
    ({"x": 1.0}, {}, "x recorded but not made"),
    ({}, {"y": 2.0}, "y made but not recorded"),
    ({"z": 0.0}, {"z": 5e-6}, None),
    ({"z": 0.0}, {"z": 5e-5}, "z = 5e-05"),
    # an accuracy or error moves by whole predictions: one flipped on the 449 test samples is rounding, two are not
    ({"r/test_acc": 225 / 449}, {"r/test_acc": 226 / 449}, None),
    ({"r/test_acc": 225 / 449}, {"r/test_acc": 227 / 449}, "r/test_acc = "),
    ({"p/test/barrier_error": 0.1}, {"p/test/barrier_error": 0.1 - 1 / 449}, None),
    ({"r/test_loss": 0.5}, {"r/test_loss": 0.5 + 1 / 449}, "r/test_loss = "),
])
def test_differences_tell_a_changed_number_from_rounding(expected, found, problem):
    problems = differences("kind", expected, found)

    assert (problems == []) if problem is None else any(problem in p for p in problems), problems
