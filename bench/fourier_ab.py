"""Interleaved A/B of the fourier backend at a git revision against the working tree, in one process,
with the torch backend (the dense bank) alongside.

    python bench/fourier_ab.py REV C4 1 [32] [--repeat 9] [--settle 1]     (revision, group, threads, channels)

"old" is equifast/backends/fourier/group_conv.py at REV, extracted with git into a temporary module of
the package (removed again after the import); "new" is the working tree's. Every contender runs one
group_conv forward + backward (grad input and grad weight) on the same inputs, the fourier ones through
the backend entry points, the torch one through ``equifast.group_conv(..., backend="torch")`` and
autograd; the output is kept alive through the backward, as in a training step.
``equifast.benchmark.timing.compare`` interleaves them; medians of the rounds. Prints one markdown row:
| group | channels | threads | torch ms | old ms | new ms | old/new | torch/new | MiB faulted in per call,
torch / old / new |
"""
import argparse
import os
import resource
import subprocess
import sys

import torch

import equifast
from equifast._args import make_plan
from equifast.benchmark.timing import compare

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("rev")
p.add_argument("group")
p.add_argument("threads", type=int)
p.add_argument("channels", type=int, nargs="?", default=32)
p.add_argument("--repeat", type=int, default=9)
p.add_argument("--settle", type=int, default=0,
               help="untimed calls of a contender right before each of its samples (compare(settle=...))")
p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
               help="set a module constant of the new backend first (e.g. SLICE_BYTES=2097152, MODE=units)")
args = p.parse_args()

OLD = os.path.join(ROOT, "equifast", "backends", "fourier", "_ab_old.py")
with open(OLD, "w") as f:
    f.write(subprocess.run(["git", "show", f"{args.rev}:equifast/backends/fourier/group_conv.py"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout)
try:
    from equifast.backends.fourier import _ab_old as old
finally:
    os.remove(OLD)
from equifast.backends.fourier import group_conv as new  # noqa: E402

for item in args.set:
    name, value = item.split("=", 1)
    setattr(new, name, type(getattr(new, name))(value))
g, t, C = args.group, args.threads, args.channels
torch.set_num_threads(t)
n = equifast.groups.get(g).order
B = 8 if C == 32 else 4
gen = torch.Generator().manual_seed(0)
s = torch.randn(B, n, C, 32, 32, generator=gen)
w = torch.randn(C, n, C, 3, 3, generator=gen) / (n * C * 9) ** 0.5
go = torch.randn(B, n, C, 32, 32, generator=gen)
plan = make_plan(g, 1, 1, 1, "view", 3, 3, "group_conv")
s_req, w_req = s.clone().requires_grad_(), w.clone().requires_grad_()


def step(m):
    def f():
        out = m.group_conv_forward(s, w, None, plan)
        m.group_conv_backward(go, s, w, plan, (True, True, False))
        del out
    return f


def dense():
    out = equifast.group_conv(s_req, w_req, None, group=g, padding=1, backend="torch")
    torch.autograd.grad(out, (s_req, w_req), go)


ref = old.group_conv_forward(s, w, None, plan)
assert (new.group_conv_forward(s, w, None, plan) - ref).abs().max() <= 1e-4 * ref.abs().max()
faults = {}


def counted(name, fn):
    """fn, adding its minor page faults (pages the kernel mapped in) to faults[name]."""
    def f():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        faults[name] = faults.get(name, [0, 0])
        faults[name][0] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults[name][1] += 1
    return f


fns = {"torch": counted("torch", dense), "old": counted("old", step(old)), "new": counted("new", step(new))}
for fn in fns.values():
    for _ in range(3):
        fn()
faults.clear()
st = compare(fns, "cpu", repeat=args.repeat, budget_s=4 * args.repeat, settle=args.settle)
m = {k: v["median_s"] * 1e3 for k, v in st.items()}
mib = {k: v[0] / v[1] * resource.getpagesize() / 2 ** 20 for k, v in faults.items()}
print(f"| {g} | {C}->{C} | {t} | {m['torch']:.1f} | {m['old']:.1f} | {m['new']:.1f} | {m['old'] / m['new']:.2f}x "
      f"| {m['torch'] / m['new']:.2f}x | {mib['torch']:.0f} / {mib['old']:.0f} / {mib['new']:.0f} |", flush=True)
