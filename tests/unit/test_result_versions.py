"""Reruns follow meaning: each job kind's result version is part of its jobs' settings (left out at the first version,
so declaring versions reran nothing), every figure's in its params, and the default profile leaves out Snakemake's
`code` trigger."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from helpers.configs import SCHEMA, TINY
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
# The rules whose jobs' settings carry their result version (their builders' `with_result_version`): every other rule
# (a figure, a table gathered from the jobs' files) passes it in its params.
SETTINGS_VERSIONED = {*COMPUTING_RULES, "init", "hessian_plane", "landscape_gather"}


@pytest.fixture(scope="module")
def default_config() -> dict:
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), schema)


def test_every_computing_rule_declares_a_result_version_of_at_least_the_first():
    versions = result_versions()

    assert COMPUTING_RULES <= set(versions)
    assert all(isinstance(v, int) and v >= FIRST_RESULT_VERSION for v in versions.values())


def test_every_versioned_rule_exists_in_the_rule_files():
    assert set(result_versions()) <= set(_rule_blocks())


def test_every_rule_of_the_rule_files_declares_a_result_version():
    # a table gathered from the jobs' files changes (a column, a rule of its gathering) with none of them changing
    assert sorted(set(_rule_blocks()) - set(result_versions())) == []


def _rule_blocks() -> dict[str, str]:
    """rule name -> its text, from every rule file."""
    return {m[1]: m[2] for smk in sorted((ROOT / "rules").glob("*.smk"))
            for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), flags=re.M | re.S)}


def _section(block: str, name: str) -> str:
    """The text of a rule's section (`output`, `params`), empty where the rule has none."""
    found = re.search(rf"^    {name}:\n(.*?)(?=^    \w+:|\Z)", block, flags=re.M | re.S)
    return found[1] if found else ""


def _writes_a_figure(block: str) -> bool:
    """Whether a rule's outputs name a figure: a figure path (Results.figure or figure_outputs, a *_FIGURE template,
    the landscape's FIGURE_FILES) or a png."""
    return re.search(r"figure|\bpng\b", _section(block, "output"), flags=re.I) is not None


def _figure_rules() -> list[str]:
    return sorted(rule for rule, block in _rule_blocks().items() if _writes_a_figure(block))


@pytest.mark.parametrize(("output", "figure"), [
    ('        **RESULTS.figure_outputs(\n            report,\n            CURVES_FIGURE,\n        ),\n', True),
    ('        **{f"{split}_{ext}": path for ext, path in RESULTS.figure(LAYER_FIGURE).items()},\n', True),
    ('        pdf=f"{RESULTS(SURFACE_DIR)}/x.pdf",\n        png=report(f"{RESULTS(SURFACE_DIR)}/x.png"),\n', True),
    ('        table=RESULTS.table("final"),\n', False),
    ('        plane=f"{RESULTS(HESSIAN_DIR)}/{PLANE_FILE}",\n', False),
])
def test_a_rule_writes_a_figure_where_its_outputs_name_one(output, figure):
    # a figure's name in another section (its input table, its script) does not make a figure rule
    block = (f'    input:\n        table=RESULTS.table("figure_data"),\n    output:\n{output}    log:\n'
             f'        RESULTS.job_log("x_figure"),\n    script:\n        "../workflow/scripts/x_figure.py"\n')

    assert _writes_a_figure(block) is figure


def test_the_figure_rules_of_every_stage_are_found():
    found = set(_figure_rules())

    assert {"accuracy_figure", "hessian_density_figure", "layer_barrier_figures", "landscape_figure",
            "client_stats_figure"} <= found
    assert not found & {"final_table", "hessian_tables", "landscape_gather", "client_stats"}


# A figure (its drawing, and the CSV of the numbers it draws beside it) changes without any table it reads changing: a
# fix of one reaches finished results only through its version.
@pytest.mark.parametrize("rule", _figure_rules())
def test_every_figure_rule_declares_a_result_version(rule):
    assert rule in result_versions(), f"{rule} writes a figure: declare its result version in its plan module"


@pytest.mark.parametrize("rule", sorted(set(_rule_blocks()) - SETTINGS_VERSIONED))
def test_every_rule_without_settings_passes_its_result_version_in_its_params(rule):
    # nothing at the first version, so declaring one reran no figure or table
    params = _section(_rule_blocks()[rule], "params")

    assert re.search(rf'\*\*result_version_params\(\s*\w+\.RESULT_VERSIONS\["{rule}"\]\s*\)', params), (
        f"pass `**result_version_params(<plan>.RESULT_VERSIONS[\"{rule}\"])` in the params of {rule}")


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


@pytest.fixture(scope="module")
def settings_config() -> dict:
    """The alphas and `partitions` labels around the threshold of numpy's exact zeros (Dirichlet alpha < 0.1)."""
    partitions = {"c2": {"kind": "classes", "classes_per_client": 2}, "tiny": {"kind": "dirichlet", "alpha": 0.05},
                  "edge": {"kind": "dirichlet", "alpha": 0.1}}
    return check_config({"alphas": ["iid", 1.0, 0.1, 0.05, 0.01], "partitions": partitions}, SCHEMA)


@pytest.mark.parametrize(("setting", "version"), [
    ("0.05", 2), ("0.01", 2), ("tiny", 2), ("0.1", None), ("1.0", None), ("iid", None), ("c2", None), ("edge", None),
])
def test_only_the_dirichlet_partitions_below_alpha_0_1_carry_the_version_of_the_redrawn_zero_draws(
        settings_config, setting, version):
    # Their draws alone can be exact zeros (numpy's stick-breaking), so the redraws changed only them: they rerun,
    # every other partition keeps the settings (and the results) it had
    settings = partition.partition_settings(settings_config, "digits", setting, 10, 0)

    assert settings.get(RESULT_VERSION) == version
    assert result_versions()["partition"] == FIRST_RESULT_VERSION


def test_bumping_the_partition_version_moves_every_partition_past_the_versions_it_had(settings_config, monkeypatch):
    def versions() -> dict[str, int]:
        return {s: partition.partition_settings(settings_config, "digits", s, 10, 0).get(RESULT_VERSION, 1)
                for s in ("iid", "0.1", "0.05", "tiny", "c2")}

    before = versions()
    monkeypatch.setitem(partition.RESULT_VERSIONS, "partition", partition.RESULT_VERSIONS["partition"] + 1)
    after = versions()

    assert before == {"iid": 1, "0.1": 1, "0.05": 2, "tiny": 2, "c2": 1}
    assert after == {"iid": 2, "0.1": 2, "0.05": 3, "tiny": 3, "c2": 2}


def test_the_tiny_runs_partitions_carry_the_version_its_recorded_numbers_are_keyed_by():
    # tests/helpers/result_numbers.py keys the tiny run's numbers by result_versions(), one version per job kind: no
    # setting of the tiny config may carry another partition version than the kind's
    config = check_config(copy.deepcopy(TINY), SCHEMA)
    runs = build_runs(config)

    found = {partition.partition_settings(config, r.dataset, r.setting, r.num_clients, r.seed).get(
        RESULT_VERSION, FIRST_RESULT_VERSION) for r in runs}

    assert runs and found == {result_versions()["partition"]}, sorted({str(r.setting) for r in runs})


@pytest.mark.parametrize("profile", ["profiles/default", "slurm"])
def test_each_profile_drops_only_the_code_trigger(profile):
    settings = yaml.safe_load((ROOT / profile / "config.yaml").read_text())

    assert set(settings["rerun-triggers"]) == {"mtime", "params", "input", "software-env"}
    # and compares an input's content beside its date up to partitions of 2 million samples (8 bytes each)
    assert settings["max-checksum-file-size"] >= 16 * 2**20


@pytest.mark.parametrize(("estimator", "probes", "version"), [
    ("hutchpp", 5, 5), ("hutchpp", 7, 5), ("hutchpp", 9, 5), ("hutchpp", 4, 4), ("hutchpp", 8, 5), ("hutchpp", 10, 5),
    ("hutchpp", 12, 4), ("hutchpp", 96, 4), ("hutchpp", 100, 5), ("hutchpp", 300, 4),
    ("hutchinson", 5, 4), ("exact", 5, 4), ("auto", 5, 4),
])
def test_only_the_hessian_jobs_of_a_small_hutchpp_budget_carry_the_version_of_its_diagonal(estimator, probes, version):
    # Below 4 residual probes Hutch++'s diagonal became Hutchinson's (HN and HD were NaN where Diag++ was taken; at 4
    # products neither has four quarters):
    # those jobs rerun. From 4 residual probes on, a sketch of k = trace_probes // 3 probes that is not a multiple of 4
    # put Diag++'s and Hutchinson's residual probes in different quarters (HD biased where a job's clients chose
    # differently): those jobs rerun too. Every other Hessian job keeps the settings (and the results) it had
    config = check_config({"hessian": {"trace_estimator": estimator, "trace_probes": probes}}, SCHEMA)
    runs = build_runs(config)

    settings = hessian.hessian_job_settings(config, runs, runs[0], 0)

    assert settings[RESULT_VERSION] == version
    assert result_versions()["hessian"] == 4


@pytest.mark.parametrize(("algorithm", "hparams", "training", "version"), [
    # each parameter's own AdamW step count: Stochastic Depth's dropped branches skip steps
    ("stochdepth", {}, {"optimizer": "adamw", "keep_optimizer_state": True}, 2),
    ("stochdepth", {}, {"optimizer": "adamw"}, None), ("stochdepth", {}, {"keep_optimizer_state": True}, None),
    ("fedavg", {}, {"optimizer": "adamw", "keep_optimizer_state": True}, None),
    # stacked sub-networks sliced to the most channels any client's width keeps
    ("gradaug", {"min_width": 0.2}, {}, 2), ("gradaug", {"min_width": 0.25}, {}, None), ("gradaug", {}, {}, None),
    ("gradaug", {"min_width": 0.2}, {"client_parallel": "sequential"}, None),  # never stacked: its numbers stand
])
def test_only_the_runs_a_fix_of_their_algorithm_changed_carry_its_bump(algorithm, hparams, training, version):
    # A fix that changed only some runs' numbers reruns them alone: every other run keeps the settings (and the
    # results) it had
    config = check_config({"models": ["resnet20"], "experiments": [{"alpha": "iid", "algorithm": "a"}],
                           "algorithms": {"a": {"name": algorithm, **hparams, "training": training}}}, SCHEMA)
    runs = build_runs(config)

    settings = train.train_settings(config, runs[0])

    assert settings.get(RESULT_VERSION) == version
    assert result_versions()["train"] == FIRST_RESULT_VERSION


@pytest.mark.parametrize(("algorithm", "training", "algorithm_training", "version"), [
    ("fedavg", {}, {}, None), ("fedavg", {"eval_every": 1, "save_every": 4}, {}, None),
    ("fedavg", {"eval_every": 2}, {}, 2), ("fedavg", {}, {"eval_every": 100, "save_every": 100}, 2),
    ("fedavg", {"eval_every": 4}, {"eval_every": 1}, None),  # the algorithm's own eval_every is the run's
    # beside a bump of its algorithm's: both
    ("stochdepth", {}, {"optimizer": "adamw", "keep_optimizer_state": True, "eval_every": 4}, 3),
])
def test_only_the_runs_evaluated_less_than_every_round_carry_the_bump_of_their_divergence_check(
        algorithm, training, algorithm_training, version):
    # A round between two evaluations is evaluated where its clients' loss says the run may have diverged
    # (fl.engine): only a run evaluated less than every round can have changed; every other keeps its settings
    config = check_config({"models": ["resnet20"], "experiments": [{"alpha": "iid", "algorithm": "a"}],
                           "training": training, "algorithms": {"a": {"name": algorithm,
                                                                      "training": algorithm_training}}}, SCHEMA)
    runs = build_runs(config)

    settings = train.train_settings(config, runs[0])

    assert settings.get(RESULT_VERSION) == version
    assert result_versions()["train"] == FIRST_RESULT_VERSION


def test_gradaug_s_bump_spares_the_models_it_never_stacks():
    # group norm: GradAug's sub-networks were not stacked on it before the bump's fix, so its runs' numbers did not
    # change
    config = check_config({"models": ["resnet20"], "model_options": {"resnet20": {"norm": "group"}},
                           "experiments": [{"alpha": "iid", "algorithm": "a"}],
                           "algorithms": {"a": {"name": "gradaug", "min_width": 0.2}}}, SCHEMA)

    assert train.train_settings(config, build_runs(config)[0]).get(RESULT_VERSION) is None


@pytest.mark.parametrize(("model", "algorithm", "hparams", "version"), [
    ("cnn_small", "gradaug", {}, 2), ("cnn_small", "gradaug", {"min_width": 0.2}, 2),
    ("resnet20", "gradaug", {}, None), ("cnn_small", "fedalign", {}, None), ("cnn_small", "fedavg", {}, None),
])
def test_only_gradaug_s_runs_on_cnn_small_carry_the_bump_of_its_sliced_fc_layer(model, algorithm, hparams, version):
    # cnn_small's GradAug sub-networks slice its hidden fc layer's outputs (models.feedforward.SmallCNN): those runs
    # alone rerun; FedAlign slims the last block only, which ends before fc
    config = check_config({"models": [model], "experiments": [{"alpha": "iid", "algorithm": "a"}],
                           "algorithms": {"a": {"name": algorithm, **hparams}}}, SCHEMA)

    assert train.train_settings(config, build_runs(config)[0]).get(RESULT_VERSION) == version


@pytest.mark.parametrize(("model", "training", "init_spec", "version", "init_version"), [
    # weight decay leaves char_gpt's biases, LayerNorm gains and embeddings alone: its runs and inits that decay
    ("char_gpt", {"weight_decay": 0.001}, {"kind": "random"}, 2, None),
    ("char_gpt", {"optimizer": "adamw", "weight_decay": 0.001}, {"kind": "iid_warmup", "rounds": 1}, 2, 2),
    ("char_gpt", {}, {"kind": "iid_warmup", "rounds": 1, "training": {"weight_decay": 0.01}}, None, 2),
    ("char_gpt", {}, {"kind": "pretrained"}, None, 2),  # its SGD's default weight decay, 5e-4
    ("char_gpt", {}, {"kind": "pretrained", "weight_decay": 0.0}, None, None),
    ("char_gpt", {}, {"kind": "iid_warmup", "rounds": 1}, None, None),
    # every other model decays every parameter, as before
    ("char_lstm", {"optimizer": "adamw", "weight_decay": 0.001}, {"kind": "pretrained"}, None, None),
    ("resnet20", {"weight_decay": 0.001}, {"kind": "iid_warmup", "rounds": 1}, None, None),
    ("resnet20", {"optimizer": "adamw", "weight_decay": 0.001}, {"kind": "pretrained"}, None, None),
])
def test_only_the_jobs_that_decay_a_model_with_undecayed_parameters_carry_its_bump(model, training, init_spec, version,
                                                                                   init_version):
    # Prepare
    dataset = "digits" if model == "resnet20" else "shakespeare"
    config = check_config({"datasets": {dataset: {"proxy_fraction": 0.1}}, "models": [model], "training": training,
                           "inits": {"i": init_spec}, "experiments": [
                               {"dataset": dataset, "model": model, "alpha": "iid", "algorithm": "fedavg",
                                "init": "i"}]}, SCHEMA)
    runs = build_runs(config)

    # Execute
    settings = train.train_settings(config, runs[0])
    init_settings = init.init_settings(config, runs, dataset, model, "i")

    # Assert
    assert settings.get(RESULT_VERSION) == version
    assert init_settings.get(RESULT_VERSION) == init_version
    assert result_versions()["train"] == result_versions()["init"] == FIRST_RESULT_VERSION
