"""Settings that change how a job computes, not what (`JobSettings.neutral`: its memory settings), and defaults written
out or deleted (`JobSettings.meaning`): a finished job whose settings have the meaning of those Snakemake recorded for
it keeps its recorded params text (`kept_record`), so lowering a memory setting or spelling out a default reruns
nothing; every other change still shows, with the settings of now. That the neutral fields change
the results only to float rounding is tested where each is computed: test_progress.py (client_parallel and
client_chunk_size across a resumed run, float64), test_hessian.py (batch_size and cache_graph), and below (the
evaluation batch of the runs, the barriers and the surfaces). A loss surface's `points_per_batch` is not one: it
aligns the bounds of its chunks, so a chunk computed again under another would not tile the grid with the finished
ones."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pickle
import typing

import numpy as np
import pytest
import torch
from helpers.plans import neutral_rule_settings
from helpers.synthetic import digits_like
from helpers.workflow import ROOT

from fedscape.analysis.barriers.definitions import InterpolationJob, LayerBarriersJob
from fedscape.analysis.hessian.definitions import HessianJob, HessianPlaneJob
from fedscape.analysis.landscape.definitions import LandscapeChunkJob
from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.core.config import load_schema, read_config_file
from fedscape.core.jobs import JobSettings, RecordedSettings, kept_record, without_paths
from fedscape.core.runs import build_runs
from fedscape.models.evaluate import evaluate
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init_settings import INIT_JOBS, PretrainedInit, RandomInit, WarmupInit
from fedscape.stages.partition_settings import PartitionJob
from fedscape.stages.progress import resume_settings
from fedscape.stages.train_settings import TrainJob

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
KINDS_WITH_NEUTRAL = (TrainJob, WarmupInit, HessianJob, InterpolationJob, LayerBarriersJob, LandscapeChunkJob,
                      PartitionJob)
NEUTRAL = ("training.eval_batch_size", "training.client_chunk_size")
MEANING = functools.partial(without_paths, paths=NEUTRAL)  # a kind's `JobSettings.meaning` with these neutral fields
SETTINGS = {"run_id": "r", "training": {"client_chunk_size": 64, "eval_batch_size": 512, "lr": 0.05}, "v": 2}


def _recorded(settings: dict, path: str = "results/progress") -> list[str]:
    """Snakemake's record of a job's params: each one's repr (the settings, a progress folder)."""
    return [repr(settings), repr(path)]


# -- kept_record ----------------------------------------------------------------------------------------------------
def test_settings_that_differ_only_in_neutral_fields_keep_the_recorded_text_and_hold_the_values_of_now():
    # Prepare: the record of the job as it ran, and its settings now with both memory keys lowered
    before = copy.deepcopy(SETTINGS)
    now = copy.deepcopy(SETTINGS)
    now["training"].update(client_chunk_size=4, eval_batch_size=100)

    # Execute
    kept = kept_record(now, _recorded(before), MEANING)

    # Assert: Snakemake reads the recorded text; the job computes with the values of now
    assert isinstance(kept, RecordedSettings)
    assert repr(kept) == repr(before) and kept == now
    assert json.loads(json.dumps(kept)) == now


@pytest.mark.parametrize("change", [
    {"lr": 0.01},  # a setting that changes the result
    {"lr": 0.01, "eval_batch_size": 100},  # ... beside a neutral one
    {"momentum": 0.9},  # a key the record lacks
])
def test_any_other_change_gives_the_settings_of_now(change):
    now = copy.deepcopy(SETTINGS)
    now["training"].update(change)

    kept = kept_record(now, _recorded(SETTINGS), MEANING)

    assert kept is now and repr(kept) != repr(SETTINGS)


def test_the_other_keys_are_compared_as_text_with_their_order():
    # Snakemake compares the params' text: a reordered record reruns the job, and so it still does
    reordered = {"v": 2, **{k: v for k, v in SETTINGS.items() if k != "v"}}
    now = copy.deepcopy(SETTINGS)
    now["training"]["eval_batch_size"] = 100

    assert kept_record(now, _recorded(reordered), MEANING) is now


@pytest.mark.parametrize(("recorded_training", "now_training"), [
    ({"lr": 0.05}, {"eval_batch_size": 100, "lr": 0.05}),  # left out at its default in the record, set now
    ({"eval_batch_size": 100, "lr": 0.05}, {"lr": 0.05}),  # set in the record, at its default (left out) now
])
def test_a_neutral_field_left_out_on_either_side_keeps_the_record(recorded_training, now_training):
    before, now = {"training": recorded_training}, {"training": now_training}

    kept = kept_record(now, _recorded(before), MEANING)

    assert repr(kept) == repr(before) and kept == now


@pytest.mark.parametrize("recorded", [None, [], ["'results/progress'"], ["not a literal ("], ["[1, 2]"]])
def test_without_a_recorded_settings_text_the_settings_are_those_of_now(recorded):
    now = copy.deepcopy(SETTINGS)
    assert kept_record(now, recorded, MEANING) is now


def test_a_kind_whose_meaning_is_its_whole_settings_keeps_no_record():
    now = copy.deepcopy(SETTINGS)
    now["training"]["eval_batch_size"] = 100
    assert kept_record(now, _recorded(SETTINGS), dict) is now


def test_settings_equal_to_the_record_are_returned_as_they_are():
    now = copy.deepcopy(SETTINGS)
    assert kept_record(now, _recorded(SETTINGS), MEANING) is now


def test_kept_settings_travel_to_a_job_s_script_with_their_text():
    # Snakemake hands a script its params pickled
    now = {"training": {"eval_batch_size": 100, "lr": 0.05}}
    kept = kept_record(now, _recorded({"training": {"eval_batch_size": 512, "lr": 0.05}}), MEANING)

    copied = pickle.loads(pickle.dumps(kept))

    assert copied == now and repr(copied) == repr(kept)


def test_without_paths_leaves_out_nested_fields_and_keeps_the_order():
    assert without_paths(SETTINGS, NEUTRAL) == {"run_id": "r", "training": {"lr": 0.05}, "v": 2}
    assert list(without_paths(SETTINGS, ["run_id"])) == ["training", "v"]
    assert without_paths(SETTINGS, ["missing.key", "run_id.x"]) == SETTINGS  # a path not there is skipped
    assert SETTINGS["training"]["eval_batch_size"] == 512  # the input is not changed


# -- the job kinds ---------------------------------------------------------------------------------------------------
def _field_types(kind: type) -> dict[str, object]:
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


@pytest.mark.parametrize("kind", KINDS_WITH_NEUTRAL, ids=lambda k: k.__name__)
def test_every_neutral_path_names_a_field_of_its_kind(kind):
    for path in kind.neutral:
        head, _, rest = path.partition(".")
        types = _field_types(kind)
        assert head in types, (kind.__name__, path)
        if rest:  # a nested job settings' field, or a key of a free mapping
            nested = types[head]
            assert nested is dict or (isinstance(nested, type) and issubclass(nested, JobSettings)), path
            assert nested is dict or rest in _field_types(nested), (kind.__name__, path)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_an_evaluation_is_the_same_at_every_batch_size(float64_default, norm):
    # what the runs' and the barriers' eval_batch_size change: how many samples a pass holds (eval mode)
    x, y = digits_like(n=90, seed=2)["train"]
    model = build_model("cnn_small", in_channels=1, num_classes=10, image_size=8, norm=norm)
    if norm == "batch":
        model.train()(x)  # running statistics of its own
    results = [evaluate(model, x, y, batch_size) for batch_size in (1, 7, 45, 1024)]
    for other in results[1:]:
        assert other.loss == pytest.approx(results[0].loss, rel=1e-12) and other.acc == results[0].acc


def test_a_surface_is_the_same_at_every_evaluation_batch_size():
    # a chunk's batch_size (training.eval_batch_size), in float32 as the chunks compute
    x, y = digits_like(n=90, seed=2)["train"]
    model = build_model("cnn_small", in_channels=1, num_classes=10, image_size=8)
    plane = random_plane(flatten_params(model), flatten_buffers(model),
                         [tuple(p.shape) for p in model.parameters()], seed=1)
    points = np.array([[0.0, 0.0], [0.4, -0.2], [-0.3, 0.5]])
    losses = [SurfaceEvaluator(model, plane, x, y, "cpu", SurfaceSettings(batch_size=b)).evaluate(points)
              for b in (8, 1024)]
    np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-6)
    np.testing.assert_array_equal(losses[0][1], losses[1][1])


def test_only_the_warm_up_among_the_inits_has_neutral_fields():
    # a pretraining's batch size is its training's: it changes the model
    assert {kind.KIND for kind in INIT_JOBS.values() if kind.neutral} == {WarmupInit.KIND}


@pytest.mark.parametrize("kind", [TrainJob, WarmupInit, HessianJob, InterpolationJob, LayerBarriersJob],
                         ids=lambda k: k.__name__)
def test_a_job_s_progress_key_leaves_out_its_neutral_fields(kind):
    # so that a job killed for lack of device memory resumes its saved rounds or parts once they are lowered
    settings = {"a": 1}
    for path in kind.neutral:
        node = settings
        *heads, last = path.split(".")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = 7
    assert resume_settings(settings, kind) == {"a": 1, **{p.split(".")[0]: {} for p in kind.neutral
                                                                  if "." in p}}
    assert resume_settings({"a": 1}, kind) == {"a": 1}


# -- planning -------------------------------------------------------------------------------------------------------
def _config(edit=None) -> dict:
    """The default config, checked as the workflow checks it, after `edit` on what the file holds."""
    raw = read_config_file(ROOT / "config" / "config.yaml")
    if edit is not None:
        edit(raw)
    return check_config(raw, load_schema(SCHEMA))


def _lower_memory(raw: dict) -> None:
    """Every neutral setting of the default config off its value: what a user lowers to fit a card (the IID warm-up's
    own overrides too), and how steps execute (CUDA graphs or not)."""
    raw["training"].update(eval_batch_size=77, client_chunk_size=3, client_parallel="sequential", capture="eager")
    raw["hessian"].update(batch_size=33, cache_graph=False)
    raw["inits"]["warmup"]["training"] = {"eval_batch_size": 55, "client_chunk_size": 2, "capture": "cuda_graph"}


def test_lowering_every_memory_setting_keeps_every_finished_job_s_params():
    # Prepare: the default config's jobs as Snakemake recorded them
    before = neutral_rule_settings(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    # Execute: the same jobs planned with every memory setting lowered, with and without the records
    kept = neutral_rule_settings(_config(_lower_memory), recorded)
    now = neutral_rule_settings(_config(_lower_memory))

    # Assert: each job's params text is the recorded one, its values those of now, which differ (the test can tell)
    assert kept.keys() == before.keys() == now.keys()
    rules = {key[0] for key in before}
    assert rules == {"init", "train", "hessian", "hessian_plane", "interpolation", "layer_barriers", "landscape_chunk"}
    for key in before:
        assert repr(kept[key]) == repr(before[key]), key
        assert kept[key] == now[key], key
    changed = {key[0] for key in before if now[key] != before[key]}
    assert changed == rules
    warmups = [key for key in before if key[0] == "init" and before[key]["kind"] == WarmupInit.KIND]
    assert warmups and all(now[key] != before[key] for key in warmups)


@pytest.mark.parametrize(("change", "kept"), [({"max_tries": 2000}, True), ({"max_tries": 3}, True),
                                             ({"max_tries": 2000, "min_size": 11}, False)])
def test_the_redraws_a_partition_may_take_rerun_no_finished_partition(change, kept):
    # Prepare: every partition job of the default config as Snakemake recorded it
    def partitions(config: dict, recorded: dict | None = None) -> dict:
        """Every partition job's settings, and the IID warm-up's (it carries the `partition` section)."""
        runs = build_runs(config)
        jobs = {(r.dataset, r.setting, r.num_clients, r.seed) for r in runs}
        warmup = next(r for r in runs if r.init == "warmup")
        settings = {job: partition_settings(config, *job, (recorded or {}).get(job)) for job in sorted(jobs)}
        key = ("warmup", warmup.dataset, warmup.model)
        return {**settings, key: init_settings(config, runs, *key[1:], "warmup", (recorded or {}).get(key))}

    before = partitions(_config())
    recorded = {job: _recorded(settings) for job, settings in before.items()}

    # Execute: max_tries raised after a failed split, or lowered; and beside it a change of the split
    config = _config(lambda raw: raw.setdefault("partition", {}).update(change))
    now, planned = partitions(config), partitions(config, recorded)

    # Assert: the recorded text where only the redraws changed (the split of a seed is the same), else that of now
    for job in before:
        assert now[job] != before[job]
        assert repr(planned[job]) == (repr(before[job]) if kept else repr(now[job]))


def test_a_change_of_meaning_beside_them_plans_the_settings_of_now():
    before = neutral_rule_settings(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    def lower_and_change(raw):
        _lower_memory(raw)
        raw["training"]["lr"] = 0.04  # the runs' and the warm-up's
        raw["hessian"]["eval_samples"] -= 56  # what the Hessian jobs evaluate on

    kept = neutral_rule_settings(_config(lower_and_change), recorded)
    now = neutral_rule_settings(_config(lower_and_change))

    for key in before:
        meaning_changed = (key[0] in ("train", "hessian", "hessian_plane")
                           or (key[0] == "init" and before[key]["kind"] == "iid_warmup"))
        assert (repr(kept[key]) == repr(now[key]) != repr(before[key])) if meaning_changed else \
            (repr(kept[key]) == repr(before[key])), key


def test_the_runs_rounds_and_kept_clients_keep_the_warm_up_s_params():
    # The warm-up trains its own `rounds` and keeps no client models; its training section carries the runs'
    before = neutral_rule_settings(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    def longer_runs(raw):
        raw["training"]["rounds"] += 10
        raw["training"]["save_clients_at"] = [*raw["training"]["save_clients_at"], raw["training"]["rounds"]]

    kept = neutral_rule_settings(_config(longer_runs), recorded)

    warmups = [key for key in before if key[0] == "init" and before[key]["kind"] == WarmupInit.KIND]
    assert warmups
    for key in warmups:
        assert repr(kept[key]) == repr(before[key])
        assert kept[key]["warmup_training"]["rounds"] == before[key]["warmup_training"]["rounds"] + 10
    trains = [key for key in before if key[0] == "train"]
    assert all(repr(kept[key]) != repr(before[key]) for key in trains)  # the runs train more rounds


def test_a_surface_s_points_per_batch_plans_its_chunks_again():
    # it aligns the chunks' bounds (analysis.landscape.grid.chunk_bounds): not a neutral field
    before = neutral_rule_settings(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    def batched(raw):
        for spec in raw["landscapes"].values():
            spec["points_per_batch"] = 2

    kept = neutral_rule_settings(_config(batched), recorded)

    chunks = [key for key in before if key[0] == "landscape_chunk"]
    assert chunks and all(repr(kept[key]) != repr(before[key]) for key in chunks)
    assert all(repr(kept[key]) == repr(before[key]) for key in before if key[0] != "landscape_chunk")


@pytest.mark.parametrize(("label", "field", "value", "kept"), [
    ("global_0.1", "client", 3, True),        # a trajectory plane names no client
    ("final_alphas", "client", 2, True),
    ("hessian_iid", "center", "mean", True),  # the Hessian stage's directions, centred on the model analysed
    ("hessian_iid", "seed", 5, True),
    ("global_0.1", "center", "mean", False),  # a PCA plane's centre
    ("global_0.1", "seed", 5, False),         # completes a degenerate PCA plane
    ("local_0.1_r10", "client", 1, False),    # the client whose data the local scope evaluates
    ("hessian_iid", "span", 0.5, False),
])
def test_a_plane_setting_its_kind_does_not_read_reruns_no_plane(label, field, value, kept):
    from fedscape.plan.landscape import landscape_plans, plane_settings

    def planes(config: dict, recorded: dict | None = None) -> dict:
        return {p.label: plane_settings(config, p, (recorded or {}).get(p.label))
                for p in landscape_plans(config, build_runs(config))}

    # Prepare: the default config's planes, finished
    before = planes(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    def changed(raw):
        raw["landscapes"][label][field] = value

    # Execute
    after = planes(_config(changed), recorded)

    # Assert: that plane keeps its record where its kind does not read the field; no other plane changes either way
    assert (repr(after[label]) == repr(before[label])) == kept
    assert after[label][field] == value  # the job computes with the settings of now
    assert all(repr(after[k]) == repr(before[k]) for k in before if k != label)


def test_one_path_given_as_a_string_is_refused():
    with pytest.raises(TypeError, match="collection of dotted paths"):
        without_paths(SETTINGS, "training")


# -- defaults spelled out: what the config gives as written, and the job resolves itself --------------------------
def _spell_out_defaults(raw: dict) -> None:
    """Write out what the default config leaves at the values its jobs take anyway: FedProx's mu, cnn_small's norm,
    the warm-up's lr (the training section's)."""
    raw["algorithms"]["fedprox"]["mu"] = 0.0001
    raw["model_options"] = {"cnn_small": {"norm": "none"}}
    raw["inits"]["warmup"]["training"] = {"lr": raw["training"]["lr"]}


@pytest.mark.parametrize("direction", ["written out", "deleted"])
def test_defaults_written_out_or_deleted_keep_every_finished_job_s_params(direction):
    # Prepare: the jobs as Snakemake recorded them, with the defaults left out or written out
    plain, spelled = _config(), _config(_spell_out_defaults)
    before, after = (plain, spelled) if direction == "written out" else (spelled, plain)
    recorded = {key: _recorded(settings) for key, settings in neutral_rule_settings(before).items()}

    # Execute
    kept = neutral_rule_settings(after, recorded)
    now = neutral_rule_settings(after)

    # Assert: every job keeps its recorded text, with the values of now; the fedprox run and every init differ in
    # their text (the test can tell)
    assert kept.keys() == now.keys() == recorded.keys()
    for key in kept:
        assert repr(kept[key]) == recorded[key][0], key
        assert kept[key] == now[key], key
    differ = {key for key in kept if repr(now[key]) != recorded[key][0]}
    assert {key[0] for key in differ} == {"init", "train"}
    assert {now[key]["algorithm"] for key in differ if key[0] == "train"} == {"fedprox"}
    assert {now[key]["init"] for key in differ if key[0] == "init"} == {"random", "pretrained", "warmup"}


@pytest.mark.parametrize(("edit", "rules"), [
    (lambda raw: raw["algorithms"]["fedprox"].update(mu=0.001), {"train"}),  # off its default
    # batch norm: the barriers' evaluations take their `bn_stats` too
    (lambda raw: raw.update(model_options={"cnn_small": {"norm": "batch"}}),
     {"init", "interpolation", "layer_barriers"}),
    (lambda raw: raw["inits"]["warmup"].update(training={"lr": 0.04}), {"init"}),
], ids=["mu", "norm", "warm-up lr"])
def test_a_value_off_its_default_plans_the_settings_of_now(edit, rules):
    before = neutral_rule_settings(_config())
    recorded = {key: _recorded(settings) for key, settings in before.items()}

    kept = neutral_rule_settings(_config(edit), recorded)

    changed = {key for key in before if repr(kept[key]) != repr(before[key])}
    assert changed and {key[0] for key in changed} == rules
    assert all(not isinstance(kept[key], RecordedSettings) for key in changed)


@pytest.mark.parametrize(("rule", "label", "kind"), [
    ("train", "algo~fedprox", TrainJob),  # mu written out
    ("init", "warmup", WarmupInit),  # its lr override, and cnn_small's norm
    ("init", "pretrained", PretrainedInit),  # cnn_small's norm
], ids=["run", "warm-up", "pretraining"])
def test_a_job_resumes_after_a_default_is_written_out(rule, label, kind):
    # the progress key is the settings' meaning: a killed job resumes its saved rounds or epochs
    def planned(edit=None) -> dict:
        (settings,) = [s for key, s in neutral_rule_settings(_config(edit)).items()
                       if key[0] == rule and label in key[-1]]
        return settings

    plain, spelled = planned(), planned(_spell_out_defaults)

    assert plain != spelled
    assert resume_settings(plain, kind) == resume_settings(spelled, kind)


def test_a_pretraining_job_keys_its_progress_by_meaning(tmp_path, monkeypatch):
    # Prepare: the pretraining itself replaced by one that notes the progress key it is given
    from fedscape.stages import init as init_stage

    keys = []

    def noting(job, progress_dir, key):
        keys.append(key)
        return init_stage.random_model(job), {}

    monkeypatch.setattr(init_stage, "pretrain", noting)
    jobs = [[s for key, s in neutral_rule_settings(_config(edit)).items()
             if key[0] == "init" and key[-1] == "pretrained"][0] for edit in (None, _spell_out_defaults)]

    # Execute
    for i, settings in enumerate(jobs):
        init_stage.init_job(settings, tmp_path / f"init{i}.pt")

    # Assert: one key for the settings with and without the default written out
    assert jobs[0] != jobs[1] and len(keys) == 2 and keys[0] == keys[1]


def test_a_hyperparameter_off_its_default_starts_a_run_over():
    def planned(edit=None) -> dict:
        (settings,) = [s for key, s in neutral_rule_settings(_config(edit)).items()
                       if key[0] == "train" and "algo~fedprox" in key[-1]]
        return settings

    off = planned(lambda raw: raw["algorithms"]["fedprox"].update(mu=0.001))
    assert resume_settings(off, TrainJob) != resume_settings(planned(), TrainJob)


def _continue(selector: dict):
    """The default config with a continue init from the run `selector` names, and a run from it."""
    def edit(raw: dict) -> None:
        raw["inits"]["more"] = {"kind": "continue", "run": selector}
        raw["experiments"].append({"alpha": 1.0, "init": "more"})
    return edit


@pytest.mark.parametrize(("selector", "kept"), [
    ({"alpha": 1.0, "init": "random", "algorithm": "fedavg", "seed": 0}, True),  # one more field, the same run
    ({"alpha": 1.0, "algorithm": "fedavg", "init": "random", "participation": 1.0}, True),
    ({"alpha": 0.1, "init": "random", "algorithm": "fedavg", "participation": 1.0}, False),  # another run
])
def test_a_continue_init_s_selector_means_the_run_it_names(selector, kept):
    # Prepare: the init and its run, recorded with the selector the pilot study writes
    before = neutral_rule_settings(_config(_continue({"alpha": 1.0, "init": "random", "algorithm": "fedavg"})))
    recorded = {key: _recorded(settings) for key, settings in before.items()}
    (key,) = [key for key in before if key[0] == "init" and key[-1] == "more"]

    # Execute
    now = neutral_rule_settings(_config(_continue(selector)), recorded)

    # Assert: the selector's text differs every time; the params keep the record where it names the same run
    assert now[key]["run"] != before[key]["run"]
    assert (repr(now[key]) == repr(before[key])) is kept
    assert (now[key]["source_run_id"] == before[key]["source_run_id"]) is kept


# -- the card index: placement, not meaning ---------------------------------------------------------------------------
# Each job kind that computes on the configured device, and where its settings hold it.
DEVICE_PATHS = {TrainJob: ("training.device",), PretrainedInit: ("device",),
                WarmupInit: ("device", "warmup_training.device"), HessianJob: ("device",),
                HessianPlaneJob: ("device",), InterpolationJob: ("device",), LayerBarriersJob: ("device",),
                LandscapeChunkJob: ("device",)}


def _on(device: str, paths: tuple[str, ...]) -> dict:
    """Settings with `device` at each of `paths`."""
    settings = {"run_id": "r"}
    for path in paths:
        node = settings
        *heads, last = path.split(".")
        for head in heads:
            node = node.setdefault(head, {"lr": 0.05})
        node[last] = device
    return settings


@pytest.mark.parametrize("kind", DEVICE_PATHS, ids=lambda k: k.__name__)
def test_a_card_index_is_placement_and_the_device_s_kind_meaning(kind):
    # Prepare: the job on each card, on the current card, on the CPU and where torch finds one
    settings = {device: _on(device, DEVICE_PATHS[kind]) for device in ("cuda:0", "cuda:1", "cuda", "cpu", "auto")}

    # Execute
    meanings = {device: kind.meaning(s) for device, s in settings.items()}

    # Assert: one meaning for every card; the CPU's and auto's differ from it and from each other
    assert meanings["cuda:0"] == meanings["cuda:1"] == meanings["cuda"]
    assert len({repr(meanings[device]) for device in ("cuda", "cpu", "auto")}) == 3
    # a job killed on one card resumes its saved rounds or parts on another
    assert resume_settings(settings["cuda:0"], kind) == resume_settings(settings["cuda:1"], kind)


@pytest.mark.parametrize("kind", DEVICE_PATHS, ids=lambda k: k.__name__)
@pytest.mark.parametrize(("now", "kept"), [("cuda:1", True), ("cuda", True), ("cpu", False)])
def test_a_job_moved_to_another_card_keeps_its_record(kind, now, kept):
    # Prepare: Snakemake's record of the job as it ran on cuda:0
    before, after = _on("cuda:0", DEVICE_PATHS[kind]), _on(now, DEVICE_PATHS[kind])

    # Execute
    planned = kept_record(after, _recorded(before), kind.meaning)

    # Assert: the recorded text where only the card changed, else the settings of now; the values of now both ways
    assert (repr(planned) == repr(before)) is kept
    assert planned == after


@pytest.mark.parametrize(("recorded", "now", "kept"), [
    ("cuda", "cuda:1", True),  # a free card named with `cuda:<i>`
    ("cuda:0", "cuda:1", True),
    ("cuda:1", "cuda", True),
    ("cuda", "cpu", False),  # another kind of device
    ("cpu", "auto", False),
])
def test_naming_another_card_keeps_every_finished_job_s_params(recorded, now, kept):
    # Prepare: the default config's jobs as Snakemake recorded them on `recorded`
    def on(device: str):
        return lambda raw: raw["training"].update(device=device)

    before = neutral_rule_settings(_config(on(recorded)))
    records = {key: _recorded(settings) for key, settings in before.items()}

    # Execute: the jobs on `now`, with and without the records
    planned = neutral_rule_settings(_config(on(now)), records)
    fresh = neutral_rule_settings(_config(on(now)))

    # Assert: the device is in the settings of every job that computes on it (all but the random init), which keep
    # their record where only the card changed and take the settings of now where the device's kind did
    differ = {key for key in before if repr(fresh[key]) != repr(before[key])}
    assert {key[0] for key in differ} == {"init", "train", "hessian", "hessian_plane", "interpolation",
                                          "layer_barriers", "landscape_chunk"}
    for key in before:
        assert repr(planned[key]) == repr(fresh[key] if key in differ and not kept else before[key]), key


def test_resume_settings_takes_a_job_kind_not_its_neutral_paths():
    with pytest.raises(TypeError, match="takes a job kind"):
        resume_settings({"a": 1}, TrainJob.neutral)


@pytest.mark.parametrize(("options", "same"), [
    ({"vocab_size": 80, "seq_len": 80}, True),  # the data's: what the model is built with without them
    ({"hidden_size": 256}, True),  # char_lstm's fixed default
    ({"vocab_size": 96}, False),
    ({"hidden_size": 128}, False),
])
def test_a_token_model_s_sizes_at_the_data_s_are_left_out_of_an_init_s_meaning(options, same):
    # Prepare: a random init of LEAF's Shakespeare LSTM (80 symbols, 80 positions), its options left out
    plain = {"dataset": "shakespeare", "model": "char_lstm", "model_options": {"targets": "every"}, "in_channels": 80,
             "image_size": 80, "num_classes": 80, "init": "random", "kind": "random", "seed": 0}
    written = {**plain, "model_options": {**plain["model_options"], **options}}

    # Execute / Assert
    assert (RandomInit.meaning(written) == RandomInit.meaning(plain)) is same


# -- a batch's float32 sum that overflows ---------------------------------------------------------------------------
class BiasedLogits(torch.nn.Module):
    """Logits 0 but for class 1's `bias`, or a sequence task's [N, C, T] (`positions`): a loss of about `bias` for
    every target of class 0, NaN where `bias` is inf (torch's cross-entropy of a +inf logit)."""

    def __init__(self, bias: float, positions: int = 0):
        super().__init__()
        self.positions = positions
        self.bias = torch.nn.Parameter(torch.zeros(10))
        with torch.no_grad():
            self.bias[1] = bias

    def forward(self, x):
        logits = x.flatten(1)[:, :1] * 0 + self.bias  # [N, 10]: through x, so a vmapped pass batches over it
        return logits if not self.positions else logits.unsqueeze(-1).expand(-1, -1, self.positions)


def _zero_targets(n: int, positions: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, torch.zeros((n, positions) if positions else (n,), dtype=torch.long)


@pytest.mark.parametrize(("bias", "expected"), [
    (1e36, 1e36),         # 1,024 losses of 1e36 overflow a float32 sum, their mean does not
    (1e30, 1e30),         # no float32 sum overflows
    (math.inf, math.nan),  # a +inf logit: torch's cross-entropy is NaN, at every batch size
], ids=["sum_overflows", "finite", "nan"])
def test_an_evaluation_whose_float32_batch_sum_overflows_is_the_same_at_every_batch_size(bias, expected):
    # Prepare: 2,048 targets of class 0, each with a loss of `bias` (class 1's logit)
    model = BiasedLogits(bias).eval()
    x, y = _zero_targets(2048)

    # Execute
    losses = [evaluate(model, x, y, batch_size).loss for batch_size in (1024, 256, 64)]

    # Assert: the mean of the float32 losses (1e36 is 9.999999616903162e35 in float32), whichever the batch size
    assert losses == pytest.approx([expected] * 3, rel=1e-6, nan_ok=True)


@pytest.mark.parametrize("batch_size", [7, 45, 1024])
def test_a_finite_evaluation_is_the_float32_batch_sums_bit_for_bit(batch_size):
    # Prepare: a float32 model; the loss as evaluate took it before a batch's overflowing sum was redone in float64
    x, y = digits_like(n=90, seed=2)["train"]
    model = build_model("cnn_small", in_channels=1, num_classes=10, image_size=8).eval()
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(y), batch_size):
            total += torch.nn.functional.cross_entropy(model(x[start : start + batch_size]),
                                                       y[start : start + batch_size], reduction="sum").double()

    # Execute
    result = evaluate(model, x, y, batch_size)

    # Assert: the same float
    assert result.loss == float(total) / len(y)


@pytest.mark.parametrize("positions", [0, 16], ids=["classifier", "sequence"])
@pytest.mark.parametrize("points_per_batch", [1, 2])
def test_a_surface_whose_float32_batch_sum_overflows_is_the_same_at_every_evaluation_batch_size(positions,
                                                                                               points_per_batch):
    # Prepare: losses of 3e37 per target: a float32 sum overflows from 12 of them (a sequence's 16 positions too)
    model = BiasedLogits(3e37, positions).eval()
    x, y = _zero_targets(256, positions)
    plane = random_plane(flatten_params(model), flatten_buffers(model),
                         [tuple(p.shape) for p in model.parameters()], seed=1)
    centre = np.zeros((2, 2))  # the model itself, twice: one batched pass of two points where points_per_batch is 2

    # Execute
    settings = [SurfaceSettings(batch_size=b, points_per_batch=points_per_batch) for b in (1, 256)]
    losses = [SurfaceEvaluator(model, plane, x, y, "cpu", s).evaluate(centre)[0] for s in settings]

    # Assert: the mean loss per target, finite
    np.testing.assert_allclose(losses, np.full((2, 2), np.float32(3e37)), rtol=1e-6)
