# Client partitions (NIID-Bench, Li et al. 2022: a per-class Dirichlet over clients, not Hsu et al.'s per-client
# Dir(alpha p)): one split per dataset, client count, alpha and seed.

from fedscape.core.paths import PARTITION_DIR
from fedscape.plan.partition import partition_files, partition_settings


rule partition:
    input:
        lambda wildcards: partition_files(config, wildcards.alpha),
    output:
        partition=f"{RESULTS(PARTITION_DIR)}/partition.npz",
        counts=f"{RESULTS(PARTITION_DIR)}/counts.csv",
    log:
        RESULTS.job_log("partition"),
    localrule: True
    conda:
        "../envs/light.yaml"
    params:
        settings=lambda wildcards: partition_settings(
            config,
            wildcards.dataset,
            wildcards.alpha,
            int(wildcards.num_clients),
            int(wildcards.seed),
            recorded_params(READ_PARAMS, rules.partition.output[0], wildcards),
        ),
    script:
        "../workflow/scripts/partition.py"
