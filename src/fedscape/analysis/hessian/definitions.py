"""Torch-free definitions of the Hessian analysis: its settings (the PyHessian recipe with fixed probe counts)
and the columns of its tables."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from fedscape.analysis.contributions import FinalColumns
from fedscape.core.config import RESULT_VERSION
from fedscape.core.jobs import JobSettings
from fedscape.core.names import unknown_name_error
from fedscape.core.seeds import derive_seed
from fedscape.models.specs import PRECISIONS

METHODS = ("power", "lanczos")
# What a job computes the trace and diagonal with (its settings never hold `auto`): `exact` only for a model that is
# piecewise linear in its parameters (`fedscape.models.specs.piecewise_linear`; maths.gauss_newton_diagonal).
EXACT = "exact"
HUTCHPP = "hutchpp"
TRACE_ESTIMATORS = ("hutchinson", HUTCHPP, EXACT)
AUTO = "auto"  # the config's `trace_estimator: auto`: resolved by the budget at planning (resolve_trace_estimator)
# From this many products `auto` takes Hutch++ / Diag++, below them Hutchinson: the smallest budget measured at which
# Hutch++'s trace lost on no model (benchmarks/README.md, bench_trace.py). Its rms error against Hutchinson's: on the
# default run's round-30 IID model (exact Hessian) 0.77x at 10 products, 0.37x at 30, 0.18x at 100; on its round-0
# random init 1.15x, 2.0x, 1.01x; on a cnn_small trained 3 epochs 1.5x at 10, 1.2x at 30, 0.76x at 100. Keeping
# whichever trace of the two the same products estimate the smaller error for (Diag++'s rule for the diagonal) still
# lost up to 1.5x at the init and 1.36x on the 3-epoch model below 50 products (`by variance` in bench_trace.py).
AUTO_HUTCHPP_FROM = 100
# The searches for the worst-case sharpness (`HessianSettings.sharpness_method`, maths.sharpness).
ASCENT = "ascent"
APGD = "apgd"
SHARPNESS_METHODS = (ASCENT, APGD)
# The disjoint groups of probes each diagonal is estimated from (HN and HD take products of estimates from different
# groups: four give two independent differences of squared norms; `maths.diagonal_consistency`).
QUARTERS = 4


def hutchpp_split(products: int, dim: int | None = None) -> tuple[int, int]:
    """(sketch columns k, residual probes m) of a Hutch++ budget of `products` Hessian-vector products on a model of
    `dim` parameters (None: at least products // 3): k = products // 3 columns take 2k of the products (Meyer et al.
    2021), the other m are probes. Diag++ reads the diagonal's quarters off the m probes; Hutchinson's over the same
    products off all k + m."""
    k = products // 3 if dim is None else min(products // 3, dim)
    return k, products - 2 * k
HESSIAN_PRECISIONS = tuple(p for p in PRECISIONS if p != "bf16")
CLIENT_COLUMNS = ["run_id", "round", "hn", "hd", "status"]  # status: ok, or diverged (HN, HD NaN; a client's row too)
# hessian_clients.csv's column when `hessian.clients` bounds the per-client analyses: the number of clients HN and
# HD are computed over (0: none, HN and HD NaN)
CLIENTS_COLUMN = "clients"
EVAL_ALL = "all"  # eval_samples: every sample of each data set, no graph kept between products
ALL_CLIENTS = "all"  # clients: every client's data analysed (the baseline)
_CLIENT_SAMPLE_STREAM = 0x48434C53  # seed stream of the sample of clients (`client_sample`)
# final.csv's Hessian columns: lambda_max and the trace of the final and of the initial (round 0) global model on
# the aggregate training data (PyHessian, Yao et al. 2020; FedAlign Table 1), HN / HD across the clients at the
# final round (FedAlign Table 1). The initial model's two are shared by the seeds of a run group: one init per
# dataset, model and init (core.paths.INIT_DIR) on the aggregate training data, every seed's job the same estimate,
# which summary.csv counts once, not once per seed with zero spread (its error is hessian.csv's trace_stderr).
# `sharpness` and `adaptive_sharpness` (`hessian.sharpness`): those of the final global model on the aggregate
# training data (SAM's, Foret et al. 2021; ASAM's, Kwon et al. 2021), added to the published tables: after
# final.csv's code_version and summary.csv's code_versions (`appended`).
HESSIAN_DATA = "all"  # hessian.csv's rows of the aggregate training data
SHARPNESS_COLUMNS = ("sharpness", "adaptive_sharpness")
REPORT = FinalColumns(
    columns=("lambda_max", "trace", "lambda_max_init", "trace_init", "hn", "hd", *SHARPNESS_COLUMNS),
    tables={"hessian": ("run_id", "round", "data", "lambda_1", "trace", *SHARPNESS_COLUMNS),
            "hessian_clients": ("run_id", "round", "hn", "hd")},
    compute="tables:final_columns",
    shared=("lambda_max_init", "trace_init"),
    appended=SHARPNESS_COLUMNS,
)


def check_solver(precision: str, method: str) -> None:
    """Refuse a precision or eigensolver method a Hessian job cannot compute with, naming the valid ones."""
    if precision not in HESSIAN_PRECISIONS:
        raise unknown_name_error("Hessian precision", precision, HESSIAN_PRECISIONS)
    if method not in METHODS:
        raise unknown_name_error("Hessian method", method, METHODS)


@dataclass(frozen=True, kw_only=True)
class EigenSettings(JobSettings):
    """What the top-k eigenpairs of one data set depend on (the evaluation subset, the solver and its precision): the
    `hessian` settings of a hessian_plane job, each field as HessianSettings declares it, in its order."""

    top_k: int
    method: str
    tol: float
    max_iter: int
    eval_samples: int | str | None
    batch_size: int
    cache_graph: bool
    seed: int
    precision: str = "fp32"

    def __post_init__(self) -> None:
        # as HessianSettings: a plane job computing its own eigenpairs at bf16 would be refused only at its solver
        check_solver(self.precision, self.method)


EIGEN_FIELDS = tuple(f.name for f in fields(EigenSettings))


@dataclass(frozen=True, kw_only=True)
class HessianSettings(JobSettings):
    """Settings of one Hessian analysis (PyHessian recipe, Yao et al. 2020, with fixed probe counts): the `hessian`
    part of a hessian job's settings. Their values come from the config's `hessian` section (the schema holds the
    defaults); a field added after results existed has the baseline, the behaviour before it, as its default."""

    top_k: int  # lambda_1 (FedAlign Table 1, Meta poster); lambda_1, lambda_2 span the plane of FedAlign Fig. 1
    # "power" = PyHessian / FedAlign; Lanczos was measured ~1e4x more accurate at fewer products
    # (tests/unit/test_hessian.py)
    method: str
    # Relative tolerance (PyHessian uses 1e-3): Lanczos stops where every Ritz pair's residual bound is at most
    # tol |theta|, an eigenvalue of H within tol of each value; power iteration stops by PyHessian's rule (the value
    # changes by less than tol), which bounds no error, and flags a pair converged only where its residual meets
    # Lanczos's test (maths.power_iteration)
    tol: float
    max_iter: int  # PyHessian's maxIter is 100
    trace_probes: int  # fixed Hutchinson probe count: PyHessian's early stop was measured at 4% error
    # "hutchpp": Hutch++ trace and Diag++ diagonal from the same `trace_probes` products (a low-rank sketch
    # taken exactly, Hutchinson on the rest; Meyer et al. 2021, Baston & Nakatsukasa 2022). The config's `auto`
    # (its default) is resolved to one of the two at planning (resolve_trace_estimator), never kept here.
    trace_estimator: str = "hutchinson"  # baseline: Hutchinson
    # A fixed, seeded subset of this many samples per data set; None = all samples (PyHessian: a fixed batch set);
    # EVAL_ALL: the whole training split streamed batch by batch (the FedAlign code's Hessian, over its train loader).
    eval_samples: int | str | None
    batch_size: int  # samples per forward pass; the mean loss is weighted by batch size
    cache_graph: bool  # keep every batch's gradient graph for all products (memory) or rebuild it per product
    density: bool  # stochastic Lanczos quadrature of the spectral density (Ghorbani et al. 2019)
    density_steps: int  # Lanczos steps per SLQ probe (Ghorbani et al. 2019 use 90)
    density_probes: int  # SLQ probes (Ghorbani et al. 2019 use 10; PyHessian 1)
    seed: int  # eigen start vectors, probes and evaluation subsets derive from it
    # Worst-case sharpness max_{||e|| <= rho} L(w + e) - L(w) of the loss over the evaluation set (SAM's, Foret et
    # al. 2021, eq. 1, not its per-batch m-sharpness) and its adaptive form over ||e / (|w| + eta)|| <= rho (Kwon et
    # al. 2021, ASAM), searched for from the SAM / ASAM step (`sharpness_method`, maths.sharpness). rho 0.05 is SAM's
    # CIFAR radius (FedSAM's default) and eta 0.01 ASAM's; ASAM's radius is larger (0.5 on CIFAR, FedASAM's
    # default) because its ball is in T-scaled space: e = T u moves a weight by (|w_i| + eta) u_i, less than u_i
    # where |w_i| + eta < 1, so one radius is not both forms' (the adaptive one's: `sharpness_adaptive_rho`). A few
    # steps suffice at SAM's radius, where the first step nearly is the linearised maximiser (5 steps within 0.3% of
    # 100 on the default digits models), not from 0.5 on (0.64-0.98 of it; benchmarks/README.md, "Worst-case
    # sharpness"): our choice. Baselines: off, and the values of the first results that measured it.
    sharpness: bool = False
    sharpness_rho: float = 0.05
    sharpness_steps: int = 5
    sharpness_eta: float = 0.01
    # Of the Hessian-vector products (fedscape.models.device.use_precision): fp32, the reference the eigenvalues'
    # tolerance is stated against, or tf32 on CUDA. Not bf16: an 8-bit mantissa cannot hold 1e-4 relative.
    precision: str = "fp32"
    # Whose data the per-client quantities (each client's rows of hessian.csv, HN and HD) are computed on: every
    # client (ALL_CLIENTS), or a seeded sample of this many (`client_sample`; 0: none, HN and HD NaN). One
    # Hessian per client is what FedAlign's HN / HD ask (Mendieta et al. 2022, Table 1), 3,400 of them per model
    # on FEMNIST's natural split; the Meta poster's top eigenvalue needs the aggregate data only. Baseline: all.
    clients: int | str = ALL_CLIENTS
    # The radius of the adaptive sharpness's ball, in T-scaled units; None: `sharpness_rho`, the one radius every
    # job measured both forms with before the option (the baseline). Planning writes None for a radius equal to
    # `sharpness_rho` (plan.hessian.settings_from_config), so that spelling it out reruns nothing.
    sharpness_adaptive_rho: float | None = None
    # How the sharpness's maximum is searched for, with at most `sharpness_steps + 1` gradients: ASCENT, projected
    # normalised ascent, what every job took before the option (the baseline), or APGD, Auto-PGD (Croce & Hein
    # 2020), the field's reference for worst-case sharpness (Andriushchenko et al. 2023), which found more in every
    # case measured, up to 6.5% at 5 steps and 3% where the ascent stuck at rho 2 (benchmarks/README.md,
    # "Worst-case sharpness").
    sharpness_method: str = ASCENT

    def __post_init__(self) -> None:
        if self.clients != ALL_CLIENTS and (isinstance(self.clients, bool) or not isinstance(self.clients, int)
                                            or self.clients < 0):
            raise ValueError(f"clients must be {ALL_CLIENTS!r} or an integer >= 0 (a seeded sample of that many "
                             f"clients; 0: no per-client analysis), got {self.clients!r}")
        check_solver(self.precision, self.method)
        if self.trace_estimator not in TRACE_ESTIMATORS:
            raise unknown_name_error("trace estimator", self.trace_estimator, TRACE_ESTIMATORS)
        if self.sharpness_method not in SHARPNESS_METHODS:
            raise unknown_name_error("sharpness method", self.sharpness_method, SHARPNESS_METHODS)
        if self.trace_estimator == HUTCHPP and self.trace_probes < 4:
            raise ValueError(f"trace_estimator hutchpp needs trace_probes >= 4, got {self.trace_probes}")
        checks = [
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (0 < self.tol < 1, f"tol must be in (0, 1), got {self.tol}"),
            (self.max_iter >= 1, f"max_iter must be >= 1, got {self.max_iter}"),
            (self.method != "lanczos" or self.max_iter >= self.top_k + 1,
             f"lanczos needs max_iter > top_k, got max_iter {self.max_iter} and top_k {self.top_k}"),
            (self.trace_probes >= 2,
             f"trace_probes must be >= 2 (a standard error needs two), got {self.trace_probes}"),
            (self.eval_samples is None or self.eval_samples == EVAL_ALL
             or (isinstance(self.eval_samples, int) and self.eval_samples >= 1),
             f"eval_samples must be an integer >= 1, {EVAL_ALL!r} or None, got {self.eval_samples!r}"),
            (self.eval_samples != EVAL_ALL or not self.cache_graph,
             f"eval_samples {EVAL_ALL} streams every training sample batch by batch, and cache_graph would keep the "
             "gradient graph of every batch (the activations of the whole split) for all products: set "
             "hessian.cache_graph: false"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.density_steps >= 2, f"density_steps must be >= 2, got {self.density_steps}"),
            (self.density_probes >= 1, f"density_probes must be >= 1, got {self.density_probes}"),
            (self.sharpness_rho > 0, f"sharpness rho must be > 0, got {self.sharpness_rho}"),
            (self.sharpness_steps >= 0, f"sharpness steps must be >= 0, got {self.sharpness_steps}"),
            (self.sharpness_eta > 0, f"sharpness eta must be > 0, got {self.sharpness_eta}"),
            (self.sharpness_adaptive_rho is None or self.sharpness_adaptive_rho > 0,
             f"sharpness adaptive_rho must be > 0 or null (rho's), got {self.sharpness_adaptive_rho}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def adaptive_radius(self) -> float:
        """The radius the adaptive sharpness is measured at: `sharpness_adaptive_rho`, or `sharpness_rho` where None."""
        return self.sharpness_rho if self.sharpness_adaptive_rho is None else self.sharpness_adaptive_rho

    def eigen(self) -> EigenSettings:
        """The settings the top-k eigenpairs depend on (a hessian_plane job's)."""
        return EigenSettings(**{name: getattr(self, name) for name in EIGEN_FIELDS})


@dataclass(frozen=True, kw_only=True)
class HessianJob(JobSettings):
    """One job of rule hessian: the global model of one run at one round (`shared_from`: the run whose job's result
    this one copies, `shared.copy_shared_job`; None for a job that computes)."""

    rule = "hessian"
    neutral = ("hessian.batch_size", "hessian.cache_graph")  # samples per pass; graphs kept between products or not
    run: dict  # the run's fields (the Run of core.runs), as load_federated_data reads them
    run_id: str
    round: int
    dataset_options: dict
    device: str
    hessian: HessianSettings
    shared_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class HessianPlaneJob(JobSettings):
    """One job of rule hessian_plane: the top-2 eigenvector plane of the aggregate loss of one run's global model at
    one round (FedAlign Fig. 1), which Hessian landscapes read. Its own rule, with only the settings the eigenpairs
    depend on, so that a change of the trace, density, sharpness or per-client settings reruns the Hessian job and no
    landscape drawn on the plane (`shared_from`: as the Hessian job's, a round-0 plane copied with this run's id)."""

    rule = "hessian_plane"
    neutral = HessianJob.neutral
    run: dict
    run_id: str
    round: int
    dataset_options: dict
    device: str
    hessian: EigenSettings
    shared_from: str | None = None

    @classmethod
    def of(cls, job: HessianJob) -> HessianPlaneJob:
        """The plane job of the Hessian job `job` (the same run, round, data and eigen settings)."""
        return cls(run=job.run, run_id=job.run_id, round=job.round, dataset_options=job.dataset_options,
                   device=job.device, hessian=job.hessian.eigen(), shared_from=job.shared_from)

    @classmethod
    def meaning(cls, settings: Mapping) -> dict:
        """As JobSettings.meaning; settings of a Hessian job (Snakemake's record of an eigen_plane.npz that a Hessian
        job wrote, before the plane had a rule of its own) mean those of its plane job: its eigen settings, and this
        kind's first result version, which every Hessian result version computed the eigenpairs of. A finished plane
        keeps its record so, and is not computed again."""
        settings = dict(settings)
        hessian = settings.get("hessian")
        if isinstance(hessian, Mapping) and "trace_probes" in hessian:  # a field of HessianSettings, required
            settings["hessian"] = {name: hessian[name] for name in EIGEN_FIELDS if name in hessian}
            settings.pop(RESULT_VERSION, None)
        return super().meaning(settings)


def job_clients(clients: int | str, num_clients: int) -> int | str:
    """The `clients` setting of a job on a run of `num_clients` clients: ALL_CLIENTS when the bound takes them all
    (the job is then the one of `clients: all`: same settings, same outputs), else the bound."""
    return ALL_CLIENTS if clients == ALL_CLIENTS or clients >= num_clients else int(clients)


def client_sample(num_clients: int, clients: int | str, seed: int) -> list[int]:
    """The clients (indices, sorted) whose data a job with setting `clients` analyses: every client for ALL_CLIENTS
    (or a bound of at least `num_clients`), else `clients` distinct ones drawn uniformly without replacement from a
    stream of `seed` alone, so that every model of a run, and every run of as many clients, has the same sample."""
    if job_clients(clients, num_clients) == ALL_CLIENTS:
        return list(range(num_clients))
    rng = random.Random(derive_seed(seed, _CLIENT_SAMPLE_STREAM))
    return sorted(rng.sample(range(num_clients), int(clients)))


def client_columns(clients: int | str) -> list[str]:
    """Columns of results/tables/hessian_clients.csv for the config's `hessian.clients`: CLIENT_COLUMNS when every
    client is analysed (the table's columns before the option existed), else with CLIENTS_COLUMN before status."""
    if clients == ALL_CLIENTS:
        return list(CLIENT_COLUMNS)
    return [*CLIENT_COLUMNS[:-1], CLIENTS_COLUMN, CLIENT_COLUMNS[-1]]


def hessian_columns(top_k: int) -> list[str]:
    """Columns of results/tables/hessian.csv (`status`: ok, or diverged for the NaN rows of a skipped job
    and of a client whose loss is not finite at a model that is;
    `sharpness`, `adaptive_sharpness`: NaN unless `hessian.sharpness.enabled`)."""
    return ["run_id", "round", "data", *[f"lambda_{i}" for i in range(1, top_k + 1)], "trace", "trace_stderr",
            "n_eval", "iterations", "status", "sharpness", "adaptive_sharpness"]


DENSITY_COLUMNS = ["run_id", "round", "data", "probe", "node", "weight"]
# Each output of one Hessian job (one run, one round) and its file name in the job's directory: the rule's outputs and
# the plan's inputs both read them here.
JOB_FILES = {"table": "hessian.csv", "clients": "hessian_clients.csv", "density": "density.csv",
             "details": "hessian.json"}
# The output of a hessian_plane job, in the Hessian job's directory.
PLANE_FILE = "eigen_plane.npz"
# Beside them (not an output): the aggregate's eigenpairs as the Hessian job computed them, under the key of its plane
# job (`stage.eigen_key`), so that the plane job of the same settings and inputs takes them instead of computing them
# again.
EIGENPAIRS_DIR = "_eigenpairs"


@dataclass(frozen=True)
class EigenStore:
    """Where a Hessian job keeps the aggregate's eigenpairs for its plane job (`EIGENPAIRS_DIR` of its directory), and
    the plane jobs' result version (plan.hessian.RESULT_VERSIONS), which keys them with the plane job's settings: a
    plane job of a new version computes its own. `plane`: the plane job's output; where it already holds the
    eigenpairs of the key (a Hessian job rerun for its trace settings), none are kept."""

    directory: str | Path
    version: int
    plane: str | Path | None = None
AGGREGATE = "all"  # the `data` value of the aggregate training data (union of the client shards)
# kept integers in the gathered tables beside NaN rows
INTEGER_COLUMNS = ("round", "n_eval", "iterations", CLIENTS_COLUMN)


def client_label(client: int) -> str:
    """The `data` value of client k's rows."""
    return f"client_{client}"


def resolve_trace_estimator(name: str, trace_probes: int) -> str:
    """The estimator a job computes with: `name` itself, or for `auto` Hutch++ from AUTO_HUTCHPP_FROM products and
    Hutchinson below (so a small budget, where Hutch++'s third of sketch products may not pay, and every budget
    Hutch++ cannot take, < 4, keeps Hutchinson)."""
    if name != AUTO:
        return name
    return HUTCHPP if trace_probes >= AUTO_HUTCHPP_FROM else "hutchinson"
