#!/usr/bin/env bash
# Produce the GPU results committed under bench/results/ (run from anywhere on the GPU machine).
#
#   bash bench/run_gpu.sh [extra `equifast bench` options]
#
# 1. builds equifast in place (C++/CUDA extension; no registry access needed):
#      pip install -e . --no-build-isolation --no-deps
# 2. runs `python -m equifast bench --device cuda --resume` (full scale, all available backends,
#    float32 and bfloat16, both layouts) into bench/results/<gpu>-<UTC date>/ (override: BENCH_OUT),
#    stopping itself after BENCH_TIMEOUT seconds (default 540). Results are written after every
#    measurement and --resume keeps them, so running the same command again continues a cut run;
# 3. runs bench/fourier_group_conv.py --device cuda (the fourier backend against the dense bank on
#    cuDNN: group_conv forward+backward, peak memory, training steps, small shapes) into
#    bench/results/fourier-<gpu>-<UTC date>/ first, stopping it after FOURIER_TIMEOUT seconds (default
#    240; each finished section is kept); FOURIER=0 skips it, MAIN=0 skips step 2 (then the exit status is the fourier bench's);
# 4. with BENCH_PYTEST=1, also runs the pytest-benchmark suites (pytest-benchmark.json);
# 5. copies both folders to $OUT/<same path> when $OUT is set (the lent machine's return folder).
# On the lent machine (at most 10 minutes a command): BENCH_TIMEOUT=300 FOURIER_TIMEOUT=200 bash bench/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if [ "${BENCH_SKIP_BUILD:-0}" != "1" ]; then
  $PY -m pip install -e . --no-build-isolation --no-deps -q || { echo "build failed" >&2; exit 1; }
fi
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1

name=$($PY - <<'PYEOF'
import re, torch
full = torch.cuda.get_device_name(0)
m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", full)
print((m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", full.lower()).strip("-")).lower())
PYEOF
)
out=${BENCH_OUT:-bench/results/${name}-$(date -u +%F)}
fourier_out=bench/results/fourier-${name}-$(date -u +%F)
if [ "${FOURIER:-1}" != "0" ]; then
  echo "fourier vs torch on CUDA -> $fourier_out"
  timeout "${FOURIER_TIMEOUT:-240}" $PY bench/fourier_group_conv.py --device cuda --out "$fourier_out" \
      --sections ops,memory,networks,sweep --repeat 7 --budget 3
  frc=$?
  if [ $frc -eq 124 ]; then
    echo "fourier bench stopped after ${FOURIER_TIMEOUT:-240} s: finished sections kept" >&2
  elif [ $frc -ne 0 ]; then
    echo "fourier bench failed (exit $frc); going on with the main benchmark" >&2
  fi
  if [ -n "${OUT:-}" ] && [ -d "$fourier_out" ]; then
    mkdir -p "$OUT/$fourier_out" && cp -r "$fourier_out"/. "$OUT/$fourier_out"/
  fi
fi
if [ "${MAIN:-1}" = "0" ]; then exit "${frc:-0}"; fi   # only the fourier bench: its status
mkdir -p "$out"
echo "equifast bench -> $out"
timeout "${BENCH_TIMEOUT:-540}" $PY -m equifast bench --device cuda --out "$out" --resume "$@"
rc=$?
if [ $rc -eq 124 ]; then
  echo "stopped after ${BENCH_TIMEOUT:-540} s: partial results kept; run the same command again to continue" >&2
fi
if [ "${BENCH_PYTEST:-0}" = "1" ] && [ $rc -eq 0 ]; then
  $PY -m pytest bench/ -q --bench-device cuda --benchmark-json "$out/pytest-benchmark.json" \
      --benchmark-columns=min,median,max,rounds | tail -n 40
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/$out" && cp -r "$out"/. "$OUT/$out"/
  echo "copied to \$OUT/$out"
fi
exit $rc
