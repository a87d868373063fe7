#!/usr/bin/env bash
# On a machine with a CUDA GPU: build equifast._C with its CUDA kernels (tools/gpu_test.sh's build
# step) and run the CUDA kernel tests under compute-sanitizer: memcheck (out-of-bounds / misaligned
# accesses, with PyTorch's caching allocator off so every allocation is checked) and racecheck
# (shared-memory hazards). Exits non-zero on any reported error.
#
#   bash tools/sanitize.sh
# Env: PYTHON, SANITIZE_TESTS (default tests/test_extension_cuda.py tests/test_cuda_kernels.py), SANITIZE_K (pytest -k filter
# for racecheck, which is slow; default: a subset covering every kernel), COMPUTE_SANITIZER.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
say() { echo "[sanitize] $*"; }

if ! ls csrc/cuda/*.cu >/dev/null 2>&1; then say "no CUDA sources under csrc/cuda: nothing to do"; exit 0; fi
CS="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || true)}"
if [ -z "$CS" ]; then
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -x "$c" ]; then CS="$c"; break; fi
  done
fi
if [ -z "$CS" ]; then say "ERROR: compute-sanitizer not found (set COMPUTE_SANITIZER)"; exit 2; fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"; export CUDA_HOME
fi
say "building equifast._C with CUDA kernels"
EQUIFAST_BUILD_CUDA=1 "$PY" -m pip install -q -e . --no-build-isolation --no-deps
EQUIFAST_BUILD_CUDA=1 "$PY" setup.py -q build_ext --inplace
TESTS="${SANITIZE_TESTS:-tests/test_extension_cuda.py tests/test_cuda_kernels.py}"
K="${SANITIZE_K:-test_channels_last or test_large_plane or test_zero_size or test_backward_deterministic or test_low_precision}"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
say "memcheck: $TESTS"
"$CS" --tool memcheck --error-exitcode 3 --target-processes all \
  "$PY" -m pytest -q -m gpu -p no:cacheprovider $TESTS || status=$?
say "memcheck exit status $status"
rstatus=0
say "racecheck: $TESTS -k \"$K\""
"$CS" --tool racecheck --error-exitcode 3 --target-processes all \
  "$PY" -m pytest -q -m gpu -p no:cacheprovider $TESTS -k "$K" || rstatus=$?
say "racecheck exit status $rstatus"
if [ "$status" != 0 ] || [ "$rstatus" != 0 ]; then say "FAILED"; exit 1; fi
say "OK: memcheck and racecheck clean"
