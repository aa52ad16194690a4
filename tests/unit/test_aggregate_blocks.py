"""The server step's weighted sums a block of columns at a time (fedscape.fl.aggregate.AGGREGATE_BLOCK): the same bits
as one float64 matrix product of all the clients' rows, stacked [M, P] or given as the results' own rows [P], FedNova's
normalised sum too (what they copy: tests/unit/test_server_step_memory.py), on the CPU and on a card, where the server
step runs with the training (benchmarks/gpu_session.py's `tests` part)."""

from __future__ import annotations

import math

import pytest
import torch

from fedscape.fl import aggregate
from fedscape.fl.aggregate import AGGREGATE_BLOCK, mean_delta, sample_weights, weighted_mean
from fedscape.fl.strategies.fednova import normalized_delta

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

def _one_shot_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The formula before blocks: every row in float64 at once."""
    return (weights.to(rows.device, torch.float64) @ rows.double()).to(rows.dtype)


def _rows(num_rows: int, width: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = (torch.randn(num_rows, width, generator=gen, dtype=torch.float64) * 10).to(dtype)
    centre = torch.randn(width, generator=gen, dtype=torch.float64).to(dtype)
    weights = sample_weights(torch.randint(1, 500, (num_rows,), generator=gen).tolist())
    return rows, centre, weights


# (block, width): widths on either side of a block, a block exactly, and several blocks with a part-block left over
SMALL = [(7, w) for w in (1, 6, 7, 8, 14, 50)] + [(1, 5)]
REAL = [(AGGREGATE_BLOCK, w) for w in (AGGREGATE_BLOCK - 1, AGGREGATE_BLOCK, AGGREGATE_BLOCK + 1,
                                       2 * AGGREGATE_BLOCK + 3)]


def _given(rows: torch.Tensor, form: str) -> torch.Tensor | list[torch.Tensor]:
    """The clients as the sums are given them: stacked [M, P], or as M rows [P] of their own (the server step's)."""
    return rows if form == "stacked" else [row.clone() for row in rows]


@pytest.mark.parametrize("form", ["stacked", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("block", "width"), SMALL + REAL)
def test_blocked_sums_are_the_one_shot_formulas_bits(monkeypatch, block, width, dtype, form):
    monkeypatch.setattr(aggregate, "AGGREGATE_BLOCK", block)
    rows, centre, weights = _rows(5, width, dtype, seed=width)

    mean = weighted_mean(_given(rows, form), weights)
    delta = mean_delta(centre, _given(rows, form), weights)

    assert mean.dtype == delta.dtype == dtype
    assert torch.equal(mean, _one_shot_mean(rows, weights))
    assert torch.equal(delta, _one_shot_mean(rows - centre.unsqueeze(0), weights))


@pytest.mark.parametrize("form", ["stacked", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("block", "width"), [(7, 1), (7, 50), *REAL[1:3]])
def test_fednova_s_blocked_sum_is_its_one_shot_formulas_bits(monkeypatch, block, width, dtype, form):
    monkeypatch.setattr(aggregate, "AGGREGATE_BLOCK", block)
    rows, centre, weights = _rows(4, width, dtype, seed=width)
    norms = torch.tensor([3.0, 0.0, 0.7, 12.5], dtype=torch.float64)  # a client without local steps among them
    tau_eff = (weights * norms).sum()
    scale = torch.where(norms > 0, weights * tau_eff / norms, 0.0)

    got = normalized_delta(centre, _given(rows, form), weights, norms)

    assert got.dtype == dtype
    assert torch.equal(got, _one_shot_mean(rows - centre.unsqueeze(0), scale))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_sums_on_the_training_device_are_its_one_products(monkeypatch, device, dtype):
    # Prepare: blocks of 7 columns over a width of no multiple of 7 (a part-block left over), the clients' own rows on
    # the device, their weights where the server computes them
    monkeypatch.setattr(aggregate, "AGGREGATE_BLOCK", 7)
    stacked, centre, weights = _rows(5, 7 * 6 + 3, dtype, seed=3)
    rows, centre = [row.to(device) for row in stacked], centre.to(device)

    # Execute
    mean, delta = weighted_mean(rows, weights), mean_delta(centre, rows, weights)

    # Assert: the float64 product of all the columns at once on that device, in the rows' dtype: the same bits in
    # float32; in float64 at most one unit in the last place apart (a card's products of 7 columns and of 45 may
    # reduce the clients in other orders)
    w = weights.to(device, torch.float64)
    for got, rows_minus in ((mean, torch.stack(rows)), (delta, torch.stack(rows) - centre)):
        want = (w @ rows_minus.double()).to(dtype)
        assert got.device == want.device and got.dtype == dtype
        if dtype == torch.float32:
            assert torch.equal(got, want)
        else:
            assert torch.all((torch.nextafter(want, want.new_tensor(-math.inf)) <= got)
                             & (got <= torch.nextafter(want, want.new_tensor(math.inf))))


def test_no_columns_give_an_empty_mean():
    rows, centre, weights = _rows(3, 0, torch.float32, seed=0)

    assert weighted_mean(rows, weights).shape == mean_delta(centre, rows, weights).shape == (0,)


@pytest.mark.parametrize(("rows", "weights"), [
    (torch.ones(3, 4), torch.ones(2) / 2),  # a weight short
    (torch.ones(3), torch.ones(3) / 3),  # not rows [M, P]
    (torch.ones(2, 2, 2), torch.ones(2) / 2),
    ([torch.ones(4), torch.ones(5)], torch.ones(2) / 2),  # rows of unequal widths
    ([torch.ones(4)] * 3, torch.ones(2) / 2),
    ([], torch.ones(0)),  # no client
])
def test_rows_without_one_weight_each_are_refused(rows, weights):
    with pytest.raises(ValueError, match="one weight each"):
        weighted_mean(rows, weights)
