"""Torch-free shape of a partition job's settings (`fedscape.core.jobs`): what `fedscape.plan.partition` plans and
`fedscape.stages.partition.partition_job` reads."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.core.jobs import JobSettings


@dataclass(frozen=True, kw_only=True)
class PartitionJob(JobSettings):
    """One client split of a dataset: its setting (an alpha of `alphas` or a `partitions` label), clients and seed."""

    rule = "partition"
    # The redraws a split may take bound whether the job succeeds, not the split it makes (bit for bit the one of its
    # seed): raising it after a failure, or lowering it, reruns no finished partition.
    neutral = ("max_tries",)
    dataset: str
    dataset_options: dict  # the config's `datasets.<dataset>` entry
    alpha: str  # the run field's text: `iid`, a Dirichlet alpha, or a `partitions` label
    num_clients: int
    seed: int
    min_size: int  # the `partition` section
    max_tries: int
    # A label's `partitions` entry (its kind and options: `data.partition.kind_options`); None for an alpha, whose
    # settings predate the partition kinds.
    kind: dict | None = None
