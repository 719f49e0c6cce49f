#!/usr/bin/env bash
# Main job: set up, build the Tux Paint sample catalog, ingest it with Ray Data, serve it with Ray Serve.
# Extra arguments go to `python -m batch_jobs demo` (e.g. --limit 100, --dtype bfloat16, --no-serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
exec python -m batch_jobs demo "$@"
