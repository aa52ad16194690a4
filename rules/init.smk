rule init:
    input:
        unpack(init_inputs),
    output:
        model=INIT_FILE,
    log:
        log_path(INIT_FILE).replace(".pt", ".log"),
    conda:
        "../envs/torch.yaml"
    params:
        settings=init_params,
        # Pretraining / warm-up progress, kept outside the declared outputs (see rule train).
        progress_dir=INIT_FILE.replace("init.pt", "_progress"),
    script:
        "../workflow/scripts/init.py"
