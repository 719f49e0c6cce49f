#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages, .venv, the package with test extras.
#   TORCH_SPEC   pip spec for PyTorch (default torch==2.13.0; set it to pick a CUDA/CPU build of your choice)
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
# PyTorch first, pinned, so nothing else pulls a different (multi-GB CUDA) build.
python -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e ".[test]"
# open-clip-torch ships the MIT-licensed CLIP BPE vocabulary used by `make-random-clip`; --no-deps because its
# torchvision dependency has no CPU wheel and is not needed for the vocabulary file.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('open_clip') is None)" \
  || pip install -q --no-deps open-clip-torch
echo "setup: done ($(python -c 'import ray, torch, transformers, lancedb; print(f"ray {ray.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, lancedb {lancedb.__version__}")'))"
