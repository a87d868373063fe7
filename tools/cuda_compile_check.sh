#!/usr/bin/env bash
# Compile equifast's CUDA sources without a GPU, so that a broken .cu fails CI.
#
# Creates (or reuses) a separate venv .venv-cuda with torch==2.14.1 (a CUDA 13.0 build) and compiles
# csrc/ (CPU + CUDA sources) with the machine's nvcc into .venv-cuda/equifast-build (incremental); the in-place
# CPU build of the main venv is left alone. Env: CUDA_HOME (default /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default 9.0), PYTHON (default python3), MAX_JOBS (default: cores),
# EQUIFAST_CUDA_VENV (default .venv-cuda), CLEAN=1 rebuilds from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
say() { echo "[cuda-compile-check +$(( $(date +%s) - start ))s] $*"; }

if ! ls csrc/cuda/*.cu >/dev/null 2>&1; then say "no CUDA sources under csrc/cuda: nothing to do"; exit 0; fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
NVCC="$CUDA_HOME/bin/nvcc"
if [ ! -x "$NVCC" ]; then say "ERROR: nvcc not found at $NVCC (set CUDA_HOME)"; exit 2; fi
say "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"

VENV="${EQUIFAST_CUDA_VENV:-.venv-cuda}"
PY="$VENV/bin/python"
TORCH_VERSION=2.14.1
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') and torch.version.cuda else 1)" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION (CUDA build), numpy, ninja, setuptools, wheel into $VENV"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" numpy ninja setuptools wheel
fi
say "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"

# Headers torch's CUDA build expects from the nvidia-* wheels (cu13 layout); setup.py adds them too.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for inc in "$SITE"/nvidia/cu[0-9]*/include; do
  if [ -d "$inc" ]; then export CPATH="${CPATH:+$CPATH:}$inc"; fi
done

# Build directory inside the (git-ignored) venv, so that reruns are incremental (ninja); CLEAN=1 wipes it.
BUILD="${EQUIFAST_CUDA_BUILD_DIR:-$VENV/equifast-build}"
if [ "${CLEAN:-0}" = "1" ]; then rm -rf "$BUILD"; fi
mkdir -p "$BUILD"
rm -rf "$BUILD/lib"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
say "compiling $(ls csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu 2>/dev/null | tr '\n' ' ')for sm_${TORCH_CUDA_ARCH_LIST/./} (MAX_JOBS=$MAX_JOBS) into $BUILD"
EQUIFAST_BUILD_CUDA=1 PATH="$(dirname "$PY"):$CUDA_HOME/bin:$PATH" \
  "$PY" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib" >"$BUILD/build.log" 2>&1 || {
  grep -E "error" "$BUILD/build.log" | sort | uniq | head -n 60 || true
  echo "---- last lines of the build log ($BUILD/build.log) ----"; tail -n 25 "$BUILD/build.log"
  say "FAILED: the CUDA sources do not compile"; exit 1; }
SO=$(find "$BUILD/lib" -name '_C*.so' | head -n 1)
if [ -z "$SO" ]; then say "FAILED: no equifast/_C*.so produced"; exit 1; fi
SYMS="$BUILD/symbols.txt"
nm -D "$SO" >"$SYMS" || true
if ! grep -q "__cudaRegisterFatBinary" "$SYMS"; then say "FAILED: $SO contains no CUDA kernels"; exit 1; fi
for src in csrc/cuda/*.cu; do
  obj=$(basename "$src" .cu)
  if [ -z "$(find "$BUILD/temp" -path "*csrc/cuda/$obj.o" | head -n 1)" ]; then say "FAILED: $src was not compiled"; exit 1; fi
done
say "OK: built $(basename "$SO") ($(du -h "$SO" | cut -f1)) with the CUDA kernels for sm_${TORCH_CUDA_ARCH_LIST/./}; $(grep -c -i "warning" "$BUILD/build.log" || true) warning lines in $BUILD/build.log"
