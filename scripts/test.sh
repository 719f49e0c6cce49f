#!/usr/bin/env bash
# Set up everything the tests need (`setup.sh test`: the demo's set plus test videos, Chromium and the `test` extras;
# idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
exec python -m pytest -q "$@"
