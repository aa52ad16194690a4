"""The partition stage: split a dataset's training pool among the clients (an alpha of `alphas`: IID or
Dirichlet label skew; a `partitions` entry: another partition kind, fedscape.data.partition.PARTITION_KINDS)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedscape.core.io import write_csv
from fedscape.core.setting import alpha_column
from fedscape.data.locations import job_fingerprint
from fedscape.data.partition import make_kind_partition, save_partition, setting_entry
from fedscape.data.sources import source_from_options
from fedscape.stages.partition_settings import PartitionJob

log = logging.getLogger("fedscape.partition")


def partition_job(settings: dict, out_npz: str | Path, out_csv: str | Path) -> None:
    """Split the dataset's training pool among the clients (the job of `settings`: `PartitionJob`) and write the
    partition and its counts."""
    job = PartitionJob.from_settings(settings)
    ds = source_from_options(job.dataset, job.dataset_options)
    labels = ds.labels
    setting = job.alpha
    entry, label = setting_entry(setting, job.kind)  # an alpha: its iid or dirichlet entry
    part = make_kind_partition(entry, labels, job.num_clients, job.seed, job.min_size, job.max_tries,
                               writer_ids=ds.writer_ids, dataset=job.dataset, label=label)
    made_from = job_fingerprint(job.dataset)  # what the files held: a job loading the partition checks its data
    save_partition(out_npz, part, labels, ds.num_classes,
                   {"dataset": job.dataset, **({"data_sha256": made_from} if made_from else {})})
    counts = part.class_counts(labels, ds.num_classes)
    df = pd.DataFrame({"dataset": job.dataset, "alpha": alpha_column(setting), "partition": part.kind,
                       "num_clients": part.num_clients, "seed": job.seed,
                       "client_id": np.arange(part.num_clients), "num_samples": part.sizes})
    # all class columns at once: one insert per class fragments the frame (pandas warns from ~100, ImageNet-200 has 200)
    df = pd.concat([df, pd.DataFrame(counts, columns=[f"class_{k}" for k in range(ds.num_classes)])], axis=1)
    write_csv(df, out_csv)
    log.info("partition %s %s (%s) clients=%d seed=%d: sizes min=%d max=%d", job.dataset, setting,
             part.kind, part.num_clients, job.seed, part.sizes.min(), part.sizes.max())
