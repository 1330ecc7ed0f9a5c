#!/usr/bin/env bash
# GPU check of pipstc on a bare GPU machine (a few minutes): CUDA and CPU training steps agree from the
# same weights (1e-3 relative), then training (fp32, bf16) and pool-labeling images/s at batch 64 and 256.
#
#   bash bench/gpu_check.sh                 # needs a CUDA torch wheel and the project's dependencies
#   PYTHON=/path/to/python bash bench/gpu_check.sh --out /tmp/gpu-check.txt   # the markdown table, also saved
#   bash bench/gpu_check.sh --smoke         # on a CPU: checks the script itself, measures nothing
#
# Exit status: 0 all agreed, 1 the CUDA and CPU losses disagreed, 2 no GPU visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "numpy", "cv2", "scipy", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}; install the project (pip install -e .) with a CUDA torch")
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {torch.cuda.device_count()}", flush=True)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" bench/gpu_check.py "$@"
