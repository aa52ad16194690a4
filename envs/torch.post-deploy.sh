#!/usr/bin/env bash
# Snakemake runs this once in the freshly created environment (activated), from the working
# directory: install fedscape from the repository (FEDSCAPE_ROOT, default the working directory),
# editable so that jobs always run the checked-out code; its dependencies come from conda.
set -euo pipefail
root=${FEDSCAPE_ROOT:-$PWD}
if [ ! -f "$root/pyproject.toml" ] || [ ! -d "$root/src/fedscape" ]; then
  echo "fedscape post-deploy: $root is not the fedscape repository; run snakemake from the repository" \
       "root or set FEDSCAPE_ROOT=/path/to/fedscape" >&2
  exit 1
fi
python -m pip install --no-deps --no-build-isolation --editable "$root"
python -c "import fedscape, torch; print('fedscape', fedscape.__file__, 'torch', torch.__version__)"
