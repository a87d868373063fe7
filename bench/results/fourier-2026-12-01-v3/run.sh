#!/usr/bin/env bash
# Builds onednn_reorders.cpp against oneDNN from PyPI (onednn-cpu-gomp / onednn-devel-cpu-gomp 2023.2.0:
# oneDNN 3.2, OpenMP threading; torch 2.13 carries oneDNN 3.12 inside, not linkable) and runs it
# REPEAT times at one and two threads, for C = 32 and C = 128, printing markdown rows.
#   bash bench/results/fourier-2026-12-01-v3/run.sh [REPEAT] [PIP]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repeat=${1:-3}
pip=${2:-pip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$pip" download -q --no-deps onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 -d "$work/wheels"
for w in "$work"/wheels/*.whl; do unzip -q -o "$w" -d "$work/x"; done
inc=$(dirname "$(find "$work/x" -path '*include/dnnl.hpp' | head -1)")
lib=$(dirname "$(find "$work/x" -name 'libdnnl.so*' | head -1)")
g++ -O2 -std=c++17 "$here/onednn_reorders.cpp" -I"$inc" -L"$lib" -ldnnl -Wl,-rpath,"$lib" -o "$work/onednn_reorders"
echo "| C | threads | fwd blocked ms | fwd with reorders ms | ratio | fwd NHWC ms | grad_w blocked ms | grad_w with reorders ms | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for _ in $(seq "$repeat"); do
  for t in 1 2; do
    for C in 32 128; do OMP_NUM_THREADS=$t "$work/onednn_reorders" "$C"; done
  done
done
