"""Images stored as uint8 and normalised per batch on their device (`fedscape.data.datasets.StoredImages`, declared
by a dataset's ``stored: uint8``: ImageNet-200): every batch a stage reads is bitwise the rows of the float32 pool
normalised once, so training, evaluation and every analysis compute the same numbers at a quarter of the memory."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_data

from fedscape.analysis.hessian.maths import HessianOperator
from fedscape.analysis.landscape.planes import random_plane
from fedscape.analysis.landscape.surface import SurfaceEvaluator, SurfaceSettings
from fedscape.data.datasets import StoredImages, batch_slices, take_rows, unit_pixels
from fedscape.data.federated import FederatedData
from fedscape.data.specs import DATASETS, STORAGE
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.batchnorm import recompute_bn_stats
from fedscape.models.evaluate import evaluate
from fedscape.models.params import flatten_buffers, flatten_params
from fedscape.models.registry import build_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pixels(n: int = 48, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _float_pool(pixels: torch.Tensor) -> torch.Tensor:
    """The pool as `from_source` normalises a float32 dataset once (its formula, its operation order)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def _stored(pixels: torch.Tensor) -> StoredImages:
    return StoredImages(pixels, torch.tensor(MEAN), torch.tensor(STD))


def test_only_imagenet200_is_stored_as_uint8():
    assert {name for name, info in DATASETS.items() if info.stored == "uint8"} == {"imagenet200"}
    assert all(info.stored in STORAGE for info in DATASETS.values())


@pytest.mark.parametrize("index", [slice(3, 17), slice(None, None, 5), torch.tensor([4, 0, 4, 47]),
                                   torch.tensor([[1, 2, 3], [9, 8, 7]]), 5])
def test_a_batch_is_bitwise_the_rows_of_the_float_pool(index):
    # Prepare
    pixels = _pixels()
    pool, stored = _float_pool(pixels), _stored(pixels)

    # Execute
    batch = stored[index]

    # Assert: exactly the same floats (rows, stacked [K, B] indices of the vectorised trainer, one row)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, pool[index], rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_every_byte_value_is_scaled_by_true_division_and_a_cards_batch_is_the_cpu_pools(device):
    # Prepare: every byte value, in images of three channels
    values = torch.arange(256, dtype=torch.uint8)
    pixels = values.view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()

    # Execute
    scaled = unit_pixels(values.to(device)).cpu()
    batch = _stored(pixels).to(device)[:]

    # Assert: each value / 255 correctly rounded to float32 (CUDA's division by a Python number multiplies by the
    # reciprocal instead: 1 ulp off for about half of them), and a batch normalised on the card is the CPU pool
    torch.testing.assert_close(scaled, (values.double() / 255).float(), rtol=0, atol=0)
    assert batch.device.type == device
    torch.testing.assert_close(batch.cpu(), _float_pool(pixels), rtol=0, atol=0)


def test_a_store_stands_in_for_the_pool_and_holds_a_quarter_of_its_bytes():
    # Prepare
    pixels = _pixels(n=20)
    pool, stored = _float_pool(pixels), _stored(pixels)
    rows = torch.tensor([7, 3, 3, 19])

    # Execute
    sub = take_rows(stored, rows)
    batches = batch_slices(stored, torch.arange(20), 6)

    # Assert
    assert stored.shape == pool.shape and len(stored) == 20 and stored.device == pool.device
    assert stored.dtype == torch.float32 and stored.dim() == 4 and stored.is_floating_point()
    assert stored.nbytes * 4 == pool.numel() * pool.element_size()
    assert isinstance(sub, StoredImages) and sub.pixels.dtype == torch.uint8
    torch.testing.assert_close(sub[:], pool[rows], rtol=0, atol=0)
    torch.testing.assert_close(take_rows(pool, rows), pool[rows], rtol=0, atol=0)
    torch.testing.assert_close(stored.materialise(chunk=7), pool, rtol=0, atol=0)
    assert stored.to("cpu") is stored and len(batches) == 4
    for (xb, yb), (xe, ye) in zip(batches, batch_slices(pool, torch.arange(20), 6), strict=True):
        torch.testing.assert_close(xb, xe, rtol=0, atol=0)
        assert yb.tolist() == ye.tolist()
    with pytest.raises(ValueError, match=r"StoredImages holds uint8 images \[N, C, H, W\], got torch.float32"):
        StoredImages(pool, torch.tensor(MEAN), torch.tensor(STD))


def _federated(x) -> FederatedData:
    layout = tiny_data(num_clients=3, n=48)
    return FederatedData(x, layout.y_train, layout.client_indices, take_rows(x, torch.arange(30)), layout.y_train[:30])


def _cnn(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_small", num_classes=10, in_channels=3, image_size=8, norm=norm)


@pytest.mark.parametrize(("augment", "client_parallel", "norm"),
                         [("none", "sequential", "batch"), ("crop_flip", "sequential", "batch"),
                          ("crop_flip", "vectorized", "none")])
def test_training_evaluation_and_the_analyses_compute_the_same_numbers(augment, client_parallel, norm):
    # Prepare: the same pool as float32 and as uint8, a CNN (with batch norm where the trainer admits it)
    pixels = _pixels()
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.05, momentum=0.9, augment=augment, seed=1,
                      client_parallel=client_parallel)
    results = {}
    for kind, x in (("float", _float_pool(pixels)), ("stored", _stored(pixels))):
        data = _federated(x)

        # Execute: two rounds of FedAvg, then what the analyses compute on the union and the test set
        model = _cnn(norm)
        run = run_federated(model, data, make_strategy("fedavg"), cfg)
        x_all, y_all = data.union()
        test = evaluate(model, data.x_test, data.y_test, batch_size=7)
        with HessianOperator(model, x_all, y_all, batch_size=16, cache_graph=False) as op:
            v = torch.ones(op.dim)
            hessian = (op.loss(), op.hvp(v))
        center = flatten_params(model)
        plane = random_plane(center, flatten_buffers(model), [p.shape for p in model.parameters()], seed=3)
        surface = SurfaceEvaluator(_cnn(norm), plane, *data.client(1), settings=SurfaceSettings(batch_size=5))
        grid = surface.evaluate(torch.tensor([[0.0, 0.0], [0.5, -0.25]]).numpy())
        recompute_bn_stats(model, x_all, samples=20, batch_size=6)
        results[kind] = (flatten_params(model), [(r["test_loss"], r["train_loss"]) for r in run.rows], test.loss,
                         hessian, grid, [b.clone() for b in model.buffers()])

    # Assert: the same numbers, bitwise
    torch.testing.assert_close(results["stored"], results["float"], rtol=0, atol=0)
