"""`hessian.trace_estimator: exact`: the Hessian's diagonal (and so its trace, HN and HD) without estimate, for models
piecewise linear in their parameters, where it is the Gauss-Newton matrix's (`gauss_newton_diagonal`). Checked against
the Hessian itself: whole on a small model, and on every declared model one column per parameter tensor (a product
with a unit vector), where group norm, which is not piecewise linear, fails the same check."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.configs import tiny_config
from helpers.stages import train_run
from helpers.workflow import ROOT

from fedscape.analysis.hessian import maths as hessian_maths
from fedscape.analysis.hessian.definitions import EXACT, JOB_FILES, HessianSettings
from fedscape.analysis.hessian.maths import (
    DIAGONAL_FORMS,
    HessianOperator,
    analyse,
    diagonal_consistency,
    exact_hessian,
    exact_trace_and_diagonal,
    gauss_newton_diagonal,
    trace_and_diagonal,
)
from fedscape.analysis.hessian.stage import hessian_stage
from fedscape.core.config import ConfigError, load_schema
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.models.registry import build_model
from fedscape.models.specs import MODEL_INFOS, MODEL_NORMS, model_info, piecewise_linear
from fedscape.plan.hessian import hessian_job_settings, hessian_jobs, plane_path
from fedscape.plan.landscape import landscape_plans
from fedscape.plan.landscape import plane_inputs as landscape_plane_inputs
from fedscape.plan.workflow import check_config

SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
IMAGE_MODELS = [name for name, info in MODEL_INFOS.items() if info.inputs == "image"]
# every image model with each norm it takes (those without a `norm` option: None)
VARIANTS = [(name, norm) for name in IMAGE_MODELS for norm in MODEL_NORMS.get(name, (None,))]


# other options that change the network: MOON's projection head (set by the algorithm), ImageNet's stem
OPTIONED = [("resnet20", {"norm": "batch", "projection_head": True, "projection_dim": 8}),
            ("cnn_small", {"norm": "batch", "projection_head": True}),
            ("resnet18", {"norm": "batch", "stem": "imagenet"})]


def _options(norm: str | None) -> dict:
    return {} if norm is None else {"norm": norm}


def _tiny(name: str, norm: str | None, seed: int = 0, **options) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Model `name` in float64 at its smallest accepted input, 3 classes, with batch norm's running statistics of its
    own (eval mode), and 3 random samples."""
    info = model_info(name)
    size = info.image_sizes[0] if info.image_sizes else max(8, info.min_image_size)
    torch.manual_seed(seed)
    model = build_model(name, num_classes=3, in_channels=3, image_size=size, **_options(norm), **options).double()
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():  # running statistics equal to one batch's, so that deep models stay in range
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size, generator=gen, dtype=torch.float64))
    x = torch.randn(3, 3, size, size, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # logits of order 1: a deep model's saturate its softmax, whose Hessian is then 0
        scale = float(model.eval()(x).std())
        last.weight /= scale
        last.bias /= scale
    return model, x, y


def _columns(op: HessianOperator, tensors: int = 6, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """One random coordinate of each of `tensors` parameter tensors (the first, the last and those evenly between)
    and the Hessian's diagonal entry there, from the product with that unit vector."""
    gen = torch.Generator().manual_seed(seed)
    starts = np.cumsum([0, *op._sizes])[:-1]
    chosen = sorted({int(round(i)) for i in np.linspace(0, len(starts) - 1, tensors)})
    index = [int(starts[t] + torch.randint(op._sizes[t], (1,), generator=gen)) for t in chosen]
    entries = []
    for i in index:
        e = torch.zeros(op.dim, dtype=op.dtype)
        e[i] = 1.0
        entries.append(float(op.hvp(e)[i]))
    return index, np.array(entries)


@pytest.mark.parametrize(("name", "options"),
                         [(name, _options(norm)) for name, norm in VARIANTS if piecewise_linear(name, _options(norm))]
                         + OPTIONED, ids=lambda v: str(v))
def test_the_exact_diagonal_is_the_hessian_s_on_every_piecewise_linear_model(name, options):
    # Prepare
    assert piecewise_linear(name, options)
    options = dict(options)
    model, x, y = _tiny(name, options.pop("norm", None), **options)
    with HessianOperator(model, x, y, batch_size=2, cache_graph=False) as op:
        # Execute
        diagonal = gauss_newton_diagonal(op)
        index, entries = _columns(op)

    # Assert: every parameter tensor's entry, to float64 rounding
    scale = float(diagonal.abs().max())
    assert scale > 0
    np.testing.assert_allclose(diagonal[index].numpy(), entries, rtol=1e-8, atol=1e-12 * scale)


@pytest.mark.parametrize(("name", "options"),
                         [(name, _options(norm)) for name, norm in VARIANTS if piecewise_linear(name, _options(norm))]
                         + OPTIONED, ids=lambda v: str(v))
def test_the_two_forms_of_the_exact_diagonal_are_equal_on_every_piecewise_linear_model(name, options):
    # `per_sample` (one forward pass per sample, a backward pass per column) against `per_class`, checked above against
    # the Hessian: float64, 3 classes, two batches of the operator
    options = dict(options)
    model, x, y = _tiny(name, options.pop("norm", None), **options)
    with HessianOperator(model, x, y, batch_size=2, cache_graph=False) as op:
        by_class = gauss_newton_diagonal(op, "per_class")
        by_sample = gauss_newton_diagonal(op, "per_sample")

    scale = float(by_class.abs().max())
    assert scale > 0
    np.testing.assert_allclose(by_sample.numpy(), by_class.numpy(), rtol=1e-9, atol=1e-12 * scale)


def test_an_unknown_form_of_the_exact_diagonal_is_refused_by_name():
    model, x, y = _tiny("cnn_small", None)
    with HessianOperator(model, x, y, batch_size=3, cache_graph=False) as op, \
            pytest.raises(ValueError, match="unknown exact diagonal form 'rows'; valid: per_class, per_sample"):
        gauss_newton_diagonal(op, "rows")


@pytest.mark.parametrize(("device", "form"), [
    ("cpu", "per_class"),  # per_sample lost on the default run's cnn_small and the pilot's ConvNet on CPUs
    (torch.device("cpu"), "per_class"),
    ("cuda", "per_sample"),  # 0.63x per_class's time on resnet20-BN on an H200
    (torch.device("cuda", 1), "per_sample"),
])
def test_the_exact_diagonal_s_default_form_is_the_device_kind_s_faster_one(device, form):
    assert hessian_maths.default_diagonal_form(device) == form


def test_the_exact_diagonal_takes_the_default_form_of_its_operator_s_device(monkeypatch):
    # Prepare: a spy on the forms' per-sample gradients, as the default form of the operator's device is asked for
    model, x, y = _tiny("cnn_small", None)
    asked = []
    monkeypatch.setattr(hessian_maths, "default_diagonal_form", lambda device: asked.append(device) or "per_sample")

    # Execute
    with HessianOperator(model, x, y, batch_size=3, cache_graph=False) as op:
        by_default, per_class = gauss_newton_diagonal(op), gauss_newton_diagonal(op, "per_class")

    # Assert: asked once (not when a form is given), for the operator's device; the forms agree to rounding
    assert asked == [op.device]
    torch.testing.assert_close(by_default, per_class, rtol=1e-9, atol=1e-12 * float(per_class.abs().max()))


@pytest.mark.parametrize(("name", "norm"), [v for v in VARIANTS if not piecewise_linear(v[0], _options(v[1]))],
                         ids=lambda v: str(v))
def test_group_norm_is_not_piecewise_linear_and_the_same_check_fails(name, norm):
    # the test can tell: where a model normalises by its own activations' spread, the residual term has a diagonal
    assert norm == "group"
    model, x, y = _tiny(name, norm)
    with HessianOperator(model, x, y, batch_size=3, cache_graph=False) as op:
        diagonal = gauss_newton_diagonal(op)
        index, entries = _columns(op)
    assert np.abs(diagonal[index].numpy() - entries).max() > 1e-3 * np.abs(entries).max()


def test_only_image_models_without_group_norm_are_declared_piecewise_linear():
    declared = {(name, norm) for name, norm in VARIANTS if piecewise_linear(name, _options(norm))}
    assert declared == {(name, norm) for name, norm in VARIANTS if norm != "group"}
    assert not any(piecewise_linear(name) for name, info in MODEL_INFOS.items() if info.inputs == "tokens")


@pytest.mark.parametrize("form", DIAGONAL_FORMS)
@pytest.mark.parametrize("norm", [False, True])
def test_exact_trace_and_diagonal_equal_the_whole_hessian_s(norm, form, monkeypatch):
    # Prepare: a convolutional ReLU network (with batch norm in eval mode) small enough for its whole Hessian
    torch.manual_seed(4)
    layers = [torch.nn.Conv2d(1, 3, 3, padding=1), *([torch.nn.BatchNorm2d(3)] if norm else []), torch.nn.ReLU(),
              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)]
    model = torch.nn.Sequential(*layers).double()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        model.train()(torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64))
    model.eval()
    x, y = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    hessian = exact_hessian(model, x, y)

    # Execute: in the form under test, as the device's default
    monkeypatch.setattr(hessian_maths, "default_diagonal_form", lambda device: form)
    with HessianOperator(model, x, y, batch_size=2, cache_graph=False) as op:
        result = exact_trace_and_diagonal(op)
        products = op.products

    # Assert: no products, no error bar, the diagonal as its own four quarters
    np.testing.assert_allclose(result.diagonal.numpy(), hessian.diagonal().numpy(), rtol=1e-9,
                               atol=1e-12 * float(hessian.diagonal().abs().max()))
    assert result.trace == pytest.approx(float(hessian.diagonal().sum()), rel=1e-10)
    assert (products, result.stderr, result.probes, result.diagonal_estimator) == (0, 0.0, 0, EXACT)
    assert len(result.quarters) == 4 and all(torch.equal(q, result.diagonal.float()) for q in result.quarters)


def test_hn_and_hd_of_exact_diagonals_are_the_papers_formulas():
    # Prepare: three clients' exact diagonals
    gen = torch.Generator().manual_seed(0)
    diagonals = [torch.randn(50, generator=gen, dtype=torch.float64) + 0.5 * k for k in range(3)]

    # Execute
    hn, hd, unresolved = diagonal_consistency([(d.float(),) * 4 for d in diagonals])

    # Assert: FedAlign's eqs. 3-4 (Mendieta et al. 2022) on the diagonals themselves (as the job keeps them: float32)
    pairs = list(itertools.combinations([d.float().double() for d in diagonals], 2))
    assert hn == pytest.approx(np.mean([float((a @ a - b @ b) ** 2) for a, b in pairs]), rel=1e-9)
    assert hd == pytest.approx(np.mean([float(a @ b / (a.norm() * b.norm())) for a, b in pairs]), rel=1e-9)
    assert unresolved == []


def test_analyse_with_exact_takes_no_product_for_the_trace():
    model, x, y = _tiny("cnn_small", "batch", seed=1)
    settings = HessianSettings(top_k=2, method="lanczos", tol=1e-6, max_iter=60, trace_probes=50, eval_samples=None,
                               batch_size=3, cache_graph=True, density=False, density_steps=4, density_probes=1,
                               seed=0, trace_estimator=EXACT)

    report = analyse(model, x, y, settings, eigen=False)

    with HessianOperator(model, x, y, batch_size=3) as op:
        exact = trace_and_diagonal(op, settings)
    assert report.products == 0 and report.hutchinson.diagonal_estimator == EXACT
    assert report.hutchinson.trace == pytest.approx(exact.trace, rel=1e-12)


def test_a_sequence_task_is_refused():
    model, x, y = _tiny("cnn_small", "none")
    with HessianOperator(model, x, y, batch_size=3) as op:
        op.batches = [(xb, torch.zeros(len(yb), 2, dtype=torch.long)) for xb, yb in op.batches]
        with pytest.raises(ValueError, match="one class per sample"):
            gauss_newton_diagonal(op)


# -- planning and the stage --------------------------------------------------------------------------------------
def _config(model: str = "cnn_small", **hessian) -> dict:
    config = tiny_config(**{"trace_probes": 8, "max_iter": 20, "tol": 1e-3, "eval_samples": 64,
                            "density": {"enabled": False}, **hessian})
    config.update(alphas=["iid"], experiments=[{"alpha": "iid"}], inits={"random": {"kind": "random", "seed": 0}},
                  models=[model])
    for section in ("interpolation", "layer_barriers", "landscapes"):
        config.pop(section, None)
    config["training"].update(rounds=1, save_clients_at=[])
    return config


def test_planning_refuses_exact_for_a_model_with_group_norm():
    config = _config("mlp", trace_estimator=EXACT)
    check_config(config, SCHEMA)  # an mlp is piecewise linear

    config = _config("resnet18", trace_estimator=EXACT)  # group norm by default
    with pytest.raises(ConfigError, match=r"hessian.trace_estimator: hessian.trace_estimator exact .* not resnet18 "
                                          r"with group norm"):
        check_config(config, SCHEMA)


def _two_models(**hessian) -> dict:
    """Runs of cnn_small and of resnet18 (group norm); the Hessian stage analyses cnn_small's, and a Hessian
    landscape asks for resnet18's eigenvector plane (a plane job of its own, with no trace)."""
    config = _config(**hessian)
    config["models"] = ["cnn_small", "resnet18"]
    config["experiments"] = [{"alpha": "iid", "model": "cnn_small"}, {"alpha": "iid", "model": "resnet18"}]
    config["hessian"]["runs"] = {"model": "cnn_small"}
    config["landscapes"] = {"eigen": {"kind": "hessian", "runs": [{"alpha": "iid", "model": "resnet18"}],
                                      "resolution": 3}}
    return config


def test_exact_is_not_refused_for_a_model_whose_plane_alone_a_landscape_asks_for():
    # Prepare / Execute: the landscape plans resnet18's plane job, which computes eigenpairs and no trace
    config = check_config(_two_models(trace_estimator=EXACT), SCHEMA)
    runs = build_runs(config)
    resnet = next(run for run in runs if run.model == "resnet18")

    # Assert: no Hessian job of resnet18 is planned; the landscape reads its plane job's output
    (plan,) = landscape_plans(config, runs)
    assert all(run.model == "cnn_small" for run, _ in hessian_jobs(config, runs))
    assert landscape_plane_inputs(config, plan)["hessian_plane"] == plane_path(Results.of(config), resnet, plan.round)


def test_exact_is_not_refused_where_no_hessian_job_is_planned():
    config = _config("resnet18", trace_estimator=EXACT)
    config["hessian"]["enabled"] = False
    check_config(config, SCHEMA)


def test_the_stage_refuses_exact_for_a_model_that_is_not_piecewise_linear(tmp_path):
    # what the config check prevents, for a job planned otherwise (settings edited by hand)
    # resnet20 with group norm: resnet18's (group norm by default) at a fortieth of its parameters
    config = _config("resnet20", trace_estimator="hutchinson")
    config["model_options"] = {"resnet20": {"norm": "group"}}
    config = check_config(config, SCHEMA)
    runs = build_runs(config)
    (run,) = runs
    partition, _, train = train_run(config, runs, run, tmp_path)
    settings = hessian_job_settings(config, runs, run, 1)
    settings["hessian"]["trace_estimator"] = EXACT
    outputs = {key: str(tmp_path / name) for key, name in JOB_FILES.items()}

    refused = r"trace_estimator exact: the Hessian's diagonal of resnet20 \{'norm': 'group'"
    with pytest.raises(ValueError, match=refused):
        hessian_stage(settings, train["trajectory"], partition, outputs)
    assert not any(Path(path).exists() for path in outputs.values())


def test_an_exact_job_s_settings_do_not_follow_trace_probes():
    settings = [hessian_job_settings(c, build_runs(c), build_runs(c)[0], 1)
                for c in (check_config(_config(trace_estimator=EXACT, trace_probes=p), SCHEMA) for p in (8, 40))]
    assert settings[0] == settings[1]


def test_a_hessian_job_with_exact_writes_exact_rows_and_a_finite_hd(tmp_path):
    # Prepare: one round of the tiny run, whose Hessian at 8 probes leaves HD unresolved or noisy
    config = check_config(_config(trace_estimator=EXACT), SCHEMA)
    runs = build_runs(config)
    (run,) = runs
    partition, _, train = train_run(config, runs, run, tmp_path)
    outputs = {key: str(tmp_path / name) for key, name in JOB_FILES.items()}

    # Execute
    hessian_stage(hessian_job_settings(config, runs, run, 1), train["trajectory"], partition, outputs)

    # Assert
    table = pd.read_csv(outputs["table"])
    details = json.loads(open(outputs["details"]).read())
    clients = pd.read_csv(outputs["clients"])
    assert (table["trace_stderr"] == 0).all() and table["trace"].gt(0).all()
    assert {d["diagonal_estimator"] for d in details["data"].values()} == {EXACT}
    assert details["settings"]["trace_estimator"] == EXACT and details["hd_unresolved_clients"] == []
    assert math.isfinite(clients["hd"].iloc[0]) and -1 <= clients["hd"].iloc[0] <= 1
    assert math.isfinite(clients["hn"].iloc[0]) and clients["hn"].iloc[0] >= 0
