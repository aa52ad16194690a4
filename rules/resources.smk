# Cluster execution (issue 8): which rules stay on the submitting node under `--profile slurm`.
# Included last by the Snakefile, so that it sees every rule. The per-rule SLURM resources (GPUs,
# memory, runtime, CPUs) live in slurm/config.yaml; the conda environments in envs/.

import os

from snakemake.exceptions import WorkflowError

# Light rules run where snakemake runs instead of going through sbatch: they take seconds, need no
# GPU, and a queue wait per table or figure would dominate the workflow's wall time. A rule is light
# when it is listed here or when its name says it only assembles results (*_table(s), *_figure(s)),
# so rules that later stages add under those names are covered too.
LIGHT_RULES = {"all", "partition", "landscape_gather"}
LIGHT_SUFFIXES = ("_table", "_tables", "_figure", "_figures")


workflow.localrules(
    *sorted(
        r.name
        for r in workflow.rules
        if r.name in LIGHT_RULES or r.name.endswith(LIGHT_SUFFIXES)
    )
)


# A copy of the workflow without envs/ (a quick try in a scratch directory) still runs without
# --sdm conda: Snakemake records a hash of every rule's conda file, so a missing file fails jobs.
if not os.path.isdir(os.path.join(workflow.basedir, "envs")):
    if any(
        "conda" in str(m).lower()
        for m in workflow.deployment_settings.deployment_method
    ):
        raise WorkflowError(
            f"--sdm conda needs the envs/ directory beside the Snakefile in {workflow.basedir}"
        )
    for _rule in workflow.rules:
        _rule.conda_env = None
