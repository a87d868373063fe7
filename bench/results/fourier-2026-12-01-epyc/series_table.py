# Usage: python series_table.py DIR [DIR ...]: the medians over the ops runs DIR/settle-run*/ops.json, as a
# markdown table (speedup of fourier over the torch backend per run, median, target, met, rows quiet before).
import glob, json, os, statistics, sys
TARGET = {"C4": 2.0, "D4": 3.5, "C8": 3.5, "C16": 6.0}
runs = []
for d in sys.argv[1:]:
    runs += sorted(glob.glob(os.path.join(d, "settle-run*/ops.json")), key=lambda p: int(p.split("settle-run")[1].split("/")[0]))
cells = {}
for path in runs:
    for r in json.load(open(path))["rows"]:
        cells.setdefault((r["threads"], r["group"], r["C"]), []).append((r["speedup"], r["quiet_before"]))
n = len(runs)
print("| group | C | threads | " + " | ".join(f"run {i + 1}" for i in range(n)) + " | median | target | met | quiet |")
print("|---|---|---|" + "---|" * n + "---|---|---|---|")
met = 0
for (t, g, c), v in sorted(cells.items(), key=lambda kv: (kv[0][0], list(TARGET).index(kv[0][1]), kv[0][2])):
    m = statistics.median(x for x, _ in v)
    ok = m >= TARGET[g]
    met += ok
    print(f"| {g} | {c}->{c} | {t} | " + " | ".join(f"{x:.2f}" for x, _ in v) +
          f" | **{m:.2f}x** | {TARGET[g]:.1f}x | {'yes' if ok else '**no**'} | {sum(q for _, q in v)}/{len(v)} |")
print(f"\n{met} of {len(cells)} cells meet their target by the median of {n} runs.")
