#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages, .venv, the package with test extras.
#   TORCH_SPEC   pip specs for PyTorch and torchvision (default "torch==2.14.1 torchvision==0.29.1", the pair
#                constraints.txt pins; open_clip needs torchvision, and PyPI's torchvision does not import beside
#                the CPU build of torch 2.13.0 — README "Choosing a model" says what this costs)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: the sample catalog's photos (tuxpaint-stamps-default) and real test videos (opencv-doc).
missing=()
[ -d /usr/share/tuxpaint/stamps ] || missing+=(tuxpaint-stamps-default)
[ -d /usr/share/doc/opencv-doc/examples ] || missing+=(opencv-doc)
# Headless Chromium for the web page's browser tests (Playwright drives this one; never `playwright install`).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# PyTorch and torchvision first, as a matching pair, so nothing else pulls a different build (a venv made with an
# older pin, e.g. torch 2.13.0 alone, is moved to the pair: open_clip imports torchvision, which must match torch).
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
python - "$TORCH_SPEC" 2>/dev/null <<'PY' || pip install -q $TORCH_SPEC
import sys, importlib.metadata as m
want = dict(s.split("==") for s in sys.argv[1].split() if "==" in s)
sys.exit(any(m.version(k).split("+")[0] != v for k, v in want.items()))
PY
pip install -q -e ".[test]"
echo "setup: done ($(python -c 'import ray, torch, transformers, lancedb; print(f"ray {ray.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, lancedb {lancedb.__version__}")'))"
