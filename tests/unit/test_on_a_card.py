"""The paths only a card takes, each test run on "cpu" too, its body unchanged (the CPU case proves the test's logic
where there is no card; a card's case is held to the same work on the CPU): the compute record of each precision; a
train job's record of its card, its precision and its captured steps, and its model; a Hessian job's eigenvalues,
trace (from a card's per-sample diagonal) and record, and its resume on the card after a kill; APGD's worst-case
sharpness; the tied GPT's stacked AdamW. benchmarks/gpu_session.py runs the cuda cases (`-k "cuda or gpu"`) on a lent
card.

What a card computes differently, and what each comparison therefore allows: float32 sums in another order (cuDNN's
algorithms, chosen per shape by the benchmark mode `use_precision` turns on for a card's work, some of them
nondeterministic), and TF32, which fp32 work turns off (left on, it is some 1e-3 off). Float32 work is held to a
bound stated with what it was measured against; where a result turns on comparisons of close values (APGD's course,
Adam's division by sqrt(v)), the test computes in float64, where the devices agree far inside its bound."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.configs import SCHEMA, tiny_config
from helpers.graphs import emulated_graph
from helpers.hessian import one_round_run
from helpers.resume import killed_at_call
from helpers.stages import train_run
from unit.test_capture import stand_in_maker
from unit.test_precision import CUDA_TF32, moved
from unit.test_text_models import tiny, token_federation

from fedscape.analysis.hessian import maths as maths_mod
from fedscape.analysis.hessian.definitions import APGD, JOB_FILES, EigenStore, HessianJob
from fedscape.analysis.hessian.maths import HessianOperator, sharpness
from fedscape.analysis.hessian.stage import hessian_stage
from fedscape.core.gpus import CardClaim
from fedscape.core.manifest import noted
from fedscape.core.runs import build_runs
from fedscape.data.federated import load_federated_data
from fedscape.fl import engine as engine_mod
from fedscape.fl import sequential as sequential_mod
from fedscape.fl.capture import CapturedForward
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models import device as device_mod
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.device import card_uuid, describe_compute, device_name
from fedscape.models.specs import PRECISIONS
from fedscape.plan.hessian import hessian_job_settings
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture
def unclaimed(monkeypatch):
    """A job's card taken without a claim in the machine's claim folder (`device.resolve_device`): a test is no job
    of a run, and leaves no claim behind for the rest of the session."""
    monkeypatch.setattr(device_mod, "_CLAIM", CardClaim.unheld(0))


def expected_compute(device: str) -> dict:
    """What a job computing in fp32 on `device` records of it (meta.json, hessian.json, the job's record): the
    device's name, and on a card its UUID, under the switches `use_precision` sets there (cuDNN's benchmark mode on
    for a card's work, TF32 off)."""
    compute = {"device": device, "device_name": device_name(device), "precision": "fp32", "precision_used": "fp32",
               "torch": torch.__version__,
               "cudnn_benchmark": device == "cuda" or torch.backends.cudnn.benchmark,
               "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if device == "cuda":
        assert compute["device_name"] == torch.cuda.get_device_name()  # the card's own name, not the CPU's
        compute["device_uuid"] = card_uuid(torch.cuda.current_device())
    return compute


# -- the compute record -----------------------------------------------------------------------------------------------
@pytest.fixture
def switches():
    """TF32's switches and cuDNN's benchmark mode as they were, after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_compute_record_names_the_device_and_the_precision_it_computes_in(switches, precision, device):
    # Prepare: outside, TF32 on and cuDNN's benchmark mode off, not as a job on a card computes
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False

    # Execute
    compute = describe_compute(torch.device(device), precision)

    # Assert: what the work computes in (TF32 on a card that has it alone), under the switches it runs with; the
    # switches outside left as they were
    used = {"fp32": "fp32", "bf16": "bf16", "tf32": CUDA_TF32 if device == "cuda" else "fp32"}[precision]
    assert compute == {**expected_compute(device), "precision": precision, "precision_used": used}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    assert torch.backends.cudnn.benchmark is False


# -- a train job ------------------------------------------------------------------------------------------------------
ROUNDS = 2
# What capturing the steps of a train job of `train_config` does on a card (a CPU case replays the stand-ins of
# tests/unit/test_capture_meta.py, which capture what a card would): 4 IID clients of 270, 270, 269 and 269 samples in
# batches of 32, one epoch a round, ROUNDS rounds.
CAPTURED = {
    # one client after another: 8 full batches each, all 64 of the 2 rounds replayed from the one graph (the first
    # once checked), the last, smaller batch of each client eager
    "sequential": {"graphs": 1, "replays": 64, "refusals": 0},
    # stacked: 9 steps a round, the 8 of full batches one shape, captured in the first round (planned 8 times,
    # `capture.STACKED_CAPTURE_MIN_STEPS`) and replayed; the step of the last batches eager
    "vectorized": {"graphs": 1, "replays": 16, "eager_steps": 2, "evictions": 0, "refusals": 0},
}
# The final global model's largest difference from the CPU's, in fp32 (weights up to 1.3, moved by up to 0.26 in the 2
# rounds). On this CPU the job's fp32 forms (sequential, vectorised in either grouped layout, 1 or 2 threads) agree to
# 1.2e-7 after 2 rounds, and a relative perturbation of the initial weights of 3e-6 (25 float32 epsilons) grows to
# 1.7e-5; a card's sums in another order differ by a few roundings per operation. In a third round the same forms,
# one rounding apart, end 3.2e-4 apart (a jump, as where a near tie of the ReLUs or the max-pool tips the other way),
# which is why the job stops at 2 rounds, and why the bound is above that jump too. Real faults move the model far
# more: lr 1% off 1.4e-2, momentum 0.89 for 0.9 9.6e-3, batches of 31 for 32 2.7e-2.
MODEL_TOL = 1e-3


def train_config(client_parallel: str, device: str) -> dict:
    """The tiny config's IID FedAvg run (cnn_small on the digits, a random init), ROUNDS rounds on `device`, its
    clients trained in `client_parallel` mode, with no analysis."""
    config = tiny_config()
    config.update(alphas=["iid"], experiments=[{"alpha": "iid"}], inits={"random": {"kind": "random", "seed": 0}})
    for section in ("interpolation", "layer_barriers", "landscapes", "hessian", "client_stats"):
        config.pop(section, None)
    config["training"].update(rounds=ROUNDS, save_clients_at=[], client_parallel=client_parallel, device=device)
    return check_config(config, SCHEMA)


def captured_as_on_a_card(monkeypatch, client_parallel: str) -> None:
    """On a CPU, the capture a card takes, by stand-ins that replay what the eager step computes: the sequential
    passes' (test_capture.stand_in_maker, where no blocker is declared: a CPU's is its device) and the stacked
    steps' (helpers.graphs.emulated_graph), at the planning a card's has."""
    if client_parallel == "vectorized":
        monkeypatch.setattr(engine_mod, "VectorizedTrainer", type("StandIn", (VectorizedTrainer,), {
            "__init__": lambda self, *args: VectorizedTrainer.__init__(self, *args, make_graph=emulated_graph)}))
        return
    monkeypatch.setattr("fedscape.fl.capture.capture_blocker", lambda *args: None)
    original = CapturedForward.__init__
    monkeypatch.setattr(CapturedForward, "__init__", lambda self, model, batch_size, strict=False, **_:
                        original(self, model, batch_size, strict, stand_in_maker()))


@pytest.fixture(scope="module")
def cpu_models(tmp_path_factory) -> dict[str, torch.Tensor]:
    """client_parallel mode -> the final global model of the train job on this CPU, its steps eager."""
    models = {}
    for mode in CAPTURED:
        config = train_config(mode, "cpu")
        (run,) = build_runs(config)
        _, _, outputs = train_run(config, [run], run, tmp_path_factory.mktemp(f"cpu_{mode}"))
        models[mode] = load_trajectory(outputs["trajectory"]).params[-1]
    return models


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("client_parallel", list(CAPTURED))
def test_a_train_job_records_its_device_and_captured_steps_and_trains_the_cpu_s_model(
        cpu_models, tmp_path, monkeypatch, unclaimed, client_parallel, device):
    # Prepare: the job as the workflow calls it, its steps captured (on a CPU by the stand-ins)
    if device == "cpu":
        captured_as_on_a_card(monkeypatch, client_parallel)
    config = train_config(client_parallel, device)
    (run,) = build_runs(config)

    # Execute
    _, _, outputs = train_run(config, [run], run, tmp_path)

    # Assert: meta.json and the job's record (results/_manifest/) name the device and the precision it computed in;
    # the steps were captured as the plan has them, none refused; the model is the CPU's eager one
    meta = json.loads(Path(outputs["meta"]).read_text())
    compute = expected_compute(device)
    assert {key: meta.get(key) for key in compute} == compute == noted("compute")
    assert meta["capture"] == CAPTURED[client_parallel]
    assert meta["execution"] == f"{client_parallel}, captured" and meta["status"] == "ok"
    final = load_trajectory(outputs["trajectory"]).params[-1]
    assert (final - cpu_models[client_parallel]).abs().max().item() <= MODEL_TOL


# -- a Hessian job ----------------------------------------------------------------------------------------------------
# Hessian settings whose eigenvalues converge within a second: Lanczos to tol 1e-6 (well inside the eigenvalues' goal
# of 1e-4 relative compared below: benchmarks/README.md, "Hessian-vector products"), the exact trace (from a card's
# per-sample diagonal, a CPU's per-class one: `maths.default_diagonal_form`), a density of 2 probes (each a part of the
# job: the resume below) and 2 of the 4 clients (HN and HD from their diagonals)
HESSIAN = {"max_iter": 60, "tol": 1e-6, "eval_samples": 256, "trace_estimator": "exact", "clients": 2,
           "density": {"enabled": True, "lanczos_steps": 8, "probes": 2}}
# The bounds of a Hessian job's numbers against the CPU's, all in fp32. Eigenvalues, trace, HN and HD: the goal's
# 1e-4 relative; on this CPU the other diagonal form, forward-mode products and 2 threads moved them by 1.8e-8 at most
# (HN and HD 3.3e-7). The density's nodes (of eigenvalues up to 11.6, some near 0) and weights (summing to 1): 1e-4
# absolute; its 8 Lanczos steps from a vector drawn on the CPU for either device moved them by 2.6e-7 at most.
HESSIAN_RTOL, DENSITY_ATOL = 1e-4, 1e-4


def _outputs(folder: Path) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    return {key: str(folder / name) for key, name in JOB_FILES.items()}


def _on(device: str, settings: dict) -> dict:
    """A Hessian job's settings on `device`: as planned where training.device names it."""
    return {**copy.deepcopy(settings), "device": device}


@pytest.fixture(scope="module")
def hessian_run(tmp_path_factory) -> dict:
    """The tiny config's IID run trained one round on this CPU, its Hessian job's settings, trajectory and partition
    at round 1, and the job's outputs on this CPU."""
    tmp = tmp_path_factory.mktemp("hessian_on_a_card")
    made = one_round_run(tmp, HESSIAN)
    settings = hessian_job_settings(made["config"], made["runs"], made["run"], 1)
    cpu = _outputs(tmp / "cpu")
    hessian_stage(_on("cpu", settings), made["trajectory"], made["partition"], cpu)
    return {"settings": settings, "trajectory": made["trajectory"], "partition": made["partition"], "cpu": cpu}


def assert_the_cpu_s_hessian(outputs: dict[str, str], cpu: dict[str, str]) -> None:
    """A Hessian job's tables are those of the job on the CPU, to the bounds above."""
    table, expected = pd.read_csv(outputs["table"]), pd.read_csv(cpu["table"])
    assert table[["data", "n_eval", "status"]].equals(expected[["data", "n_eval", "status"]])
    np.testing.assert_allclose(table[["lambda_1", "lambda_2", "trace"]], expected[["lambda_1", "lambda_2", "trace"]],
                               rtol=HESSIAN_RTOL)
    np.testing.assert_allclose(pd.read_csv(outputs["clients"])[["hn", "hd"]], pd.read_csv(cpu["clients"])[["hn", "hd"]],
                               rtol=HESSIAN_RTOL)
    density, expected = pd.read_csv(outputs["density"]), pd.read_csv(cpu["density"])
    assert density[["data", "probe"]].equals(expected[["data", "probe"]])
    np.testing.assert_allclose(density[["node", "weight"]], expected[["node", "weight"]], rtol=0, atol=DENSITY_ATOL)


def assert_computed_on(device: str, outputs: dict[str, str], store: Path) -> None:
    """hessian.json and the job's record name `device` as where the job, and each of its parts, was computed; the
    eigenpairs it kept for the plane job in `store` are those of its hessian.csv, computed there too."""
    compute = expected_compute(device)
    details = json.loads(Path(outputs["details"]).read_text())
    assert {key: details.get(key) for key in compute} == compute == noted("compute")
    assert [group["compute"] for group in details["parts_compute"]] == [compute]
    assert details["parts_compute"][0]["parts"] == ["all", "all_density_0", "all_density_1", "client_1", "client_3"]
    kept = torch.load(next(store.rglob("all.pt")), weights_only=True)["part"]
    aggregate = pd.read_csv(outputs["table"]).iloc[0]
    assert kept["compute"] == compute
    assert kept["values"] == pytest.approx([aggregate["lambda_1"], aggregate["lambda_2"]], rel=1e-12)  # (CSV text)


@pytest.mark.parametrize("device", DEVICES)
def test_a_hessian_job_on_the_device_finds_the_cpu_s_eigenvalues_and_trace_and_records_its_device(
        hessian_run, tmp_path, unclaimed, device):
    # Prepare
    outputs = _outputs(tmp_path)

    # Execute
    hessian_stage(_on(device, hessian_run["settings"]), hessian_run["trajectory"], hessian_run["partition"], outputs,
                  eigen_store=EigenStore(tmp_path / "_eigenpairs", 1))

    # Assert: the CPU's numbers, every eigenvalue converged, the job and its parts computed on the device, and so the
    # eigenpairs kept for the plane job
    assert_the_cpu_s_hessian(outputs, hessian_run["cpu"])
    details = json.loads(Path(outputs["details"]).read_text())
    assert all(all(part["converged"]) for part in details["data"].values())
    assert_computed_on(device, outputs, tmp_path / "_eigenpairs")


@pytest.mark.parametrize("device", DEVICES)
def test_a_hessian_job_killed_on_the_device_resumes_there_after_its_last_part(
        hessian_run, tmp_path, monkeypatch, caplog, unclaimed, device):
    # Prepare: the job killed in its density's second probe (Lanczos's third run, after the eigensolver's and the
    # first probe's): its eigenpairs and trace, and the first probe, saved as parts
    settings = _on(device, hessian_run["settings"])
    inputs = (hessian_run["trajectory"], hessian_run["partition"])
    progress = tmp_path / "_progress"
    lanczos = killed_at_call(monkeypatch, maths_mod, "lanczos", 3,
                             lambda: hessian_stage(settings, *inputs, _outputs(tmp_path / "killed"), progress))

    # Execute
    outputs = _outputs(tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="fedscape.hessian"):
        hessian_stage(settings, *inputs, outputs, progress, EigenStore(tmp_path / "_eigenpairs", 1))

    # Assert: the saved parts read back for the device, and only the rest computed (the second probe, the two clients'
    # eigenvalues); the CPU's numbers; every part computed on the device, and the eigenpairs kept from the part read
    # back; the parts removed at the end
    assert "the eigenpairs and trace, SLQ probes 1 of 2 resumed" in caplog.text
    assert len(lanczos) == 3
    assert_the_cpu_s_hessian(outputs, hessian_run["cpu"])
    assert_computed_on(device, outputs, tmp_path / "_eigenpairs")
    assert not progress.exists()


# -- APGD's worst-case sharpness --------------------------------------------------------------------------------------
# APGD's course turns on comparisons of losses (whether each step rose, whether the best moved: `maths._apgd`), which
# float32 sums in another order may tip where two losses are close, sending the two devices on different courses. In
# float64 sums in another order move a loss by some 1e-14 relative (on this CPU, 1 and 2 threads gave the same values
# to the last digit), far inside the bound, and no comparison tips:
APGD_RTOL = 1e-9


def apgd_sharpness(hessian_run: dict, device: str) -> tuple[float, float]:
    """APGD's sharpness of the Hessian job's model (the trained cnn_small) on 256 of its training samples, in float64
    on `device`: SAM's at its radius 0.05, and the adaptive one (eta 0.01) at ASAM's CIFAR radius 0.5."""
    job = HessianJob.from_settings(hessian_run["settings"])
    data = load_federated_data(job.run, job.dataset_options, hessian_run["partition"], torch.device("cpu"))
    model = load_trajectory(hessian_run["trajectory"]).model_at(1, torch.device("cpu")).double().to(device)
    with HessianOperator(model, data.x_train[:256].double(), data.y_train[:256]) as op:
        return (sharpness(op, 0.05, 5, None, 0, APGD), sharpness(op, 0.5, 5, 0.01, 0, APGD))


@pytest.mark.parametrize("device", DEVICES)
def test_apgd_finds_the_cpu_s_worst_case_sharpness_on_the_device(hessian_run, device):
    # Execute
    on_device, on_cpu = apgd_sharpness(hessian_run, device), apgd_sharpness(hessian_run, "cpu")

    # Assert: both forms, each a loss rise of the trained model (> 0), as on the CPU
    assert all(value > 0 for value in on_cpu)
    np.testing.assert_allclose(on_device, on_cpu, rtol=APGD_RTOL)


# -- the tied GPT's stacked AdamW -------------------------------------------------------------------------------------
# Stacked against sequential AdamW clients, and the device against the CPU, in float64: Adam's division by sqrt(v)
# magnifies float32's rounding beyond 1e-5 (the schema's client_parallel). On the CPU stacked and sequential clients
# agree to 8e-16 (tests/unit/test_text_models.py holds them to 1e-10, as this does).
ADAMW_TOL = 1e-10


def adamw_round(mode: str, device: str, tie_head: bool, monkeypatch):
    """One FedAvg round of AdamW clients of the tiny char_gpt on `device`, trained in `mode` (vectorised: never falling
    back to the sequential local_train), as test_text_models.federated_round trains them on the CPU."""
    cfg = TrainConfig(rounds=1, local_epochs=2, batch_size=8, lr=0.01, momentum=0.0, weight_decay=0.5,
                      optimizer="adamw", participation=1.0, seed=3, save_clients_at=(1,), client_parallel=mode)
    with monkeypatch.context() as m:
        if mode == "vectorized":
            def no_sequential(*args, **kwargs):
                raise AssertionError("the vectorised run fell back to sequential local_train")

            m.setattr(sequential_mod, "local_train", no_sequential)
        model = tiny("char_gpt", tie_head=tie_head).to(device)
        return run_federated(model, moved(token_federation([13, 9, 5]), device), make_strategy("fedavg"), cfg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tie_head", [True, False], ids=["tied", "untied"])
def test_stacked_adamw_clients_of_char_gpt_on_the_device_equal_sequential_ones_and_the_cpu_s(
        float64_default, monkeypatch, tie_head, device):
    # Execute
    seq, vec = (adamw_round(mode, device, tie_head, monkeypatch) for mode in ("sequential", "vectorized"))
    cpu = adamw_round("vectorized", "cpu", tie_head, monkeypatch)

    # Assert: the client saved and the global model, stacked as sequential on the device, and as on the CPU
    assert vec.execution == "vectorized" and vec.params.dtype == torch.float64
    for a, b in ((seq, vec), (cpu, vec)):
        assert (a.clients[1].params.cpu() - b.clients[1].params.cpu()).abs().max().item() <= ADAMW_TOL
        assert (a.params[-1].cpu() - b.params[-1].cpu()).abs().max().item() <= ADAMW_TOL
