"""Planning of the partition stage: the settings of one client split."""

from __future__ import annotations

from fedscape.core.config import canonical
from fedscape.core.runs import Run
from fedscape.data.specs import dataset_info


def partition_settings(config: dict, dataset: str, alpha: str, num_clients: int, seed: int) -> dict:
    """Everything a partition job needs: the dataset's options, alpha, client count, seed and `partition`."""
    return canonical({"dataset": dataset, "dataset_options": config["datasets"][dataset], "alpha": alpha,
                      "num_clients": int(num_clients), "seed": int(seed), **config["partition"]})


def check(config: dict, runs: list[Run]) -> list[str]:
    """Client counts that cannot each get `partition.min_size` samples of their dataset (known at planning)."""
    problems = []
    min_size = int(config["partition"]["min_size"])
    for dataset, num_clients in sorted({(run.dataset, run.num_clients) for run in runs}):
        options = config["datasets"][dataset]
        pool = dataset_info(dataset).client_pool_bound(options.get("test_fraction", 0.25),
                                                       options.get("proxy_fraction", 0.0))
        if num_clients * min_size > pool:
            problems.append(f"num_clients: {num_clients} clients x partition.min_size {min_size} = "
                            f"{num_clients * min_size} samples, but {dataset} leaves at most {pool} for the clients "
                            f"(after its test and proxy splits); use at most {pool // min_size} clients or a smaller "
                            "min_size")
    return problems


def targets(config: dict, runs: list[Run]) -> list[str]:
    """None of its own: partitions are reached through the runs and the partitions table."""
    return []
