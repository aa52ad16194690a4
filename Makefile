# Two commands for a fresh machine with Python 3.11:  make run  |  make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run report smoke32 test test-slurm lint dryrun check-config verify status clean clean-all

# What the venv takes (6.0 GiB measured: torch's CUDA build is 5.5) and pip's unpacking. Checked before anything is
# written: a disk that fills half-way leaves a broken venv and pip's bare "[Errno 28] No space left on device".
VENV_GIB ?= 7

$(BIN)/activate:
	@$(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; sys.exit(0 if free >= $(VENV_GIB) \
	else f'make install needs about $(VENV_GIB) GiB free here for $(VENV) (torch with CUDA is 5.5 GiB); {free:.1f} GiB ' \
	'are free. Free some space (old clones and their .venv, pip caches) and run it again.')"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# pip byte-compiles the venv (80 s of one core): where PYTHONDONTWRITEBYTECODE is set, as on these CI machines, Python
# caches no module it compiles, so every job and test process would compile torch's again (--no-compile: the suite
# ran at a third of its speed).
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

# The default workflow (run or continued), then its self-contained HTML report: report.html
report: run
	$(BIN)/snakemake --report report.html

# The default study on 32x32 images (resnet20, batch norm) and a synthetic CIFAR-10-shaped data set, which
# benchmarks/smoke32.py writes into the config's data_dir when it is not there yet: every stage of the default
# workflow, on the GPU when there is one; minutes on a GPU, under 15 on 2 CPU cores. Results in results_smoke32/.
SMOKE32 := config/smoke32.yaml
SMOKE32_RESULTS := results_smoke32
smoke32: install
	$(BIN)/python benchmarks/smoke32.py --configfile $(SMOKE32)
	$(BIN)/snakemake --cores $(CORES) --configfile $(SMOKE32)

dryrun: install
	$(BIN)/snakemake -n

# A config checked as the workflow checks it (YAML syntax with the line, schema, every stage's rules), without
# Snakemake, whose own reading of a --configfile reports a YAML syntax error without its line: one line per problem
# (exits 1), or "is valid" and the warnings the workflow prints on it. Without CONFIG=, the default config/config.yaml.
#   make check-config CONFIG=my.yaml
check-config: install
	$(BIN)/python -c "import sys; from fedscape.plan.workflow import check_config_main; \
	sys.exit(check_config_main(sys.argv[1:]))" $(CONFIG)

# Every result that a job recorded, hashed again: lists what changed, went missing or holds another output's content,
# each with the command that remakes it; exits 1 if anything is wrong.  make verify RESULTS=/scratch/me/results
RESULTS ?= results
verify: install
	$(BIN)/python -c "import sys; from fedscape.core.manifest import main; sys.exit(main(sys.argv[1]))" $(RESULTS)

# The results that are out of date in meaning (settings, result versions or the set of inputs changed) or made from
# other data than the files under their data set's folder now, with the command that remakes only them; results made
# by another commit at the same result versions are current.
# Data files are hashed again only where their size, date or inode changed; ARGS="--rehash" reads every one again.
#   make status ARGS="--configfile config/papers/pilot_digits.yaml"
status: install
	$(BIN)/python -m fedscape.plan.status $(ARGS)

# The suite in TEST_WORKERS processes (pytest-xdist; TEST_WORKERS=0: in this one), the tests of the one tiny run in
# one of them (tests/conftest.py). On 2 cores two workers keep both busy while a test waits on a job's start.
TEST_WORKERS ?= $(CORES)
test: install
	$(BIN)/python -m pytest -q -m "not slurm" -n $(TEST_WORKERS) --dist loadgroup

# The workflow on a real one-node SLURM (as root: installs Debian's slurm and munge packages, starts
# and stops the daemons; skips with the reason where they cannot be installed). docs/cluster.md
test-slurm: install
	$(BIN)/python -m pytest -q -m slurm tests/workflow/test_slurm.py

lint: install
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check rules Snakefile

# The default run's results and logs, and smoke32's. A paper study's results below results/ (its results_dir
# results/<study> holds a _manifest of its own) and its logs (logs/results/<study>) are hours of runs that are not
# the default's to delete: they are kept, and so are the logs of any other results_dir (logs/<results_dir>/, e.g.
# logs/scratch/me/fedscape for /scratch/me/fedscape) and Snakemake's records of their outputs' settings in
# .snakemake (deleted, they would let a changed setting rerun nothing). Each kept group is named.
# `make clean-all` deletes everything.
# The default run's logs are logs/<part>/... for the first parts of core.paths.JOB_LOGS (tests/unit/test_makefile.py).
DEFAULT_LOGS := barriers figures hessian init landscape partitions tables train

# Snakemake's records (.snakemake/metadata: each output's settings, which it compares to rerun a changed job;
# .snakemake/incomplete: outputs of jobs that were running) are files named after their output's path, urlsafe
# base64 cut into parts of a file name's length, each but the last with a leading @ (snakemake.persistence.file).
# Those of the outputs clean deleted (below results/ less the kept studies, argv[2:], or smoke32's, argv[1]) go; the
# others stay, and .snakemake goes as a whole where none is left.
define CLEAN_RECORDS
import base64, os, shutil, sys

deleted = [os.path.abspath(root) for root in ("results", sys.argv[1])]
kept = [os.path.abspath(os.path.join("results", study)) for study in sys.argv[2:]]


def below(path, roots):
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def output(record, folder):
    try:
        name = os.path.relpath(record, folder).replace(os.sep, "").replace("@", "")
        return os.path.abspath(base64.urlsafe_b64decode(name).decode())
    except ValueError:  # no record's name: a file of Snakemake's own, kept
        return None


left = 0
for folder in (".snakemake/metadata", ".snakemake/incomplete"):
    for root, _, names in os.walk(folder):
        for record in (os.path.join(root, name) for name in names):
            path = output(record, folder)
            if path is not None and below(path, deleted) and not below(path, kept):
                os.remove(record)
            else:
                left += 1
if not left:
    shutil.rmtree(".snakemake", ignore_errors=True)
endef
export CLEAN_RECORDS

clean:
	@kept=; \
	for entry in results/* results/.[!.]*; do \
	  [ -e "$$entry" ] || continue; \
	  if [ -d "$$entry/_manifest" ]; then kept="$$kept $${entry#results/}"; else rm -rf "$$entry"; fi; \
	done; \
	for entry in $(DEFAULT_LOGS) $(SMOKE32_RESULTS); do rm -rf "logs/$$entry"; done; \
	for entry in logs/results/*; do \
	  [ -e "$$entry" ] || continue; \
	  case " $$kept " in *" $${entry#logs/results/} "*) ;; *) rm -rf "$$entry";; esac; \
	done; \
	rm -rf $(SMOKE32_RESULTS); \
	$(PYTHON) -c "$$CLEAN_RECORDS" $(SMOKE32_RESULTS) $$kept || exit 1; \
	if [ -n "$$kept" ]; then \
	  echo "make clean kept the results and logs of other studies below results/ and logs/results/:$$kept" \
	    "(make clean-all deletes them too)"; \
	fi; \
	other=; \
	for entry in logs/* logs/.[!.]*; do [ ! -e "$$entry" ] || [ "$$entry" = logs/results ] || other="$$other $${entry#logs/}"; done; \
	if [ -n "$$other" ]; then \
	  echo "make clean kept the logs of other results directories below logs/ and Snakemake's records of their" \
	    "results in .snakemake:$$other (make clean-all deletes them too)"; \
	fi

clean-all:
	rm -rf results $(SMOKE32_RESULTS) logs .snakemake
