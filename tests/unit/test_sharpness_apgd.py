"""Worst-case sharpness by APGD (`hessian.sharpness.method: apgd`; maths.sharpness): its checkpoints, feasible
iterates, the maximum of a quadratic on the ball, the NaN rules of the ascent, and the setting's way to the job (the
ascent, its baseline, left out of a job's settings). The ascent's own tests: tests/unit/test_hessian.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import SCHEMA, tiny_config
from torch import nn

from fedscape.analysis.hessian.definitions import APGD, ASCENT, SHARPNESS_METHODS, HessianSettings
from fedscape.analysis.hessian.maths import HessianOperator, analyse, apgd_checkpoints, sharpness
from fedscape.core.config import ConfigError
from fedscape.core.jobs import to_settings
from fedscape.plan.workflow import check_config


class Quadratic:
    """L(w) = 0.5 w^T A w behind the parts of a HessianOperator that `sharpness` uses; every point it was asked
    about (a loss or a gradient) recorded."""

    def __init__(self, a: torch.Tensor, center: torch.Tensor):
        self.a, self.center, self.points = a, center, []
        self.dim, self.device, self.dtype = len(center), center.device, center.dtype

    def loss(self, w: torch.Tensor | None = None) -> float:
        w = self.center if w is None else w
        self.points.append(w)
        return float(0.5 * w @ self.a @ w)

    def gradient(self, w: torch.Tensor | None = None) -> torch.Tensor:
        w = self.center if w is None else w
        self.points.append(w)
        return self.a @ w


def _rotated_quadratic() -> Quadratic:
    """An indefinite quadratic whose gradient at the centre points mostly along its flat directions: the ball's
    maximum is far from the SAM step at large radii."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([5.0, 4.0, 1.0, 0.5, 0.1, -1.0], dtype=torch.float64)) @ q.T
    return Quadratic(a, q @ torch.tensor([0.01, 0.02, 1.0, 2.0, 3.0, 1.0], dtype=torch.float64))


def _scale(objective: Quadratic, eta: float | None) -> torch.Tensor:
    return torch.ones_like(objective.center) if eta is None else objective.center.abs() + eta


def _maximum(objective: Quadratic, rho: float, eta: float | None) -> float:
    """max over ||u|| <= rho of L(w + T u) - L(w) = g^T u + 0.5 u^T B u, g = T A w, B = T A T.

    In B's eigenbasis (eigenvalues lambda_i, g_i the gradient's coordinates) the maximiser is u = (mu I - B)^-1 g
    with mu >= lambda_max and ||u|| = rho (the trust-region conditions: g + B u = mu u, mu I - B positive
    semidefinite), and since sum_i u_i^2 = rho^2 its value is
        sum_i g_i u_i + 0.5 lambda_i u_i^2 = 0.5 mu rho^2 + 0.5 sum_i g_i^2 / (mu - lambda_i),
    which is rho^2 lambda_max / 2 plus the linear term's contribution (mu -> lambda_max as rho grows). mu: by
    bisection on the decreasing ||(mu I - B)^-1 g||, from lambda_max to lambda_max + ||g|| / rho (where it is below
    rho)."""
    t = _scale(objective, eta)
    lam, vectors = torch.linalg.eigh(t[:, None] * objective.a * t[None, :])
    g = vectors.T @ (t * (objective.a @ objective.center))
    low, high = float(lam.max()), float(lam.max()) + float(g.norm()) / rho
    for _ in range(200):
        mu = 0.5 * (low + high)
        low, high = (mu, high) if float((g / (mu - lam)).norm()) > rho else (low, mu)
    mu = 0.5 * (low + high)
    return 0.5 * mu * rho**2 + 0.5 * float((g**2 / (mu - lam)).sum())


@pytest.mark.parametrize(("iterations", "expected"), [
    (100, [22, 41, 57, 70, 80, 87, 93, 99]),  # AutoAttack's, the paper's 0.22, 0.41, ..., 0.99 of N
    (20, [5, 9, 12, 14, 16, 18, 19, 20]),  # ceil(0.22 * 20) = 5, 0.70 * 20 = 14 exactly
    (6, [2, 3, 4, 5, 6]),  # the default 5 steps after the SAM step
    (5, [2, 3, 4, 5]),  # p = 0.41 and 0.57 both at 3: the later ones still count
    (1, [1]),
])
def test_apgd_checks_its_progress_at_the_paper_s_checkpoints(iterations, expected):
    # Execute
    checkpoints = apgd_checkpoints(iterations)

    # Assert: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N), to N
    assert sorted(c for c in checkpoints if c <= iterations) == expected


@pytest.mark.parametrize("method", SHARPNESS_METHODS)
@pytest.mark.parametrize(("rho", "eta"), [(0.05, None), (2.0, None), (0.5, 0.01), (5.0, 0.01)])
def test_every_point_the_search_asks_about_is_in_the_ball(method, rho, eta):
    # Prepare
    objective = _rotated_quadratic()
    t = _scale(objective, eta)

    # Execute
    sharpness(objective, rho, 25, eta, method=method)

    # Assert: ||(p - w) / T|| <= rho at every loss and gradient taken (T = |w| + eta: ASAM's ball)
    radii = [float(((p - objective.center) / t).norm()) for p in objective.points]
    assert len(radii) > 25 and max(radii) <= rho * (1 + 1e-12)


@pytest.mark.parametrize(("rho", "eta"), [(0.05, None), (0.5, None), (2.0, None), (5.0, None), (0.5, 0.01),
                                          (5.0, 0.01)])
def test_apgd_reaches_the_maximum_of_a_quadratic_on_the_ball(rho, eta):
    # Prepare
    objective = _rotated_quadratic()

    # Execute
    value = sharpness(objective, rho, 25, eta, method=APGD)

    # Assert: within 1e-3, and a lower bound (every point feasible)
    maximum = _maximum(objective, rho, eta)
    assert maximum * (1 - 1e-3) <= value <= maximum * (1 + 1e-12)


@pytest.mark.parametrize(("rho", "eta"), [(2.0, None), (5.0, None), (2.0, 0.01), (5.0, 0.01)])
def test_apgd_beats_the_ascent_at_large_radii_with_the_same_gradients(rho, eta):
    # Prepare
    maximum = _maximum(_rotated_quadratic(), rho, eta)
    counts, errors = {}, {}

    # Execute
    for method in SHARPNESS_METHODS:
        objective = _rotated_quadratic()
        errors[method] = 1 - sharpness(objective, rho, 25, eta, method=method) / maximum
        counts[method] = len(objective.points)

    # Assert: APGD's error a quarter of the ascent's at most (5.5-18x less here), at no more losses and gradients
    assert 0 <= errors[APGD] < errors[ASCENT] / 4
    assert counts[APGD] <= counts[ASCENT]


@pytest.mark.parametrize(("a", "expected"), [
    (-torch.eye(4, dtype=torch.float64), 0.0),  # at a maximum every point is lower: L(w) itself, 0
    (torch.eye(4, dtype=torch.float64), 0.5 * 0.3**2),  # at a minimum, g = 0: the seeded direction, rho^2 / 2
])
def test_apgd_from_a_stationary_point_takes_the_seeded_direction_and_stays_non_negative(a, expected):
    # Prepare
    objective = Quadratic(a, torch.zeros(4, dtype=torch.float64))

    # Execute
    value = sharpness(objective, 0.3, 5, method=APGD)

    # Assert
    assert value == pytest.approx(expected, rel=1e-12, abs=0) and value >= 0


class Overflowing(Quadratic):
    """L(w) = 0.5 ||w||^2 around `center`, NaN (logits that overflowed) farther than `reach` from it or at weights
    that are not finite; its gradient `gradient_scale` times w (inf: a gradient that overflowed)."""

    def __init__(self, center: torch.Tensor, reach: float, gradient_scale: float = 1.0):
        super().__init__(torch.eye(len(center), dtype=torch.float64), center)
        self.reach, self.gradient_scale = reach, gradient_scale

    def loss(self, w: torch.Tensor | None = None) -> float:
        w = self.center if w is None else w
        if not bool(torch.isfinite(w).all()) or float((w - self.center).norm()) > self.reach:
            return math.nan
        return super().loss(w)

    def gradient(self, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.gradient_scale * super().gradient(w)


CENTER = torch.ones(3, dtype=torch.float64)


def _quadratic_increase(radius: float) -> float:
    """max over ||e|| <= radius of 0.5 ||w + e||^2 - 0.5 ||w||^2 at w = CENTER: radius ||w|| + radius^2 / 2."""
    return radius * math.sqrt(3) + 0.5 * radius**2


@pytest.mark.parametrize(("objective", "eta", "expected"), [
    (Overflowing(CENTER, reach=1.0), None, _quadratic_increase(0.05)),
    (Overflowing(CENTER, reach=1.0), 0.01, _quadratic_increase(0.05 * 1.01)),
    # the logits overflow inside the ball (a NaN loss at finite weights): +inf, not the NaN dropped as flat
    (Overflowing(CENTER, reach=0.01), None, math.inf),
    (Overflowing(CENTER, reach=0.01), 0.01, math.inf),
    # a gradient that overflowed leaves no finite point to measure: NaN
    (Overflowing(CENTER, reach=1.0, gradient_scale=math.inf), None, math.nan),
    # L(w) itself NaN: NaN
    (Overflowing(CENTER * math.inf, reach=1.0), None, math.nan),
], ids=["finite", "finite adaptive", "overflowed in the ball", "overflowed adaptive", "gradient overflowed",
        "centre NaN"])
def test_apgd_keeps_the_ascent_s_rules_for_a_nan_loss(objective, eta, expected):
    # Execute
    value = sharpness(objective, rho=0.05, steps=3, eta=eta, method=APGD)

    # Assert
    assert value == pytest.approx(expected, rel=1e-9, nan_ok=True)


def test_an_unknown_method_is_refused_with_the_valid_ones():
    # Execute / Assert
    with pytest.raises(ValueError, match="unknown sharpness method 'apdg'.*apgd, ascent"):
        sharpness(_rotated_quadratic(), 0.05, 1, method="apdg")


# -- the setting -----------------------------------------------------------------------------------
FIRST = {"top_k": 2, "method": "lanczos", "tol": 1e-4, "max_iter": 100, "trace_probes": 300, "eval_samples": 1024,
         "batch_size": 512, "cache_graph": True, "density": True, "density_steps": 90, "density_probes": 10, "seed": 0}


@pytest.mark.parametrize(("method", "carried"), [(ASCENT, False), (APGD, True)])
def test_only_apgd_enters_a_job_s_settings(method, carried):
    # Prepare: a finished job's settings (the first results' keys) and the same job with `method`
    finished = HessianSettings.from_settings(FIRST)

    # Execute
    settings = to_settings(dataclasses.replace(finished, sharpness=True, sharpness_method=method))

    # Assert: the ascent is every earlier job's baseline, left out (no finished job reruns); apgd is carried
    assert finished.sharpness_method == ASCENT
    assert ("sharpness_method" in settings) is carried
    assert HessianSettings.from_settings(settings).sharpness_method == method


@pytest.mark.parametrize(("make", "error"), [
    (lambda: HessianSettings.from_settings({**FIRST, "sharpness_method": "pgd"}), ValueError),
    (lambda: check_config(tiny_config(sharpness={"enabled": True, "method": "pgd"}), SCHEMA), ConfigError),
], ids=["settings", "config"])
def test_an_unknown_method_is_refused_in_settings_and_config(make, error):
    # Execute / Assert
    with pytest.raises(error, match="pgd"):
        make()


@pytest.mark.parametrize("method", SHARPNESS_METHODS)
def test_the_schema_takes_each_method_and_defaults_to_the_ascent(method):
    # Execute
    given = check_config(tiny_config(sharpness={"enabled": True, "method": method}), SCHEMA)
    left_out = check_config(tiny_config(sharpness={"enabled": True}), SCHEMA)

    # Assert
    assert given["hessian"]["sharpness"]["method"] == method
    assert left_out["hessian"]["sharpness"]["method"] == ASCENT


@pytest.fixture(scope="module")
def small_model():
    """A 250-parameter MLP trained a little on separable data, and its data."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (64,), generator=g)
    x = torch.randn(64, 8, generator=g) + 2.0 * F.one_hot(y, 8).float()
    model = nn.Sequential(nn.Linear(8, 20), nn.Tanh(), nn.Linear(20, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_analyse_measures_both_forms_with_the_settings_method(small_model):
    # Prepare
    model, x, y = small_model
    settings = dataclasses.replace(HessianSettings.from_settings(FIRST), top_k=1, max_iter=10, trace_probes=4,
                                   density=False, sharpness=True, sharpness_rho=2.0, sharpness_adaptive_rho=1.0,
                                   sharpness_method=APGD)

    # Execute
    report = analyse(model, x, y, settings, eigen=False)

    # Assert: the plain and the adaptive form by APGD, not by the ascent
    with HessianOperator(model, x, y) as op:
        plain = sharpness(op, 2.0, settings.sharpness_steps, None, settings.seed, APGD)
        adaptive = sharpness(op, 1.0, settings.sharpness_steps, settings.sharpness_eta, settings.seed, APGD)
        ascent = sharpness(op, 2.0, settings.sharpness_steps, None, settings.seed, ASCENT)
    assert (report.sharpness, report.adaptive_sharpness) == (plain, adaptive)
    assert plain != ascent
