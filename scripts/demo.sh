#!/usr/bin/env bash
# Main job: set up what the demo needs (`setup.sh demo`: no browser, no test packages), build the Tux Paint sample
# catalog, ingest it with Ray Data, serve it with Ray Serve. Ctrl-C stops it all within ~10 s (batch_jobs/demo.py).
# Extra arguments go to `python -m batch_jobs demo` (e.g. --limit 100, --dtype bfloat16, --no-serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
exec python -m batch_jobs demo "$@"
