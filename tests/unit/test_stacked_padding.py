"""What a stacked step's padded rows hold, and batch norm with one value per channel, in vectorised training
(fedscape.fl.vectorized.VectorizedTrainer, fedscape.models.layers.stacked_batch_norm)."""

from __future__ import annotations

import pytest
import torch
from helpers.graphs import emulated_graph
from helpers.synthetic import shard_data
from helpers.vectorized import model_of

from fedscape.fl import sequential as sequential_mod
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.resnets import ResNet

CFG = {"local_epochs": 1, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3}
ONE_VALUE = "Expected more than 1 value per channel when training"


def small_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (4, 8), norm="batch")


MODELS = {"mlp": lambda: model_of("mlp"), "cnn_small": lambda: model_of("cnn_small"), "resnet_bn": small_resnet}


def vectorized_round(model, data, clients, algorithm="fedavg", hparams=None, make_graph=None, **train):
    flat = FlatParams(model)
    start, buffers = flat.get().clone(), flatten_buffers(model).clone()
    strategy = make_strategy(algorithm, hparams or {})
    strategy.setup(data.num_clients, start.numel(), start.device, model=model, seed=0,
                   client_sizes=[len(i) for i in data.client_indices])
    trainer = VectorizedTrainer(model, data, strategy, TrainConfig(**{**CFG, **train}), make_graph=make_graph)
    return trainer.train_round(start, buffers, clients, 1)


def sequential_round(model, data, clients, **train):
    flat = FlatParams(model)
    start, buffers = flat.get().clone(), flatten_buffers(model).clone()
    strategy = make_strategy("fedavg", {})
    strategy.setup(data.num_clients, start.numel(), start.device, model=model, seed=0,
                   client_sizes=[len(i) for i in data.client_indices])
    return [sequential_mod.local_train(model, flat, start, buffers, data, c, 1, strategy,
                                       TrainConfig(**{**CFG, **train}))[0] for c in clients]


@pytest.mark.parametrize(("model", "algorithm", "hparams", "clients"), [
    ("mlp", "fedavg", {}, [1, 2]),  # under vmap
    ("cnn_small", "fedavg", {}, [1, 2]),  # its own forward_stacked
    ("resnet_bn", "fedavg", {}, [1, 2]),  # masked batch norm
    ("resnet_bn", "fedavg", {}, [0, 1, 2]),  # the sample's own client in the round too
    ("resnet_bn", "mixup", {"gamma": 0.4}, [1, 2]),
    ("resnet_bn", "fedsam", {"rho": 0.5}, [1, 2]),
])
def test_a_padded_row_holds_a_sample_of_its_own_client(model, algorithm, hparams, clients, float64_default):
    # Prepare: sample 0 (client 0's) non-finite; clients 1 and 2 (9 and 5 samples, batch 4) have padded steps
    data, finite = shard_data([2, 9, 5]), shard_data([2, 9, 5])
    data.x_train[0] = float("nan")
    # Execute
    results = vectorized_round(MODELS[model](), data, clients, algorithm, hparams)
    reference = vectorized_round(MODELS[model](), finite, clients, algorithm, hparams)
    # Assert: the other clients' results are finite and those of the finite data bit for bit (a padded row copied
    # from another client's sample entered their masked sums as 0 x NaN)
    for got, want in zip(results, reference, strict=True):
        if got.client_id == 0:
            assert not torch.isfinite(got.params).all()  # it trains on the sample, as sequentially
            continue
        assert torch.isfinite(got.params).all() and torch.isfinite(got.buffers).all()
        assert torch.equal(got.params, want.params) and torch.equal(got.buffers, want.buffers)
        assert got.train_loss == want.train_loss


@pytest.mark.parametrize(("sizes", "image"), [
    ([1, 4], 2),  # client 0's only step padded (width 4): one value per channel at the 1x1 last stage
    ([4, 1], 2),  # the same, the client of one sample second
    ([1, 1], 2),  # every batch of one: no padding, torch's own batch norm over the stacked channels
])
@pytest.mark.parametrize("algorithm", ["fedavg", "fedsam"])
def test_batch_norm_of_one_value_per_channel_raises_as_sequentially(sizes, image, algorithm, float64_default):
    # Prepare: 2x2 images, a small ResNet's last stage at 1x1
    data = shard_data(sizes, size=image)
    # Execute / Assert
    with pytest.raises(ValueError, match=ONE_VALUE):
        sequential_round(small_resnet(), data, [0, 1])
    with pytest.raises(ValueError, match=ONE_VALUE):
        vectorized_round(small_resnet(), data, [0, 1], algorithm, {"rho": 0.5} if algorithm == "fedsam" else {})


def test_a_batch_of_one_at_more_than_one_position_trains_as_sequentially(float64_default):
    # Prepare: 4x4 images, the last stage at 2x2: a batch of one has 4 values per channel
    data = shard_data([1, 4, 5], size=4)
    # Execute
    seq = sequential_round(small_resnet(), data, [0, 1, 2])
    vec = vectorized_round(small_resnet(), data, [0, 1, 2])
    # Assert
    for s, v in zip(seq, vec, strict=True):
        assert (s.params - v.params).abs().max() < 1e-10 and (s.buffers - v.buffers).abs().max() < 1e-10


@pytest.mark.parametrize("capture", ["auto", "cuda_graph"])  # cuda_graph: the step's own error, not capture's
def test_a_captured_step_shape_never_replays_over_a_batch_of_one(float64_default, capture):
    # Prepare: clients of 6, 9 and 8 samples, 24 steps of batch 4 each: their batches hold 4, 2 / 4, 4, 1 / 4 samples
    # in turn, so 8 padded steps of three clients at width 4 hold no batch of one (steps 1, 3, 7, ...) and 8 others one
    # (steps 2, 5, 8, ...). A graph captured (the stand-in graph maker) on the first kind and replayed on the second
    # would skip the check of one value per channel at the 1x1 last stage: a batch of one is part of a step's shape.
    data = shard_data([6, 9, 8], size=2)
    work = {"local_epochs": None, "local_steps": (24, 24, 24)}
    # Execute / Assert
    with pytest.raises(ValueError, match=ONE_VALUE):
        sequential_round(small_resnet(), data, [0, 1, 2], **work)
    with pytest.raises(ValueError, match=ONE_VALUE):
        vectorized_round(small_resnet(), data, [0, 1, 2], make_graph=emulated_graph, capture=capture, **work)
