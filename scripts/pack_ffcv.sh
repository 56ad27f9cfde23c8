#!/usr/bin/env bash
# FFCV as one relocatable archive, for machines where its system packages (libjpeg-turbo, OpenCV) cannot be
# installed: a cluster node without root, a container image that has PyTorch but not FFCV. Made here from the
# environment scripts/setup.sh built (FFCV's Python package, its compiled extension, and the shared libraries the
# extension loads, but the C and C++ runtimes every Linux has), it runs on Linux of this machine's architecture whose
# glibc is at least this machine's. The extension is also stored under the suffix-free name a Python of another version looks for (FFCV
# 1.0.2's, built for Python 3.11, has been loaded so by Python 3.12); the archive's Python code is version-free.
#
#   bash scripts/pack_ffcv.sh ffcv-portable.tar.gz
#   # on the other machine, with torch, numba, numpy and opencv-python installed by pip (no root needed):
#   mkdir -p ~/ffcv-portable && tar -C ~/ffcv-portable -xzf ffcv-portable.tar.gz
#   export PYTHONPATH=~/ffcv-portable/python:$PYTHONPATH LD_LIBRARY_PATH=~/ffcv-portable/lib:$LD_LIBRARY_PATH
#   python -c "import ffcv.libffcv"      # loads, or says which library is missing
set -euo pipefail
out=${1:?"usage: bash scripts/pack_ffcv.sh OUT.tar.gz (PYTHON=... for another environment than .venv)"}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || { echo "error: $PYTHON is not there: run bash scripts/setup.sh first (or set PYTHON)" >&2; exit 2; }
# where FFCV is installed, found without importing it (which imports PyTorch)
package=$($PYTHON -c 'import importlib.util as u; print(u.find_spec("ffcv").submodule_search_locations[0])' \
    2>/dev/null) || { echo "error: $PYTHON has no ffcv: run bash scripts/setup.sh first" >&2; exit 2; }
{ mkdir -p "$(dirname "$out")" 2>/dev/null && [[ -w $(dirname "$out") ]]; } \
    || { echo "error: cannot write $out: its folder cannot be made or written; choose another path" >&2; exit 2; }
extensions=("$package"/_libffcv*.so)  # (no `| head` under pipefail: a reader that stops early fails the pipe)
extension=${extensions[0]}
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$out.partial"' EXIT  # a stopped pack leaves no half archive behind
mkdir -p "$stage/python" "$stage/lib"
cp -r "$package" "$stage/python/ffcv"
find "$stage/python" -name __pycache__ -prune -exec rm -rf {} +
cp "$extension" "$stage/python/ffcv/_libffcv.so"  # the suffix-free name, found by a Python of another version
# every library the extension loads, directly or through OpenCV, but the C/C++ runtimes (a copied glibc or
# libstdc++ would clash with the other machine's own, which PyTorch already loaded)
missing=$(ldd "$extension" | awk '/not found/ {print $1}')
[[ -z $missing ]] || { echo "error: $extension cannot find $missing here" >&2; exit 2; }
ldd "$extension" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r library; do
    case $(basename "$library") in
        libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libgcc_s.so.*|libstdc++.so.*) ;;
        *) cp -L "$library" "$stage/lib/" ;;
    esac
done
tar -C "$stage" -czf "$out.partial" python lib
mv "$out.partial" "$out"
glibc=$(ldd --version | awk 'NR == 1 {print $NF}')
echo "[pack_ffcv] wrote $out ($(du -h "$out" | cut -f1)): FFCV $($PYTHON -c 'import importlib.metadata as m; print(m.version("ffcv"))'), $(ls "$stage/lib" | wc -l) shared libraries; for $(uname -m) Linux with glibc $glibc or newer"
echo "[pack_ffcv] there: tar -C DIR -xzf $(basename "$out") && export PYTHONPATH=DIR/python:\$PYTHONPATH LD_LIBRARY_PATH=DIR/lib:\$LD_LIBRARY_PATH"
