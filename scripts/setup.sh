#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages, .venv, PyTorch, the package.
#   bash scripts/setup.sh demo   what scripts/demo.sh needs: the sample catalog's photos, python3-venv, the package
#                                without extras
#   bash scripts/setup.sh test   (the default) what scripts/test.sh needs: the demo's set plus real test videos,
#                                headless Chromium and a font for the web page's browser tests, and the `test` extras
#   --dry-run                    print what the mode wants and what is missing; change nothing
# Either order works: `demo` after `test` finds everything there; `test` after `demo` adds the rest.
#   TORCH_SPEC   pip specs for PyTorch and torchvision (default "torch==2.14.1 torchvision==0.29.1", the pair
#                constraints.txt pins; open_clip needs torchvision, and PyPI's torchvision does not import beside
#                the CPU build of torch 2.13.0 — README "Choosing a model" says what this costs)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=test
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    demo | test) MODE="$arg" ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "usage: bash scripts/setup.sh [demo|test] [--dry-run]" >&2; exit 2 ;;
  esac
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages, each with the path that shows it is there.
declare -A INSTALLED_AT=(
  [tuxpaint-stamps-default]=/usr/share/tuxpaint/stamps      # the sample catalog's photos
  [opencv-doc]=/usr/share/doc/opencv-doc/examples          # real hand-held product videos for the video tests
  [chromium]=/usr/bin/chromium                             # Playwright drives this one (never `playwright install`)
  [fonts-dejavu-core]=/usr/share/fonts/truetype/dejavu     # text in the headless browser's screenshots
)
wanted=(tuxpaint-stamps-default)
if [ "$MODE" = test ]; then wanted+=(opencv-doc chromium fonts-dejavu-core); fi
missing=()
for pkg in "${wanted[@]}"; do
  [ -e "${INSTALLED_AT[$pkg]}" ] || missing+=("$pkg")
done
wanted+=(python3-venv)
python3 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
EXTRAS=""
if [ "$MODE" = test ]; then EXTRAS="[test]"; fi
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ "$DRY_RUN" = 1 ]; then
  echo "setup $MODE: Debian packages: ${wanted[*]} (missing: ${missing[*]:-none})"
  echo "setup $MODE: .venv: pip install $TORCH_SPEC (unless installed), then pip install -e \".$EXTRAS\""
  exit 0
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup $MODE: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# PyTorch and torchvision first, as a matching pair, so nothing else pulls a different build (a venv made with an
# older pin, e.g. torch 2.13.0 alone, is moved to the pair: open_clip imports torchvision, which must match torch).
python - "$TORCH_SPEC" 2>/dev/null <<'PY' || pip install -q $TORCH_SPEC
import sys, importlib.metadata as m
want = dict(s.split("==") for s in sys.argv[1].split() if "==" in s)
sys.exit(any(m.version(k).split("+")[0] != v for k, v in want.items()))
PY
# Extras are only ever added: `demo` after `test` leaves the test packages installed.
pip install -q -e ".$EXTRAS"
echo "setup $MODE: done ($(python -c 'import ray, torch, transformers, lancedb; print(f"ray {ray.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, lancedb {lancedb.__version__}")'))"
