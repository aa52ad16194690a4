"""What a job asks of the machine beyond cores: one GPU for the jobs that compute with torch on a device.

Snakemake schedules a local run by cores alone unless a resource says otherwise, so every rule that can run on a GPU
declares `resources: gpu=` (`gpu_per_job`) and the Snakefile limits a local run's `gpu` resource to what the cards
hold (`local_gpu_slots`). The SLURM profile (slurm/config.yaml) asks for `gpu: 1` for the same rules (`GPU_RULES`;
tests/unit/test_resources.py keeps the three in step), and SLURM places the jobs itself.
"""

from __future__ import annotations

from fedscape.core.gpus import visible_gpus

# The rules whose jobs compute with torch on the configured device: federated training, the inits that train, the
# loss-surface chunks, the Hessian jobs and the barrier evaluations. Every other rule reads tables or writes figures.
GPU_RULES = ("train", "init", "landscape_chunk", "hessian", "interpolation", "layer_barriers")


def gpu_per_job(config: dict, gpus: int | None = None) -> int:
    """The `gpu` resource of a GPU rule's job: 1 where it will take a card (CUDA visible, device not `cpu`), else 0,
    so that a CPU-only machine schedules by cores alone, as before. `gpus`: the visible cards (default: this
    machine's, `fedscape.core.gpus.visible_gpus`)."""
    gpus = visible_gpus() if gpus is None else gpus
    return int(config["training"]["device"] != "cpu" and gpus > 0)


def local_gpu_slots(config: dict, gpus: int | None = None) -> int:
    """How many GPU jobs a local run starts at once: one per visible card with `device: auto` (each job then takes
    the card with the fewest jobs: `fedscape.models.device.resolve_device`), one with an explicit `cuda[:i]`
    (every job on that one card), none without a card. `--resources gpu=N` on the command line overrides it, for
    jobs known to fit N to a card."""
    gpus = visible_gpus() if gpus is None else gpus
    if gpu_per_job(config, gpus) == 0:
        return 0
    return gpus if config["training"]["device"] == "auto" else 1
