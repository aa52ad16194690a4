"""`training.capture: cuda_graph` refused at planning where a run's local steps are never captured, from the one
declaration the trainers read too (fedscape.fl.settings.UNCAPTURED_STEPS), and every registered strategy's steps
checked against that declaration on a CPU with the stand-in graph makers of the capture tests (tests/unit/
test_capture.py's for a sequential client's passes, helpers.graphs' for a stacked step)."""

from __future__ import annotations

import pytest
from helpers.configs import problems_of
from helpers.graphs import emulated_graph
from helpers.synthetic import shard_data
from helpers.vectorized import model_of

# (the capture tests' stand-ins and set-ups, imported by their path below tests/: the sequential stand-in is theirs)
from unit.test_capture import assert_same_results, bn_model, stand_in_maker, train_clients
from unit.test_capture_stacked import CFG, MOON, SIZES, moon_resnet, same, small_resnet, wider_resnet

from fedscape.fl.capture import make_capture
from fedscape.fl.hparams.registry import ALGORITHM_NAMES, ALGORITHM_SPECS, algorithm_spec
from fedscape.fl.settings import UNCAPTURED_STEPS, TrainConfig, strategy_ref, uncaptured_steps
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.registry import make_strategy, strategy_class
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.params import FlatParams, flatten_buffers

PATHS = ("sequential", "vectorized")
# Hyperparameters and a model under which each algorithm's clients stack (else the default's and cnn_small)
STACKED = {
    "mixup": ({"gamma": 0.4}, small_resnet),
    "stochdepth": ({"survival_last": 0.5}, small_resnet),
    "gradaug": ({}, small_resnet),
    "fedalign": ({"mu": 0.5, "width": 0.5, "clip_grad_norm": 1.0}, wider_resnet),
    "moon": (MOON, moon_resnet),
}
# Registered strategies with an objective of their own whose sequential steps are captured: their passes are plain
# model(x) passes, each back-propagated before the next (FedSAM's at w and at w + e), checked captured-exact below.
OWN_PLAIN_PASSES = {"fedsam", "fedasam"}


def hparams_of(name: str) -> dict:
    return STACKED.get(name, ({}, None))[0]


def stacked_model(name: str):
    make = STACKED.get(name, (None, None))[1]
    return make() if make is not None else model_of("cnn_small")


def config_of(name: str, training: dict | None = None, hparams: dict | None = None, section: dict | None = None,
              model: str = "resnet20") -> dict:
    """A one-run config of algorithm `name` (label `a`, its `training` overrides and hyperparameters) on digits and
    `model` (resnet20: every algorithm trains it), on a card, with the `training` section's `section` keys."""
    entry = {"name": name, **(hparams_of(name) if hparams is None else hparams)}
    if training:
        entry["training"] = training
    return {"datasets": {"digits": {"test_fraction": 0.25}}, "models": [model],
            "inits": {"random": {"kind": "random", "seed": 0}}, "algorithms": {"a": entry},
            "experiments": [{"alpha": "iid", "init": "random", "algorithm": "a"}], "num_clients": [4], "seeds": [0],
            "partition": {"min_size": 10},
            "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "device": "cuda", **(section or {})}}


# -- the declaration -------------------------------------------------------------------------------------------------

def test_the_declaration_names_registered_strategies_the_way_the_trainers_do():
    # Prepare
    refs = {spec.strategy for spec in ALGORITHM_SPECS.values()}

    # Execute / Assert: every entry a registered strategy's on a known path (a stale or misspelt entry would declare
    # nothing), and the name a trainer looks a built strategy up by is the name planning reads from its spec
    assert set(UNCAPTURED_STEPS) <= refs
    assert all(set(paths) <= set(PATHS) and paths for paths in UNCAPTURED_STEPS.values())
    for name in ALGORITHM_NAMES:
        assert strategy_ref(strategy_class(name)) == algorithm_spec(name).strategy == strategy_ref(
            type(make_strategy(name, hparams_of(name))))
    assert strategy_ref(Strategy) == "base:Strategy" and strategy_ref(int) == "builtins:int"


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_an_uncaptured_declaration_is_a_strategy_with_its_own_passes_or_draws(name):
    # Prepare
    cls = strategy_class(name)
    own_passes = any(getattr(cls, hook) is not getattr(Strategy, hook) for hook in ("local_backward", "local_loss"))

    # Execute
    sequential, stacked = (uncaptured_steps(strategy_ref(cls), name, path) for path in PATHS)

    # Assert: a sequential objective of its own is declared uncaptured unless its passes are checked plain (below); a
    # strategy that draws on the host every stacked step (`draws_per_step`) has its stacked steps declared uncaptured
    assert (sequential is not None) == (own_passes and name not in OWN_PLAIN_PASSES)
    assert (stacked is not None) == cls.draws_per_step()
    assert OWN_PLAIN_PASSES <= set(ALGORITHM_NAMES)


def test_the_stacked_adamw_step_is_uncaptured_for_every_algorithm():
    for name in ALGORITHM_NAMES:
        ref = algorithm_spec(name).strategy
        own = UNCAPTURED_STEPS.get(ref, {}).get("vectorized")  # (GradAug's own reason comes first)
        assert ("AdamW step is not captured" if own is None else own) in uncaptured_steps(ref, name, "vectorized",
                                                                                           "adamw")
        assert uncaptured_steps(ref, name, "sequential", "adamw") == uncaptured_steps(ref, name, "sequential")
    with pytest.raises(ValueError, match="a client path is sequential or vectorized, got 'auto'"):
        uncaptured_steps("fedavg:FedAvg", "fedavg", "auto")


# -- the trainers follow it, and what it calls captured is ------------------------------------------------------------

@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_a_sequential_client_is_captured_where_the_declaration_says_so(name):
    # Prepare
    declared = uncaptured_steps(algorithm_spec(name).strategy, name, "sequential")
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=4, lr=0.05, momentum=0.9, seed=3)
    strict = TrainConfig(capture="cuda_graph", batch_size=4)

    # Execute / Assert: the trainer's check (as on a card) refuses exactly the declared, naming the fix ...
    if declared is not None:
        with pytest.raises(ValueError, match="use 'auto' to take eager steps") as refused:
            make_capture(bn_model(), make_strategy(name), strict, "cuda", make_graphed=stand_in_maker())
        assert declared in str(refused.value)
        return
    assert make_capture(bn_model(), make_strategy(name), strict, "cuda", make_graphed=stand_in_maker()) is not None

    # ... and the steps it captures equal eager ones bit for bit, replayed after the check at capture passed
    data = shard_data([9, 14, 6])
    eager, _ = train_clients(bn_model(), data, name, cfg, capture="eager")
    captured, capture = train_clients(bn_model(), data, name, cfg, capture=None, maker=stand_in_maker())
    assert capture.on and capture.replays > 0
    assert_same_results(captured, eager)


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_stacked_steps_are_captured_where_the_declaration_says_so(name):
    # Prepare
    declared = uncaptured_steps(algorithm_spec(name).strategy, name, "vectorized")
    data = shard_data(SIZES)

    def trainer(cfg: TrainConfig, make_graph=None):
        model = stacked_model(name)
        strategy = make_strategy(name, hparams_of(name))
        flat_size = sum(p.numel() for p in model.parameters())
        strategy.setup(data.num_clients, flat_size, next(model.parameters()).device, model=model, seed=0)
        return model, strategy, VectorizedTrainer(model, data, strategy, cfg, make_graph=make_graph)

    # Execute / Assert: the trainer refuses exactly the declared where capture insists, and takes eager steps under
    # auto ...
    if declared is not None:
        with pytest.raises(ValueError, match="use 'auto' or 'eager'") as refused:
            trainer(TrainConfig(**CFG, capture="cuda_graph"), emulated_graph)
        assert declared in str(refused.value)
        assert trainer(TrainConfig(**CFG), emulated_graph)[2].graphs is None
        return

    # ... and the steps it captures equal eager ones bit for bit (one round: its recurring shape is captured in it)
    results, replays = [], []
    for make_graph in (None, emulated_graph):  # (no graph maker on a CPU: eager steps)
        model, _, t = trainer(TrainConfig(**CFG, capture="cuda_graph"), make_graph)
        params, buffers = FlatParams(model).get(), flatten_buffers(model)
        results.append([t.train_round(params, buffers, list(range(data.num_clients)), 1)])
        replays.append(0 if t.graphs is None else t.graphs.replays)
        t.close()
    assert replays[0] == 0 and replays[1] > 0
    assert same(results[0], results[1])


# -- planning refuses what the trainers would ------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_planning_refuses_cuda_graph_exactly_where_the_declaration_does(name, path):
    # Prepare: the run's clients on `path` (asked for explicitly), on a card
    declared = uncaptured_steps(algorithm_spec(name).strategy, name, path)
    config = config_of(name, {"client_parallel": path, "capture": "cuda_graph"})

    # Execute
    problems = problems_of(config)

    # Assert: the label, the key where capture was set, why, and auto as the fix; nothing otherwise
    if declared is None:
        assert problems == ""
    else:
        assert f"algorithms.a.training.capture: cuda_graph insists on captured local steps, but algorithms.a " \
               f"({name}) trains its clients" in problems
        assert declared in problems and "set capture: auto" in problems


@pytest.mark.parametrize(("name", "section", "training", "expected"), [
    # one after another because the config says so, or because auto cannot stack: refused where that path is not
    # captured (Mixup's own objective), with the stacked path as another fix where it is captured
    ("mixup", {"capture": "cuda_graph"}, {"client_parallel": "sequential"},
     "training.capture: cuda_graph insists on captured local steps, but algorithms.a (mixup) trains its clients one "
     "after another (client_parallel: sequential) and mixup's local objective calls the model in its own way"),
    ("mixup", {"capture": "cuda_graph", "client_parallel": "sequential"}, {},
     "or client_parallel: auto, whose stacked steps are captured"),
    ("mixup", {"capture": "cuda_graph"}, {"keep_optimizer_state": True},
     "trains its clients one after another (client_parallel auto: keep_optimizer_state keeps each client's "
     "optimiser state between rounds) and mixup's local objective"),
    ("fedalign", {"capture": "cuda_graph"}, None,  # FedAlign at width 1 has no stacked form
     "(client_parallel auto: algorithms.a (fedalign) needs a width below 1"),
    # auto stacks Mixup's steps on a card, and captures them
    ("mixup", {"capture": "cuda_graph"}, {}, ""),
    # GradAug's steps are captured on neither path
    ("gradaug", {"capture": "cuda_graph"}, {},
     "training.capture: cuda_graph insists on captured local steps, but algorithms.a (gradaug) trains its clients "
     "stacked (client_parallel auto, on a GPU) and gradaug's stacked step is not captured"),
    # AdamW: auto trains it one after another, whose steps are captured; stacked it is not
    ("fedavg", {"capture": "cuda_graph", "optimizer": "adamw"}, {}, ""),
    ("fedavg", {"capture": "cuda_graph", "optimizer": "adamw"}, {"client_parallel": "vectorized"},
     "training.capture: cuda_graph insists on captured local steps, but algorithms.a (fedavg) trains its clients "
     "stacked (client_parallel: vectorized) and the stacked AdamW step is not captured (its step count changes every "
     "step); set capture: auto"),
    # capture set where it is read: the algorithm's own training
    ("moon", {}, {"capture": "cuda_graph", "client_parallel": "sequential"},
     "algorithms.a.training.capture: cuda_graph insists on captured local steps, but algorithms.a (moon)"),
    ("stochdepth", {"capture": "cuda_graph", "client_parallel": "sequential"}, {}, "training.capture: cuda_graph "),
    # eager and auto are never refused
    ("gradaug", {"capture": "auto", "client_parallel": "sequential"}, {}, ""),
    ("gradaug", {"capture": "eager"}, {}, ""),
])
def test_planning_names_the_label_the_key_and_the_fix(name, section, training, expected):
    # Prepare
    hparams = {"width": 1.0} if name == "fedalign" else None
    config = config_of(name, training, hparams=hparams, section=section)

    # Execute
    problems = problems_of(config)

    # Assert
    if not expected:
        assert problems == ""
    else:
        assert expected in problems and "set capture: auto" in problems
        assert problems.count("capture: cuda_graph insists") == 1


def test_a_cpu_device_is_refused_once_for_what_it_is():
    config = config_of("gradaug", section={"capture": "cuda_graph", "device": "cpu"})

    problems = problems_of(config)

    assert "capture: cuda_graph replays CUDA graphs, but device is cpu" in problems
    assert "insists on captured local steps" not in problems


def test_an_iid_warmup_is_planned_as_the_fedavg_it_trains():
    # Prepare: a warm-up whose AdamW clients are stacked (its runs train one after another, captured)
    config = config_of("fedavg", {"client_parallel": "sequential"}, section={"capture": "cuda_graph"})
    config["inits"]["warm"] = {"kind": "iid_warmup", "rounds": 1, "num_clients": 4,
                               "training": {"optimizer": "adamw", "client_parallel": "vectorized"}}
    config["experiments"] = [{"alpha": "iid", "init": "warm", "algorithm": "a"}]

    # Execute
    problems = problems_of(config)
    config["inits"]["warm"]["training"]["client_parallel"] = "auto"
    fixed = problems_of(config)

    # Assert
    assert ("training.capture: cuda_graph insists on captured local steps, but the warm-up of inits.warm (fedavg) "
            "trains its clients stacked (client_parallel: vectorized) and the stacked AdamW step is not captured"
            ) in problems
    assert fixed == ""
