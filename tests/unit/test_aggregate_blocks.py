"""The server step's weighted sums a block of columns at a time (fedscape.fl.aggregate.AGGREGATE_BLOCK): the same bits
as one float64 matrix product of all the clients' rows, without a float64 (or difference) copy of all of them."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedscape.fl import aggregate
from fedscape.fl.aggregate import AGGREGATE_BLOCK, mean_delta, sample_weights, weighted_mean


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("block", "width"), SMALL + REAL)
def test_blocked_sums_are_the_one_shot_formulas_bits(monkeypatch, block, width, dtype):
    monkeypatch.setattr(aggregate, "AGGREGATE_BLOCK", block)
    rows, centre, weights = _rows(5, width, dtype, seed=width)

    mean = weighted_mean(rows, weights)
    delta = mean_delta(centre, rows, weights)

    assert mean.dtype == delta.dtype == dtype
    assert torch.equal(mean, _one_shot_mean(rows, weights))
    assert torch.equal(delta, _one_shot_mean(rows - centre.unsqueeze(0), weights))


def test_no_columns_give_an_empty_mean():
    rows, centre, weights = _rows(3, 0, torch.float32, seed=0)

    assert weighted_mean(rows, weights).shape == mean_delta(centre, rows, weights).shape == (0,)


class _LargestNew(TorchDispatchMode):
    """The bytes of the largest tensor any op makes (not a view of, nor written into, one that exists)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not out._is_view() and not func._schema.is_mutable:
            self.largest = max(self.largest, out.numel() * out.element_size())
        return out


@pytest.mark.parametrize("which", ["weighted_mean", "mean_delta"])
def test_the_sums_copy_no_more_than_a_block_of_the_rows(which):
    rows, centre, weights = _rows(2, 3 * AGGREGATE_BLOCK + 5, torch.float32, seed=1)
    bound = max(rows.shape[1] * rows.element_size(), rows.shape[0] * AGGREGATE_BLOCK * 8)  # the result, a block

    with _LargestNew() as made:
        weighted_mean(rows, weights) if which == "weighted_mean" else mean_delta(centre, rows, weights)

    # all rows in float64 (or their differences in float32) at once would be 2 x 3 x 2^18 x 8 (x 4) bytes
    assert made.largest <= bound, f"{made.largest} bytes made at once, more than a block or the result ({bound})"


@pytest.mark.parametrize(("rows", "weights"), [
    (torch.ones(3, 4), torch.ones(2) / 2),  # a weight short
    (torch.ones(3), torch.ones(3) / 3),  # not rows [M, P]
    (torch.ones(2, 2, 2), torch.ones(2) / 2),
])
def test_rows_without_one_weight_each_are_refused(rows, weights):
    with pytest.raises(ValueError, match="one weight each"):
        weighted_mean(rows, weights)
