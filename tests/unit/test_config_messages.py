"""What a refused or suspicious config is told, through the check the Snakefile calls (`plan.workflow.check_config`)
and the warnings it prints (`config_warnings`): the key, what was likely meant, and what to write instead."""

from __future__ import annotations

import copy

import pytest
from helpers.configs import DEFAULT, SCHEMA, TINY, problems_of

from fedscape.core.runs import build_runs
from fedscape.plan.workflow import check_config, config_warnings

# The default config without the analyses (whose selectors assume its experiments) and without its experiments: the
# product of its grid lists
DEFAULT_GRID = {k: v for k, v in DEFAULT.items()
                if k not in ("experiments", "interpolation", "layer_barriers", "landscapes", "hessian")}
# The tiny config's experiment defaults, each experiment without a seed run for every seed
EVERY_SEED = {**TINY["experiment_defaults"], "seed": "every"}


def with_change(base: dict, **changes) -> dict:
    """A copy of `base` with each dotted key (written with __ for the dots) set to its value."""
    config = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


def has_line(problems: str, start: str) -> bool:
    """Whether a problem line of check_config's `problems` starts with `start`."""
    return any(line.startswith(f"  - {start}") for line in problems.splitlines())


def warnings_of(config: dict) -> list[str]:
    config = check_config(copy.deepcopy(config), SCHEMA)
    return config_warnings(config, build_runs(config), SCHEMA)


@pytest.mark.parametrize(("runs", "problem"), [
    # `runs:` with nothing after it: the runs to analyse, not "no selector" (a TypeError in the stage's check)
    (None, "hessian.runs: empty (YAML reads `runs:` with nothing after it as null): give it at least one entry or "
           "delete the key for its default (all)"),
    ([None], "hessian.runs[0]: empty (YAML reads `-` with nothing after it as null): give it at least one entry"),
    ([{"alpha": "iid"}, None], "hessian.runs[1]: empty (YAML reads `-` with nothing after it as null)"),
])
def test_a_blank_hessian_selector_is_refused_with_what_to_write(runs, problem):
    # Prepare
    config = with_change(TINY, hessian__runs=runs)

    # Execute
    problems = problems_of(config)

    # Assert
    assert has_line(problems, problem), problems


@pytest.mark.parametrize(("warmup_training", "inherited"), [
    ({}, True),  # the runs' lr_warmup, which the 1-round warm-up inherits
    ({"lr_warmup": 2}, False),  # the warm-up's own: its key names it already
])
def test_an_lr_warmup_the_iid_warmup_inherits_is_named_as_inherited_with_the_fix(warmup_training, inherited):
    # Prepare: the runs' cosine schedule after one round of lr warm-up, under the default's 1-round IID warm-up
    config = with_change(DEFAULT, training__lr_schedule="cosine", training__lr_warmup=1,
                         inits__warmup__training=warmup_training)

    # Execute
    problems = problems_of(config)

    # Assert: refused either way (no round is left for the decay), the fix in the warm-up's own training where the
    # value is inherited
    assert "inits.warmup.training: lr_warmup" in problems
    hint = ("training.lr_warmup (1) is inherited by this 1-round warm-up: set inits.warmup.training: {lr_schedule: "
            "constant, lr_warmup: 0}")
    assert (hint in problems) is inherited


@pytest.mark.parametrize(("path", "value", "meant"), [
    ("training__precision", "FP32", "fp32"),  # (case-sensitive, the nearest was tf32, for their common 32)
    ("training__precision", "TF32", "tf32"),
    ("training__optimizer", "SGD", "sgd"),
    ("models", ["MLP"], "mlp"),
    ("datasets", {"CIFAR10": {}}, "cifar10"),
    ("algorithms__fedavg__name", "FEDPROX", "fedprox"),
    ("training__optimizer", "adamx", "adamw"),  # a misspelling as before
])
def test_a_name_in_another_case_is_suggested_in_its_own(path, value, meant):
    # Prepare
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert f"Did you mean {meant!r}?" in problems


@pytest.mark.parametrize(("path", "value", "problem", "meant"), [
    # a text that no form of the value takes: the closest text a form takes as such
    ("alphas", ["IID"], "alphas[0]: 'IID' is not valid: an alpha is a number > 0", "iid"),
    ("experiments", [{"alpha": "IID"}], "experiments[0].alpha: 'IID' is not valid: Dirichlet alpha", "iid"),
    ("landscapes__tiny_hessian__round", "fianl", "landscapes.tiny_hessian.round: 'fianl' is not valid: Round of the "
                                                 "models", "final"),
    ("hessian__runs", "al", "hessian.runs: 'al' is not valid: Which runs to analyse", "all"),
    ("experiment_defaults__seed", "Every", "experiment_defaults.seed: 'Every' is not valid: The seed of an "
                                           "experiment", "every"),
    # a pattern's text, in lower case where the pattern takes that
    ("hessian__eval_samples", "All", "hessian.eval_samples: 'All' is not valid: an integer >= 1, null (always all "
                                     "samples) or all (every sample, streamed).", "all"),
    ("training__device", "CPU", "training.device: 'CPU' is not valid: auto, cpu, cuda or cuda:<index> (e.g. "
                                "cuda:1).", "cpu"),
])
def test_a_text_that_no_form_takes_is_told_the_nearest_one(path, value, problem, meant):
    # Prepare
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert: the line, and the suggestion at its end
    assert has_line(problems, problem), problems
    assert f" Did you mean {meant!r}?\n" in problems + "\n"


@pytest.mark.parametrize(("path", "value", "problem"), [
    # the mapping form's own mistake, at its key, not the description of every form
    ("training__local_epochs", {"low": 1, "high": 3, "draw": "onse"},
     "training.local_epochs.draw: 'onse' is not valid. Did you mean 'once'? Valid values: round, once"),
    ("training__local_epochs", {"low": 1, "high": 3.5}, "training.local_epochs.high: 3.5 is not of type 'integer'"),
    # the list form's
    ("training__local_epochs", [0, 2, 2, 2], "training.local_epochs[0]: 0 is less than the minimum of 1"),
    # a mistake of the value as a whole: with what the value may be
    ("landscapes__tiny_hessian__span", [1.0, 2.0, 3.0], "landscapes.tiny_hessian.span: [1.0, 2.0, 3.0] is too short. "
                                                        "Grid extent: null = every projected point"),
])
def test_a_mapping_or_list_of_a_value_of_several_forms_is_told_its_forms_own_mistake(path, value, problem):
    # Prepare
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert has_line(problems, problem), problems


@pytest.mark.parametrize(("entry", "problem"), [
    ({"nmae": "fedavg"}, "algorithms.fedavg: 'name' is a required property; is the entry's 'nmae' meant as 'name'?"),
    ({"mu": 0.01}, "algorithms.fedavg: 'name' is a required property"),  # no key near it: nothing more
])
def test_a_missing_required_key_names_the_entrys_key_it_may_be_misspelt_as(entry, problem):
    # Prepare
    config = with_change(TINY, algorithms__fedavg=entry)

    # Execute
    problems = problems_of(config)

    # Assert
    assert has_line(problems, problem), problems


@pytest.mark.parametrize(("path", "value", "problem"), [
    ("hessian__runs", [{"alpha": 0.7}], "hessian.runs[0]: no run of the config matches {'alpha': 0.7}; the runs' "
                                        "values: alpha: 0.5, iid"),
    ("landscapes__tiny_local__runs", [{"alpha": "iid", "init": "rndm"}],
     "landscapes.tiny_local.runs[0]: no run of the config matches {'alpha': 'iid', 'init': 'rndm'}; the runs' "
     "values: init: pre, random"),
])
def test_an_analysis_selector_that_matches_no_run_names_the_runs_values(path, value, problem):
    # Prepare
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert has_line(problems, problem), problems


@pytest.mark.parametrize(("path", "value", "hint"), [
    # what `snakemake --config 'client_stats={enabled: false}'` gives: a mapping's values as text
    ("client_stats__enabled", "false", "client_stats.enabled: 'false' is not of type 'boolean'; YAML read 'false' "
                                       "as text: it is quoted, or it came in a list or a mapping given to Snakemake's "
                                       "--config, which passes their values as text (set them in a config file)"),
    ("client_stats__enabled", "Yes", "YAML read 'Yes' as text: it is quoted, or it came in a list or a mapping"),
    ("seeds", ["1"], "seeds[0]: '1' is not of type 'integer'; YAML read '1' as text: it is quoted, or it came in a "
                     "list or a mapping given to Snakemake's --config"),
])
def test_a_boolean_or_number_read_as_text_says_why(path, value, hint):
    # Prepare
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert hint in problems


def test_a_text_that_is_no_boolean_gets_no_boolean_hint():
    # Prepare: a word that YAML does not read as a boolean
    config = with_change(TINY, client_stats__enabled="maybe")

    # Execute
    problems = problems_of(config)

    # Assert
    assert "client_stats.enabled: 'maybe' is not of type 'boolean'" in problems and "YAML read" not in problems


@pytest.mark.parametrize(("base", "changes", "warning"), [
    (DEFAULT_GRID, {"alphas": [1, 1.0, 0.1]}, "alphas: 1.0 is listed 2 times; its runs are planned once"),
    (DEFAULT_GRID, {"seeds": [0, 0]}, "seeds: 0 is listed 2 times; its runs are planned once"),
    (DEFAULT_GRID, {"participation": [1, 1.0]}, "participation: 1.0 is listed 2 times"),
    (TINY, {"experiments": [{"alpha": "iid"}, {"alpha": 0.5}, {"alpha": 0.5, "seed": 0}]},
     "experiments[2]: plans only runs that experiments[1] plans already (a run is planned once), so it adds none"),
    (TINY, {"experiments": [{"alpha": "iid"}, {"alpha": 0.5}, {"alpha": 0.5, "seed": 0}, {"alpha": "iid"}]},
     "experiments[3]: plans only runs that experiments[0] plans already"),
    # replicates (each experiment for every seed) that a later experiment's runs fall within
    (TINY, {"experiments": [{"alpha": "iid", "seed": 0}, {"alpha": 0.5}, {"alpha": 0.5, "seed": 1}], "seeds": [0, 1],
            "experiment_defaults": EVERY_SEED}, "experiments[2]: plans only runs that experiments[1] plans"),
])
def test_a_repeated_grid_value_or_experiment_is_warned_about(base, changes, warning):
    # Prepare
    config = with_change(base, **changes)

    # Execute
    lines = warnings_of(config)

    # Assert
    assert any(line.startswith(warning) for line in lines), lines


@pytest.mark.parametrize(("base", "changes"), [
    (DEFAULT_GRID, {"alphas": [1.0, 0.1], "seeds": [0, 1]}),
    (TINY, {"experiments": [{"alpha": "iid"}, {"alpha": 0.5, "seed": 0}, {"alpha": 0.5, "seed": 1}],
            "seeds": [0, 1]}),  # replicates
    (TINY, {"experiments": [{"alpha": "iid", "seed": 0}, {"alpha": 0.5, "seed": 0}, {"alpha": 0.5}], "seeds": [0, 1],
            "experiment_defaults": EVERY_SEED}),  # the third adds seed 1
])
def test_distinct_grid_values_and_experiments_are_not_warned_about(base, changes):
    # Prepare
    config = with_change(base, **changes)

    # Execute
    lines = warnings_of(config)

    # Assert
    assert not [line for line in lines if "is listed" in line or "plans only runs" in line], lines


@pytest.mark.parametrize(("path", "value", "problem"), [
    ("num_clients", [2**70], "num_clients[0]: 1180591620717411303424 is greater than the maximum of 10000000; a "
                             "client count is from 1 to 10,000,000"),
    ("experiments", [{"alpha": "iid", "num_clients": 2**70}], "experiments[0].num_clients: 1180591620717411303424 is "
                                                              "greater than the maximum of 10000000"),
    ("inits__w", {"kind": "iid_warmup", "num_clients": 2**70}, "inits.w.num_clients: 1180591620717411303424 is "
                                                              "greater than the maximum of 10000000"),
    ("landscapes__tiny_local__resolution", 2**70, "landscapes.tiny_local.resolution: 1180591620717411303424 is "
                                                  "greater than the maximum of 10000"),
    ("landscapes__tiny_local__chunks", 2**70, "landscapes.tiny_local.chunks: 1180591620717411303424 is greater than "
                                              "the maximum of 100000000"),
    ("landscapes__tiny_local__points_per_batch", 2**70, "landscapes.tiny_local.points_per_batch: "
                                                        "1180591620717411303424 is greater than the maximum of "
                                                        "100000000"),
])
def test_a_count_too_large_for_the_planning_is_refused_by_the_schema(path, value, problem):
    # Prepare: a count that overflowed the planning's ranges and numpy arrays (a traceback, not a problem line)
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert has_line(problems, problem), problems


@pytest.mark.parametrize(("path", "value"), [
    ("inits__random__seed", 1 + 2**32),
    ("inits__pre__seed", 2**32),
    ("landscapes__tiny_local__seed", 2**32),
    ("interpolation__curve__seed", 2**40),
])
def test_a_seed_that_seeds_torch_as_it_is_is_refused_from_2_to_the_32(path, value):
    # Prepare: a seed whose draws, on the CPU, are those of seed mod 2**32 (1 + 2**32: bit-identical weights to 1's)
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    where = path.replace("__", ".")
    assert (f"  - {where}: {value} is greater than the maximum of 4294967295; this seed seeds torch's generator as "
            "it is, whose CPU generator keeps only the seed mod 2**32") in problems


@pytest.mark.parametrize("path", ["inits__random__seed", "landscapes__tiny_local__seed", "interpolation__curve__seed",
                                  "seeds"])
def test_a_seed_at_the_edge_of_its_range_stays_valid(path):
    # Prepare: the largest seed torch keeps whole; a run seed, which reaches torch through derive_seed, beyond it
    value = [2**63 - 1] if path == "seeds" else 2**32 - 1
    config = with_change(TINY, **{path: value})

    # Execute
    problems = problems_of(config)

    # Assert
    assert problems == ""
