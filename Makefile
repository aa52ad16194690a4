# Two commands for a fresh machine with Python 3.11:  make run  |  make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run report test test-slurm lint dryrun check-config clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

# The default workflow (run or continued), then its self-contained HTML report: report.html
report: run
	$(BIN)/snakemake --report report.html

dryrun: install
	$(BIN)/snakemake -n

# A config checked as the workflow checks it (YAML syntax with the line, schema, every stage's rules), without
# Snakemake, whose own reading of a --configfile reports a YAML syntax error without its line:
#   make check-config CONFIG=my.yaml
check-config: install
	$(BIN)/python -c "import sys; from fedscape.plan.workflow import load_config; \
	load_config(sys.argv[1], 'workflow/schemas/config.schema.yaml'); print(sys.argv[1], 'is valid')" $(CONFIG)

test: install
	$(BIN)/python -m pytest -q -m "not slurm"

# The workflow on a real one-node SLURM (as root: installs Debian's slurm and munge packages, starts
# and stops the daemons; skips with the reason where they cannot be installed). docs/cluster.md
test-slurm: install
	$(BIN)/python -m pytest -q -m slurm tests/workflow/test_slurm.py

lint: install
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check rules Snakefile

clean:
	rm -rf results logs .snakemake
