"""How sure the ten-run medians of the current code are (SERIES/settle-run*/ops.json; SERIES defaults to
bench/results/fourier-2026-12-01-v2):
for every cell, the median speedup over the torch backend, a 95% bootstrap interval of that median
(10,000 resamples of the ten runs, seed 0) and how many runs reached the target.

    python bench/results/fourier-2026-12-01-v3/median_ci.py [SERIES]
"""
import glob
import json
import os
import random
import statistics
import sys

SERIES = sys.argv[1] if len(sys.argv) > 1 else \
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fourier-2026-12-01-v2")
TARGET = {"C4": 2.0, "D4": 3.5, "C8": 3.5, "C16": 6.0}
ORDER = list(TARGET)

cells = {}
for path in sorted(glob.glob(os.path.join(SERIES, "settle-run*", "ops.json"))):
    with open(path) as f:
        for row in json.load(f)["rows"]:
            cells.setdefault((row["group"], row["C"], row["threads"]), []).append(row["speedup"])
rng = random.Random(0)
print("| group | C | threads | runs | median | 95% interval of the median | runs at or above target | target |")
print("|---|---|---|---|---|---|---|---|")
for (group, C, threads), values in sorted(cells.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1:])):
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(10000))
    hits = sum(v >= TARGET[group] for v in values)
    print(f"| {group} | {C}->{C} | {threads} | {len(values)} | {statistics.median(values):.2f}x | "
          f"{medians[249]:.2f}-{medians[9750]:.2f}x | {hits}/{len(values)} | {TARGET[group]}x |")
