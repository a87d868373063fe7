# Usage: python onednn_census.py THREADS [GROUP]  (from the repository root): the oneDNN primitives one GROUP
# (default C8) 32->32 forward+backward runs with each backend (B=8, 32x32, float32, contiguous stacks), from
# oneDNN's verbose log: calls and summed execution time per primitive kind (convolution kernels vs layout
# reorders). The log goes to stdout from C++, so the step runs in a child process and this one reads it. Then the
# fixed cost of a step: median of 200 forward+backward calls at 1 channel, 4x4, B=1, where the convolutions are
# negligible (Python, dispatch, allocation, thread wake-ups).
import collections, statistics, subprocess, sys, time
GROUP = sys.argv[3] if len(sys.argv) > 3 else sys.argv[2] if len(sys.argv) > 2 else "C8"
if len(sys.argv) > 3:      # child: THREADS BACKEND GROUP: one verbose step of BACKEND (or "tiny": the tiny timing)
    import torch
    sys.path.insert(0, "bench")
    from fourier_group_conv import op_callable
    torch.set_num_threads(int(sys.argv[1]))
    if sys.argv[2] == "tiny":
        for be in ("torch", "fourier", "torch", "fourier"):
            run = op_callable(be, GROUP, 1, 1, 1, 4)
            for _ in range(20): run()
            ts = []
            for _ in range(200):
                t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
            print(f"fixed cost per step ({be}, {GROUP}, 1 channel, 4x4, B=1): {statistics.median(ts) * 1e3:.2f} ms")
        sys.exit()
    run = op_callable(sys.argv[2], GROUP, 32, 32, 8, 32)
    for _ in range(3): run()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        run()
    sys.exit()
for be in ("torch", "fourier"):
    out = subprocess.run([sys.executable, __file__, sys.argv[1], be, GROUP], capture_output=True, text=True, check=True).stdout
    agg = collections.defaultdict(lambda: [0, 0.0])
    for line in out.splitlines():
        f = line.split(",")
        if len(f) > 8 and f[0] == "onednn_verbose" and f[3] == "exec":
            what = f[5] if f[5] == "reorder" else f"{f[5]} {f[7]}"       # reorder, or convolution + its direction
            if f[5] == "reorder":
                what += " (weights)" if f[-2].endswith("x3x3") else " (activations)"
            agg[what][0] += 1
            agg[what][1] += float(f[-1])
    total = sum(v[1] for v in agg.values())
    print(f"{be}: {total:.1f} ms in oneDNN primitives")
    for k, (n, ms) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:40s} {n:3d} calls {ms:7.2f} ms")
print(subprocess.run([sys.executable, __file__, sys.argv[1], "tiny", GROUP], capture_output=True, text=True, check=True).stdout,
      end="")
