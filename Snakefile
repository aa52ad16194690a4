# fedscape: loss-landscape analyses of federated learning on non-IID data.
# Thin entry point: config, validation, rule files, and the targets of `rule all`.

from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the default one rather than being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/partition.smk"
include: "rules/init.smk"
include: "rules/train.smk"
include: "rules/tables.smk"


rule all:
    input:
        TARGETS,
    default_target: True
