"""Page faults and time per call of group_conv forward+backward, torch vs fourier backend, with the
calls alternating between the two backends (what `compare` samples without ``settle``) and with each
backend called several times in a row (a training loop's steady state; `compare(settle=1)`).

    python bench/fourier_faults.py C4 1 [32] [--calls 12] [--rounds 5]     (group, threads, channels)

Faults are the process's minor page faults (getrusage), as MiB of pages per call: every one is a
page the allocator handed back to the kernel and took again (1.5-2.5 µs each on the KVM guest of
bench/results/fourier-2026-11-30-v4). Rounds alternate the two schemes; medians over rounds. Prints one
markdown row: | group | channels | threads | scheme | torch ms | fourier ms | torch/fourier | MiB faulted
per call, torch / fourier |
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/
from fourier_group_conv import op_callable   # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("group")
p.add_argument("threads", type=int)
p.add_argument("channels", type=int, nargs="?", default=32)
p.add_argument("--calls", type=int, default=12, help="timed calls of each backend per round and scheme")
p.add_argument("--rounds", type=int, default=5)
args = p.parse_args()
torch.set_num_threads(args.threads)
B = 8 if args.channels == 32 else 4
fns = {be: op_callable(be, args.group, args.channels, args.channels, B, 32) for be in ("torch", "fourier")}
for fn in fns.values():
    for _ in range(3):
        fn()


def timed(fn):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    fn()
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


res = {(scheme, be): ([], []) for scheme in ("alternating", "in a row") for be in fns}
for _ in range(args.rounds):
    for _ in range(args.calls):             # torch, fourier, torch, fourier, ...
        for be, fn in fns.items():
            t, f = timed(fn)
            res["alternating", be][0].append(t)
            res["alternating", be][1].append(f)
    for be, fn in fns.items():              # each backend: one untimed call, then its calls in a row
        fn()
        for _ in range(args.calls):
            t, f = timed(fn)
            res["in a row", be][0].append(t)
            res["in a row", be][1].append(f)
for scheme in ("alternating", "in a row"):
    ms = {be: statistics.median(res[scheme, be][0]) * 1e3 for be in fns}
    mib = {be: statistics.mean(res[scheme, be][1]) * resource.getpagesize() / 2 ** 20 for be in fns}
    print(f"| {args.group} | {args.channels}->{args.channels} | {args.threads} | {scheme} | {ms['torch']:.1f} | "
          f"{ms['fourier']:.1f} | {ms['torch'] / ms['fourier']:.2f}x | {mib['torch']:.1f} / {mib['fourier']:.1f} |",
          flush=True)
