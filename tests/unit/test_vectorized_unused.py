"""Vectorised training of a model with a parameter that gets no gradient (a layer defined but bypassed): as in
sequential training, where its `.grad` stays None and torch's optimisers skip it, it keeps its value unless the
algorithm's own term gives it a gradient (FedProx's prox term)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import vectorized
from helpers.synthetic import shard_data
from helpers.vectorized import both_rounds
from torch import nn

from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.resnets import ResNet

pytestmark = pytest.mark.usefixtures("float64_default")

# float64: the two paths differ by the order of float64 operations only (at most 1.1e-14 seen here: AdamW through batch
# norm), bounded as in test_vectorized.py
TOL64 = 1e-10
SIZES = [21, 9, 5, 14]  # batch 4: partial last batches (padded steps), clients inactive in the last steps
CFG = {"local_epochs": 2, "batch_size": 4, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3}


class BypassedMLP(nn.Module):
    """An MLP with a layer that its forward bypasses, between the layers it uses in parameter order; no
    forward_stacked, so the vectorised trainer takes functional_call under vmap."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())
        self.bypassed = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def bypassed_resnet(seed: int = 0) -> ResNet:
    """A two-block batch-norm ResNet (its own forward_stacked, each client's batch norm) with a bypassed layer
    registered between its blocks and its classifier."""
    torch.manual_seed(seed)
    model = ResNet(10, 1, (1, 1), (4, 8), norm="batch")
    classifier = model.classifier
    del model.classifier
    model.bypassed = nn.Linear(8, 8)
    model.classifier = classifier  # registered again: after the bypassed layer
    return model


MODELS = {"mlp-vmap": BypassedMLP, "resnet-batch-norm-stacked": bypassed_resnet}


def bypassed_mask(model: nn.Module) -> torch.Tensor:
    """Which entries of the flat parameter vector belong to the bypassed layer."""
    return torch.cat([torch.full((p.numel(),), name.startswith("bypassed."))
                      for name, p in model.named_parameters()])


# (algorithm, hparams, train options, whether sequential training moves the bypassed layer)
CASES = {
    "fedavg": ("fedavg", {}, {}, False),  # momentum and weight decay skip a parameter without gradient
    "fedavg-nesterov": ("fedavg", {}, {"nesterov": True}, False),
    "fedavg-adamw": ("fedavg", {}, {"optimizer": "adamw", "adamw_eps": 1e-3, "weight_decay": 0.05}, False),
    # the prox term is a gradient at every step (zero at the first, where weight decay then moves the layer)
    "fedprox": ("fedprox", {"mu": 0.5}, {}, True),
    "fedprox-mu0": ("fedprox", {"mu": 0.0}, {}, False),  # no term at mu = 0: the layer still has no gradient
    "fedsam": ("fedsam", {"rho": 0.05}, {}, False),  # no ascent for it, nor a part in the ascent's norm
    "fedasam": ("fedasam", {"rho": 0.5, "eta": 0.1}, {}, False),
    # T by name: the names of the tensors with a gradient, not of all tensors
    "fedasam-weights": ("fedasam", {"rho": 0.5, "eta": 0.1, "adaptive_tensors": "weights"}, {}, False),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize(("algorithm", "hparams", "train", "moves"), list(CASES.values()), ids=list(CASES))
def test_vectorized_round_with_a_bypassed_layer_equals_sequential(model_name, algorithm, hparams, train, moves):
    # Prepare: unequal shards, momentum and weight decay, in float64
    data = shard_data(SIZES)
    model = MODELS[model_name]()
    bypassed = bypassed_mask(model)
    cfg = TrainConfig(**{**CFG, **train})

    # Execute
    start, buffers, seq, vec = both_rounds(model, data, cfg, algorithm, hparams)

    # Assert: every client equal to its sequential training, the bypassed layer kept exactly where sequential
    # training keeps it and moved as there where the algorithm gives it a gradient, the used layers trained
    for s, v in zip(seq, vec, strict=True):
        assert v.params.dtype == torch.float64
        assert (s.params - v.params).abs().max().item() <= TOL64
        torch.testing.assert_close(v.buffers, s.buffers, rtol=0, atol=TOL64)  # running statistics (none: the MLP)
        assert torch.equal(s.params[bypassed], start[bypassed]) != moves
        assert torch.equal(v.params[bypassed], start[bypassed]) != moves
        if moves:
            assert (v.params[bypassed] - start[bypassed]).abs().max().item() > 1e-5
        assert (v.params[~bypassed] - start[~bypassed]).abs().max().item() > 1e-2


@pytest.mark.parametrize(("algorithm", "hparams", "train"), [
    ("fedadam", {"server_lr": 0.05}, {"rounds": 2}),  # an adaptive server step on zero pseudo-gradient entries
    ("fednova", {}, {"local_epochs": None, "local_steps": (2, 5, 3, 7)}),  # normalised by unequal local work
    ("fedprox", {"mu": 0.5}, {}),  # the bypassed layer moves at the clients and so in the aggregate
    ("scaffold", {}, {"rounds": 3}),  # no correction where there is no gradient: the layer stays
    ("feddyn", {}, {"rounds": 3}),  # the regulariser gives the layer a gradient (zero at first), as sequentially
], ids=["fedadam-2rounds", "fednova-steps-per-client", "fedprox", "scaffold", "feddyn"])
def test_bypassed_layer_through_the_engine_equals_sequential(algorithm, hparams, train, monkeypatch):
    # Prepare: run_federated as a run trains (3 of 4 clients sampled); the vectorised run must not fall back
    data = shard_data(SIZES)
    bypassed = bypassed_mask(BypassedMLP())

    # Execute
    seq = vectorized.run_mode("sequential", make_strategy(algorithm, hparams), data, monkeypatch, BypassedMLP,
                              batch_size=4, **train)
    vec = vectorized.run_mode("vectorized", make_strategy(algorithm, hparams), data, monkeypatch, BypassedMLP,
                              batch_size=4, **train)

    # Assert: the clients, the global models and the round statistics of client updates (finite) agree, and the
    # global bypassed layer stays where only the clients' gradients can move it
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= TOL64
    assert (seq.params - vec.params).abs().max().item() <= TOL64
    assert len(seq.client_stats) == len(vec.client_stats) == len(seq.params) - 1
    for a, b in zip(seq.client_stats, vec.client_stats, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert math.isfinite(b[key]) and b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12)
    assert torch.equal(vec.params[-1][bypassed], vec.params[0][bypassed]) != (algorithm in ("fedprox", "feddyn"))
    assert (vec.params[-1][~bypassed] - vec.params[0][~bypassed]).abs().max().item() > 1e-3
