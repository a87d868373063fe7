"""Quick side-by-side timing of the compiled "cpu" backend against "torch" and "reference" on CPU.

    .venv/bin/python tools/time_cpu_kernel.py            # lifting shapes (C_in <= 4) + a group conv
    .venv/bin/python tools/time_cpu_kernel.py --quick    # fewer repeats
    .venv/bin/python tools/time_cpu_kernel.py --backward # forward + backward (grad weight, and grad x for group conv)

Prints median milliseconds per call and the speed-ups of "cpu" over the other two. The numbers feed
``equifast.backends._compiled.preferred`` (docs/extension.md); the full benchmark suite lives in bench/.
"""
import argparse
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
import equifast  # noqa: E402

# name, op, group, frame, B, C_in, C_out, H, k, padding
SHAPES = [
    ("mnist-lift C4 1->16 k3", "lift_conv", "C4", "view", 128, 1, 16, 28, 3, 1),
    ("mnist-lift D4 1->16 k3", "lift_conv", "D4", "view", 128, 1, 16, 28, 3, 1),
    ("mnist-lift C4 1->32 k5", "lift_conv", "C4", "view", 128, 1, 32, 28, 5, 2),
    ("mnist-lift C4 canonical", "lift_conv", "C4", "canonical", 128, 1, 16, 28, 3, 1),
    ("cifar-lift C4 3->16 k3", "lift_conv", "C4", "view", 64, 3, 16, 32, 3, 1),
    ("cifar-lift D4 3->32 k3", "lift_conv", "D4", "view", 64, 3, 32, 32, 3, 1),
    ("lift C4 4->32 k3 64px", "lift_conv", "C4", "view", 16, 4, 32, 64, 3, 1),
    ("lift C4 16->32 k3 (C_in>4)", "lift_conv", "C4", "view", 32, 16, 32, 32, 3, 1),
    ("group C4 16->16 k3 16px", "group_conv", "C4", "view", 32, 16, 16, 16, 3, 1),
    ("group C4 32->32 k3 32px", "group_conv", "C4", "view", 16, 32, 32, 32, 3, 1),
    ("group D4 32->32 k3 16px", "group_conv", "D4", "view", 16, 32, 32, 16, 3, 1),
]


def bench(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--backends", default="reference,torch,cpu")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    repeats = 5 if args.quick else 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, reason = equifast.backends.availability("cpu", "cpu")
    if not ok:
        sys.exit(f"the cpu backend is unavailable: {reason}")
    backends = args.backends.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"{'forward+backward' if args.backward else 'forward'}, median of {repeats} (ms)")
    head = f"{'shape':30s}" + "".join(f"{b:>11s}" for b in backends) + "   cpu vs torch   cpu vs reference"
    print(head)
    torch.manual_seed(0)
    for name, op, group, frame, B, C_in, C_out, H, k, pad in SHAPES:
        n = equifast.groups.get(group).order
        x = torch.randn((B, C_in, H, H) if op == "lift_conv" else (B, n, C_in, H, H), dtype=dtype)
        w = torch.randn((C_out, C_in, k, k) if op == "lift_conv" else (C_out, n, C_in, k, k), dtype=dtype)
        b = torch.randn(C_out, dtype=dtype)
        if args.backward:
            w.requires_grad_(True)
            b.requires_grad_(True)
            if op == "group_conv":
                x.requires_grad_(True)
        row = {}
        for be in backends:
            def call(be=be):
                out = getattr(equifast, op)(x, w, b, group=group, frame=frame, padding=pad, backend=be)
                if args.backward:
                    out.sum().backward()
            row[be] = bench(call, repeats)
        line = f"{name:30s}" + "".join(f"{row[b]:11.2f}" for b in backends)
        if "cpu" in row and "torch" in row:
            line += f"   {row['torch'] / row['cpu']:8.2f}x"
        if "cpu" in row and "reference" in row:
            line += f"   {row['reference'] / row['cpu']:12.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
