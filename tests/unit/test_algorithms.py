"""The FL algorithm suite: reductions to FedAvg, hand computations, invariants, sub-networks, learning."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.configs import SCHEMA, TINY
from helpers.resume import killed_after_round
from helpers.stages import train_run
from helpers.tiny import tiny_data, tiny_model
from torch import nn

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.core.seeds import derive_seed
from fedscape.data.datasets import load_dataset
from fedscape.data.federated import FederatedData, load_federated_data
from fedscape.data.partition import make_partition
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.fedsam import FedASAMConfig
from fedscape.fl.hparams.moon import MoonConfig
from fedscape.fl.hparams.registry import ALGORITHM_SPECS, algorithm_config
from fedscape.fl.local import batch_order, client_generator, layer_seed
from fedscape.fl.schedule import effective_steps
from fedscape.fl.server_opt import ServerAdaptive
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies import mixup as mixup_mod
from fedscape.fl.strategies.base import ClientContext, ClientResult
from fedscape.fl.strategies.fedalign import lipschitz_estimate, spectral_norm_power, transmitting_matrix
from fedscape.fl.strategies.fedsam import sam_perturbation
from fedscape.fl.strategies.mixup import mixup_batch
from fedscape.fl.strategies.moon import moon_contrastive_loss
from fedscape.fl.strategies.registry import make_strategy, strategy_class
from fedscape.fl.strategies.stochdepth import survival_probabilities
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.evaluate import evaluate
from fedscape.models.layers import ProjectedClassifier, slim_channels
from fedscape.models.params import FlatParams, flatten_params
from fedscape.models.registry import build_model
from fedscape.outputs.tables import UNRECORDED, TableError
from fedscape.plan.workflow import check_config
from fedscape.report.cost import ATTEMPT_COLUMNS, COST_COLUMNS, cost_table

RESIDUAL_ALGOS = {"stochdepth"}
WIDTH_ALGOS = {"gradaug", "fedalign"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def digits_data() -> FederatedData:
    """digits: 4 clients, Dirichlet(0.5) label skew, the real train/test split."""
    ds = load_dataset("digits", proxy_fraction=0.2)
    part = make_partition(ds.y_train.numpy(), 4, 0.5, 0, 10, 1000)
    return FederatedData(ds.x_train, ds.y_train, [torch.as_tensor(i) for i in part.client_indices], ds.x_test,
                         ds.y_test)


def small_data(digits_data: FederatedData, per_client: int = 40) -> FederatedData:
    """The first `per_client` samples of every client (quick exactness tests)."""
    idx = [ix[:per_client] for ix in digits_data.client_indices]
    return FederatedData(digits_data.x_train, digits_data.y_train, idx, digits_data.x_test[:100],
                         digits_data.y_test[:100])


def model_of(name: str = "cnn_small", seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=1, image_size=8, **options)


def sequential(**train) -> TrainConfig:
    base = {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "seed": 1,
            "client_parallel": "sequential"}
    return TrainConfig(**{**base, **train})


# -- registry, configs, docs -----------------------------------------------------------------------
def test_the_registry_finds_every_algorithm_family():
    assert {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "scaffold", "feddyn", "moon",
            "mixup", "stochdepth", "gradaug", "fedalign"} <= set(ALGORITHM_SPECS)


@pytest.mark.parametrize("name", sorted(ALGORITHM_SPECS))
def test_every_spec_names_its_strategy_and_builds_it(name):
    strategy = make_strategy(name)

    assert isinstance(strategy, strategy_class(name))
    assert strategy.name == name and strategy.config == algorithm_config(name)


@pytest.mark.parametrize("name", sorted(ALGORITHM_SPECS))
def test_every_algorithm_cites_its_paper_and_has_frozen_defaults(name):
    cls = strategy_class(name)
    config = algorithm_config(name)

    assert re.search(r"(19|20)\d\d", cls.__doc__ or ""), f"{name}: docstring cites no paper year"
    assert re.search(r"(19|20)\d\d", ALGORITHM_SPECS[name].paper), f"{name}: spec cites no paper year"
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server_lr = 2.0  # every config is frozen


def test_paper_defaults():
    assert algorithm_config("fedprox").mu == 1e-4
    moon = algorithm_config("moon")
    assert (moon.mu, moon.temperature) == (1.0, 0.5)
    assert algorithm_config("mixup").gamma == 0.05
    assert algorithm_config("stochdepth").survival_last == 0.9
    grad = algorithm_config("gradaug")
    assert (grad.mu, grad.num_subnets) == (1.75, 2)
    align = algorithm_config("fedalign")
    assert (align.mu, align.width) == (0.05, 0.8)
    adam = algorithm_config("fedadam")
    assert (adam.beta1, adam.beta2) == (0.9, 0.99)


def whole(message: str) -> str:
    """A pattern matching exactly `message`."""
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(("name", "overrides", "match"), [
    ("fedprox", {"muu": 0.1}, r"no hyperparameter 'muu'.*Did you mean 'mu'.*Valid: mu, server_lr"),
    # a value out of its range: the key, the value and the range, as FedProx's `mu` words it
    ("fedprox", {"mu": -1.0}, whole("mu must be non-negative, got -1.0")),
    ("fedavgm", {"server_lr": 0.0}, whole("server_lr must be positive, got 0.0")),
    ("fedavgm", {"server_momentum": 1.0}, whole("server_momentum must be in [0, 1), got 1.0")),
    ("fedadam", {"server_lr": 0.0}, whole("server_lr must be positive, got 0.0")),
    ("fedadam", {"tau": -1.0}, whole("tau must be positive, got -1.0")),
    ("fedyogi", {"beta1": 1.0}, whole("beta1 must be in [0, 1), got 1.0")),
    ("fedadagrad", {"beta2": -0.1}, whole("beta2 must be in [0, 1), got -0.1")),
    ("moon", {"temperature": 0.0}, whole("temperature must be positive, got 0.0")),
    ("moon", {"mu": -1.0}, whole("mu must be non-negative, got -1.0")),
    ("gradaug", {"min_width": 0.0}, whole("min_width must be in (0, 1], got 0.0")),
    ("gradaug", {"num_subnets": 0}, whole("num_subnets must be at least 1, got 0")),
    ("gradaug", {"mu": -0.5}, whole("mu must be non-negative, got -0.5")),
    ("fedalign", {"width": 1.5}, whole("width must be in (0, 1], got 1.5")),
    ("fedalign", {"mu": -0.1}, whole("mu must be non-negative, got -0.1")),
    ("fedalign", {"power_iterations": 0}, whole("power_iterations must be at least 1, got 0")),
    ("fedalign", {"clip_grad_norm": -1.0}, whole("clip_grad_norm must be non-negative (0 turns clipping off), "
                                                 "got -1.0")),
    # NaN, which every bound passes (it compares false): refused by the library itself, not only by the config check
    ("fedprox", {"mu": math.nan}, whole("mu must be non-negative, got nan")),
    ("fedavgm", {"server_lr": math.nan}, whole("server_lr must be positive, got nan")),
    ("fedadam", {"tau": math.nan}, whole("tau must be positive, got nan")),
    ("feddyn", {"alpha": math.nan}, whole("alpha must be positive, got nan")),
    ("fedsam", {"rho": math.nan}, whole("rho must be non-negative, got nan")),
    ("mixup", {"gamma": math.nan}, whole("gamma must be non-negative, got nan")),
    ("moon", {"temperature": math.nan}, whole("temperature must be positive, got nan")),
    ("fedalign", {"clip_grad_norm": math.nan}, whole("clip_grad_norm must be non-negative (0 turns clipping off), "
                                                     "got nan")),
    # several keys out of range: one problem each
    ("moon", {"temperature": 0.0, "mu": -1.0}, whole("temperature must be positive, got 0.0; mu must be "
                                                     "non-negative, got -1.0")),
    ("fedavgm", {"server_lr": -1.0, "server_momentum": -0.5}, whole("server_lr must be positive, got -1.0; "
                                                                    "server_momentum must be in [0, 1), got -0.5")),
    ("moon", {"temperature": 0.0, "mu": math.nan}, whole("temperature must be positive, got 0.0; mu must be "
                                                          "non-negative, got nan")),
    ("fedasam", {"rho": "big"}, r"algorithm 'fedasam': rho: expected a number \(e.g. its default 0.5\), got 'big'"),
    ("moon", {"projection_dim": True}, r"projection_dim: expected an integer \(e.g. its default 0\), got True"),
    ("fedprox_x", {}, "unknown algorithm 'fedprox_x'.*Did you mean 'fedprox'"),
])
def test_bad_hyperparameters_fail_clearly(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        algorithm_config(name, overrides)


@pytest.mark.parametrize(("algorithm", "model", "match"), [
    ("stochdepth", "cnn_small", r"algorithms\.algo: stochdepth needs a residual model; cnn_small is not residual"),
    ("gradaug", "mlp", r"algorithms\.algo: gradaug needs a width-sliceable model; mlp is not width-sliceable"),
    ("fedalign", "mlp", r"algorithms\.algo: fedalign needs a width-sliceable model"),
])
def test_impossible_algorithm_model_pairs_are_rejected_at_config_check(algorithm, model, match):
    config = copy.deepcopy(TINY)
    config["algorithms"] = {"fedavg": {"name": "fedavg"}, "algo": {"name": algorithm}}
    config["models"] = [model]
    config["experiments"] = [{"algorithm": "algo"}]

    with pytest.raises(ConfigError, match=match):
        check_config(config, SCHEMA)


def test_possible_pairs_pass_config_check():
    config = copy.deepcopy(TINY)
    config["algorithms"] = {"fedavg": {"name": "fedavg"}, "sd": {"name": "stochdepth"},
                            "fa": {"name": "fedalign", "mu": 0.1}}
    config["models"] = ["resnet20"]
    config["experiments"] = [{}, {"algorithm": "sd"}, {"algorithm": "fa"}]

    assert len(check_config(config, SCHEMA)["experiments"]) == 3


# -- reductions to FedAvg --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sequential", "auto"])
def test_fedprox_with_mu_zero_equals_fedavg_exactly(digits_data, mode):
    data = small_data(digits_data)
    cfg = sequential(client_parallel=mode)

    fedavg = run_federated(model_of(), data, make_strategy("fedavg"), cfg)
    prox = run_federated(model_of(), data, make_strategy("fedprox", {"mu": 0.0}), cfg)

    assert torch.equal(fedavg.params, prox.params)


def test_fedprox_with_mu_zero_equals_fedavg_for_a_parameter_without_gradient():
    # Prepare: a model with a parameter no forward reads (as a skipped block's), momentum and weight decay, which
    # torch's SGD applies to every parameter that has a gradient, even a zero one
    def model():
        m = tiny_model()
        m.unused = nn.Parameter(torch.ones(3))
        return m

    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.1, seed=0,
                      client_parallel="sequential")

    # Execute
    fedavg = run_federated(model(), tiny_data(), make_strategy("fedavg"), cfg)
    prox = run_federated(model(), tiny_data(), make_strategy("fedprox", {"mu": 0.0}), cfg)
    pulled = run_federated(model(), tiny_data(), make_strategy("fedprox", {"mu": 0.5}), cfg)

    # Assert: bit for bit FedAvg (the unused parameter stays 1, not decayed to 0.83); with mu > 0 the prox term
    # alone gives it a gradient, zero at the global model, so weight decay moves it
    offset = 0
    for name, p in model().named_parameters():
        if name == "unused":
            break
        offset += p.numel()
    unused = slice(offset, offset + 3)
    assert torch.equal(fedavg.params, prox.params)
    assert torch.equal(fedavg.params[-1, unused], torch.ones(3))
    assert (pulled.params[-1, unused] < 1).all()


def test_fedprox_pulls_clients_towards_the_global_model(digits_data):
    data = small_data(digits_data)
    cfg = sequential(rounds=1, save_clients_at=(1,))

    plain = run_federated(model_of(), data, make_strategy("fedavg"), cfg)
    prox = run_federated(model_of(), data, make_strategy("fedprox", {"mu": 1.0}), cfg)

    start = plain.params[0]
    drift = [(r.clients[1].params - start).norm(dim=1) for r in (plain, prox)]
    assert (drift[1] < drift[0]).all()


@pytest.mark.parametrize("server_lr", [1.0])
def test_fedavgm_with_momentum_zero_and_server_lr_one_equals_fedavg(digits_data, server_lr):
    data = small_data(digits_data)
    cfg = sequential(rounds=3)

    fedavg = run_federated(model_of(), data, make_strategy("fedavg"), cfg)
    avgm = run_federated(model_of(), data, make_strategy("fedavgm", {"server_momentum": 0.0,
                                                                     "server_lr": server_lr}), cfg)

    assert torch.equal(fedavg.params, avgm.params)


@pytest.mark.parametrize(("name", "overrides", "model"), [
    ("moon", {"mu": 0.0}, "cnn_small"),
    ("mixup", {"gamma": 0.0}, "cnn_small"),
    ("gradaug", {"mu": 0.0}, "cnn_small"),
    ("fedalign", {"mu": 0.0, "clip_grad_norm": 0.0}, "cnn_small"),
    ("stochdepth", {"survival_last": 1.0}, "resnet20"),
    ("fedsam", {"rho": 0.0}, "cnn_small"),
    ("fedasam", {"rho": 0.0}, "cnn_small"),
    ("fedsam", {"rho": 0.0}, "resnet20"),  # batch norm: the ascent pass leaves the running statistics alone
])
def test_regularisers_switched_off_equal_fedavg_exactly(digits_data, name, overrides, model):
    data = small_data(digits_data, per_client=24)
    cfg = sequential(rounds=2)

    fedavg = run_federated(model_of(model), data, make_strategy("fedavg"), cfg)
    other = run_federated(model_of(model), data, make_strategy(name, overrides), cfg)
    default = run_federated(model_of(model), data, make_strategy(name), cfg)

    assert torch.equal(fedavg.params, other.params)
    assert torch.equal(fedavg.buffers, other.buffers)
    assert not torch.allclose(fedavg.params, default.params)  # switched on, the method changes training


# -- server optimisers -----------------------------------------------------------------------------
def hand_adaptive(kind: str, x: np.ndarray, deltas: list[np.ndarray], lr: float, b1: float, b2: float,
                  tau: float) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, written out in numpy (m_0 = 0, v_0 = tau^2, no bias correction)."""
    m, v = np.zeros_like(x), np.full_like(x, tau**2)
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d**2
        elif kind == "yogi":
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        else:
            v = b2 * v + (1 - b2) * d**2
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_adaptive_server_steps_match_hand_computation(kind):
    x0 = np.array([1.0, -2.0, 0.5, 0.0])
    deltas = [np.array([0.1, -0.3, 0.0, 2.0]), np.array([-0.2, 0.1, 0.05, 1.0])]
    opt = ServerAdaptive(kind, lr=0.5, beta1=0.9, beta2=0.99, tau=1e-2)

    x = torch.tensor(x0)
    for d in deltas:
        x = opt.step(x, -torch.tensor(d))  # the pseudo-gradient is minus the mean delta

    assert np.allclose(x.numpy(), hand_adaptive(kind, x0, deltas, 0.5, 0.9, 0.99, 1e-2), rtol=1e-12, atol=1e-12)


def test_one_fedadam_step_by_hand():
    # m = 0.1 * 0.2 = 0.02; v = 0.99 * 1e-6 + 0.01 * 0.04 = 4.0099e-4; x = 1 + 0.1 * 0.02 / (sqrt(v) + 1e-3)
    strategy = make_strategy("fedadam", {"server_lr": 0.1, "tau": 1e-3})
    results = [ClientResult(0, 10, torch.tensor([1.2], dtype=torch.float64), torch.zeros(0), 0.0)]

    new = strategy.server_update(torch.tensor([1.0], dtype=torch.float64), results)

    expected = 1 + 0.1 * 0.02 / (math.sqrt(0.99e-6 + 0.01 * 0.04) + 1e-3)
    assert new.item() == pytest.approx(expected, rel=1e-12)


# -- SCAFFOLD --------------------------------------------------------------------------------------
def test_effective_steps_of_heavy_ball_momentum():
    assert effective_steps(3, 0.0) == 3.0
    assert effective_steps(3, 0.5) == pytest.approx(1.0 + 1.5 + 1.75)


def test_scaffold_with_identical_clients_matches_fedavg(digits_data, monkeypatch, float64_default):
    # Every client holds the same samples and (patched) the same batch order: the control variates
    # agree, c - c_i vanishes and SCAFFOLD is FedAvg up to rounding. In float64: these four rounds are chaotic in
    # float32 (float32 and float64 training end 1.6 apart), so a rounding-level c - c_i could move them anywhere.
    same = digits_data.client_indices[0][:48]
    data = FederatedData(digits_data.x_train.double(), digits_data.y_train, [same] * 4,
                         digits_data.x_test[:100].double(), digits_data.y_test[:100])
    real = sequential_mod.client_generator
    monkeypatch.setattr(sequential_mod, "client_generator", lambda seed, round_, client: real(seed, round_, 0))
    cfg = sequential(rounds=4, momentum=0.0, lr=0.1)

    fedavg = run_federated(model_of(), data, make_strategy("fedavg"), cfg)
    scaffold = make_strategy("scaffold")
    result = run_federated(model_of(), data, scaffold, cfg)

    assert result.params.dtype == torch.float64
    assert (result.params - fedavg.params).abs().max().item() <= 1e-10
    assert scaffold.c.abs().max() > 0  # the control variates did move


def test_scaffold_control_variates_follow_option_two(digits_data):
    data = small_data(digits_data)
    cfg = sequential(rounds=1, momentum=0.0, lr=0.1, participation=0.5, save_clients_at=(1,))
    scaffold = make_strategy("scaffold")

    result = run_federated(model_of(), data, scaffold, cfg)

    clients = result.clients[1]
    x0 = result.params[0]
    for cid, y in zip(clients.client_ids.tolist(), clients.params, strict=True):
        steps = len(batch_order(len(data.client_indices[cid]), cfg.batch_size, cfg.local_epochs,
                                torch.Generator()))
        expected = (x0 - y) / (steps * cfg.lr)  # c_i+ = c_i - c + (x - y_i)/(K lr) with c = c_i = 0
        assert torch.allclose(scaffold.c_clients.get(cid, "cpu"), expected, atol=1e-6)
    absent = set(range(4)) - set(clients.client_ids.tolist())
    assert absent and all(torch.count_nonzero(scaffold.c_clients.get(c, "cpu")) == 0 for c in absent)
    # c = sum_i p_i c_i over all N clients (absent ones still at zero), p_i = 1/N: the shards are equal (small_data: 40
    # samples each), where it is the plain mean (the sample weights on unequal shards are pinned by
    # test_a_server_state_over_all_clients_is_their_sample_weighted_mean)
    assert torch.allclose(scaffold.c, scaffold.c_clients.mean(4), atol=1e-7)


def test_scaffold_server_variate_stays_the_mean_over_rounds(digits_data):
    scaffold = make_strategy("scaffold")

    run_federated(model_of(), small_data(digits_data), scaffold, sequential(rounds=3, participation=0.5))

    assert torch.allclose(scaffold.c, scaffold.c_clients.mean(4), atol=1e-6)


# -- FedDyn ----------------------------------------------------------------------------------------
def test_feddyn_state_follows_acar_et_al(digits_data):
    data = small_data(digits_data)
    cfg = sequential(rounds=1, save_clients_at=(1,))
    dyn = make_strategy("feddyn", {"alpha": 0.1})

    result = run_federated(model_of(), data, dyn, cfg)

    x0, clients = result.params[0], result.clients[1]
    deltas = clients.params - x0
    for cid, d in zip(clients.client_ids.tolist(), deltas, strict=True):
        assert torch.allclose(dyn.grads.get(cid, "cpu"), -0.1 * d, atol=1e-6)  # g_k = 0 - alpha (w_k - w)
    # h = -alpha sum_k p_k (w_k - w), p_k = 1/4: the shards are equal (small_data: 40 samples each), where it is the
    # paper's plain mean over the clients (the sample weights on unequal shards are pinned by
    # test_a_server_state_over_all_clients_is_their_sample_weighted_mean)
    h = -0.1 * deltas.sum(0) / 4
    assert torch.allclose(dyn.h, h, atol=1e-6)
    weights = clients.num_samples.double() / clients.num_samples.sum()
    mean = (weights[:, None] * clients.params.double()).sum(0).float()
    assert torch.allclose(result.params[1], mean - h / 0.1, atol=1e-5)


# -- server states over all clients, on unequal shards -----------------------------------------------------------
class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize(("algorithm", "hparams"), [("fedavg", {}), ("fedprox", {"mu": 0.1}), ("fednova", {}),
                                                    ("scaffold", {}), ("feddyn", {"alpha": 0.1})])
def test_every_algorithm_converges_to_the_sample_weighted_optimum_on_unequal_clients(algorithm, hparams):
    # Prepare: two clients of 90 and 10 samples with losses f_i(w) = (w - b_i)^2 / 2, b = (0, 1): the minimum of
    # sum_i p_i f_i is 0.1 (the plain mean's, 0.5); five local gradient steps a round, through the strategy's hooks
    from fedscape.fl.schedule import update_weight
    from fedscape.fl.strategies.base import ClientContext, ClientResult

    sizes, targets, steps, lr = [90, 10], [0.0, 1.0], 5, 0.1
    strategy = make_strategy(algorithm, hparams or None)
    model = _Scalar()
    strategy.setup(2, 1, torch.device("cpu"), model=model, client_sizes=sizes)
    x = torch.zeros(1, dtype=torch.float64)

    # Execute: 400 rounds
    for t in range(1, 401):
        results = []
        for i in range(2):
            with torch.no_grad():
                model.w.copy_(x)
            ctx = ClientContext(t, i, x.clone(), None, None, torch.Generator(), lr=lr, step_lrs=[lr] * steps)
            strategy.begin_local(model, ctx)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                (0.5 * (model.w - targets[i]) ** 2).sum().backward()
                strategy.adjust_gradients(model, ctx)
                opt.step()
                ctx.steps += 1
            params = model.w.detach().clone()
            strategy.end_local(model, ctx, params)
            results.append(ClientResult(i, sizes[i], params, torch.zeros(0, dtype=torch.float64), 0.0, steps,
                                        update_weight([lr] * steps, 0.0)))
        x = strategy.server_update(x, results)

    # Assert: the objective FedAvg's sample-weighted averaging minimises, whatever the algorithm (SCAFFOLD's and
    # FedDyn's server states kept as plain means over clients reached 0.5)
    assert x.item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["scaffold", "feddyn"])
def test_a_server_state_over_all_clients_is_their_sample_weighted_mean(digits_data, algorithm):
    # Prepare: four clients of 16, 24, 32 and 40 samples, all in the round
    idx = [ix[:n] for ix, n in zip(digits_data.client_indices, (16, 24, 32, 40), strict=False)]
    data = FederatedData(digits_data.x_train, digits_data.y_train, idx, digits_data.x_test[:100],
                         digits_data.y_test[:100])
    strategy = make_strategy(algorithm, {"alpha": 0.1} if algorithm == "feddyn" else None)

    # Execute
    result = run_federated(model_of(), data, strategy, sequential(rounds=1, momentum=0.0, lr=0.1,
                                                                  save_clients_at=(1,)))

    # Assert: c = sum_i p_i c_i, h = -alpha sum_k p_k (w_k - w), p the clients' shares of the samples
    clients = result.clients[1]
    shares = clients.num_samples.double() / clients.num_samples.sum()
    if algorithm == "scaffold":
        c_clients = torch.stack([strategy.c_clients.get(c, "cpu") for c in clients.client_ids.tolist()])
        expected = (shares[:, None] * c_clients.double()).sum(0)
        torch.testing.assert_close(strategy.c.double(), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(strategy.c, c_clients.mean(0), atol=1e-3)  # the plain mean is another state
    else:
        deltas = (clients.params - result.params[0]).double()
        expected = -0.1 * (shares[:, None] * deltas).sum(0)
        torch.testing.assert_close(strategy.h.double(), expected, rtol=0, atol=1e-7)


def test_client_sizes_of_another_count_are_refused():
    with pytest.raises(ValueError, match="need 3 client sizes >= 1"):
        make_strategy("scaffold").setup(3, 4, torch.device("cpu"), client_sizes=[5, 6])


# -- MOON ------------------------------------------------------------------------------------------
def test_moon_loss_on_a_hand_built_case():
    # float64: in float32 the loss was 1.1e-7 (relative) from the hand formula, a ninth of a 1e-6 tolerance
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    z_global = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # cosine 1 with z
    z_prev = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # cosine 0 resp. 1/sqrt(2)

    loss = moon_contrastive_loss(z, z_global, z_prev, temperature=0.5)

    per_sample = [math.log(1 + math.exp((0 - 1) / 0.5)), math.log(1 + math.exp((1 / math.sqrt(2) - 1) / 0.5))]
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(sum(per_sample) / 2, rel=1e-12)


def test_moon_keeps_previous_local_models_and_a_federated_head(digits_data):
    data = small_data(digits_data)
    moon = make_strategy("moon")

    result = run_federated(model_of(), data, moon, sequential(rounds=2, save_clients_at=(2,)))

    clients = result.clients[2]
    for cid, params in zip(clients.client_ids.tolist(), clients.params, strict=True):
        assert torch.equal(moon.prev.get(cid, "cpu"), params)
    heads = torch.stack([moon.prev_heads.get(c, "cpu") for c in clients.client_ids.tolist()])
    weights = clients.num_samples.double() / clients.num_samples.sum()
    assert torch.allclose(moon.head_global.cpu(), (weights[:, None] * heads.double()).sum(0).float(), atol=1e-6)
    assert moon.head[-1].out_features == model_of().classifier.in_features


def side_moon_reference(model: nn.Module, data: FederatedData, cfg: TrainConfig, mu: float,
                        temperature: float) -> torch.Tensor:
    """fedscape's MOON with the head beside the classifier written out (full participation, constant lr, no
    augmentation): the head drawn from its seed stream, trained by the contrastive term only and averaged like the
    model; the previous local model and head of a client start at the initial ones. The global models per round."""
    dim = model.classifier.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, 0x4D4F4F4E))
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
    glob, glob_head = flatten_params(model), flatten_params(head)
    prev = {c: (glob, glob_head) for c in range(data.num_clients)}
    rows = [glob]
    weights = torch.tensor([len(i) for i in data.client_indices], dtype=torch.float64)
    weights = weights / weights.sum()

    def copy_with(module: nn.Module, flat: torch.Tensor) -> nn.Module:
        module = copy.deepcopy(module)
        FlatParams(module).set(flat)
        return module

    for round_ in range(1, cfg.rounds + 1):
        models, heads = [], []
        for c, idx in enumerate(data.client_indices):
            local, h = copy_with(model, glob), copy_with(head, glob_head)
            g_model, g_head = copy_with(model, glob), copy_with(head, glob_head)
            p_model, p_head = copy_with(model, prev[c][0]), copy_with(head, prev[c][1])
            generator = client_generator(cfg.seed, round_, c)
            torch.manual_seed(layer_seed(cfg.seed, round_, c))
            opt = torch.optim.SGD([*local.parameters(), *h.parameters()], lr=cfg.lr, momentum=cfg.momentum)
            x, y = data.x_train[idx], data.y_train[idx]
            for b in batch_order(len(idx), cfg.batch_size, cfg.local_epochs, generator):
                features = local.forward_features(x[b])
                with torch.no_grad():
                    z_g, z_p = g_head(g_model.forward_features(x[b])), p_head(p_model.forward_features(x[b]))
                loss = F.cross_entropy(local.classifier(features), y[b]) + mu * moon_contrastive_loss(
                    h(features), z_g, z_p, temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
            models.append(flatten_params(local))
            heads.append(flatten_params(h))
            prev[c] = (models[-1], heads[-1])
        glob = glob + (weights @ (torch.stack(models) - glob).double()).to(glob.dtype)
        glob_head = (weights @ torch.stack(heads).double()).to(glob.dtype)
        rows.append(glob)
    return torch.stack(rows)


@pytest.mark.parametrize("hparams", [{}, {"head": "side"}])
def test_moon_with_the_head_beside_the_classifier_is_the_former_moon(digits_data, hparams, float64_default):
    # Prepare: float64 (the reference sums the model's and the head's updates in another order)
    base = small_data(digits_data, per_client=20)
    data = FederatedData(base.x_train.double(), base.y_train, base.client_indices, base.x_test.double(),
                         base.y_test)
    cfg = sequential(rounds=2)
    moon = make_strategy("moon", {"mu": 2.0, "temperature": 0.5, **hparams})

    # Execute
    result = run_federated(model_of("mlp"), data, moon, cfg)

    # Assert: the model is the plain classifier, trained as the written-out side-head MOON trains it
    assert moon.prepare_model(model_of("mlp")).__class__.__name__ == "MLP"
    expected = side_moon_reference(model_of("mlp"), data, cfg, mu=2.0, temperature=0.5)
    torch.testing.assert_close(result.params, expected, rtol=1e-10, atol=1e-10)


def test_moon_projection_head_carries_the_classifier():
    # Prepare
    side, projection = make_strategy("moon"), make_strategy("moon", {"head": "projection"})
    plain = model_of("cnn_small")
    dim, classes = plain.classifier.in_features, plain.classifier.out_features
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    # Execute
    model = projection.prepare_model(model_of("cnn_small"), seed=3)
    side.setup(4, sum(p.numel() for p in plain.parameters()), torch.device("cpu"), model=plain, seed=3)

    # Assert: the head sits between the features and the initial model's classifier, drawn as the side head is
    assert isinstance(model, ProjectedClassifier)
    names = [n for n, _ in model.named_parameters()]
    assert names[-6:] == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias", "classifier.weight",
                          "classifier.bias"]
    assert all(n.startswith("backbone.") for n in names[:-6]) and "backbone.classifier.weight" not in names
    assert torch.equal(model.classifier.weight, plain.classifier.weight)
    assert torch.equal(flatten_params(model.head), flatten_params(side.head))
    with torch.no_grad():
        z = model.forward_features(x)
        assert z.shape == (5, dim)
        assert torch.equal(z, model.head(model.backbone.forward_features(x)))
        logits = model(x)
        assert logits.shape == (5, classes)
        assert torch.equal(logits, model.classifier(z))  # classified from the projected features
        assert not torch.allclose(logits, plain(x), atol=1e-3)


def test_moon_projection_trains_and_averages_the_head_with_the_model(digits_data):
    # Prepare
    data = small_data(digits_data)
    moon = make_strategy("moon", {"head": "projection"})
    cfg = sequential(rounds=2, save_clients_at=(2,))
    model = moon.prepare_model(model_of("cnn_small"), seed=cfg.seed)
    head_at_init = flatten_params(model.head)

    # Execute
    result = run_federated(model, data, moon, cfg)

    # Assert: the global model is the clients' weighted mean, head included; MOON keeps each client's last model
    clients = result.clients[2]
    weights = clients.num_samples.double() / clients.num_samples.sum()
    mean = (weights[:, None] * clients.params.double()).sum(0).float()
    torch.testing.assert_close(result.params[2], mean, rtol=0, atol=1e-6)
    for cid, params in zip(clients.client_ids.tolist(), clients.params, strict=True):
        assert torch.equal(moon.prev.get(cid, "cpu"), params)
    n_head, n_classifier = (sum(p.numel() for p in m.parameters()) for m in (model.head, model.classifier))
    end = result.params.shape[1] - n_classifier
    head = slice(end - n_head, end)
    assert torch.equal(result.params[0, head], head_at_init)
    assert not torch.allclose(result.params[2, head], head_at_init, atol=1e-4)  # the head learns
    assert result.rows[-1]["test_acc"] > 0.2
    assert "head_global" not in moon.state_dict()


def test_train_stage_saves_moon_s_projection_head_with_the_model(tmp_path):
    # Prepare: the tiny config's grid, one MOON run with the classifier on its projection head
    config = copy.deepcopy({k: v for k, v in TINY.items() if k in ("datasets", "models", "alphas", "num_clients",
                                                                     "participation", "seeds", "partition",
                                                                     "training")})
    config.update(inits={"random": {"kind": "random", "seed": 0}}, alphas=["iid"],
                  algorithms={"moon": {"name": "moon", "head": "projection"}})
    config["training"] = {**config["training"], "rounds": 2, "save_clients_at": [], "device": "cpu"}
    config = check_config(config, SCHEMA)
    (run,) = build_runs(config)

    # Execute
    partition, init, outputs = train_run(config, [run], run, tmp_path)

    # Assert: the trajectory rebuilds the trained network (head included) and its final model scores the reported
    # test accuracy; row 0 is the initial model with the head put in
    trajectory = load_trajectory(outputs["trajectory"])
    assert trajectory.model_meta.model_options.get("projection_head") is True
    final = trajectory.model_at(trajectory.final_round)
    assert isinstance(final, ProjectedClassifier)
    data = load_federated_data(run.fields(), config["datasets"][run.dataset], partition, "cpu")
    reported = pd.read_csv(outputs["metrics"])["test_acc"].iloc[-1]
    assert evaluate(final, data.x_test, data.y_test).acc == pytest.approx(reported, abs=1e-6)
    start = load_trajectory(init).model_at(0)
    backbone = flatten_params(trajectory.model_at(0).backbone)
    assert torch.equal(backbone, flatten_params(start)[: backbone.numel()])


def test_moon_projection_refuses_a_plain_model_and_a_bad_head():
    with pytest.raises(ValueError, match="head projection trains the model of its prepare_model"):
        make_strategy("moon", {"head": "projection"}).setup(2, 10, torch.device("cpu"), model=model_of("mlp"))
    with pytest.raises(ValueError, match=r"projection_dim must be non-negative \(0: the feature width\), got -16"):
        algorithm_config("moon", {"head": "projection", "projection_dim": -16})
    with pytest.raises(ValueError, match="head: expected one of side, projection .*got 'projected'"):
        algorithm_config("moon", {"head": "projected"})
    with pytest.raises(ValueError, match="unknown MOON head 'projected'. Did you mean 'projection'"):
        MoonConfig(head="projected")


# -- Mixup -----------------------------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """Logits = a fixed linear map of the flattened input; remembers the inputs it saw."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def test_mixup_with_fixed_lambda_mixes_as_specified(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.arange(6)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])

    assert torch.allclose(mixup_batch(x, perm, 0.3), 0.3 * x + 0.7 * x[perm])

    class FixedBeta:
        def beta(self, a, b):
            return 0.3

    monkeypatch.setattr(mixup_mod, "_numpy_rng", lambda generator, scratch: FixedBeta())
    model, mixup = Recorder(), make_strategy("mixup")
    ctx = ClientContext(1, 0, torch.zeros(1), x, y, torch.Generator().manual_seed(7))
    loss = mixup.local_loss(model, x, y, ctx)

    drawn = torch.randperm(6, generator=torch.Generator().manual_seed(7))  # the same draw as the strategy
    assert torch.allclose(model.seen[0], 0.3 * x + 0.7 * x[drawn])
    out = model.lin(model.seen[0].flatten(1))
    assert loss.item() == pytest.approx((0.3 * F.cross_entropy(out, y) + 0.7 * F.cross_entropy(out, y[drawn])).item())


def test_mixup_with_gamma_near_zero_barely_mixes():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    model, mixup = Recorder(), make_strategy("mixup", {"gamma": 1e-3})
    ctx = ClientContext(1, 0, torch.zeros(1), x, y, torch.Generator().manual_seed(3))

    for _ in range(50):
        mixup.local_loss(model, x, y, ctx)

    # each mixed batch is (almost) x itself or (almost) a permutation of it: lambda is ~0 or ~1
    for mixed in model.seen:
        nearest = (mixed.flatten(1)[:, None, :] - x.flatten(1)[None, :, :]).norm(dim=2).min(dim=1).values
        assert nearest.max() < 0.05 * x.flatten(1).norm(dim=1).mean()


def test_mixup_with_default_gamma_sometimes_mixes_halfway():
    lam = np.random.default_rng(0).beta(0.05, 0.05, size=20000)

    assert ((lam > 0.1) & (lam < 0.9)).mean() < 0.1  # Beta(0.05, 0.05) is concentrated near 0 and 1


# -- Stochastic Depth ------------------------------------------------------------------------------
def test_survival_probabilities_decay_linearly():
    assert survival_probabilities(4, 0.6) == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert survival_probabilities(9, 1.0) == [1.0] * 9


def test_stochdepth_with_survival_one_is_deterministic_plain_training():
    model = model_of("resnet20").train()
    x, y = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 10
    sd = make_strategy("stochdepth", {"survival_last": 1.0})

    losses = [sd.local_loss(model, x, y, ClientContext(1, 0, torch.zeros(1), x, y,
                                                          torch.Generator().manual_seed(s))) for s in (1, 2, 3)]

    assert losses[0].item() == losses[1].item() == losses[2].item()
    assert losses[0].item() == F.cross_entropy(model(x), y).item()


def test_stochdepth_drops_blocks_at_their_rate_and_rescales_survivors():
    model = model_of("resnet20")
    seen: list[list[float]] = []
    model.forward_residual_scaled = lambda x, scales: (seen.append(list(scales)), torch.zeros(len(x), 10))[1]
    sd = make_strategy("stochdepth", {"survival_last": 0.5})
    x, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    ctx = ClientContext(1, 0, torch.zeros(1), x, y, torch.Generator().manual_seed(0))
    n = 4000

    for _ in range(n):
        sd.local_loss(model, x, y, ctx)

    scales = np.array(seen)
    probs = np.array(survival_probabilities(9, 0.5))
    kept = scales > 0
    assert np.allclose(scales[kept], np.broadcast_to(1 / probs, scales.shape)[kept])
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert (np.abs(kept.mean(0) - probs) < 4 * sigma + 1e-12).all()


def test_residual_scaling_is_the_stochastic_depth_block():
    model = model_of("resnet20").eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        assert torch.equal(model.forward_residual_scaled(x, [1.0] * 9), model(x))
        dropped = model.forward_residual_scaled(x, [1.0] * 8 + [0.0])
        h = torch.relu(model.stem_norm(model.stem(x)))
        for block in model.blocks[:8]:
            h = block(h)
        expected = model.classifier(torch.flatten(model.pool(torch.relu(model.blocks[8].shortcut(h))), 1))
    assert torch.allclose(dropped, expected, atol=1e-6)


# -- width-sliceable sub-networks (GradAug, FedAlign) ---------------------------------------------
@pytest.mark.parametrize(("name", "options"), [("cnn_small", {}), ("resnet20", {}), ("resnet20", {"norm": "group"}),
                                               ("resnet56", {}), ("resnet56_bottleneck", {})])
@pytest.mark.parametrize("train", [True, False])
def test_width_one_sub_network_equals_the_full_model_exactly(name, options, train):
    model = model_of(name, **options).train(train)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        full = model(x)
        sub = model.forward_width(x, 1.0)
        h_in, h_out, logits = model.forward_last_block(x)
        sub_in, sub_out = model.last_block_width(h_in, 1.0)

    assert torch.equal(sub, full)
    assert torch.equal(logits, full)
    assert torch.equal(sub_in, h_in) and torch.equal(sub_out, h_out)


def test_narrow_cnn_small_equals_the_full_network_with_pruned_channels_zeroed():
    model = model_of("cnn_small").eval()
    pruned = copy.deepcopy(model)
    width = 0.5
    with torch.no_grad():  # every hidden layer's outputs past its width, the hidden fc layer's too (GradAug)
        for layer in (pruned.features[0], pruned.features[2], pruned.last_block[0], pruned.fc):
            k = slim_channels(layer.weight.shape[0], width)
            layer.weight[k:] = 0
            layer.bias[k:] = 0
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        assert torch.allclose(model.forward_width(x, width), pruned(x), atol=1e-6)
        h_in, _, _ = model.forward_last_block(x)
        sub_in, sub_out = model.last_block_width(h_in, width)
    assert sub_in.shape[1] == sub_out.shape[1] == 16


@pytest.mark.parametrize("width", [0.5, 0.8])
def test_narrow_bottleneck_resnet_equals_the_full_network_with_pruned_channels_zeroed(width):
    # Prepare: without norms a zeroed output channel stays zero through ReLU and the residual sums, so the full
    # network with every convolution's outputs past slim_channels zeroed is the sub-network (the FedAlign code's
    # slimmable bottleneck keeps the leading channels of every convolution, shortcuts included)
    model = model_of("resnet56_bottleneck", norm="none").eval()
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for conv in (m for m in pruned.modules() if isinstance(m, nn.Conv2d)):
            conv.weight[slim_channels(conv.out_channels, width):] = 0
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    # Execute
    with torch.no_grad():
        narrow = model.forward_width(x, width)
        h_in, _, _ = model.forward_last_block(x)
        sub_in, sub_out = model.last_block_width(h_in, width)

    # Assert: the last "block" is the whole last stage (6 bottlenecks, 128 -> 256 channels), as in the FedAlign code
    torch.testing.assert_close(narrow, pruned(x), rtol=1e-5, atol=1e-6)
    assert model.last_stage_start == 12
    assert (sub_in.shape[1], sub_out.shape[1]) == (slim_channels(128, width), slim_channels(256, width))


def test_sub_networks_leave_batch_norm_running_statistics_alone():
    model = model_of("resnet20").train()
    before = [b.clone() for b in model.buffers()]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    model.forward_width(x, 0.8)
    h_in, _, _ = model.forward_last_block(x)
    after_full = [b.clone() for b in model.buffers()]
    model.last_block_width(h_in, 0.5)

    assert all(torch.equal(a, b) for a, b in zip(after_full, model.buffers(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, after_full, strict=True))  # the full pass does update


@pytest.mark.parametrize(("channels", "width", "kept"), [(64, 0.8, 48), (32, 0.8, 24), (16, 0.8, 16), (64, 1.0, 64),
                                                         (12, 0.9, 12), (64, 0.25, 16)])
def test_slim_channels_rounds_like_make_divisible(channels, width, kept):
    assert slim_channels(channels, width) == kept


# -- FedAlign ----------------------------------------------------------------------------------------
def test_transmitting_matrix_pools_the_input_to_the_output_size():
    g = torch.Generator().manual_seed(0)
    h_in, h_out = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)

    x = transmitting_matrix(h_in, h_out)

    pooled = F.avg_pool2d(h_in, 2)
    expected = torch.einsum("bchw,bdhw->bcd", pooled, h_out) / 16
    assert x.shape == (2, 3, 5)
    assert torch.allclose(x, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 6, 9), (3, 16, 12)])
def test_lipschitz_power_iteration_agrees_with_matrix_norm(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    estimate = spectral_norm_power(x, iterations=200)

    assert torch.allclose(estimate, torch.linalg.matrix_norm(x, ord=2), rtol=1e-6)


def test_fedalign_estimate_on_a_real_block_agrees_with_matrix_norm():
    model = model_of("resnet20").eval()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h_in, h_out, _ = model.forward_last_block(x)

        estimate = lipschitz_estimate(h_in, h_out, iterations=10)  # the FedAlign code's 10 steps

    exact = torch.linalg.matrix_norm(transmitting_matrix(h_in, h_out).double(), ord=2)
    assert torch.allclose(estimate.double(), exact, rtol=1e-3)


def test_fedalign_loss_term_is_rescaled_to_mu_times_ce(monkeypatch):
    model = model_of("resnet20").train()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    align = make_strategy("fedalign")
    ctx = ClientContext(1, 0, torch.zeros(1), x, y, torch.Generator())

    value = align.local_backward(model, x, y, ctx)

    ce = F.cross_entropy(model.forward_last_block(x)[2], y).item()
    assert value.item() == pytest.approx(ce * (1 + 0.05), rel=1e-5)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- state round-trips and resume ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scaffold", "feddyn", "moon", "fedadam", "fedavgm"])
def test_stateful_algorithms_resume_bit_identically(digits_data, tmp_path, monkeypatch, name):
    data = small_data(digits_data, per_client=24)
    cfg = sequential(rounds=4, participation=0.5)
    reference = run_federated(model_of(), data, make_strategy(name), cfg)
    killed_after_round(monkeypatch, 2, lambda: run_federated(model_of(), data, make_strategy(name), cfg,
                                                             progress_dir=tmp_path, progress_key="k"))
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # plain tensors and dicts only
    assert state["round"] == 2 and state["strategy"]

    resumed = run_federated(model_of(seed=5), data, make_strategy(name), cfg, progress_dir=tmp_path,
                            progress_key="k")

    assert torch.equal(resumed.params, reference.params)


def test_moon_with_its_projection_head_resumes_bit_identically(digits_data, tmp_path, monkeypatch):
    # Prepare: the head is part of the model, so a resumed run rebuilds it (prepare_model) and reads it back
    data = small_data(digits_data, per_client=24)
    cfg = sequential(rounds=4, participation=0.5)

    def run(seed: int, **progress):
        moon = make_strategy("moon", {"head": "projection"})
        return run_federated(moon.prepare_model(model_of(seed=seed), cfg.seed), data, moon, cfg, **progress)

    reference = run(0)
    killed_after_round(monkeypatch, 2, lambda: run(0, progress_dir=tmp_path, progress_key="k"))

    # Execute
    resumed = run(5, progress_dir=tmp_path, progress_key="k")

    # Assert
    assert torch.equal(resumed.params, reference.params)


LEARN_SETUPS = {"mlp": ("mlp", None, 3, 1, 16), "resnet20": ("resnet20", 100, 3, 2, 16)}


@pytest.mark.parametrize("name", sorted(ALGORITHM_SPECS))
def test_every_algorithm_beats_chance_on_digits(digits_data, name):
    model_name, per_client, rounds, epochs, batch = LEARN_SETUPS[
        "resnet20" if name in RESIDUAL_ALGOS | WIDTH_ALGOS else "mlp"]
    data = digits_data if per_client is None else small_data(digits_data, per_client)
    data = FederatedData(data.x_train, data.y_train, data.client_indices, digits_data.x_test, digits_data.y_test)
    cfg = TrainConfig(rounds=rounds, local_epochs=epochs, batch_size=batch, lr=0.05, momentum=0.9, seed=0)

    result = run_federated(model_of(model_name), data, make_strategy(name), cfg)

    assert result.status == "ok"
    accs = [row["test_acc"] for row in result.rows]
    assert accs[0] < 0.2  # random init: chance level (10 classes)
    assert accs[-1] > 0.3, f"{name}: test accuracies {accs}"


# -- cost accounting -------------------------------------------------------------------------------
def cost_job(tmp_path, i, algorithm, name, seconds, mem, alpha=0.1, clients=10, part=1.0, epochs=2, batch=16,
             device="cpu", execution="sequential", precision="fp32"):
    """metrics.csv and meta.json of one train job with the given per-round seconds and peak memory."""
    metrics = tmp_path / f"m{i}.csv"
    pd.DataFrame({"run_id": f"r{i}", "dataset": "digits", "model": "cnn_small", "algorithm": algorithm,
                  "alpha": alpha, "num_clients": clients, "participation": part, "round": [0, 1, 2, 3],
                  "seconds": [0.0, *seconds], "peak_mem_mb": [1.0, *mem]}).to_csv(metrics, index=False)
    meta = tmp_path / f"m{i}.json"
    meta.write_text(json.dumps({"device": device, "device_name": f"{device} (x)", "execution": execution,
                                "precision_used": precision, "settings": {
                                    "algorithm": name, "training": {"local_epochs": epochs, "batch_size": batch}}}))
    return metrics, meta


def test_cost_table_medians_peaks_and_ratios(tmp_path):
    # Execute
    table = cost_table([cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 2, 9], [10, 12, 11]),
                        cost_job(tmp_path, 1, "fedavg", "fedavg", [2, 3, 2], [11, 11, 11]),
                        cost_job(tmp_path, 2, "ga", "gradaug", [4, 5, 6], [20, 30, 25])])

    # Assert
    assert list(table.columns) == COST_COLUMNS
    rows = table.set_index("algorithm")
    assert rows.loc["fedavg", "median_seconds_per_round"] == 2.0  # median of 1, 2, 9, 2, 3, 2 (round 0 left out)
    assert rows.loc["fedavg", "peak_mem_mb"] == 12.0
    assert rows.loc["fedavg", "num_runs"] == 2 and rows.loc["fedavg", "num_rounds"] == 6
    assert rows.loc["ga", "seconds_vs_fedavg"] == 2.5
    assert rows.loc["ga", "peak_mem_vs_fedavg"] == 2.5
    assert rows.loc["ga", "algorithm_name"] == "gradaug"


@pytest.mark.parametrize("other", [{"part": 0.25}, {"clients": 64}, {"epochs": 10}, {"batch": 64}, {"alpha": 2.0},
                                   {"device": "cuda"}, {"execution": "vectorized"}, {"precision": "bf16"}])
def test_cost_ratios_compare_runs_of_the_same_setting_only(tmp_path, other):
    """FedAlign Table 5: a FedAvg run doing a quarter of the work per round is no baseline for the others."""
    # Prepare: FedAvg in the setting of the GradAug runs (2 s per round) and in another setting (0.5 s)
    jobs = [cost_job(tmp_path, 0, "fedavg", "fedavg", [2, 2, 2], [10, 10, 10]),
            cost_job(tmp_path, 1, "fedavg_other", "fedavg", [0.5, 0.5, 0.5], [5, 5, 5], **other),
            cost_job(tmp_path, 2, "ga", "gradaug", [5, 5, 5], [20, 20, 20])]

    # Execute
    rows = cost_table(jobs).set_index("algorithm")

    # Assert
    assert rows.loc["ga", "seconds_vs_fedavg"] == 2.5
    assert rows.loc["ga", "peak_mem_vs_fedavg"] == 2.0
    assert rows.loc["fedavg_other", "seconds_vs_fedavg"] == 1.0  # its own baseline


def test_the_cost_table_names_each_runs_execution_and_unrecorded_for_older_runs(tmp_path):
    # Prepare: a vectorised FedAvg run, and a GradAug run whose meta.json predates the record of the execution
    metrics, meta = cost_job(tmp_path, 1, "ga", "gradaug", [5, 5, 5], [20, 20, 20])
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "execution"}))

    # Execute
    rows = cost_table([cost_job(tmp_path, 0, "fedavg", "fedavg", [2, 2, 2], [10, 10, 10], execution="vectorized"),
                       (metrics, meta)]).set_index("algorithm")

    # Assert: two executions, so no ratio across them
    assert rows.loc["fedavg", "execution"] == "vectorized" and rows.loc["ga", "execution"] == "unrecorded"
    assert np.isnan(rows.loc["ga", "seconds_vs_fedavg"])


@pytest.mark.parametrize("missing", list(ATTEMPT_COLUMNS))
def test_a_key_that_a_runs_meta_json_predates_is_unrecorded(tmp_path, missing):
    # Prepare: a run on a card whose meta.json (no attempts) predates one key of where and how it trained
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [2, 2, 2], [10, 10, 10], device="cuda:1")
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != missing}))

    # Execute
    row = cost_table([(metrics, meta)]).iloc[0]

    # Assert: that column `unrecorded`, the others as recorded
    recorded = {"device": "cuda", "device_name": "cuda:1 (x)", "execution": "sequential", "precision": "fp32"}
    assert row[list(ATTEMPT_COLUMNS.values())].to_dict() == {
        column: UNRECORDED if key == missing else recorded[column] for key, column in ATTEMPT_COLUMNS.items()}


def test_the_cost_table_times_a_resumed_runs_rounds_as_each_attempt_trained_them(tmp_path):
    # Prepare: a run stacked for round 1, then killed (out of memory) and resumed one client at a time
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 7, 9], [50, 10, 10], execution="sequential")
    record = json.loads(meta.read_text())
    record["attempts"] = [{"from_round": 1, "client_chunk_size": 64, "execution": "vectorized"},
                          {"from_round": 2, "client_chunk_size": 4, "execution": "sequential"}]
    meta.write_text(json.dumps(record))

    # Execute
    rows = cost_table([(metrics, meta)]).set_index("execution")

    # Assert: round 1 under its own execution, rounds 2 and 3 under the other's
    assert rows.loc["vectorized", "num_rounds"] == 1 and rows.loc["vectorized", "peak_mem_mb"] == 50
    assert rows.loc["sequential", "num_rounds"] == 2 and rows.loc["sequential", "median_seconds_per_round"] == 8


def test_the_cost_table_times_a_resumed_runs_rounds_on_the_device_each_attempt_used(tmp_path):
    # Prepare: a run killed after round 1 on a card and resumed where there is none (device: auto)
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 7, 9], [50, 10, 10])
    record = json.loads(meta.read_text())
    record.update(device="cpu", device_name="cpu (x86_64, 2 threads)")
    record["attempts"] = [{"from_round": 1, "device": "cuda:0", "device_name": "NVIDIA H200"},
                          {"from_round": 2, "device": "cpu", "device_name": "cpu (x86_64, 2 threads)"}]
    meta.write_text(json.dumps(record))

    # Execute
    rows = cost_table([(metrics, meta)]).set_index("device")

    # Assert: each device's rounds under it, not every round under the last attempt's
    assert rows.loc["cuda", "num_rounds"] == 1 and rows.loc["cuda", "device_name"] == "NVIDIA H200"
    assert rows.loc["cpu", "num_rounds"] == 2 and rows.loc["cpu", "median_seconds_per_round"] == 8


@pytest.mark.parametrize("attempts", [False, True])
def test_runs_on_two_cards_of_one_model_compare_as_one_device(tmp_path, attempts):
    # Prepare: FedAvg on cuda:0 and GradAug on cuda:1 of one machine (device: auto spreads the jobs over its cards),
    # recorded at the top level or by a resumed run's attempts
    jobs = [cost_job(tmp_path, 0, "fedavg", "fedavg", [2, 2, 2], [10, 10, 10], device="cuda:0"),
            cost_job(tmp_path, 1, "ga", "gradaug", [5, 5, 5], [20, 20, 20], device="cuda:1")]
    for _metrics, meta in jobs:
        record = json.loads(meta.read_text())
        record["device_name"] = "NVIDIA H100"
        if attempts:
            record["attempts"] = [{"from_round": 1, "device": record["device"]},
                                  {"from_round": 2, "device": record["device"]}]
        meta.write_text(json.dumps(record))

    # Execute
    table = cost_table(jobs)

    # Assert: one row per label, GradAug against the FedAvg of the other card
    assert len(table) == 2 and set(table["device"]) == {"cuda"}
    assert table.set_index("algorithm").loc["ga", "seconds_vs_fedavg"] == 2.5


def test_the_cost_table_times_a_resumed_runs_rounds_in_the_precision_each_attempt_computed_in(tmp_path):
    # Prepare: a tf32 run killed after round 1 on an A100 and resumed on a V100 (no TF32: fp32), and a run whose
    # meta.json predates the record of the precision
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 7, 9], [50, 10, 10], device="cuda:0")
    record = json.loads(meta.read_text())
    record["attempts"] = [{"from_round": 1, "device": "cuda:0", "precision_used": "tf32"},
                          {"from_round": 2, "device": "cuda:0", "precision_used": "fp32"}]
    meta.write_text(json.dumps(record))
    old_metrics, old_meta = cost_job(tmp_path, 1, "old", "fedavg", [2, 2, 2], [10, 10, 10])
    old_meta.write_text(json.dumps({k: v for k, v in json.loads(old_meta.read_text()).items()
                                    if k != "precision_used"}))

    # Execute
    rows = cost_table([(metrics, meta), (old_metrics, old_meta)]).set_index(["algorithm", "precision"])

    # Assert: round 1 in tf32, rounds 2 and 3 in fp32, the older run's precision unrecorded
    assert rows.loc[("fedavg", "tf32"), "num_rounds"] == 1 and rows.loc[("fedavg", "fp32"), "num_rounds"] == 2
    assert rows.loc[("old", "unrecorded"), "num_rounds"] == 3


# what an attempt on a card records of where and how it computed, as meta.json has it (`ATTEMPT_COLUMNS`' keys)
CARD_ATTEMPT = {"device": "cuda:0", "device_name": "NVIDIA H200", "execution": "vectorized", "precision_used": "tf32"}


@pytest.mark.parametrize("first", [
    *({k: v for k, v in CARD_ATTEMPT.items() if k != missing} for missing in CARD_ATTEMPT),  # older code recorded less
    None,  # a call before attempts were recorded: not listed
], ids=[*(f"no_{key}" for key in CARD_ATTEMPT), "unlisted"])
def test_a_resumed_runs_rounds_are_unrecorded_where_their_attempt_did_not_record_them(tmp_path, first):
    # Prepare: a run that trained round 1 on a card, resumed on a CPU by a call that records everything; the run's
    # own values (meta.json's top level) are this last call's
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 7, 9], [50, 10, 10])
    record = json.loads(meta.read_text())
    last = {"device": "cpu", "device_name": "cpu (x86_64, 2 threads)", "execution": "sequential",
            "precision_used": "fp32"}
    record.update(last)
    record["attempts"] = [*([{"from_round": 1, **first}] if first is not None else []), {"from_round": 2, **last}]
    meta.write_text(json.dumps(record))

    # Execute
    rows = cost_table([(metrics, meta)]).set_index("num_rounds")

    # Assert: round 1 under what its attempt recorded, `unrecorded` for the rest, not under the last attempt's values
    on_card = {"execution": "vectorized", "device": "cuda", "device_name": "NVIDIA H200", "precision": "tf32"}
    columns = list(ATTEMPT_COLUMNS.values())
    assert rows.loc[1, columns].to_dict() == {column: on_card[column] if key in (first or {}) else UNRECORDED
                                              for key, column in ATTEMPT_COLUMNS.items()}
    assert rows.loc[2, columns].to_dict() == {"execution": "sequential", "device": "cpu",
                                              "device_name": "cpu (x86_64, 2 threads)", "precision": "fp32"}


@pytest.mark.parametrize(("parallel", "expected"), [("sequential", "sequential"), ("auto", "vectorized")])
def test_a_run_records_how_its_clients_trained(digits_data, parallel, expected):
    # Execute: FedAvg on a CPU (no CUDA graphs), one by one or (auto) all at once
    result = run_federated(model_of(), small_data(digits_data), make_strategy("fedavg"),
                           sequential(rounds=1, client_parallel=parallel))

    # Assert
    assert result.execution == expected


def test_cost_table_refuses_another_runs_metrics_in_a_runs_place(tmp_path):
    # Prepare: a train job's directory holding the metrics.csv of the run with seed 1
    run_id = "digits/cnn_small/init~random/algo~fedavg/alpha~0.5/clients~4/part~1.0/seed~0"
    run_dir = tmp_path / "results" / "train" / run_id
    run_dir.mkdir(parents=True)
    metrics, meta = cost_job(tmp_path, 0, "fedavg", "fedavg", [1, 2, 3], [10, 10, 10])
    df = pd.read_csv(metrics)
    df["run_id"] = run_id.replace("seed~0", "seed~1")
    df.to_csv(run_dir / "metrics.csv", index=False)

    # Execute
    with pytest.raises(TableError) as err:
        cost_table([(run_dir / "metrics.csv", meta)])

    # Assert: the file, its line, what was expected and the command that remakes it
    assert f"{run_dir / 'metrics.csv'}, line 2 is not a table of run_id {run_id}" in str(err.value)
    assert "--forcerun" in str(err.value)


def test_cost_table_without_a_fedavg_in_the_setting_has_no_ratio(tmp_path):
    rows = cost_table([cost_job(tmp_path, 0, "fedavg", "fedavg", [2, 2, 2], [10, 10, 10], clients=16),
                       cost_job(tmp_path, 1, "ga", "gradaug", [5, 5, 5], [20, 20, 20])]).set_index("algorithm")

    assert rows.loc["fedavg", "seconds_vs_fedavg"] == 1.0
    assert np.isnan(rows.loc["ga", "seconds_vs_fedavg"]) and np.isnan(rows.loc["ga", "peak_mem_vs_fedavg"])


# -- FedSAM / FedASAM ------------------------------------------------------------------------------
@pytest.mark.parametrize(("eta", "adaptive"), [(None, None), (0.1, None), (0.1, [True, False]), (0.1, [False, True])])
def test_sam_perturbation_matches_the_hand_formula(eta, adaptive):
    """SAM: e = rho g / ||g|| (Foret et al. 2021); ASAM: e = rho T^2 g / ||T g||, T = |w| + eta (Kwon et al. 2021),
    T = 1 on a tensor `adaptive` leaves out (ASAM's code: a tensor not named weight)."""
    # Prepare
    w = [torch.tensor([3.0, -1.0]), torch.tensor([[0.0, 2.0]])]
    g = [torch.tensor([1.0, 2.0]), torch.tensor([[-2.0, 4.0]])]
    t = [torch.ones(2), torch.ones(1, 2)] if eta is None else [x.abs() + eta for x in w]
    if adaptive is not None:
        t = [ti if scaled else torch.ones_like(ti) for ti, scaled in zip(t, adaptive, strict=True)]

    # Execute
    e = sam_perturbation(w, g, rho=0.5, eta=eta, adaptive=adaptive)

    # Assert
    norm = math.sqrt(sum(float(((ti * gi) ** 2).sum()) for ti, gi in zip(t, g, strict=True)))
    for ei, ti, gi in zip(e, t, g, strict=True):
        assert torch.allclose(ei, 0.5 * ti * ti * gi / norm)
    if eta is None:
        assert math.sqrt(sum(float((ei**2).sum()) for ei in e)) == pytest.approx(0.5)  # on the sphere of radius rho
    assert all(torch.equal(z, torch.zeros_like(z))
               for z in sam_perturbation(w, [x * 0 for x in g], 0.5, eta, adaptive=adaptive))


@pytest.mark.parametrize("name", ["fedsam", "fedasam"])
def test_fedsam_step_takes_the_gradient_at_the_ascent_point_and_applies_it_at_w(name):
    # Prepare: a linear classifier and one batch
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    strategy = make_strategy(name, {"rho": 0.3})
    w = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    e = sam_perturbation(w, list(grads), 0.3, None if name == "fedsam" else strategy.config.eta)
    shifted = torch.nn.Linear(5, 3)
    with torch.no_grad():
        for p, wi, ei in zip(shifted.parameters(), w, e, strict=True):
            p.copy_(wi + ei)
    expected = torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters()))
    ctx = ClientContext(1, 0, torch.cat([t.reshape(-1) for t in w]), x, y, torch.Generator())

    # Execute
    loss = strategy.local_backward(model, x, y, ctx)

    # Assert
    assert float(loss) == pytest.approx(float(F.cross_entropy(torch.nn.functional.linear(x, w[0], w[1]), y)))
    for p, wi, gi in zip(model.parameters(), w, expected, strict=True):
        assert torch.equal(p.detach(), wi)  # back at w exactly
        assert torch.allclose(p.grad, gi, atol=1e-6)
    assert not torch.allclose(model.weight.grad, grads[0])  # not the plain gradient


@pytest.mark.parametrize("adaptive_tensors", ["all", "weights"])
def test_fedasam_scales_the_ascent_of_the_tensors_adaptive_tensors_names(adaptive_tensors):
    # Prepare: a linear classifier (a tensor named weight, one named bias), one batch, and the gradient at the ascent
    # point by hand: e = rho T^2 g / ||T g||, T = |w| + eta where scaled, T = 1 elsewhere (the bias under "weights",
    # as ASAM's code: github.com/SamsungLabs/ASAM asam.py)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    rho, eta = 0.3, 0.2
    strategy = make_strategy("fedasam", {"rho": rho, "eta": eta, "adaptive_tensors": adaptive_tensors})
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = dict(zip(w, torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())), strict=True))

    def ascent(scaled: set[str]) -> dict[str, torch.Tensor]:
        t = {n: w[n].abs() + eta if n in scaled else torch.ones_like(w[n]) for n in w}
        norm = torch.sqrt(sum((t[n] * g[n]).square().sum() for n in w))
        return {n: rho * t[n] * t[n] * g[n] / norm for n in w}

    e = ascent({"weight", "bias"} if adaptive_tensors == "all" else {"weight"})
    shifted = [(w[n] + e[n]).requires_grad_(True) for n in ("weight", "bias")]
    expected = torch.autograd.grad(F.cross_entropy(F.linear(x, *shifted), y), shifted)
    ctx = ClientContext(1, 0, torch.cat([t.reshape(-1) for t in w.values()]), x, y, torch.Generator())

    # Execute
    strategy.local_backward(model, x, y, ctx)

    # Assert: the gradient at that ascent point, applied at w; the two rules' bias ascents differ by far more than the
    # tolerance (under "weights" the bias's is rho g_b / ||T g||)
    assert torch.equal(model.weight.detach(), w["weight"]) and torch.equal(model.bias.detach(), w["bias"])
    torch.testing.assert_close(model.weight.grad, expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias.grad, expected[1], rtol=0, atol=1e-6)
    assert (ascent({"weight"})["bias"] - ascent({"weight", "bias"})["bias"]).abs().max() > 1e-2


@pytest.mark.parametrize(("build", "message"), [
    (lambda: algorithm_config("fedasam", {"adaptive_tensors": "biases"}),
     "algorithm 'fedasam': adaptive_tensors: expected one of all, weights (e.g. its default 'all'), got 'biases'"),
    (lambda: FedASAMConfig(adaptive_tensors="weight"),
     "unknown adaptive_tensors value 'weight'. Did you mean 'weights'? Valid adaptive_tensors values: all, weights"),
], ids=["config", "dataclass"])
def test_fedasam_refuses_an_unknown_adaptive_tensors_value(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("value", ["all", "weights"])
def test_fedasam_takes_each_adaptive_tensors_value(value):
    assert algorithm_config("fedasam", {"adaptive_tensors": value}).adaptive_tensors == value


def test_the_cost_table_refuses_the_meta_json_of_another_run(tmp_path):
    # Prepare: two runs' files, their meta.json swapped (each carries its run's id)
    jobs = [cost_job(tmp_path, i, "fedavg", "fedavg", [1, 2, 3], [10, 10, 10]) for i in (0, 1)]
    for i, (_, meta) in enumerate(jobs):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "run_id": f"r{i}"}))
    swapped = [(jobs[0][0], jobs[1][1]), (jobs[1][0], jobs[0][1])]

    # Execute / Assert: the right pairs make the table, the swapped ones are refused naming both runs
    assert len(cost_table(jobs)) == 1
    with pytest.raises(ValueError, match=r"m1.json is the meta.json of run r1, not of r0"):
        cost_table(swapped)


@pytest.mark.parametrize("options", [{}, {"norm": "batch"}])
@pytest.mark.parametrize(("width", "changed_from", "read"), [
    (0.25, 16, False), (0.5, 32, False), (0.8, 48, False),  # slim_channels(64, width): the rows it keeps
    (0.5, 16, True), (1.0, 32, True),  # rows the width keeps, the full network's
])
def test_a_cnn_small_sub_network_slices_its_hidden_fc_layer(options, width, changed_from, read):
    # Prepare: the hidden fc layer's outputs from `changed_from` on (its weight and bias rows, the classifier's
    # columns that read them) changed in a copy; GradAug slices every hidden layer (Yang et al. 2020), fc's 64 outputs
    # included
    model = model_of("cnn_small", **options).train()
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.fc.weight[changed_from:] += 1.0
        changed.fc.bias[changed_from:] += 1.0
        changed.classifier.weight[:, changed_from:] += 1.0
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    # Execute
    with torch.no_grad():
        logits, changed_logits = model.forward_width(x, width), changed.forward_width(x, width)

    # Assert: the sub-network at `width` reads the fc outputs it keeps alone
    assert torch.equal(logits, changed_logits) is not read


@pytest.mark.parametrize(("name", "options", "width", "term"), [
    ("cnn_small", {}, 0.9, False), ("cnn_small", {"norm": "batch"}, 0.9, False),  # slim_channels(32, 0.9) = 32
    ("resnet20", {}, 0.95, False),  # its last stage's 32 and 64 channels kept
    ("cnn_small", {"norm": "batch"}, 0.5, True), ("resnet20", {}, 0.8, True),  # sliced: the term applies
])
def test_sequential_fedalign_has_no_term_where_the_width_keeps_the_whole_last_block(monkeypatch, name, options, width,
                                                                                    term):
    # Prepare: the sub-block's output a rounding off the block's, as a GPU's kernels for batch statistics without
    # running ones may give it; CE / L_lip would magnify that into a whole mu * CE term
    model = model_of(name, **options).train()
    reference = copy.deepcopy(model)
    sliced = model.last_block_width
    monkeypatch.setattr(model, "last_block_width", lambda h, w: (lambda s: (s[0], s[1] * (1 + 1e-6)))(sliced(h, w)))
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    align = make_strategy("fedalign", {"width": width, "mu": 0.5})
    ce = F.cross_entropy(reference.forward_last_block(x)[2], y)
    ce.backward()

    # Execute
    value = align.local_backward(model, x, y, ClientContext(1, 0, torch.zeros(1), x, y, torch.Generator()))

    # Assert: where the width keeps every channel the loss and the gradients are CE's alone, as in the vectorised
    # step; a sliced block adds mu * CE
    assert value.item() == pytest.approx(ce.item() * (1.5 if term else 1), rel=1e-5)
    same = [torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters(), strict=True)]
    assert all(same) is not term
