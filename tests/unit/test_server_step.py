"""The server's step by hand: the batch-norm statistics averaged with the clients' sample weights
(`Strategy.aggregate_buffers`), and server SGD's learning rate and heavy-ball momentum (`ServerSGDConfig`; FedAvgM,
Hsu et al. 2019)."""

from __future__ import annotations

import pytest
import torch

from fedscape.fl.strategies.base import ClientResult
from fedscape.fl.strategies.registry import make_strategy


def _client(client_id: int, num_samples: int, params: torch.Tensor, buffers: torch.Tensor | None = None
            ) -> ClientResult:
    return ClientResult(client_id, num_samples, params, torch.zeros(0) if buffers is None else buffers, 0.0)


@pytest.mark.parametrize("algorithm", ["fedavg", "fednova", "scaffold", "feddyn"])  # the last three: own server steps
def test_batch_norm_statistics_are_averaged_with_the_sample_weights(algorithm):
    # Prepare: clients of 10 and 30 samples, weights 10/40 = 0.25 and 30/40 = 0.75
    results = [_client(0, 10, torch.zeros(2), torch.tensor([1.0, 0.0, 2.0])),
               _client(1, 30, torch.zeros(2), torch.tensor([0.0, 4.0, 2.0]))]

    # Execute
    buffers = make_strategy(algorithm).aggregate_buffers(results)

    # Assert: 0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 4, and a statistic the clients agree on kept (the plain mean
    # would be 0.5 and 2)
    torch.testing.assert_close(buffers, torch.tensor([0.25, 3.0, 2.0]), rtol=0, atol=1e-7)


def test_fedavgm_takes_two_server_steps_as_heavy_ball_sgd_by_hand():
    # Prepare: server lr 0.5, momentum 0.9, from x = 0; one client whose update is +1, then +2
    strategy = make_strategy("fedavgm", {"server_lr": 0.5, "server_momentum": 0.9})
    x0 = torch.zeros(2, dtype=torch.float64)

    # Execute
    x1 = strategy.server_update(x0, [_client(0, 1, x0 + 1.0)])
    x2 = strategy.server_update(x1, [_client(0, 1, x1 + 2.0)])

    # Assert: the pseudo-gradient is g = -(mean delta); v <- 0.9 v + g; x <- x - 0.5 v.
    # Step 1: v = -1, x = 0 - 0.5 * -1 = 0.5. Step 2: v = 0.9 * -1 - 2 = -2.9, x = 0.5 - 0.5 * -2.9 = 1.95.
    # Dampening (v <- 0.9 v + 0.1 g) would give 0.05, and a step without the lr 1 and 3.9
    assert x1.tolist() == pytest.approx([0.5, 0.5], rel=1e-12)
    assert x2.tolist() == pytest.approx([1.95, 1.95], rel=1e-12)
    assert strategy.state_dict()["server_opt"]["momentum_buffer"].tolist() == pytest.approx([-2.9, -2.9], rel=1e-12)


def test_a_resumed_fedavgm_keeps_its_momentum():
    # Prepare: the first step of the hand case above, its state saved and loaded by a new strategy (a resumed run)
    hparams = {"server_lr": 0.5, "server_momentum": 0.9}
    first = make_strategy("fedavgm", hparams)
    x0 = torch.zeros(1, dtype=torch.float64)
    x1 = first.server_update(x0, [_client(0, 1, x0 + 1.0)])
    resumed = make_strategy("fedavgm", hparams)
    resumed.load_state_dict(first.state_dict())

    # Execute
    x2 = resumed.server_update(x1, [_client(0, 1, x1 + 2.0)])

    # Assert: 1.95 as without the break (a fresh momentum buffer would give 0.5 + 0.5 * 2 = 1.5)
    assert x2.item() == pytest.approx(1.95, rel=1e-12)

