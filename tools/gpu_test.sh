#!/usr/bin/env bash
# On a machine with a CUDA GPU and torch already installed (the lent device: Python 3.12,
# torch 2.11 + CUDA 13.0, triton, nvcc, ninja, pytest, hypothesis; no registry access):
# build equifast._C with its CUDA kernels and run the GPU tests.
#
#   bash tools/gpu_test.sh                 # tests/test_extension_cuda.py, tests/test_cuda_*.py (pixel-map
#                                          # forms, int64 indices, peak memory) + every other test marked gpu,
#                                          # then the conformance suite's CUDA targets (every backend)
#   GPU_TESTS="tests/test_extension_cuda.py" bash tools/gpu_test.sh
# Env: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the visible GPU's), PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
say() { echo "[gpu-test] $*"; }

if ! ls csrc/cuda/*.cu >/dev/null 2>&1; then say "no CUDA sources under csrc/cuda: nothing to do"; exit 0; fi
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("[gpu-test] ERROR: no CUDA device visible to torch")
print(f"[gpu-test] torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
PYEOF
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"; export CUDA_HOME
fi
say "building equifast (EQUIFAST_BUILD_CUDA=1, CUDA_HOME=${CUDA_HOME:-unset})"
EQUIFAST_BUILD_CUDA=1 "$PY" -m pip install -q -e . --no-build-isolation --no-deps
# editable installs build into build/; make sure the in-place module is the fresh one as well
EQUIFAST_BUILD_CUDA=1 "$PY" setup.py -q build_ext --inplace
"$PY" -c "import equifast.backends._compiled as e; ok, why = e.load(); assert ok, why; assert e.cuda_compiled(), 'no CUDA kernels in equifast._C'; print('[gpu-test] equifast._C loaded with CUDA kernels')"
if [ -n "${GPU_TESTS:-}" ]; then
  say "pytest -m gpu $GPU_TESTS"
  "$PY" -m pytest -q -m gpu $GPU_TESTS ${PYTEST_ARGS:-}
  exit
fi
# The dedicated GPU tests first, then the conformance suite's CUDA targets (every backend on CUDA
# against the reference: many small cases, Triton compiling each), so that a run cut short by a time
# limit has the first part's results.
say "pytest -m gpu tests (without the conformance suite)"
rc=0
"$PY" -m pytest -q -m gpu tests --ignore=tests/test_conformance.py ${PYTEST_ARGS:-} || rc=$?
say "pytest -m gpu tests/test_conformance.py (the CUDA targets)"
"$PY" -m pytest -q -m gpu tests/test_conformance.py --durations=5 ${PYTEST_ARGS:-} || rc=$?
exit $rc
