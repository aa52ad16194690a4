"""Precision as a setting: what each of fp32 / tf32 / bf16 switches in torch, what a job records, and the bounds of
bf16 against fp32 (measured, on a CPU and on CUDA where there is one)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers.synthetic import shard_data
from helpers.vectorized import model_of

from fedscape.core.config import load_schema
from fedscape.data.federated import FederatedData
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.device import describe_compute, job_precision, precision_used, use_precision
from fedscape.models.specs import PRECISIONS

ROOT = Path(__file__).resolve().parents[2]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# One bf16 step against fp32: the relative error of the gradient was at most 6.8e-2 over 20 seeded cases (cnn_small
# and mlp on 16 digits-shaped samples, CPU autocast; mean 2.7e-2): bf16 keeps 8 mantissa bits (unit roundoff
# 2^-8 = 3.9e-3) and a gradient passes several rounded layers forward and back. The bound is about twice the worst.
BF16_STEP_REL_ERROR = 0.15
# What `tf32` on "cuda" computes in here: TF32 where the card has it (compute capability 8.0 and later) or where there
# is no card to ask, fp32 on an older card
CUDA_TF32 = "fp32" if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8 else "tf32"


def moved(data: FederatedData, device: str, dtype: torch.dtype | None = None) -> FederatedData:
    """`data` on `device`, its images in `dtype` (default: as they are)."""
    def x(t):
        return t.to(device=device, dtype=dtype or t.dtype)
    return FederatedData(x(data.x_train), data.y_train.to(device), [ix.to(device) for ix in data.client_indices],
                         x(data.x_test), data.y_test.to(device))


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize(("precision", "device", "used", "tf32", "autocast"), [
    ("fp32", "cpu", "fp32", (False, False), False),
    ("tf32", "cpu", "fp32", (False, False), False),  # no TF32 on a CPU: computed, and recorded, as fp32
    ("bf16", "cpu", "bf16", (False, False), True),
    ("fp32", "cuda", "fp32", (False, False), False),  # PyTorch's own default has cuDNN's TF32 on: fp32 turns it off
    ("tf32", "cuda", CUDA_TF32, (CUDA_TF32 == "tf32",) * 2, False),
    ("bf16", "cuda", "bf16", (False, False), True),
])
def test_use_precision_sets_torch_switches_and_restores_them(precision, device, used, tf32, autocast):
    # Prepare: switches set to the opposite of what is expected inside (the flags exist without a GPU too)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (not tf32[0], not tf32[1])
    torch.backends.cudnn.benchmark = False
    before = tf32_flags()
    if device == "cuda" and autocast and not torch.cuda.is_available():
        pytest.skip("CUDA autocast needs a CUDA device")

    # Execute
    try:
        with use_precision(precision, device) as got:
            inside = tf32_flags()
            enabled = torch.is_autocast_enabled(device)
            benchmark = torch.backends.cudnn.benchmark
    finally:
        after = tf32_flags()
        benchmark_after = torch.backends.cudnn.benchmark
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults

    # Assert
    assert got == used == precision_used(precision, device)
    assert inside == tf32
    assert enabled is autocast
    assert benchmark is (device == "cuda")  # cuDNN picks the fastest fp32 algorithm per shape on a GPU
    assert after == before and benchmark_after is False


def test_bf16_autocasts_matmuls_and_leaves_float64_alone():
    a32, a64 = torch.randn(4, 4), torch.randn(4, 4, dtype=torch.float64)

    with use_precision("bf16", "cpu"):
        out32, out64 = a32 @ a32, a64 @ a64
    with use_precision("fp32", "cpu"):
        plain = a32 @ a32

    assert out32.dtype == torch.bfloat16
    assert out64.dtype == torch.float64  # autocast casts float32 only: float64 comparisons stay exact
    assert plain.dtype == torch.float32


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="fp32, tf32, bf16"):
        precision_used("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")


def test_describe_compute_records_what_was_asked_and_used():
    info = describe_compute(torch.device("cpu"), "tf32")

    assert info["device"] == "cpu" and info["device_name"].startswith("cpu (")
    assert (info["precision"], info["precision_used"]) == ("tf32", "fp32")
    assert "device_uuid" not in info  # a card's alone


@pytest.mark.parametrize(("capability", "used"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "tf32"),
                                                   ((9, 0), "tf32")])
def test_tf32_is_recorded_only_on_cards_that_have_it(capability, used, monkeypatch):
    # Prepare: a CUDA card of `capability` as torch reports it (a V100 is 7.0, a T4 7.5, an A100 8.0, an H100 9.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a card")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"GPU-card{i}"))

    # Execute
    info = describe_compute(torch.device("cuda", 1), "tf32")

    # Assert: a card before Ampere has no TF32 and computes `tf32` in fp32, and says so; the others are unchanged.
    # The card's UUID names it machine-wide (its index is the job's own)
    assert (info["precision"], info["precision_used"]) == ("tf32", used)
    assert (info["device"], info["device_uuid"]) == ("cuda:1", "GPU-card1")
    assert precision_used("fp32", "cuda") == "fp32" and precision_used("bf16", "cuda:0") == "bf16"


@CUDA
def test_on_a_gpu_the_card_is_recorded_by_its_uuid_not_its_index():
    # Execute
    info = describe_compute(torch.device("cuda"), "fp32")

    # Assert: a UUID as nvidia-smi -L prints it (with or without its GPU- prefix), which names the card machine-wide
    assert re.fullmatch(r"(GPU-)?[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", info["device_uuid"]), info
    assert info["device"] == "cuda" and info["precision_used"] == "fp32"


def test_job_precision_runs_the_stage_inside_its_precision(caplog):
    # Prepare: a stage function that reports what it sees
    @job_precision(lambda settings: settings["precision"])
    def stage(settings, x):
        return torch.is_autocast_enabled("cpu"), (x @ x).dtype

    # Execute
    with caplog.at_level("INFO", logger="fedscape"):
        enabled, dtype = stage({"device": "cpu", "precision": "bf16"}, torch.ones(2, 2))

    # Assert: inside bf16, after it not, and the log says where and how
    assert enabled and dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    assert "computing on cpu" in caplog.text and "in bf16" in caplog.text


def bf16_step_error(name: str, seed: int, device: str) -> float:
    """The relative error of one bf16 gradient against the fp32 one, same model and batch."""
    model = model_of(name, seed).to(device)
    g = torch.Generator().manual_seed(100 + seed)
    x, y = torch.randn(16, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device)
    grads = []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with use_precision(precision, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return ((grads[1] - grads[0]).norm() / grads[0].norm()).item()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
def test_one_bf16_step_stays_within_its_measured_bound(name, device):
    errors = [bf16_step_error(name, seed, device) for seed in range(3)]

    assert all(0 < e <= BF16_STEP_REL_ERROR for e in errors), errors  # > 0: bf16 was really used


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_training_in_bf16_still_lowers_the_loss(device):
    # Prepare: a learnable task (labels from a fixed linear map of the images), four clients
    data = shard_data([40, 40, 40, 40])
    w = torch.randn(64, 10, generator=torch.Generator().manual_seed(7))
    data.y_train = (data.x_train.reshape(len(data.y_train), -1) @ w).argmax(1)
    data.y_test = data.y_train[:20]
    data = moved(data, device)
    cfg = TrainConfig(rounds=4, local_epochs=3, batch_size=16, lr=0.2, momentum=0.9, precision="bf16")

    # Execute
    result = run_federated(model_of("mlp").to(device), data, make_strategy("fedavg"), cfg)

    # Assert: every round's loss finite, and the last well below the first
    losses = [row["train_loss"] for row in result.rows]
    assert result.status == "ok"
    assert losses[-1] < 0.2 * losses[0], losses  # fp32 and bf16 both measured at 2.32 -> 0.16 on a CPU


def test_precision_applies_to_the_whole_run():
    # Prepare: the same run in fp32 and bf16
    data = shard_data([21, 9, 5, 30])
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=8, lr=0.05, precision=precision)
        runs[precision] = run_federated(model_of("mlp"), data, make_strategy("fedavg"), cfg)

    # Execute: the first rows (the initial model's evaluation) and the trained models
    first = [runs[p].rows[0]["train_loss"] for p in ("fp32", "bf16")]
    moved = (runs["bf16"].params[-1] - runs["fp32"].params[-1]).abs().max().item()

    # Assert: evaluations and training both ran in bf16, close to fp32 yet not equal
    assert first[0] != first[1] and first[1] == pytest.approx(first[0], rel=1e-2)
    assert 0 < moved < 1e-2


@CUDA
@pytest.mark.parametrize("stacked_forward", [True, False])
def test_cuda_rounds_in_fp32_match_the_cpu_and_sequential_training(stacked_forward):
    # Prepare: the same clients on the CPU and on the GPU
    data = shard_data([21, 9, 5, 30])
    gpu_data = moved(data, "cuda")
    cfg = TrainConfig(local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, seed=3, augment="crop_flip")
    model = model_of()
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    cuda_model = copy.deepcopy(model).cuda()

    # Execute
    on_cpu = VectorizedTrainer(model, data, make_strategy("fedavg"), cfg,
                               stacked_forward=stacked_forward).train_round(start, torch.zeros(0), [0, 1, 2, 3], 1)
    with use_precision("fp32", "cuda"):
        on_gpu = VectorizedTrainer(cuda_model, gpu_data, make_strategy("fedavg"), cfg,
                                   stacked_forward=stacked_forward).train_round(start.cuda(), torch.zeros(0),
                                                                                [0, 1, 2, 3], 1)

    # Assert: fp32 on the GPU agrees with the CPU to float32 rounding (1e-4 measured to hold on an H100)
    for c, g in zip(on_cpu, on_gpu, strict=True):
        assert g.params.device.type == "cuda"
        assert (c.params - g.params.cpu()).abs().max().item() <= 1e-4


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_vectorised_round_equals_sequential_round(dtype):
    # Prepare: FedAvg with momentum on unequal shards, in fp32 (TF32 off) or float64 (exact by construction)
    data = moved(shard_data([21, 9, 5, 30]), "cuda", dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    rounds = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for mode in ("sequential", "vectorized"):
            cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3,
                              seed=3, save_clients_at=(1,), client_parallel=mode, precision="fp32")
            rounds[mode] = run_federated(model_of().to("cuda"), data, make_strategy("fedavg"), cfg)
    finally:
        torch.set_default_dtype(previous)

    # Assert
    seq, vec = rounds["sequential"], rounds["vectorized"]
    assert (seq.clients[1].params - vec.clients[1].params).abs().max().item() <= tol
    assert (seq.params[-1] - vec.params[-1]).abs().max().item() <= tol


def test_every_precision_is_in_the_schema():
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")

    assert tuple(schema["properties"]["training"]["properties"]["precision"]["enum"]) == PRECISIONS
    assert schema["properties"]["training"]["properties"]["precision"]["default"] == "fp32"
