#!/bin/bash
# Usage: bash bench/results/fourier-2026-12-01-epyc/run.sh [DIR]  (from the repository root, after `make setup`)
# What made this folder: v2's protocol (bench/results/fourier-2026-12-01-v2) on another machine. Ten ops runs,
# then memory, networks and the sweep, then four more runs of the networks section. Each command under
# flock, so that no two benchmarks ever run at once.
set -e
D=${1:-bench/results/fourier-2026-12-01-epyc}
PY=.venv/bin/python
mkdir -p "$D"
for i in $(seq 1 10); do
  date -u +"run $i start %H:%M:%S" >> "$D/times.txt"
  flock /tmp/bench.lock $PY bench/fourier_group_conv.py --out "$D/settle-run$i" --sections ops \
      --repeat 5 --budget 4 --wait-quiet 20 --warmup 3 --settle 1
done
date -u +"memory start %H:%M:%S" >> "$D/times.txt"
flock /tmp/bench.lock $PY bench/fourier_group_conv.py --out "$D/memory" --sections memory
date -u +"networks-sweep start %H:%M:%S" >> "$D/times.txt"
flock /tmp/bench.lock $PY bench/fourier_group_conv.py --out "$D/networks-sweep" --sections networks,sweep \
    --repeat 5 --budget 4
date -u +"end %H:%M:%S" >> "$D/times.txt"
for i in 2 3 4 5; do
  flock /tmp/bench.lock $PY bench/fourier_group_conv.py --out "$D/networks-run$i" --sections networks \
      --repeat 5 --budget 4
done
for t in 1 2; do
  flock /tmp/bench.lock $PY bench/results/fourier-2026-12-01/onednn_census.py $t C4 > "$D/census-C4-${t}thread.txt"
done
$PY bench/results/fourier-2026-12-01-v3/median_ci.py "$D" --runs
