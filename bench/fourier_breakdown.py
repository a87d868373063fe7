"""Per-step breakdown (torch.profiler self CPU time per forward+backward) of fourier vs torch, as a
markdown table (bench/results/fourier-*/breakdown.md).

    python bench/fourier_breakdown.py C4:32:1,C8:32:1   (group:channels:threads)
"""
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/
from fourier_group_conv import op_callable
from torch.profiler import profile
cases = [c.split(":") for c in sys.argv[1].split(",")]
steps = {"convolution forward": ("aten::mkldnn_convolution",), "convolution backward": ("aten::convolution_backward",),
         "group-axis mixes (group_mix; bmm/mm)": ("equifast_C::group_mix", "aten::bmm", "aten::baddbmm_", "aten::mm",
                                                  "aten::baddbmm"),
         "gathers (cat/stack)": ("aten::cat",), "copies": ("aten::copy_", "aten::clone")}
print("| case | threads | backend | total ms | " + " | ".join(steps) + " | rest |")
print("|---" * (5 + len(steps)) + "|")
for g, C, t in cases:
    C, t = int(C), int(t); B = 8 if C == 32 else 4
    torch.set_num_threads(t)
    for be in ("torch", "fourier"):
        run = op_callable(be, g, C, C, B, 32)
        for _ in range(3): run()
        reps = 5
        with profile() as p:
            for _ in range(reps): run()
        ka = {e.key: e.self_cpu_time_total / 1e3 / reps for e in p.key_averages()}
        total = sum(ka.values())
        vals = [sum(ka.get(k, 0.0) for k in keys) for keys in steps.values()]
        print(f"| {g} {C}->{C} B={B} | {t} | {be} | {total:.1f} | " + " | ".join(f"{v:.1f}" for v in vals)
              + f" | {total - sum(vals):.1f} |", flush=True)
