rule partition:
    output:
        partition=f"{PARTITION_DIR}/partition.npz",
        counts=f"{PARTITION_DIR}/counts.csv",
    log:
        f"{log_path(PARTITION_DIR)}/partition.log",
    conda:
        "../envs/light.yaml"
    params:
        settings=partition_params,
    script:
        "../workflow/scripts/partition.py"
