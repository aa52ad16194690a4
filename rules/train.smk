rule train:
    input:
        partition=f"{PARTITION_DIR}/partition.npz",
        init=INIT_FILE,
    output:
        trajectory=f"{TRAIN_DIR}/trajectory.pt",
        clients=f"{TRAIN_DIR}/clients.pt",
        metrics=f"{TRAIN_DIR}/metrics.csv",
        meta=f"{TRAIN_DIR}/meta.json",
        client_updates=f"{TRAIN_DIR}/client_updates.csv",
    log:
        f"{TRAIN_LOG}/train.log",
    conda:
        "../envs/torch.yaml"
    params:
        settings=train_params,
        # Kept outside the declared outputs: Snakemake deletes those when a job is killed.
        progress_dir=f"{TRAIN_DIR}/_progress",
    script:
        "../workflow/scripts/train.py"
