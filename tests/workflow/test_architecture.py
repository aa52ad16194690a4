"""The workflow's shape: rule files that do not depend on their include order."""

from __future__ import annotations

import re

from helpers.workflow import TINY_CONFIG, copy_workflow, snakemake

INCLUDE_LOOP = 'for rule_file in sorted(Path(workflow.basedir, "rules").glob("*.smk")):'


def job_stats(workdir) -> dict[str, int]:
    """rule -> jobs of a forced dry run of the tiny config."""
    proc = snakemake(workdir, "-n", "--forceall", "--configfile", str(TINY_CONFIG), timeout=300)
    table = proc.stdout.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_rule_files_can_be_included_in_any_order(tmp_path):
    forward = copy_workflow(tmp_path / "forward")
    backward = copy_workflow(tmp_path / "backward")
    snakefile = backward / "Snakefile"
    assert INCLUDE_LOOP in snakefile.read_text()
    snakefile.write_text(snakefile.read_text().replace(INCLUDE_LOOP, INCLUDE_LOOP.replace("sorted(", "reversed(sorted(")
                                                       .replace('.smk"))', '.smk")))')))

    expected = job_stats(forward)

    assert expected["train"] > 0 and expected["all"] == 1
    assert job_stats(backward) == expected
