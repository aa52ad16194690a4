rule partitions_table:
    input:
        partition_counts_of_runs,
    output:
        results_path("tables/partitions.csv"),
    log:
        "logs/tables/partitions.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/concat_tables.py"


rule rounds_table:
    input:
        metrics_of_runs,
    output:
        results_path("tables/rounds.csv"),
    log:
        "logs/tables/rounds.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow/scripts/concat_tables.py"
