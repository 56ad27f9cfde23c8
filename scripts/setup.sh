#!/usr/bin/env bash
# One-time setup on a fresh machine: Debian packages for FFCV, a virtual environment, the toolkit.
# Idempotent: a second run only checks. --browser also installs Chromium (for the test suite). Override the interpreter with PYTHON=..., the venv with VENV=...,
# and the torch pair with TORCH_PACKAGES="torch==X torchvision==Y" (e.g. for another CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEBIAN_PACKAGES="pkg-config libturbojpeg0-dev libopencv-dev g++"
STAMP="$VENV/.scene-toolkit-setup"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

say() { printf '[setup] %s\n' "$*"; }

# 1. system libraries FFCV compiles against (libjpeg-turbo, OpenCV) and a C++ compiler
have_system_libraries() {
    command -v pkg-config >/dev/null && command -v g++ >/dev/null \
        && pkg-config --exists libturbojpeg && pkg-config --exists opencv4
}
if ! have_system_libraries; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian packages for FFCV: $DEBIAN_PACKAGES"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq $DEBIAN_PACKAGES >/dev/null
    else
        say "FFCV needs these system packages, which are missing:"
        say "    sudo apt-get install -y $DEBIAN_PACKAGES"
        say "(on other systems: libjpeg-turbo and OpenCV development files, pkg-config and a C++ compiler)"
        exit 1
    fi
fi

# 1b. for the test suite: Debian's Chromium renders the HTML report in a real headless browser
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's chromium for the report's browser test"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        say "chromium is missing: the browser test will be skipped (sudo apt-get install -y chromium)"
    fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import toolkit, ffcv" 2>/dev/null; then
    say "environment $VENV is up to date"
    exit 0
fi

# 2. the virtual environment
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10 or newer is needed"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

# 3. torch and torchvision as a matched pair (PyPI's torchvision fails beside a mismatched torch)
if [ -z "${TORCH_PACKAGES:-}" ]; then
    case "$(uname -m)" in
        aarch64|arm64) TORCH_PACKAGES="torch==2.9.1 torchvision==0.24.1" ;;
        *)             TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1" ;;
    esac
fi
say "installing $TORCH_PACKAGES"
$PIP install -q $TORCH_PACKAGES

# 4. FFCV builds from source against numpy and torch already in the environment
$PIP install -q "numpy>=1.26" "numba>=0.59" pillow
$PIP install -q --no-build-isolation ffcv==1.0.2

# 5. the toolkit itself, editable, with the test tools (and, for the test suite, the optional BM3D: its licence
#    allows non-commercial use only, so it is never installed for `make run`)
$PIP install -q -e ".[test]"
if [ "${1:-}" = "--browser" ]; then
    $PIP install -q -e ".[bm3d]" || say "the optional bm3d package did not install: its tests will be skipped"
fi
"$VENV/bin/python" -c "import toolkit, ffcv, torch, accelerate, wandb; print('[setup] ready: torch', torch.__version__)"
echo "$WANT" > "$STAMP"
