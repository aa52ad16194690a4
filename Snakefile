# fedscape: loss-landscape analyses of federated learning on non-IID data.
# Thin entry point: config, validation, rule files, and the targets of `rule all`.

from snakemake.utils import min_version

min_version("9.0")


# Front page of `snakemake --report report.html` (issue 7).
report: "workflow/report/workflow.rst"


# A config given with --configfile replaces the default one rather than being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/partition.smk"
include: "rules/init.smk"
include: "rules/train.smk"
include: "rules/tables.smk"
include: "rules/cost.smk"
include: "rules/barriers.smk"
include: "rules/hessian.smk"
include: "rules/landscape.smk"
# issue 7: cross-cutting tables and figures; keep last (reads the analyses' pair and job lists)
include: "rules/figures.smk"
# issue 8: rules that stay on the submitting node under --profile slurm; after every rule file
include: "rules/resources.smk"


rule all:
    default_target: True
    input:
        TARGETS,
