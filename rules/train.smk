# Federated training: one job per run, the global models of its kept rounds, client models at chosen rounds.

from fedscape.core.paths import PROGRESS, TRAIN_DIR, TRAIN_FILES
from fedscape.core.runs import Run
from fedscape.plan.resources import train_mem_mb
from fedscape.plan.train import train_inputs, train_settings


rule train:
    input:
        unpack(lambda wildcards: train_inputs(RESULTS, Run.from_wildcards(wildcards))),
    output:
        **{name: RESULTS.train_file(name) for name in TRAIN_FILES},
    log:
        RESULTS.job_log("train"),
    conda:
        "../envs/torch.yaml"
    resources:
        **GPU_JOB,
        # host memory: the data set is decoded whole before it is copied to the card, and the kept models are held
        # until they are written, each the size of the init (<TBD> in a dry run before the init exists)
        mem_mb=lambda wildcards, input, attempt: train_mem_mb(
            config, Run.from_wildcards(wildcards), attempt, input.init
        ),
    params:
        settings=lambda wildcards: train_settings(
            config,
            Run.from_wildcards(wildcards),
            recorded_params(READ_PARAMS, rules.train.output[0], wildcards),
        ),
        # Kept outside the declared outputs: Snakemake deletes those when a job is killed.
        progress_dir=f"{RESULTS(TRAIN_DIR)}/{PROGRESS}",
    script:
        "../workflow/scripts/train.py"
