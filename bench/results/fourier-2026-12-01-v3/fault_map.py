"""Where the page faults of a fourier forward+backward fall, and the time of those steps: minor faults
(getrusage) and wall time per step of the backend's mixes, unit convolutions and input/weight
gradients, summed over one call, averaged over 20 calls after 5 warm-up calls (one thread, B=8,
32x32, 32 -> 32 channels; the same op as the benchmark's ``op_callable``).

    python bench/results/fourier-2026-12-01-v3/fault_map.py GROUP [BACKEND]
"""
import os
import resource
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))   # bench/
from fourier_group_conv import op_callable                     # noqa: E402
from equifast.backends.fourier import group_conv as gc        # noqa: E402

torch.set_num_threads(1)
CALLS = 20
totals = defaultdict(lambda: [0, 0.0, 0])     # faults, seconds, calls


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(name, fn):
    def wrapper(*args, **kwargs):
        f, t = faults(), time.perf_counter()
        out = fn(*args, **kwargs)
        row = totals[name]
        row[0] += faults() - f
        row[1] += time.perf_counter() - t
        row[2] += 1
        return out
    return wrapper


gc.mix = timed("mixes", gc.mix)
gc._conv = timed("unit convolutions", gc._conv)
conv_grad = gc._conv_grad
gc._conv_grad = lambda grad_y, x, weight, plan, which, groups=1: timed(
    f"{which} gradients", conv_grad)(grad_y, x, weight, plan, which, groups)
run = op_callable(sys.argv[2] if len(sys.argv) > 2 else "fourier", sys.argv[1], 32, 32, 8, 32)
for _ in range(5):
    run()
totals.clear()
f0, t0 = faults(), time.perf_counter()
for _ in range(CALLS):
    run()
print(f"{sys.argv[1]}: step {(time.perf_counter() - t0) / CALLS * 1e3:.1f} ms, {(faults() - f0) / CALLS:.0f} faults per step; "
      + "; ".join(f"{k} {f / CALLS:.0f} faults {s / CALLS * 1e3:.2f} ms ({c // CALLS} calls)"
                  for k, (f, s, c) in totals.items()))
