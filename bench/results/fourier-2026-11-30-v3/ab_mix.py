"""Interleaved A/B of the fourier backend before and after the compiled group-axis mixes, in one process.

    python bench/results/fourier-2026-11-30-v3/ab_mix.py C4 1 [32]     (group, threads, channels)

"old" is equifast/backends/fourier/group_conv.py at commit 92acc7c (batched products and gathering
copies), extracted with git into a temporary module of the package (removed afterwards); "new" is the
working tree's. Both run forward + backward (grad input and grad weight) on the same inputs through the
backend entry points; equifast.benchmark.timing.compare interleaves them, medians of the rounds.
"""
import os
import subprocess
import sys

import torch

import equifast
from equifast._args import make_plan
from equifast.benchmark.timing import compare

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
OLD = os.path.join(ROOT, "equifast", "backends", "fourier", "_ab_old.py")
with open(OLD, "w") as f:
    f.write(subprocess.run(["git", "show", "92acc7c:equifast/backends/fourier/group_conv.py"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout)
try:
    from equifast.backends.fourier import _ab_old as old
finally:
    os.remove(OLD)
from equifast.backends.fourier import group_conv as new  # noqa: E402

g, t = sys.argv[1], int(sys.argv[2])
C = int(sys.argv[3]) if len(sys.argv) > 3 else 32
torch.set_num_threads(t)
n = equifast.groups.get(g).order
B = 8 if C == 32 else 4
gen = torch.Generator().manual_seed(0)
s = torch.randn(B, n, C, 32, 32, generator=gen)
w = torch.randn(C, n, C, 3, 3, generator=gen) / (n * C * 9) ** 0.5
go = torch.randn(B, n, C, 32, 32, generator=gen)
plan = make_plan(g, 1, 1, 1, "view", 3, 3, "group_conv")


def step(m):
    def f():
        m.group_conv_forward(s, w, None, plan)
        m.group_conv_backward(go, s, w, plan, (True, True, False))
    return f


assert (new.group_conv_forward(s, w, None, plan) - old.group_conv_forward(s, w, None, plan)).abs().max() < 1e-3
fns = {"old": step(old), "new": step(new)}
for fn in fns.values():
    for _ in range(3):
        fn()
st = compare(fns, "cpu", repeat=9, budget_s=6)
m = {k: v["median_s"] * 1e3 for k, v in st.items()}
print(f"| {g} | {C}->{C} | {t} | {m['old']:.1f} | {m['new']:.1f} | {m['old'] / m['new']:.2f}x |", flush=True)
