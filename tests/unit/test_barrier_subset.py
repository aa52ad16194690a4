"""Barriers on a seeded subset of each split (`interpolation.eval_samples`, `layer_barriers.eval_samples`): one subset
for every point of a job, train's and test's drawn apart, the whole split where it is no larger, and no job of a
config without the key planned otherwise."""

from __future__ import annotations

import copy
import logging

import pandas as pd
import pytest
import torch
import yaml
from helpers.configs import SCHEMA, TINY, problems_of
from helpers.papers import CONFIGS
from helpers.synthetic import digits_like
from helpers.workflow import ROOT

from fedscape.analysis.barriers.definitions import SUBSET_KEYS, InterpolationJob, LayerBarriersJob, linear_barrier
from fedscape.analysis.barriers.maths import (
    Point,
    eval_splits,
    interpolation_curve,
    layerwise_barriers,
)
from fedscape.analysis.hessian.maths import eval_subset
from fedscape.core.runs import build_runs
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.barriers import interpolation_pairs, interpolation_settings, layer_pairs, layer_settings
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = ("interpolation", "layer_barriers")


def cnn_point(seed: int) -> tuple[torch.nn.Module, Point]:
    torch.manual_seed(seed)
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8).eval()
    return model, Point(flatten_params(model), flatten_buffers(model))


def numbered_splits(n_train: int, n_test: int) -> dict:
    """Splits whose every row holds its own index (x) and label (y = index), to read which rows a subset took."""
    return {"train": (torch.arange(n_train).view(-1, 1).float(), torch.arange(n_train)),
            "test": (torch.arange(n_test).view(-1, 1).float(), torch.arange(n_test))}


# -- the subset -----------------------------------------------------------------------------------
@pytest.mark.parametrize("samples", [1, 7, 40])
def test_a_model_with_itself_has_zero_barriers_on_a_subset(samples):
    # Prepare
    model, a = cnn_point(0)
    splits = eval_splits(digits_like(), samples, seed=3)

    # Execute
    curve = pd.DataFrame(interpolation_curve(model, a, a, splits, points=5))
    layerwise = pd.DataFrame(layerwise_barriers(model, a, a, splits))

    # Assert
    assert {len(y) for _, y in splits.values()} == {samples}
    for split in SUBSET_KEYS:
        sub = curve[curve["split"] == split]
        assert (linear_barrier(sub["t"], sub["loss"]), linear_barrier(sub["t"], sub["error"])) == (0.0, 0.0)
    assert (layerwise[["barrier_loss", "barrier_error"]] == 0.0).all().all()


@pytest.mark.parametrize(("seed", "samples"), [(0, 5), (1, 5), (0, 12), (2**40 + 7, 30)])
def test_the_subset_is_a_deterministic_function_of_seed_key_and_count(seed, samples):
    # Prepare: two splits of one size, so that only their keys tell their subsets apart
    splits = numbered_splits(100, 100)

    # Execute
    first, again = eval_splits(splits, samples, seed), eval_splits(splits, samples, seed)
    other_seed = eval_splits(splits, samples, seed + 1)

    # Assert: the Hessian's subset of each split's key, the same on every call, another on another seed
    rows = {name: first[name][1] for name in SUBSET_KEYS}
    for name, key in SUBSET_KEYS.items():
        assert torch.equal(rows[name], eval_subset(100, samples, seed, key=key))
        assert torch.equal(again[name][1], rows[name]) and torch.equal(again[name][0].view(-1).long(), rows[name])
        assert not torch.equal(other_seed[name][1], rows[name])
    assert not torch.equal(rows["train"], rows["test"])
    assert all(len(set(r.tolist())) == samples for r in rows.values())


@pytest.mark.parametrize(("samples", "whole"), [(None, ("train", "test")), (60, ("test",)), (100, ("train", "test")),
                                                (10**9, ("train", "test")), (59, ())])
def test_a_split_no_larger_than_the_subset_is_the_split_itself(samples, whole):
    # Prepare
    splits = numbered_splits(100, 60)

    # Execute
    out = eval_splits(splits, samples, seed=0)

    # Assert: the very tensors, not a copy; the others cut to `samples` rows
    assert [name for name in splits if out[name][0] is splits[name][0] and out[name][1] is splits[name][1]] == \
        list(whole)
    assert all(len(out[name][1]) == samples for name in splits if name not in whole)


def test_a_full_size_subset_gives_the_full_evaluation_bit_for_bit():
    # Prepare
    (model, a), (_, b) = cnn_point(0), cnn_point(1)
    splits = digits_like()

    # Execute
    full = layerwise_barriers(model, a, b, splits, modes=("single", "shallow"))
    subset = layerwise_barriers(model, a, b, eval_splits(splits, len(splits["train"][1]), seed=5),
                                modes=("single", "shallow"))

    # Assert
    assert subset == full


# -- the jobs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy and a diverged run (tests/helpers/diverged.py), trained once for this module."""
    from helpers.diverged import build_diverged_runs

    return build_diverged_runs(tmp_path_factory.mktemp("subset_runs"))


def run_job(runs, section: str, tmp_path, **options) -> pd.DataFrame:
    """The table of the healthy pair's job of `section` with `options` in that section: the interpolation from round
    1 to the final round, or the layer-wise barriers of clients 0 and 1 at round 1 (modes single and shallow)."""
    from fedscape.analysis.barriers.stage import interpolation_job, layer_barriers_job

    raw = copy.deepcopy(runs.config)
    raw[section].update(options)
    raw["layer_barriers"]["modes"] = ["single", "shallow"]
    config = check_config(raw, SCHEMA)
    pool = [runs.healthy, runs.diverged]
    out = tmp_path / f"{section}_{len(list(tmp_path.iterdir()))}.csv"
    if section == "interpolation":
        pair = next(p for p in interpolation_pairs(config, pool) if p.label == "ok_r1_vs_final")
        interpolation_job(interpolation_settings(config, pair), runs.trajectory(pair.run_a),
                          runs.trajectory(pair.run_b), runs.partition, out)
    else:
        pair = next(p for p in layer_pairs(config, pool) if p.label == "ok_clients")
        inputs = {"partition": runs.partition, "trajectory_a": runs.trajectory(pair.run_a),
                  "clients": runs.clients(runs.healthy)}
        layer_barriers_job(layer_settings(config, pair, pair.rounds[0]), inputs, out, tmp_path / "distances.csv")
    return pd.read_csv(out, dtype={"averaged": str})


@pytest.mark.parametrize("section", SECTIONS)
def test_a_job_whose_subset_is_no_smaller_than_its_splits_writes_the_full_evaluation_bit_for_bit(runs, tmp_path,
                                                                                                    section):
    # Execute
    full = run_job(runs, section, tmp_path)
    whole = run_job(runs, section, tmp_path, eval_samples=10**6, eval_seed=9)

    # Assert
    pd.testing.assert_frame_equal(whole, full, check_exact=True)


@pytest.mark.parametrize("section", SECTIONS)
def test_a_job_on_a_subset_logs_its_counts_and_measures_on_fewer_samples(runs, tmp_path, section, caplog):
    # Prepare
    caplog.set_level(logging.INFO, logger="fedscape")
    full = run_job(runs, section, tmp_path)
    caplog.clear()

    # Execute
    subset = run_job(runs, section, tmp_path, eval_samples=50)

    # Assert: a line per split, and other numbers (another sample of each split) in the table's shape
    lines = [r.getMessage() for r in caplog.records if "evaluating on" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["train split", "test split"], lines
    assert all(" evaluating on 50 of " in line and " samples (seeded), eval_seed 0" in line for line in lines), lines
    assert list(subset.columns) == list(full.columns) and len(subset) == len(full)
    value = "loss" if section == "interpolation" else "end_loss_a"
    assert not subset[value].equals(full[value])


@pytest.mark.parametrize(("section", "evaluator"), [("interpolation", "interpolation_curve"),
                                                  ("layer_barriers", "layerwise_barriers")])
def test_batch_norm_statistics_are_recomputed_from_the_whole_training_split(runs, tmp_path, monkeypatch, section,
                                                                              evaluator):
    from fedscape.analysis.barriers import stage as stage_mod
    from fedscape.plan import barriers as plan_mod

    # Prepare: the digits net taken for one with batch norm (by the plan and the job; recomputing its statistics is a
    # no-op), the evaluator's splits and training inputs kept
    monkeypatch.setattr(plan_mod, "bn_stats_setting", lambda config, run, value: value)
    monkeypatch.setattr(stage_mod, "has_batch_norm", lambda model: True)
    seen = []
    original = getattr(stage_mod, evaluator)

    def spy(model, a, b, splits, *args):
        seen.append((len(splits["train"][1]), len(args[2] if evaluator == "interpolation_curve" else args[4])))
        return original(model, a, b, splits, *args)

    monkeypatch.setattr(stage_mod, evaluator, spy)

    # Execute
    run_job(runs, section, tmp_path, eval_samples=50, bn_stats="recomputed")

    # Assert: evaluated on 50 training samples, the statistics from every one of them
    federated = stage_mod.load_federated_data(runs.healthy.fields(), runs.config["datasets"]["digits"], runs.partition)
    assert seen and set(seen) == {(50, len(federated.union()[1]))}


# -- settings and the schema ----------------------------------------------------------------------
@pytest.mark.parametrize(("section", "value", "message"), [
    (section, value, message) for section in SECTIONS for value, message in [
        (0, "eval_samples: 0 is less than the minimum of 1; a subset holds at least 1 sample (null evaluates every "
            "sample)"),
        ("abc", "eval_samples: 'abc' is not of type 'integer', 'null', 'object'"),
        (2.5, "eval_samples: 2.5 is not of type 'integer', 'null', 'object'"),
        ({}, "eval_samples: {} should be non-empty"),
        ({"digits": 0}, "eval_samples.digits: 0 is less than the minimum of 1"),
        ({"digitz": 5}, "eval_samples: unknown data set 'digitz'. Did you mean 'digits'? Valid data sets: digits"),
    ]] + [(section, value, None) for section in SECTIONS for value in (None, 1, {"digits": 5}, {"digits": None})])
def test_the_schema_takes_null_a_count_of_at_least_one_or_one_per_data_set(section, value, message):
    # Prepare
    config = copy.deepcopy(TINY)
    config.setdefault(section, {})["eval_samples"] = value

    # Execute
    problems = problems_of(config)

    # Assert
    assert (f"  - {section}.{message}" in problems.splitlines()) if message else problems == "", problems


@pytest.mark.parametrize("kind", [InterpolationJob, LayerBarriersJob])
@pytest.mark.parametrize(("samples", "seed", "kept", "error"), [
    (None, 4, (None, None), None),
    (1, 0, (1, 0), None),
    (1200, 7, (1200, 7), None),
    (0, 0, None, "eval_samples must be an integer >= 1 or None"),
    (True, 0, None, "eval_samples must be an integer >= 1 or None"),
    ("all", 0, None, "eval_samples must be an integer >= 1 or None"),
    (5, None, None, "eval_samples 5 draws each split's subset from eval_seed, which is None"),
])
def test_a_job_keeps_the_seed_only_with_a_subset(kind, samples, seed, kept, error):
    # Prepare
    common = {"data": {"run": {}, "dataset_options": {}}, "device": "cpu", "eval_batch_size": 64}
    fields = ({"pair_id": "p", "run_a": "a", "run_b": "b", "round_a": 1, "round_b": 2, "points": 3}
              if kind is InterpolationJob else {"pair": "p", "kind": "clients", "run_id": "a", "round": 1,
                                                "clients": (0, 1)})
    settings = {**common, **fields, "eval_samples": samples, "eval_seed": seed}

    # Execute / Assert
    if error:
        with pytest.raises(ValueError, match=error):
            kind.from_settings(settings)
        return
    job = kind.from_settings(settings)
    assert (job.eval_samples, job.eval_seed) == kept


def barrier_settings(config: dict) -> list[dict]:
    """The settings of every interpolation and layer-wise job of a checked config."""
    runs = build_runs(config)
    return ([interpolation_settings(config, pair) for pair in interpolation_pairs(config, runs)]
            + [layer_settings(config, pair, r) for pair in layer_pairs(config, runs) for r in pair.rounds])


SHIPPED = ["config.yaml", *CONFIGS]


def shipped(name: str) -> dict:
    """A shipped config as its file holds it (not checked)."""
    path = ROOT / "config" / name if name == "config.yaml" else ROOT / "config" / "papers" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_configs_plan_their_barrier_jobs_as_before(name):
    # Prepare: the config as shipped, and with a seed that a section's null eval_samples never draws from
    raw = shipped(name)
    as_shipped = check_config(copy.deepcopy(raw), SCHEMA)
    named = {section: raw.get(section, {}).get("eval_samples") or {} for section in SECTIONS}
    reseeded = copy.deepcopy(raw)
    for section in SECTIONS:
        if not named[section]:
            reseeded.setdefault(section, {}).update(eval_samples=None, eval_seed=11)

    # Execute
    jobs, jobs_reseeded = barrier_settings(as_shipped), barrier_settings(check_config(reseeded, SCHEMA))

    # Assert: a job of a data set its section names (layerwise.yaml's GPT) carries that count and the seed, no other
    # job carries the keys, and the seed of a section without a subset changes none
    subsets = [s.get("eval_samples") for s in jobs]
    expected = [named["layer_barriers" if "pair" in s else "interpolation"].get(s["data"]["run"]["dataset"])
                for s in jobs]
    assert subsets == expected
    assert all(("eval_seed" in s) == (s.get("eval_samples") is not None) for s in jobs)
    assert jobs_reseeded == jobs
    assert (name == "layerwise") == any(subsets)  # the one shipped config with a subset


@pytest.mark.parametrize("section", SECTIONS)
def test_a_subset_reaches_the_settings_of_its_section_s_jobs_alone(section):
    # Prepare
    raw = copy.deepcopy(TINY)
    raw[section] = {**raw.get(section, {}), "eval_samples": 1200, "eval_seed": 3}
    config = check_config(raw, SCHEMA)
    runs = build_runs(config)

    # Execute
    interpolation = [interpolation_settings(config, p) for p in interpolation_pairs(config, runs)]
    layer = [layer_settings(config, p, r) for p in layer_pairs(config, runs) for r in p.rounds]

    # Assert
    assert interpolation and layer
    on, off = (interpolation, layer) if section == "interpolation" else (layer, interpolation)
    assert all((s["eval_samples"], s["eval_seed"]) == (1200, 3) for s in on)
    assert not any({"eval_samples", "eval_seed"} & set(s) for s in off)
