"""Torch-free algorithm metadata: every algorithm's hyperparameter dataclass and the models it can train.

Config validation (`fedscape.plan.check_config`) needs only these, so it never imports torch; the
strategies themselves (`fedscape.fl.strategy`, `fedscape.fl.local`) use the same dataclasses and
keep this registry in step through `fedscape.fl.strategy.register`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedscape.utils import suggest, unknown_name_error


# -- server optimisers (fedscape.fl.server_opt) ----------------------------------------------------
@dataclass(frozen=True)
class ServerSGDConfig:
    """Server SGD; lr 1 and momentum 0 is exactly FedAvg's model averaging."""

    server_lr: float = 1.0  # McMahan et al. 2017: the new global model is the weighted mean
    server_momentum: float = 0.0  # FedAvgM (Hsu et al. 2019) uses 0.9


@dataclass(frozen=True)
class ServerAdaptiveConfig:
    """Adaptive server optimiser hyperparameters (Reddi et al. 2021, Adaptive Federated Optimization).

    Reddi et al. fix beta1 = 0.9 and beta2 = 0.99 (Sec. 5) and tune the server lr and tau over
    grids of powers of ten; 10^-2 and 10^-3 are the values they most often select, and the Meta
    poster (Nguyen et al.) runs FedAdam with SGD at the clients in the same way.
    """

    server_lr: float = 0.01  # eta (Reddi et al. 2021, grid over 10^-3..10^0)
    beta1: float = 0.9  # Reddi et al. 2021, Sec. 5
    beta2: float = 0.99  # Reddi et al. 2021, Sec. 5 (unused by FedAdagrad)
    tau: float = 1e-3  # adaptivity / epsilon (Reddi et al. 2021, grid over 10^-5..10^-1)

    def __post_init__(self):
        if self.server_lr <= 0 or self.tau <= 0:
            raise ValueError(f"server_lr and tau must be positive, got {self.server_lr} and {self.tau}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")


# -- server-side algorithms (fedscape.fl.strategy) -------------------------------------------------
@dataclass(frozen=True)
class FedAvgMConfig(ServerSGDConfig):
    """FedAvgM hyperparameters."""

    server_momentum: float = 0.9  # Hsu et al. 2019 use beta = 0.9


@dataclass(frozen=True)
class FedAdagradConfig(ServerAdaptiveConfig):
    """FedAdagrad hyperparameters."""

    # Adagrad's accumulator never decays, so its steps are about 10x smaller than Adam's at the
    # same lr (without bias correction); Reddi et al. 2021 tune it on the same grid and fedscape
    # takes the next decade, 10^-1.
    server_lr: float = 0.1


# -- client-side algorithms (fedscape.fl.local) ----------------------------------------------------
@dataclass(frozen=True)
class FedProxConfig(ServerSGDConfig):
    """FedProx hyperparameters."""

    mu: float = 1e-4  # FedAlign paper (Mendieta et al. 2022), Sec. 3.2: the tuned optimum for FedProx

    def __post_init__(self):
        if self.mu < 0:
            raise ValueError(f"mu must be non-negative, got {self.mu}")


@dataclass(frozen=True)
class FedDynConfig(ServerSGDConfig):
    """FedDyn hyperparameters."""

    alpha: float = 0.01  # Acar et al. 2021 search alpha in {0.1, 0.01, 0.001}; 0.01 in their CIFAR runs

    def __post_init__(self):
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")


@dataclass(frozen=True)
class MoonConfig(ServerSGDConfig):
    """MOON hyperparameters."""

    mu: float = 1.0  # FedAlign paper, Sec. 3.2: the tuned optimum for MOON
    temperature: float = 0.5  # Li et al. 2021 (MOON) and the FedAlign code
    projection_dim: int = 0  # head output size; 0 = the feature width D (FedAlign code: D -> D -> D)

    def __post_init__(self):
        if self.temperature <= 0 or self.mu < 0 or self.projection_dim < 0:
            raise ValueError("MOON needs temperature > 0, mu >= 0 and projection_dim >= 0")


@dataclass(frozen=True)
class MixupConfig(ServerSGDConfig):
    """Mixup hyperparameters."""

    gamma: float = 0.05  # FedAlign paper, Sec. 3.2: lambda ~ Beta(gamma, gamma) with gamma = 0.05

    def __post_init__(self):
        if self.gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {self.gamma}")


@dataclass(frozen=True)
class StochDepthConfig(ServerSGDConfig):
    """Stochastic Depth hyperparameters."""

    survival_last: float = 0.9  # gamma_L, the last block's survival probability (FedAlign paper, Sec. 3.2)

    def __post_init__(self):
        if not 0 < self.survival_last <= 1:
            raise ValueError(f"survival_last must be in (0, 1], got {self.survival_last}")


@dataclass(frozen=True)
class GradAugConfig(ServerSGDConfig):
    """GradAug hyperparameters."""

    mu: float = 1.75  # FedAlign paper, Sec. 3.2: the tuned optimum for GradAug
    num_subnets: int = 2  # n (FedAlign paper, Sec. 3.2)
    min_width: float = 0.8  # smallest sub-network width; the FedAlign code shares its --width flag with FedAlign's 0.8
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625)  # input sizes 32/28/24/20 of 32 in the FedAlign code

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.num_subnets < 1 or not 0 < self.min_width <= 1 or self.mu < 0:
            raise ValueError("GradAug needs num_subnets >= 1, 0 < min_width <= 1 and mu >= 0")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of fractions in (0, 1], got {list(self.scales)}")


@dataclass(frozen=True)
class FedAlignConfig(ServerSGDConfig):
    """FedAlign hyperparameters."""

    mu: float = 0.05  # FedAlign paper, Table 6 and App. A.1 (default mu)
    width: float = 0.8  # omega_s, the sub-block width (FedAlign paper, Table 6 and App. A.1)
    power_iterations: int = 10  # power-iteration steps of the spectral norm (FedAlign code, top_eigenvalue)
    clip_grad_norm: float = 10.0  # the FedAlign code clips the local gradient norm at 10; 0 turns it off

    def __post_init__(self):
        if not 0 < self.width <= 1 or self.mu < 0 or self.power_iterations < 1 or self.clip_grad_norm < 0:
            raise ValueError("FedAlign needs 0 < width <= 1, mu >= 0, power_iterations >= 1 and clip_grad_norm >= 0")


# -- model requirements ----------------------------------------------------------------------------
def models_with(flag: str) -> str:
    """The registry's models whose ModelInfo has `flag` set, comma-separated."""
    from fedscape.model_specs import MODEL_NAMES, model_info

    return ", ".join(n for n in MODEL_NAMES if getattr(model_info(n), flag))


def require_model(model: str, flag: str, algorithm: str, what: str) -> None:
    """ValueError when `model` lacks the ModelInfo `flag` that `algorithm` needs (a `what` model)."""
    from fedscape.model_specs import model_info

    if not getattr(model_info(model), flag):
        raise ValueError(f"{algorithm} needs a {what} model; {model} is not {what} "
                         f"({what} models: {models_with(flag)})")


def any_model(model: str) -> None:
    """The model check of an algorithm that trains every model: nothing to check."""


def _requires(flag: str, algorithm: str, what: str) -> Callable[[str], None]:
    """The model check of an algorithm that needs a `what` model (ModelInfo `flag` set)."""

    def check(model: str) -> None:
        """ValueError when `model` is not a `what` model."""
        require_model(model, flag, algorithm, what)

    return check


# -- the registry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlgorithmSpec:
    """What config validation knows about an algorithm: its hyperparameters and its model check."""

    name: str
    config: type  # frozen dataclass of the hyperparameters (the strategy's `Config`)
    check_model: Callable[[str], None] = any_model  # ValueError when the algorithm cannot train a model


ALGORITHM_SPECS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("fedavg", ServerSGDConfig),
        AlgorithmSpec("fedavgm", FedAvgMConfig),
        AlgorithmSpec("fedadam", ServerAdaptiveConfig),
        AlgorithmSpec("fedyogi", ServerAdaptiveConfig),
        AlgorithmSpec("fedadagrad", FedAdagradConfig),
        AlgorithmSpec("fedprox", FedProxConfig),
        AlgorithmSpec("scaffold", ServerSGDConfig),
        AlgorithmSpec("feddyn", FedDynConfig),
        AlgorithmSpec("moon", MoonConfig),
        AlgorithmSpec("mixup", MixupConfig),
        AlgorithmSpec("stochdepth", StochDepthConfig, _requires("residual", "stochdepth", "residual")),
        AlgorithmSpec("gradaug", GradAugConfig, _requires("width_sliceable", "gradaug", "width-sliceable")),
        AlgorithmSpec("fedalign", FedAlignConfig, _requires("width_sliceable", "fedalign", "width-sliceable")),
    )
}


def register_spec(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add (or refresh) an algorithm's entry; fedscape.fl.strategy.register calls it for every strategy."""
    ALGORITHM_SPECS[spec.name] = spec
    return spec


def algorithm_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The algorithm's hyperparameter dataclass with `overrides` applied; unknown keys fail clearly."""
    if name not in ALGORITHM_SPECS:
        raise unknown_name_error("algorithm", name, ALGORITHM_SPECS)
    cls = ALGORITHM_SPECS[name].config
    overrides = dict(overrides or {})
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in valid:
            raise ValueError(
                f"algorithm {name!r} has no hyperparameter {key!r}.{suggest(key, valid)} "
                f"Valid: {', '.join(sorted(valid)) or '(none)'}"
            )
    try:
        return cls(**overrides)
    except TypeError as exc:  # e.g. a list where a number is expected
        raise ValueError(f"algorithm {name!r}: {exc}") from None


def check_algorithm_model(name: str, model: str) -> None:
    """ValueError when algorithm `name` cannot train `model` (e.g. StochDepth on a plain CNN)."""
    if name not in ALGORITHM_SPECS:
        raise unknown_name_error("algorithm", name, ALGORITHM_SPECS)
    ALGORITHM_SPECS[name].check_model(model)
