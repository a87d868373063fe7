#!/usr/bin/env bash
# Everything this project measures and tests on a GPU, as one command that fits a lent machine's
# limit of 10 minutes a command, the most needed first. Each step is stopped after its share of
# BUDGET and its log and results are copied to $OUT when it ends, so a cut session keeps them.
#
#   bash tools/gpu_session.sh                  # BUDGET=560 seconds in all; logs in $OUT/gpu-session/
#
# 1. fourier vs the dense bank on cuDNN: bench/run_gpu.sh's bench/fourier_group_conv.py --device cuda
#    into bench/results/fourier-<gpu>-<UTC date>/ (plain PyTorch: runs before anything is built) <= FOURIER_S (200)
# 2. the fourier backend on CUDA against the reference: the conformance suite's fourier-cuda target
#    and the gpu-marked fourier benchmark test                                              <= 90 s
# 3. build equifast._C with its CUDA kernels and run every GPU test (tools/gpu_test.sh)     until 150 s are left
# 4. bench/run_gpu.sh (the `equifast bench` suite; resumable) with the time left
# Env: PYTHON (default python3), BUDGET, FOURIER_S. Without a CUDA device it stops at once, exit 1.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# steps 1-2 run before equifast is installed (step 3 installs it): import it from this checkout
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
BUDGET=${BUDGET:-560}
LOG="${OUT:-/tmp}/gpu-session"
mkdir -p "$LOG"
say() { echo "[gpu-session $(( $(date +%s) - START ))s] $*" | tee -a "$LOG/session.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# step NAME SECONDS CMD...: runs CMD for at most SECONDS (and never past the budget), logs it
step() {
  local name=$1 limit=$2; shift 2
  local t; t=$(left); [ "$limit" -gt "$t" ] && limit=$t
  if [ "$limit" -lt 20 ]; then say "$name: skipped (${t}s left)"; return 0; fi
  say "$name: up to ${limit}s: $*"
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  case $rc in
    0) say "$name: ok" ;;
    124) say "$name: stopped after ${limit}s (partial)" ;;
    *) say "$name: exit $rc (see $name.log)" ;;
  esac
  tail -n 5 "$LOG/$name.log" | sed 's/^/    /' | tee -a "$LOG/session.log"
}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no CUDA device visible to torch: nothing to do"; exit 1
fi
say "$("$PY" -c "import torch; print(f'torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name(0)}')")"

step fourier-bench $(( ${FOURIER_S:-200} + 15 )) env BENCH_SKIP_BUILD=1 MAIN=0 FOURIER_TIMEOUT="${FOURIER_S:-200}" \
    PYTHON="$PY" bash bench/run_gpu.sh
step fourier-tests 90 "$PY" -m pytest -q -m gpu tests/test_conformance.py tests/test_fourier_bench.py \
    -k "fourier-cuda or test_fourier_bench" --maxfail=20 --durations=5
step gpu-test $(( $(left) - 150 )) bash tools/gpu_test.sh
step bench "$(left)" env FOURIER=0 BENCH_SKIP_BUILD=1 BENCH_TIMEOUT=$(( $(left) - 10 )) PYTHON="$PY" bash bench/run_gpu.sh
say "done"
