"""A second seed widens a landscape whose plane several runs span (`plan.landscape.mixed_seed_warnings`): a selector
that names no seed takes every seed's run, so the default config's final_alphas puts the final models of both seeds
on one plane. Warned of once per such landscape, not refused (several seeds on one plane is a valid choice); a
selector with a seed, or one seed's runs, give no warning."""

from __future__ import annotations

import copy

import pytest
from helpers.configs import DEFAULT, SCHEMA

from fedscape.core.runs import build_runs
from fedscape.plan.landscape import mixed_seed_warnings
from fedscape.plan.workflow import check_config, config_warnings

RANDOM_FEDAVG = {"init": "random", "algorithm": "fedavg", "participation": 1.0}


def _second_seed(*experiments: dict, pinned: tuple[str, ...] = ("hessian_iid",), every: bool = False,
                 **landscapes) -> dict:
    """The default config with seeds [0, 1], the `experiments` on seed 1 added (`every`: each experiment on both,
    `experiment_defaults: {seed: every}`), `seed: 0` added to the runs of the `pinned` landscapes (the single-run ones
    the seed-1 runs would give a second run, which the check refuses) and the `landscapes` added or replaced."""
    config = copy.deepcopy(DEFAULT)
    config["seeds"] = [0, 1]
    if every:
        config["experiment_defaults"]["seed"] = "every"
    config["experiments"] += [{**experiment, "seed": 1} for experiment in experiments]
    for label in pinned:
        config["landscapes"][label]["runs"] = [{**selector, "seed": 0} for selector in
                                               config["landscapes"][label]["runs"]]
    config["landscapes"].update(landscapes)
    return config


def _warnings(config: dict) -> list[str]:
    config = check_config(config, SCHEMA)  # valid: a warning, never a refusal
    lines = mixed_seed_warnings(config, build_runs(config))
    assert [line for line in config_warnings(config, build_runs(config)) if line in lines] == lines  # what users see
    return lines


def test_the_default_configs_final_alphas_on_a_second_seed_is_warned_of_with_the_fix():
    # Prepare: the default config's own suggestion (an IID run on seed 1) without its `seed: 0` for final_alphas
    config = _second_seed({"alpha": "iid"})

    # Execute
    lines = _warnings(config)

    # Assert: one line, naming the landscape, its selector, the seeds, the plane's runs and the fix
    assert lines == ["landscapes.final_alphas: runs[0] {'init': 'random', 'algorithm': 'fedavg', 'participation': "
                     "1.0} names no seed and takes the runs of seeds 0, 1, so its final_models plane is spanned by "
                     "the models of 4 runs, each seed's; for one seed's, add seed: 0 to its runs (several seeds on one "
                     "plane is a valid choice: then leave it)"]


@pytest.mark.parametrize(("config", "warned"), [
    # a seed on every alpha-0.1 run: every plane of several runs at alpha 0.1 is widened, each warned of once (two
    # of participation_0.1's selectors, one line)
    (_second_seed({"alpha": 0.1}, {"alpha": 0.1, "init": "pretrained"}, {"alpha": 0.1, "init": "warmup"},
                  {"alpha": 0.1, "participation": 0.5}, pinned=("global_0.1", "local_0.1_r10")),
     ["final_alphas", "pretrained_0.1", "warmup_0.1", "participation_0.1"]),
    # every experiment on both seeds
    (_second_seed(every=True, pinned=("hessian_iid", "global_0.1", "local_0.1_r10")),
     ["final_alphas", "pretrained_0.1", "warmup_0.1", "participation_0.1"]),
    # no selector: every run, of both seeds
    (_second_seed({"alpha": "iid"}, final_alphas={"kind": "final_models", "runs": [], "resolution": 15}),
     ["final_alphas"]),
    # the seed named where the default config's comment says to
    (_second_seed({"alpha": "iid"}, pinned=("hessian_iid", "final_alphas")), []),
    # both seeds on one plane, each named: chosen, not widened
    (_second_seed({"alpha": "iid"}, pinned=("hessian_iid", "final_alphas"),
                  iid_seeds={"kind": "trajectories", "runs": [{"alpha": "iid", **RANDOM_FEDAVG, "seed": 0},
                                                              {"alpha": "iid", **RANDOM_FEDAVG, "seed": 1}]}), []),
    # one seed: nothing to widen
    (copy.deepcopy(DEFAULT), []),
], ids=["alpha_0.1_on_two_seeds", "seed_every", "every_run", "seed_named", "seeds_each_named", "one_seed"])
def test_each_landscape_a_second_seed_widens_is_warned_of_once(config, warned):
    # Execute
    lines = _warnings(config)

    # Assert
    assert [line.split(":")[0] for line in lines] == [f"landscapes.{label}" for label in warned]
