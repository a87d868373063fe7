"""How sure the ten-run medians of the current code are (SERIES/settle-run*/ops.json; SERIES defaults to
bench/results/fourier-2026-12-01-v2):
for every cell, the median speedup over the torch backend, a 95% bootstrap interval of that median
(10,000 resamples of the ten runs, seed 0) and how many runs reached the target. ``--runs`` adds every
run's speedup (in run order) and how many of the runs found the machine quiet before the row.

    python bench/results/fourier-2026-12-01-v3/median_ci.py [SERIES] [--runs]
"""
import glob
import json
import os
import random
import statistics
import sys

args = [a for a in sys.argv[1:] if a != "--runs"]
RUNS = "--runs" in sys.argv[1:]
SERIES = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fourier-2026-12-01-v2")
TARGET = {"C4": 2.0, "D4": 3.5, "C8": 3.5, "C16": 6.0}
ORDER = list(TARGET)

paths = sorted(glob.glob(os.path.join(SERIES, "settle-run*", "ops.json")))      # the bootstrap's order: by name


def run_number(path):
    return int(os.path.basename(os.path.dirname(path))[len("settle-run"):])


cells = {}
for path in paths:
    with open(path) as f:
        for row in json.load(f)["rows"]:
            cells.setdefault((row["group"], row["C"], row["threads"]), []).append((run_number(path), row))
rng = random.Random(0)
runs_head = "".join(f" run {i + 1} |" for i in range(len(paths))) if RUNS else ""
print(f"| group | C | threads |{runs_head} runs | median | 95% interval of the median | runs at or above target "
      f"| target |{' quiet |' if RUNS else ''}")
print("|---|---|---|" + "---|" * (len(paths) if RUNS else 0) + "---|---|---|---|---|" + ("---|" if RUNS else ""))
for (group, C, threads), rows in sorted(cells.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1:])):
    values = [r["speedup"] for _, r in rows]
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(10000))
    hits = sum(v >= TARGET[group] for v in values)
    per_run = "".join(f" {r['speedup']:.2f} |" for _, r in sorted(rows, key=lambda nr: nr[0])) if RUNS else ""
    quiet = f" {sum(r['quiet_before'] for _, r in rows)}/{len(rows)} |" if RUNS else ""
    print(f"| {group} | {C}->{C} | {threads} |{per_run} {len(values)} | {statistics.median(values):.2f}x | "
          f"{medians[249]:.2f}-{medians[9750]:.2f}x | {hits}/{len(values)} | {TARGET[group]}x |{quiet}")
