"""Planning of the cost table (FedAlign paper, Table 5): every run's metrics.csv and meta.json; and a run's local
training in client steps (`run_steps`), which benchmarks/bench_gpu.py prices into the papers' device-hours."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fedscape.core.paths import Results
from fedscape.core.runs import Run
from fedscape.fl.schedule import client_steps, stacked_client_steps
from fedscape.fl.settings import TrainConfig, sample_clients

# The result version of each job kind this module plans: when to bump it, core.config.result_version_params.
# cost_table 2: runs are compared within one execution (clients trained at once, one by one, or from CUDA graphs).
# cost_table 3: and within one precision (column `precision`, each attempt's rounds in its own).
# cost_table 4: `device` is the device's type (cuda, not cuda:1), so the runs a workflow spread over a machine's cards
# of one model compare.
# cost_table 5: a resumed run's round whose attempt did not record its device, card, execution or precision is
# `unrecorded` there, not the last attempt's.
# cost_table 6: a run whose meta.json predates its top-level device or device_name is `unrecorded` there too (was
# `unknown`, and the device for a missing device_name), as its execution and precision were.
RESULT_VERSIONS = {"cost_table": 6}


def check(config: dict, runs: list[Run]) -> list[str]:
    """Nothing beyond the schema."""
    return []


def targets(config: dict, runs: list[Run]) -> list[str]:
    """cost.csv."""
    return [Results.of(config).table("cost")]


# Every round's sampled clients, drawn once for all the runs that share their seed, clients and participation (a
# config's runs differ in their algorithm more often): meta.yaml's 312 image runs draw 160,000 rounds' samples, which
# took most of its projection's time. Read only.
_sampled = functools.lru_cache(maxsize=1 << 16)(sample_clients)


@dataclass(frozen=True)
class RunSteps:
    """A run's local training in client steps, over all its rounds: what its clients step (`client`: what a
    sequential run pays for) and what its vectorised rounds pay for (`stacked`: each chunk of stacked clients for as
    long as its longest client, `fedscape.fl.schedule.stacked_client_steps`)."""

    client: int
    stacked: int


def run_steps(cfg: TrainConfig, sizes: list[int]) -> RunSteps:
    """The client steps of a run of `cfg` whose clients hold `sizes` samples (its partition's, one per client): every
    round's sampled clients (`fedscape.fl.settings.sample_clients`, as the engine draws them) with their local work
    that round (`TrainConfig.client_work`), each client's steps as its trainer plans them
    (`fedscape.fl.schedule.client_steps`: the batch, `drop_last`), and a vectorised round's chunks of at most
    `client_chunk_size` clients."""
    num_clients = len(sizes)
    client = stacked = 0
    for t in range(1, cfg.rounds + 1):
        work = cfg.client_work(t, num_clients)
        steps = [client_steps(sizes[c], work[c], cfg.work_unit, cfg.batch_size, cfg.drop_last)
                 for c in _sampled(cfg.seed, t, num_clients, cfg.participation)]
        client += sum(steps)
        stacked += stacked_client_steps(steps, cfg.client_chunk_size)
    return RunSteps(client, stacked)
