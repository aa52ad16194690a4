"""FedNova (Wang et al. 2020): its reduction to FedAvg, hand-computed normalised updates, the momentum tau_eff."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import mlp, shard_data

from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.fednova import FedNova, normalized_delta
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.params import flatten_params


def test_normalized_delta_by_hand():
    # p = (1/4, 3/4); client a moved (4, 0) in 4 steps, client b (0, 1) in 1 step: tau_eff = 1/4 * 4 + 3/4 * 1 = 1.75
    x = torch.zeros(2)
    clients = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64)

    got = normalized_delta(x, clients, weights, torch.tensor([4.0, 1.0]))

    assert got.tolist() == pytest.approx([1.75 * 0.25 * 1.0, 1.75 * 0.75 * 1.0])  # FedAvg: (1.0, 0.75)
    assert normalized_delta(x, clients, weights, torch.tensor([2.0, 2.0])).tolist() == pytest.approx([1.0, 0.75])


def test_a_client_without_steps_adds_nothing():
    got = normalized_delta(torch.zeros(1), torch.tensor([[2.0], [0.0]]), torch.tensor([0.5, 0.5], dtype=torch.float64),
                           torch.tensor([2.0, 0.0]))

    assert got.tolist() == pytest.approx([0.5 * 2.0 * 2.0 / 2.0 * 0.5])  # tau_eff 1, client a's 2 / 2 at weight 1/2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
def test_equal_local_work_makes_fednova_fedavg(momentum, mode):
    data = shard_data([13, 7, 21])  # unequal shards, so unequal sample weights, but the same 5 steps each
    cfg = TrainConfig(rounds=2, local_steps=5, batch_size=4, lr=0.1, momentum=momentum, seed=2, client_parallel=mode)

    nova = run_federated(mlp(), data, make_strategy("fednova"), cfg)
    avg = run_federated(mlp(), data, make_strategy("fedavg"), cfg)

    assert (nova.params - avg.params).abs().max().item() <= 1e-6
    assert (nova.params[-1] - nova.params[0]).abs().max().item() > 1e-3


class QuadraticNova(FedNova):
    """FedNova on f_i(w) = 0.5 ||w - c_i||^2 (c_i = client id + 1 in every coordinate) or, with `linear`, on
    f_i(w) = <g_i, w> with a constant gradient g_i = (client id + 1) everywhere: closed-form local updates."""

    def __init__(self, linear: bool = False):
        super().__init__(None, "fednova")
        self.linear = linear

    def local_loss(self, model, x, y, ctx):
        target = float(ctx.client_id + 1)
        if self.linear:
            return sum((p * target).sum() for p in model.parameters())
        return 0.5 * sum(((p - target) ** 2).sum() for p in model.parameters())


def test_unequal_local_steps_give_the_hand_computed_normalised_update():
    # Plain SGD on the quadratic: after tau steps from x, w = c + (1 - lr)^tau (x - c), so the update is
    # (1 - (1 - lr)^tau) (c - x) and ||a||_1 = tau.
    lr, taus, sizes = 0.1, (1, 4, 10), [10, 20, 30]
    data = shard_data(sizes)
    cfg = TrainConfig(rounds=1, local_steps=taus, batch_size=5, lr=lr, seed=0)
    model = mlp()
    x = flatten_params(model).double()

    result = run_federated(model, data, QuadraticNova(), cfg)

    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    updates = [(1 - (1 - lr) ** tau) * ((c + 1) - x) for c, tau in enumerate(taus)]
    tau_eff = sum(float(p[i]) * taus[i] for i in range(3))
    expected = x + tau_eff * sum(float(p[i]) * updates[i] / taus[i] for i in range(3))
    fedavg = x + sum(float(p[i]) * updates[i] for i in range(3))
    assert (result.params[1].double() - expected).abs().max().item() < 1e-5
    assert (expected - fedavg).abs().max().item() > 0.1  # the normalisation matters here


def test_momentum_normaliser_is_the_papers_tau_eff():
    # A constant gradient g_i under heavy-ball SGD moves the client by -lr ||a_i||_1 g_i with the paper's
    # ||a_i||_1 = [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) (Wang et al. 2020, Sec. 4): the normalised
    # update is -lr tau_eff sum_i p_i g_i with tau_eff = sum_i p_i ||a_i||_1.
    lr, rho, taus, sizes = 0.01, 0.9, (2, 7), [30, 10]
    data = shard_data(sizes)
    cfg = TrainConfig(rounds=1, local_steps=taus, batch_size=5, lr=lr, momentum=rho, seed=0)
    model = mlp()
    x = flatten_params(model).double()

    result = run_federated(model, data, QuadraticNova(linear=True), cfg)

    def a_norm(tau: int) -> float:
        return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)

    p = [s / sum(sizes) for s in sizes]
    tau_eff = sum(pi * a_norm(t) for pi, t in zip(p, taus, strict=True))
    expected = x - lr * tau_eff * sum(pi * (c + 1) for c, pi in enumerate(p))
    assert (result.params[1].double() - expected).abs().max().item() < 1e-5
    assert a_norm(7) == pytest.approx(sum((1 - rho**k) / (1 - rho) for k in range(1, 8)))
