#!/usr/bin/env bash
# Set up pipstc in ./.venv (idempotent). Pins the CPU torch wheel where no torch is installed.
#   bash scripts/setup.sh                 # the package, its tools, the optional features and the test extras
#   bash scripts/setup.sh --labelstudio   # also the Label Studio server in ./.venv-labelstudio
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # plain `torch` would pull a multi-GB CUDA build; 2.13.0 is the CPU wheel on this machine's disk
  .venv/bin/pip install -q "torch==2.13.0" 2>&1 | quiet
fi
# dev pulls in the dask and yaml extras: the tests run Dask pool labeling and YAML schemes
.venv/bin/pip install -q -e ".[dev]" 2>&1 | quiet

if [ "${1:-}" = "--labelstudio" ]; then
  # The server lives in its own venv: beside prefect, pip would downgrade prefect (docs/review.md section 10)
  if [ ! -x .venv-labelstudio/bin/label-studio ]; then
    "$PY" -m venv .venv-labelstudio
    .venv-labelstudio/bin/pip install -q "label-studio==1.23.2" 2>&1 | quiet
  fi
fi
echo "pipstc set up in .venv"
