"""Vectorised FedSAM / FedASAM (Qu et al. 2022; Caldarola et al. 2022): one round equals one sequential round,
each client ascending along its own gradient norm."""

from __future__ import annotations

import pytest
import torch
from helpers import vectorized
from helpers.synthetic import shard_data
from helpers.vectorized import model_of

from fedscape.fl.hparams.registry import algorithm_config
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.fedsam import FedSAM, sam_perturbation
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# The vectorised path's exactness bound in float32 (same seeds), as in test_vectorized.py. Run from one start in float32
# and in float64 on AVX-512, AVX2 and ATen's default kernels, each path of the float32 cases below departed from its
# float64 run by at most 2.8e-7 (client models) and 3.5e-7 (training losses): the float32 paths differ by TOL / 14.
TOL = 1e-5
# In float64 the two paths differ only by the order of float64 operations. A large ascent radius makes a round chaotic
# in float32: with rho = 1 (FedASAM, eta = 0.1) a 1.8e-7 change of the global model moves a client by 4.8e-4, and
# with rho = 0.5 a rounding difference can flip a ReLU; whether float32 paths then agree to TOL depends on the CPU's
# kernels (they did not with oneDNN capped at AVX2, as on an AMD EPYC). Those cases compare in float64.
TOL64 = 1e-10
SIZES = [21, 9, 5, 30]  # unequal shards: partial last batches, clients inactive in the last steps


def run_mode(mode: str, strategy: Strategy, model: str = "cnn_small", monkeypatch=None, **train):
    """One round on the unequal shards of SIZES (helpers.vectorized.run_mode)."""
    return vectorized.run_mode(mode, strategy, shard_data(SIZES), monkeypatch, model, **train)


def client_diff(a, b) -> float:
    """The largest difference between two runs' client models after round 1."""
    assert torch.equal(a.clients[1].client_ids, b.clients[1].client_ids)
    return (a.clients[1].params - b.clients[1].params).abs().max().item()


class GlobalNormSAM(FedSAM):
    """A deliberately wrong vectorised FedSAM: one ascent norm shared by all stacked clients."""

    vectorized = True

    def local_gradients_vectorized(self, params, loss):
        losses = loss(params)
        grads = list(torch.autograd.grad(losses.sum(), params))
        with torch.no_grad():
            shifted = [p + e for p, e in zip(params, sam_perturbation(params, grads, self.config.rho), strict=True)]
        for s in shifted:
            s.requires_grad_(True)
        return losses.detach(), list(torch.autograd.grad(loss(shifted).sum(), shifted))


@pytest.mark.parametrize(
    ("algorithm", "hparams", "model", "train", "float64"),
    [
        ("fedsam", {}, "cnn_small", {}, False),
        ("fedasam", {}, "cnn_small", {}, False),
        ("fedsam", {"rho": 0.5}, "cnn_small", {"augment": "crop_flip", "client_chunk_size": 2}, True),
        ("fedasam", {"rho": 1.0, "eta": 0.1}, "cnn_small", {"lr_schedule": "cosine",
                                                            "lr_schedule_over": "local_steps"}, True),
        ("fedsam", {"rho": 0.2}, "mlp", {}, False),  # no forward_stacked: functional_call under vmap
        ("fedasam", {}, "mlp", {"batch_size": 64}, False),  # every step's batch padded to the longest shard
        # T on the tensors named weight alone: each path reads the names of its own tensors
        ("fedasam", {"rho": 1.0, "eta": 0.1, "adaptive_tensors": "weights"}, "cnn_small", {}, True),
        ("fedasam", {"adaptive_tensors": "weights"}, "mlp", {}, False),
    ],
    ids=["fedsam", "fedasam", "fedsam-crop_flip-chunks-float64", "fedasam-cosine-float64", "fedsam-mlp-vmap",
         "fedasam-mlp-batch-over-shards", "fedasam-weights-float64", "fedasam-weights-mlp-vmap"],
)
def test_vectorized_sam_round_equals_sequential_round(algorithm, hparams, model, train, float64, monkeypatch,
                                                      request):
    # Prepare: float64 where a large radius makes float32 rounding chaotic (TOL64 above)
    tol = TOL
    if float64:
        request.getfixturevalue("float64_default")
        tol = TOL64

    # Execute: the same round client by client and all at once
    seq = run_mode("sequential", make_strategy(algorithm, hparams), model, monkeypatch, **train)
    vec = run_mode("vectorized", make_strategy(algorithm, hparams), model, monkeypatch, **train)

    # Assert: the same client models, global model and training losses; and the round did move the model
    assert vec.params.dtype == (torch.float64 if float64 else torch.float32)
    assert client_diff(seq, vec) <= tol
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= tol
    for a, b in zip(seq.rows, vec.rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=tol)
    assert (seq.params[-1] - seq.params[0]).abs().max().item() > 100 * TOL


def test_a_shared_norm_across_clients_is_caught(monkeypatch, float64_default):
    # Prepare: the correct and a wrong vectorised FedSAM (one norm over all clients' gradients), rho large
    # enough that the ascent matters; in float64 (TOL64 above)
    config = algorithm_config("fedsam", {"rho": 0.5})

    # Execute
    seq = run_mode("sequential", FedSAM(config, "fedsam"), monkeypatch=monkeypatch)
    vec = run_mode("vectorized", FedSAM(config, "fedsam"), monkeypatch=monkeypatch)
    wrong = run_mode("vectorized", GlobalNormSAM(config, "fedsam"), monkeypatch=monkeypatch)

    # Assert: the equality check tells the per-client norm from the shared one by far more than any tolerance
    assert client_diff(seq, vec) <= TOL64
    assert client_diff(seq, wrong) > 1000 * TOL


@pytest.mark.parametrize("algorithm", ["fedsam", "fedasam"])
def test_vectorized_sam_with_rho_zero_is_vectorized_fedavg(algorithm, monkeypatch):
    # Prepare / Execute
    sam = run_mode("vectorized", make_strategy(algorithm, {"rho": 0.0}), monkeypatch=monkeypatch)
    avg = run_mode("vectorized", make_strategy("fedavg"), monkeypatch=monkeypatch)
    default = run_mode("vectorized", make_strategy(algorithm), monkeypatch=monkeypatch)

    # Assert: no ascent is FedAvg's step exactly; the default radius changes training
    assert torch.equal(sam.clients[1].params, avg.clients[1].params)
    assert torch.equal(sam.params, avg.params)
    assert client_diff(default, avg) > 100 * TOL


@pytest.mark.parametrize("eta", [None, 0.1])
def test_stacked_perturbation_is_each_clients_own(eta):
    # Prepare: three clients' parameters and gradients (a 2-d, a 1-d and a scalar tensor), the second client's
    # gradient zero; in float64 (TOL64): in float32 the norm of e took 1.4e-7 of rounding with ATen's default kernels
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,), ()]
    w = [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(3, *s, generator=g, dtype=torch.float64)
             * torch.tensor([1.0, 0.0, 5.0], dtype=torch.float64).reshape(3, *[1] * len(s)) for s in shapes]

    # Execute
    stacked = sam_perturbation(w, grads, 0.3, eta, stacked=True)
    shared = sam_perturbation(w, grads, 0.3, eta)  # one norm over all clients: what `stacked` must not be

    # Assert: client by client the unstacked formula; zero for the zero gradient; not the shared norm
    for k in range(3):
        expected = sam_perturbation([x[k] for x in w], [x[k] for x in grads], 0.3, eta)
        for e, x in zip(stacked, expected, strict=True):
            assert e.dtype == torch.float64
            torch.testing.assert_close(e[k], x, rtol=TOL64, atol=0.0)
    assert all(torch.equal(e[1], torch.zeros_like(e[1])) for e in stacked)
    if eta is None:  # on the sphere of radius rho, per client
        assert torch.sqrt(sum(e[0].square().sum() for e in stacked)).item() == pytest.approx(0.3, rel=TOL64)
    assert (stacked[0][0] - shared[0][0]).abs().max() > 1e-2


@pytest.mark.parametrize("algorithm", ["fedsam", "fedasam"])
@pytest.mark.parametrize("mode", ["auto", "vectorized"])
def test_fedsam_and_fedasam_train_vectorised(algorithm, mode):
    strategy = make_strategy(algorithm)

    assert type(strategy).vectorized
    assert resolve_client_parallel(model_of(), strategy, TrainConfig(client_parallel=mode)) == "vectorized"
    # batch norm too: each client's statistics over its own real samples (tests/unit/test_vectorized_bn.py)
    assert resolve_client_parallel(build_model("resnet20", num_classes=10, in_channels=1, image_size=8, norm="batch"),
                                   strategy, TrainConfig(client_parallel=mode), device_type="cuda") == "vectorized"
