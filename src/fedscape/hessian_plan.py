"""Torch-free part of the Hessian stage: its settings, which (run, round) jobs a config asks for,
their per-job settings and the cross-key checks of the `hessian` section.

Snakemake's planning (rules/hessian.smk, fedscape.plan.check_config) imports only this module;
`fedscape.hessian` and `fedscape.hessian_stage` re-export its names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fedscape.config import ConfigError
from fedscape.utils import unknown_name_error

METHODS = ("power", "lanczos")
CLIENT_COLUMNS = ["run_id", "round", "hn", "hd", "status"]  # status: ok, or diverged (HN, HD NaN)


@dataclass(frozen=True)
class HessianSettings:
    """Settings of one Hessian analysis (PyHessian recipe, Yao et al. 2020, with fixed probe counts)."""

    top_k: int = 2  # lambda_1 (FedAlign Table 1, Meta poster); lambda_1, lambda_2 span the plane of FedAlign Fig. 1
    # "power" = PyHessian / FedAlign; Lanczos was measured ~1e4x more accurate at fewer products (tests/test_hessian.py)
    method: str = "lanczos"
    tol: float = 1e-4  # relative tolerance (issue 6; PyHessian uses 1e-3)
    max_iter: int = 100  # PyHessian's maxIter
    trace_probes: int = 300  # fixed Hutchinson probe count (issue 6): PyHessian's early stop was measured at 4% error
    eval_samples: int | None = 1024  # fixed set per data set; None = all samples (PyHessian: a fixed batch set)
    batch_size: int = 512  # samples per forward pass; the mean loss is weighted by batch size
    cache_graph: bool = True  # keep every batch's gradient graph for all products (memory) or rebuild it per product
    density: bool = True  # stochastic Lanczos quadrature of the spectral density (Ghorbani et al. 2019)
    density_steps: int = 90  # Lanczos steps per SLQ probe (Ghorbani et al. 2019 use 90)
    density_probes: int = 10  # SLQ probes (Ghorbani et al. 2019 use 10; PyHessian 1)
    seed: int = 0  # eigen start vectors, probes and evaluation subsets derive from it

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise unknown_name_error("Hessian method", self.method, METHODS)
        checks = [
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (0 < self.tol < 1, f"tol must be in (0, 1), got {self.tol}"),
            (self.max_iter >= 1, f"max_iter must be >= 1, got {self.max_iter}"),
            (self.method != "lanczos" or self.max_iter >= self.top_k + 1,
             f"lanczos needs max_iter > top_k, got max_iter {self.max_iter} and top_k {self.top_k}"),
            (self.trace_probes >= 2,
             f"trace_probes must be >= 2 (a standard error needs two), got {self.trace_probes}"),
            (self.eval_samples is None or self.eval_samples >= 1,
             f"eval_samples must be >= 1 or None, got {self.eval_samples}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.density_steps >= 2, f"density_steps must be >= 2, got {self.density_steps}"),
            (self.density_probes >= 1, f"density_probes must be >= 1, got {self.density_probes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def hessian_columns(top_k: int) -> list[str]:
    """Columns of results/tables/hessian.csv (`status`: ok, or diverged for the NaN rows of a skipped job)."""
    return ["run_id", "round", "data", *[f"lambda_{i}" for i in range(1, top_k + 1)], "trace", "trace_stderr",
            "n_eval", "iterations", "status"]


# -- plan ------------------------------------------------------------------------------------------
def settings_from_config(section: dict) -> HessianSettings:
    """HessianSettings from the config's `hessian` section (defaults already filled by the schema)."""
    density = section.get("density", {})
    return HessianSettings(
        top_k=section["top_k"], method=section["method"], tol=section["tol"], max_iter=section["max_iter"],
        trace_probes=section["trace_probes"], eval_samples=section["eval_samples"], batch_size=section["batch_size"],
        cache_graph=section["cache_graph"], density=density.get("enabled", True),
        density_steps=density.get("lanczos_steps", 90), density_probes=density.get("probes", 10),
        seed=section["seed"],
    )


def _selectors(section: dict) -> list[dict] | None:
    runs = section.get("runs", "all")
    if runs == "all":
        return None
    return [runs] if isinstance(runs, dict) else list(runs)


def hessian_runs(config: dict, runs: list) -> list:
    """The runs the Hessian stage analyses: all of them, or those matching any selector of `hessian.runs`."""
    from fedscape.plan import select_runs

    selectors = _selectors(config["hessian"])
    if selectors is None:
        return list(runs)
    chosen = set()
    for selector in selectors:
        chosen.update(select_runs(runs, selector))
    return sorted(chosen)


def _final_round(config: dict, run) -> int:
    from fedscape.plan import train_settings

    return int(train_settings(config, run)["training"]["rounds"])


def hessian_rounds(config: dict, run) -> list[int]:
    """The rounds of `hessian.rounds` for one run, `final` resolved to its last round, sorted and unique."""
    final = _final_round(config, run)
    return sorted({final if r == "final" else int(r) for r in config["hessian"]["rounds"]})


def hessian_jobs(config: dict, runs: list) -> list[tuple]:
    """Every (run, round) the stage evaluates (empty when the stage is disabled)."""
    if not config["hessian"]["enabled"]:
        return []
    return [(run, r) for run in hessian_runs(config, runs) for r in hessian_rounds(config, run)]


def check_hessian_config(config: dict, runs: list) -> list[str]:
    """Problems of the `hessian` section that the schema cannot express (one line each)."""
    section = config.get("hessian")
    if not section:
        return []
    problems = []
    try:
        settings = settings_from_config(section)
        if settings.top_k < 2:
            problems.append(f"hessian.top_k: the eigenvector plane needs the top 2 eigenvectors, got {settings.top_k}")
    except ValueError as exc:
        problems.append(f"hessian: {exc}")
    try:
        for i, selector in enumerate(_selectors(section) or []):
            from fedscape.plan import select_runs

            if not isinstance(selector, dict) or not selector:
                problems.append(f"hessian.runs[{i}]: a run selector is a non-empty mapping of run fields, e.g. "
                                f"{{alpha: iid, init: random}}; got {selector!r}")
            elif not select_runs(runs, selector):
                problems.append(f"hessian.runs[{i}]: no run of the config matches {selector}")
        chosen = hessian_runs(config, runs)
    except ConfigError as exc:
        problems.append(f"hessian.runs: {exc}")
        chosen = []
    for run in chosen:
        final = _final_round(config, run)
        bad = [r for r in section["rounds"] if r != "final" and not 0 <= int(r) <= final]
        if bad:
            problems.append(f"hessian.rounds: rounds {bad} are outside 0..{final} (run {run.run_id} trains {final} "
                            "rounds); use `final` for the last round")
            break
    return problems


def hessian_job_settings(config: dict, run, round_: int) -> dict:
    """Everything one Hessian job needs, resolved (Snakemake reruns the job when it changes)."""
    return {
        "run": asdict(run),
        "run_id": run.run_id,
        "round": int(round_),
        "dataset_options": config["datasets"][run.dataset],
        "device": config["training"]["device"],
        "hessian": asdict(settings_from_config(config["hessian"])),
    }
