"""The reports of a run: the progress line per measurement, results.md (``write_markdown``) and the
PNG plots (``write_plots``), all from the ``result`` dictionary that is also written as results.json."""
from __future__ import annotations

import os
from typing import Dict, List

from .cases import MODES, PEER, REFERENCE


def _fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt_x(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _fmt_frac(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def progress_line(r) -> str:
    what = f"{r['case']:<18} {r.get('dtype', ''):<8} {r.get('layout', ''):<13} {r['mode']:<16} {r['backend']:<9}"
    if r["status"] != "ok":
        return f"{what} {r['status']}: {r['reason']}"
    return f"{what} {r['median_ms']:10.3f} ms"


def write_markdown(path: str, result: Dict[str, object]) -> None:
    meta, roof, records = result["meta"], result["rooflines"], result["records"]
    lines = ["# equifast benchmark", ""]
    lines += [f"- date: {meta['date']}", f"- command: `{meta['command']}`",
              f"- device: {meta['device']} — {meta.get('device_name')}"
              + (f", driver {meta['driver']}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')}"
                 if meta.get("driver") or meta.get("cuda") else ""),
              f"- CPU: {meta['cpu']} ({meta['cpu_count']} CPUs, torch threads {meta['torch_threads']}); "
              f"load average (1, 5, 15 min) at start {meta.get('loadavg_start')}, at end {meta.get('loadavg_end')}",
              f"- elapsed: {meta.get('elapsed_s')} s",
              f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}, "
              f"equifast {meta['equifast']} (git {str(meta.get('git_commit'))[:12]})",
              f"- scale: {meta['scale']}; backends: {', '.join(meta['backends_run'])}; repeat: {meta['repeat']}",
              f"- copy bandwidth: {roof['copy']['bytes_per_s'] / 1e9:.1f} GB/s; matmul: "
              + ", ".join(f"{d} {m['flops_per_s'] / 1e12:.3g} TFLOP/s" for d, m in roof["matmul"].items()),
              ""]
    if meta.get("notes"):
        lines += ["Notes: " + meta["notes"], ""]
    backends = list(meta["backends_run"])
    ok = [r for r in records if r["status"] == "ok"]
    # side by side: one row per (case, dtype, layout, mode)
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault((r["case"], r["dtype"], r["layout"], r["mode"]), {})[r["backend"]] = r
    ratio_cols = [(b, REFERENCE) for b in backends if b != REFERENCE] + \
        [(b, PEER) for b in backends if b not in (REFERENCE, PEER)]
    lines += ["## Time per backend (median ms) and speedups", "",
              "`X vs ref` = speedup of backend X over the naive looped lifting (reference backend), i.e. "
              "time(reference) / time(X); `X vs torch` = the same over filter rotation + one conv2d (torch "
              "backend); > 1 means X is faster.", "",
              "| case | shape | dtype | layout | mode | " + " | ".join(f"{b} ms" for b in backends)
              + "".join(f" | {b} vs {'ref' if base == REFERENCE else base}" for b, base in ratio_cols) + " |",
              "|" + "---|" * (5 + len(backends) + len(ratio_cols))]
    for (case, dtype, layout, mode), by in groups.items():
        any_r = next(iter(by.values()))
        cells = [_fmt_ms(by[b]["median_ms"]) if b in by and by[b]["status"] == "ok" else
                 ("skip" if b in by and by[b]["status"] == "skipped" else ("err" if b in by else "–"))
                 for b in backends]
        ratios = []
        for b, base in ratio_cols:
            r = by.get(b)
            field = "speedup_vs_reference" if base == REFERENCE else "speedup_vs_torch"
            ratios.append(_fmt_x(r[field]) if r is not None and r["status"] == "ok" else "–")
        lines.append(f"| {case} | {any_r['shape']['label']} | {dtype} | {layout} | {mode} | " + " | ".join(cells)
                     + "".join(f" | {x}" for x in ratios) + " |")
    lines += ["", "## All records", "",
              "| op | case | dtype | layout | mode | backend | median ms | × vs reference | × vs torch | "
              "memory roofline | compute roofline | TFLOP/s | GB/s |", "|" + "---|" * 13]
    for r in ok:
        lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['layout']} | {r['mode']} | {r['backend']} | "
                     f"{_fmt_ms(r['median_ms'])} | {_fmt_x(r['speedup_vs_reference'])} | "
                     f"{_fmt_x(r['speedup_vs_torch'])} | {_fmt_frac(r['memory_roofline_fraction'])} | "
                     f"{_fmt_frac(r['compute_roofline_fraction'])} | {r['tflops']:.3g} | {r['gbps']:.3g} |")
    train = result.get("training", [])
    if train:
        lines += ["", "## Training step of Figure3Net (forward + backward + SGD step)", "",
                  "| batch | dtype | backend | status | median ms | × vs reference | × vs torch |", "|---|---|---|---|---|---|---|"]
        for r in train:
            lines.append(f"| {r['batch']} | {r['dtype']} | {r['backend']} | {r['status']} | {_fmt_ms(r['median_ms'])} | "
                         f"{_fmt_x(r['speedup_vs_reference'])} | {_fmt_x(r['speedup_vs_torch'])} |")
        reasons = sorted({r["reason"] for r in train if r["status"] != "ok"})
        lines += [f"- {reason}" for reason in reasons]
    skipped = [r for r in records if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped or failed", ""]
        seen = set()
        for r in skipped:
            k = (r["backend"], r["status"], r["reason"])
            if k not in seen:
                seen.add(k)
                n = sum(1 for s in skipped if (s["backend"], s["status"], s["reason"]) == k)
                lines.append(f"- {r['backend']} ({r['status']}, {n} configurations): {r['reason']}")
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _backend_colors(backends):
    palette = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    return {b: palette[i % len(palette)] for i, b in enumerate(backends)}


def write_plots(out_dir: str, result: Dict[str, object]) -> List[str]:
    """One PNG per (dtype, layout): time per backend per case (log), speedups vs reference and torch (log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = [r for r in result["records"] if r["status"] == "ok"]
    backends = list(result["meta"]["backends_run"])
    colors = _backend_colors(backends)
    slices = []
    for r in records:
        if (r["dtype"], r["layout"]) not in slices:
            slices.append((r["dtype"], r["layout"]))
    names = []
    for i, (dtype, layout) in enumerate(slices):
        sub = [r for r in records if (r["dtype"], r["layout"]) == (dtype, layout)]
        cases = list(dict.fromkeys(r["case"] for r in sub))
        modes = [m for m in MODES if any(r["mode"] == m for r in sub)]
        fig, axes = plt.subplots(2, len(modes), figsize=(max(6.0, 0.55 * len(cases) * len(backends) / 2 + 2) *
                                                           len(modes) / 1.5, 8.5), squeeze=False)
        for j, mode in enumerate(modes):
            by = {(r["case"], r["backend"]): r for r in sub if r["mode"] == mode}
            width = 0.8 / max(1, len(backends))
            ax_t, ax_s = axes[0][j], axes[1][j]
            for k, b in enumerate(backends):
                xs = [c_i + (k - (len(backends) - 1) / 2) * width for c_i in range(len(cases))]
                ts = [by[(c, b)]["median_ms"] if (c, b) in by else float("nan") for c in cases]
                ax_t.bar(xs, ts, width, label=b, color=colors[b])
            sp = [(f"{b} vs ref", "speedup_vs_reference", b) for b in backends if b != REFERENCE] + \
                 [(f"{b} vs torch", "speedup_vs_torch", b) for b in backends if b not in (REFERENCE, PEER)]
            w2 = 0.8 / max(1, len(sp))
            for k, (lab, field, b) in enumerate(sp):
                xs = [c_i + (k - (len(sp) - 1) / 2) * w2 for c_i in range(len(cases))]
                vs = [by[(c, b)][field] if (c, b) in by and by[(c, b)][field] else float("nan") for c in cases]
                ax_s.bar(xs, vs, w2, label=lab, color=colors[b], alpha=1.0 if field == "speedup_vs_reference" else 0.5,
                         hatch=None if field == "speedup_vs_reference" else "//")
            ax_s.axhline(1.0, color="black", linewidth=0.8)
            for ax, ylabel in ((ax_t, "median time (ms), log"), (ax_s, "speedup (×), log")):
                ax.set_yscale("log")
                ax.set_xticks(range(len(cases)))
                ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
                ax.set_ylabel(ylabel)
                ax.grid(axis="y", which="both", alpha=0.3)
            ax_t.set_title(f"{mode}")
            if j == len(modes) - 1:   # one legend per row, outside the bars
                ax_t.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
                if sp:
                    ax_s.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        meta = result["meta"]
        fig.suptitle(f"equifast {meta['device_name']} — {dtype}, {layout}, scale {meta['scale']} ({meta['date']})",
                     fontsize=10)
        fig.tight_layout()
        name = "results.png" if i == 0 else f"results-{dtype}-{layout}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        names.append(name)
    return names

