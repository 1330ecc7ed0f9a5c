#!/usr/bin/env bash
# Set up everything the tests need, start the services, run the whole test suite.
# Label Studio is started by a session fixture (tests/conftest.py); a Prefect API server is started here;
# Dask tests start their own LocalCluster.
set -euo pipefail
cd "$(dirname "$0")/.."
# PIPSTC_SKIP_SETUP=1 skips the (idempotent, ~20 s) set-up when .venv and .venv-labelstudio exist already
[ "${PIPSTC_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh --labelstudio

export PIPSTC_LABEL_STUDIO_BIN="$PWD/.venv-labelstudio/bin/label-studio"
WORK="$PWD/.work/test-$$"
mkdir -p "$WORK"
export PREFECT_HOME="$WORK/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore
export OMP_WAIT_POLICY=PASSIVE   # tests share 2 cores with the servers: spinning OpenMP threads would collapse
PORT=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
.venv/bin/prefect server start --host 127.0.0.1 --port "$PORT" --no-ui > "$WORK/prefect-server.log" 2>&1 &
SERVER_PID=$!
cleanup() { kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  if curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "Prefect server died:"; cat "$WORK/prefect-server.log"; exit 1; fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/api/health" >/dev/null || { echo "Prefect server did not answer in 300 s"; cat "$WORK/prefect-server.log"; exit 1; }
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"

.venv/bin/python -m pytest -q "$@"
