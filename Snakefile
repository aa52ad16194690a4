# fedscape: loss-landscape analyses of federated learning on non-IID data.
# Thin entry point: config, validation, the rule files (one per stage, in any order) and `rule all`.

from pathlib import Path

from snakemake.utils import min_version

from fedscape.core.config import load_schema, read_config_file
from fedscape.core.paths import Results
from fedscape.core.runs import build_runs
from fedscape.plan.workflow import all_targets, check_config, wildcard_constraints

min_version("9.0")


report: "workflow/report/workflow.rst"


# A config given with --configfile replaces the default one rather than being merged into it. (Snakemake
# reads a --configfile before this file runs; the default one is read here first so that a YAML syntax
# error names its line.)
if not workflow.overwrite_configfiles:
    read_config_file("config/config.yaml")

    configfile: "config/config.yaml"


check_config(
    config,
    load_schema(Path(workflow.basedir, "workflow/schemas/config.schema.yaml")),
    files=workflow.configfiles,
)
RUNS = build_runs(config)
RESULTS = Results.of(config)


wildcard_constraints:
    **wildcard_constraints(),


for rule_file in sorted(Path(workflow.basedir, "rules").glob("*.smk")):

    include: rule_file


rule all:
    default_target: True
    input:
        all_targets(config, RUNS),
