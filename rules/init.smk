# Initial models: random, pretrained on proxy data, IID warm-up, or another run's final model.

from fedscape.core.paths import INIT_DIR, PROGRESS
from fedscape.plan.init import init_input_paths, init_settings
from fedscape.plan.resources import by_init, init_mem_mb


rule init:
    input:
        unpack(
            lambda wildcards: init_input_paths(
                config, RUNS, wildcards.dataset, wildcards.model, wildcards.init
            )
        ),
    output:
        model=RESULTS.init_file(),
    log:
        RESULTS.job_log("init"),
    conda:
        "../envs/torch.yaml"
    resources:
        # a card only for the kinds that train (pretrained, iid_warmup): random and continued models are made on the CPU
        **{key: by_init(key, config, GPU_JOB, CPU_JOB) for key in GPU_JOB},
        # host memory: the data set it trains on is decoded whole before it is copied to the card
        mem_mb=lambda wildcards, attempt: init_mem_mb(
            config, wildcards.dataset, wildcards.init, attempt
        ),
    params:
        settings=lambda wildcards: init_settings(
            config,
            RUNS,
            wildcards.dataset,
            wildcards.model,
            wildcards.init,
            recorded_params(READ_PARAMS, rules.init.output[0], wildcards),
        ),
        # Pretraining / warm-up progress, kept outside the declared outputs (see rule train).
        progress_dir=f"{RESULTS(INIT_DIR)}/{PROGRESS}",
    script:
        "../workflow/scripts/init.py"
