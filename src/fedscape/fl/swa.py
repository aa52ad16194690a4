"""Stochastic weight averaging at the server (Caldarola et al. 2022, "Improving Generalization in Federated
Learning by Seeking Flat Minima"; SWA: Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima").

From `start_round` on, the learning rate follows a cycle of `cycle` rounds: in the j-th round of a cycle
(j = 1..c) it is (1 - j/c) * lr_max + (j/c) * lr_min (Izmailov et al., Sec. 3.1, with t(i) = j/c), where
lr_max is the learning rate in force and lr_min = `lr_ratio` * lr_max. After the last round of each
cycle (j = c, the lowest rate) the SWA model is updated as the running mean of the global models
collected so far: w_swa <- (n w_swa + w) / (n + 1), n <- n + 1. With c = 1 the rate is lr_min in
every round and every global model from `start_round` on is averaged. A phase that is no whole number of cycles
trains its last rounds without averaging them (`SWAConfig.unaveraged_rounds`; the planner warns).

The schedule applies to the clients' learning rate by default, as in the authors' code (the server
sets the clients' lr each round, `update_clients_lr`), or to the server optimiser's lr
(`scheduled_lr: server`). The cycle counts from `start_round` and the average is taken after its
lowest-rate round, as in Izmailov et al.'s algorithm; the authors' code indexes the cycle by the absolute
round (`round % c`) and averages one round after the lowest rate whenever the start is a multiple of c.
The global models of the trajectory are the federated run's, unchanged; the SWA model is kept beside
them and is the run's reported final model.

The SWA model of a model with batch norm is evaluated with statistics recomputed from the training data after
each update (`bn_stats: recomputed`, Izmailov et al.'s `bn_update`; the engine keeps them as the SWA model's
buffers, so the trajectory stores them) or with the running mean of the global models' statistics (`stored`).
Recomputing reads the union of the clients' data, which a real server does not hold: it measures the SWA model as
Izmailov et al. evaluate it, an analysis's view, not a deployable protocol.

Torch-free (planning reads `SWAConfig`): the running mean uses only the tensors' own arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fedscape.core.jobs import JobSettings
from fedscape.core.names import suggest
from fedscape.models.specs import BN_STATS, BN_STATS_BASELINE

SCHEDULED_LR = ("client", "server")
# Evaluations of the SWA model, beside the global model's in metrics.csv of a run with SWA (NaN before the
# first cycle ends; between cycle ends the SWA model, and so its metrics, do not change).
SWA_METRICS = ("swa_train_loss", "swa_train_acc", "swa_test_loss", "swa_test_acc", "swa_models")
# The batch-norm statistics the SWA model was evaluated with (`SWAConfig.bn_stats`), beside SWA_METRICS in the
# metrics.csv of a run with SWA whose model has batch norm (only there, so that no other run's table changes).
SWA_BN_COLUMN = "swa_bn_stats"
START_FRACTION = 0.75  # Caldarola et al. 2022 start SWA after 75% of the rounds (their code: int(.75 * rounds))


@dataclass(frozen=True)
class SWAConfig:
    """Server-side SWA with a cyclical learning rate (Caldarola et al. 2022; Izmailov et al. 2018)."""

    # First round of the SWA phase (1-based); None = int(0.75 * rounds) + 1, the last quarter of training as in
    # Caldarola et al. 2022 (75% of the round budget). A start after the last round leaves the run plain.
    start_round: int | None = None
    cycle: int = 10  # c, rounds per cycle of the learning rate: Caldarola et al.'s CIFAR runs use --swa-c 10
    # lr_min / lr_max: the authors' CIFAR runs cycle the client lr from 0.01 down to --swa-lr 1e-4 (their default)
    lr_ratio: float = 0.01
    scheduled_lr: str = "client"  # the lr the cycle scales: the clients' (the authors' code) or the server's
    # The SWA model's batch-norm statistics: recomputed from the training data after each update (Izmailov et al.
    # 2018, `bn_update`) or the running mean of the global models' (`stored`, the baseline: `SWASettings` leaves it
    # out of a job's settings). Models without batch norm ignore it.
    bn_stats: str = "recomputed"

    def __post_init__(self):
        if self.start_round is not None and (isinstance(self.start_round, bool) or not isinstance(self.start_round, int)
                                             or self.start_round < 1):
            raise ValueError(f"swa.start_round must be an integer >= 1 or null, got {self.start_round!r}")
        if isinstance(self.cycle, bool) or not isinstance(self.cycle, int) or self.cycle < 1:
            raise ValueError(f"swa.cycle must be an integer >= 1, got {self.cycle!r}")
        if isinstance(self.lr_ratio, bool) or not isinstance(self.lr_ratio, (int, float)) or not 0 < self.lr_ratio <= 1:
            raise ValueError(f"swa.lr_ratio must be a number in (0, 1] (lr_min / lr_max), got {self.lr_ratio!r}")
        if self.scheduled_lr not in SCHEDULED_LR:
            raise ValueError(f"swa.scheduled_lr must be one of {', '.join(SCHEDULED_LR)}, got {self.scheduled_lr!r}"
                             f".{suggest(str(self.scheduled_lr), SCHEDULED_LR)}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"swa.bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}"
                             f".{suggest(str(self.bn_stats), BN_STATS)}")

    def start(self, rounds: int) -> int:
        """The first round of the SWA phase in a run of `rounds` rounds."""
        return int(START_FRACTION * rounds) + 1 if self.start_round is None else self.start_round

    def idle(self, rounds: int) -> bool:
        """Whether the SWA phase starts after the last of `rounds` rounds, which leaves the run plain: no SWA model,
        its last global model the final one."""
        return self.start(rounds) > rounds

    def position(self, round_: int, rounds: int) -> int:
        """j in 1..cycle: the round's place in its cycle; 0 before the SWA phase."""
        start = self.start(rounds)
        return 0 if round_ < start else (round_ - start) % self.cycle + 1

    def lr_factor(self, round_: int, rounds: int) -> float:
        """The scheduled lr of round `round_` over lr_max: 1 before the SWA phase, then the cycle's linear decay
        (1 - j/c) + (j/c) * lr_ratio."""
        j = self.position(round_, rounds)
        if j == 0:
            return 1.0
        t = j / self.cycle
        return (1 - t) + t * self.lr_ratio

    def unaveraged_rounds(self, rounds: int) -> range:
        """The last rounds of a run of `rounds` rounds after its last cycle end, where the phase does not end on one:
        trained, but never averaged, so the SWA model (the run's final one) is that of the last cycle end, as in the
        authors' code, which averages at cycle ends only. Empty where the phase ends on a cycle end or never starts."""
        if self.idle(rounds):
            return range(0)
        return range(rounds - (rounds - self.start(rounds) + 1) % self.cycle + 1, rounds + 1)

    def cycle_end_rounds(self, rounds: int) -> tuple[int | None, int]:
        """The nearest round counts below and above `rounds` whose SWA phase ends on a cycle end, each with the start
        it resolves (the default start moves with the rounds); None below where no shorter run completes a cycle.
        The phase grows by one round a round (by one in four with the default start, which moves with three in four),
        so the one above is at most 4 cycles and 4 rounds away."""
        def ends(n: int) -> bool:
            return not self.idle(n) and not self.unaveraged_rounds(n) and n - self.start(n) + 1 >= self.cycle

        below = next((n for n in range(rounds - 1, 0, -1) if ends(n)), None)
        return below, next(n for n in range(rounds + 1, rounds + 4 * self.cycle + 5) if ends(n))

    def averages_after(self, round_: int, rounds: int) -> bool:
        """Whether the SWA model takes the global model of `round_` (the last round of a cycle)."""
        return self.position(round_, rounds) == self.cycle

    def to_dict(self, rounds: int) -> dict:
        """The settings with the start resolved for a run of `rounds` rounds (a job's canonical settings)."""
        return {**asdict(self), "start_round": self.start(rounds)}


@dataclass(frozen=True, kw_only=True)
class SWASettings(JobSettings):
    """A train job's `training.swa` settings (`fedscape.core.jobs`): the run's SWAConfig with its start resolved.

    `bn_stats` came after the first SWA results: its declared default is its baseline, `stored` (what every SWA run
    did before the key), not SWAConfig's current default, so the settings of those runs stay as they were.
    """

    rule = "train"
    start_round: int
    cycle: int
    lr_ratio: float
    scheduled_lr: str
    bn_stats: str = BN_STATS_BASELINE

    @classmethod
    def of(cls, swa: SWAConfig, rounds: int, batch_norm: bool) -> SWASettings:
        """The settings of `swa` in a run of `rounds` rounds: the start resolved (`SWAConfig.to_dict`), and
        `bn_stats` at its baseline for a model without batch norm (recomputing is a no-op there, which must not
        rerun finished runs)."""
        resolved = swa.to_dict(rounds)
        if not batch_norm:
            resolved["bn_stats"] = BN_STATS_BASELINE
        return cls(**resolved)

    def config(self) -> SWAConfig:
        """The SWAConfig the engine runs (its start_round as the job resolved it)."""
        return SWAConfig(start_round=self.start_round, cycle=self.cycle, lr_ratio=self.lr_ratio,
                         scheduled_lr=self.scheduled_lr, bn_stats=self.bn_stats)


def swa_config(value: Any) -> SWAConfig | None:
    """The SWAConfig of a `training.swa` value (None or a mapping); ValueError naming an unknown key."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"swa must be a mapping of {', '.join(f.name for f in fields(SWAConfig))} or null, "
                         f"got {value!r}")
    valid = [f.name for f in fields(SWAConfig)]
    for key in value:
        if key not in valid:
            raise ValueError(f"unknown swa key {key!r}.{suggest(key, valid)} Valid: {', '.join(valid)}")
    return SWAConfig(**value)


def check_swa(cfg: SWAConfig, rounds: int) -> None:
    """ValueError when the SWA phase starts but no cycle ends by the last round (no SWA model would exist)."""
    start = cfg.start(rounds)
    if start <= rounds < start + cfg.cycle - 1:
        raise ValueError(f"swa: the SWA phase starts at round {start} but its first cycle of {cfg.cycle} rounds ends "
                         f"at round {start + cfg.cycle - 1}, after the last round ({rounds}): no SWA model would be "
                         "formed; lower swa.cycle or swa.start_round (or start after the last round to turn it off)")


def partial_cycle_warning(cfg: SWAConfig, rounds: int) -> str | None:
    """A line on a SWA phase of a run of `rounds` rounds that ends within a cycle (`SWAConfig.unaveraged_rounds`),
    naming the rounds it never averages and the round counts that end on a cycle end; None where it does not."""
    left = cfg.unaveraged_rounds(rounds)
    if not left:
        return None
    below, above = cfg.cycle_end_rounds(rounds)
    unaveraged = f"round {left[0]}" if len(left) == 1 else f"rounds {left[0]}-{left[-1]}"
    moved = " (the default start_round moving with them)" if cfg.start_round is None else ""
    return (f"its phase from round {cfg.start(rounds)} ends within a cycle of {cfg.cycle} rounds: {unaveraged} "
            f"train after its last cycle end (round {left[0] - 1}) and the SWA model, the final one, never averages "
            f"them; rounds {' or '.join(str(n) for n in (below, above) if n is not None)} would end it on a cycle "
            f"end{moved}")


class SWAModel:
    """The running mean of the global models collected at the cycle ends (parameters and floating buffers).

    Floating buffers (batch-norm statistics) are averaged like the parameters. Izmailov et al. recompute them with a
    pass over the training data instead, which the engine does after each update where `swa.bn_stats` is
    `recomputed` (the default for a model with batch norm): a real server without the clients' data could not.
    """

    def __init__(self):
        self.params = None
        self.buffers = None
        self.count = 0  # n, the models averaged so far
        self.rounds: list[int] = []  # the rounds whose global models were averaged

    def update(self, round_: int, params, buffers) -> None:
        """w_swa <- (n w_swa + w) / (n + 1) (Izmailov et al. 2018, Algorithm 1), on detached copies."""
        n = self.count
        if n == 0:
            self.params, self.buffers = params.detach().clone(), buffers.detach().clone()
        else:
            self.params = (self.params * n + params.detach()) / (n + 1)
            self.buffers = (self.buffers * n + buffers.detach()) / (n + 1)
        self.count = n + 1
        self.rounds.append(int(round_))

    def state_dict(self) -> dict:
        """Everything a resumed run needs (CPU tensors and plain values)."""
        return {"params": self.params.cpu(), "buffers": self.buffers.cpu(), "count": self.count,
                "rounds": list(self.rounds)}

    def load_state_dict(self, state: dict, device) -> None:
        self.params, self.buffers = state["params"].to(device), state["buffers"].to(device)
        self.count, self.rounds = int(state["count"]), [int(r) for r in state["rounds"]]


class ScheduledLR:
    """Sets the lr of one round to `factor` x its configured value (`SWAConfig.scheduled_lr`), and back after.

    Client: the trainer's TrainConfig gets lr = factor * cfg.lr for the round (both trainers read `cfg` in every
    round, so vectorised and sequential training see the same rate). Server: the strategy's server optimiser's
    `lr` (every server optimiser has one) is scaled for the round's server step.
    """

    def __init__(self, swa: SWAConfig, trainer, strategy, factor: float):
        self.swa, self.trainer, self.strategy, self.factor = swa, trainer, strategy, factor
        self.saved = None

    def __enter__(self):
        if self.factor == 1.0:
            return self
        if self.swa.scheduled_lr == "client":
            cfg = getattr(self.trainer, "cfg", None)
            if cfg is None or not hasattr(cfg, "lr"):
                raise TypeError(f"swa.scheduled_lr 'client' needs a trainer with a TrainConfig `cfg`; "
                                f"{type(self.trainer).__name__} has none")
            self.saved = cfg
            self.trainer.cfg = replace(cfg, lr=cfg.lr * self.factor)
        else:
            self.saved = self.strategy.server_opt.lr
            self.strategy.server_opt.lr = self.saved * self.factor
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is None:
            return
        if self.swa.scheduled_lr == "client":
            self.trainer.cfg = self.saved
        else:
            self.strategy.server_opt.lr = self.saved
