# Usage: python primed_allocator.py THREADS plain|primed GROUP CHANNELS  (from the repository root): torch and fourier
# forward+backward, 15 steps each after five, median ms and MiB of minor page faults per step. "primed" first allocates,
# touches and frees one 30 MiB block, which raises glibc's dynamic mmap threshold to 30 MiB (it follows the largest freed
# mmapped block up to 32 MiB, and the heap is trimmed only above twice that): what a process that has freed a tensor of
# that size is in. B=8 at 32 channels, 4 at 64; 32x32, float32, contiguous stacks.
import resource, statistics, sys, time
import torch
if sys.argv[2] == "primed":
    x = torch.empty(30 << 20, dtype=torch.uint8)
    x.fill_(0)
    del x
sys.path.insert(0, "bench")
from fourier_group_conv import op_callable  # noqa: E402
torch.set_num_threads(int(sys.argv[1]))
g, C = sys.argv[3], int(sys.argv[4])
res = {}
for be in ("torch", "fourier"):
    run = op_callable(be, g, C, C, 8 if C == 32 else 4, 32)
    for _ in range(5):
        run()
    ts, f0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(15):
        t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
    res[be] = (statistics.median(ts) * 1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 15 * 4 / 1024)
print(sys.argv[2], g, C, sys.argv[1] + "t", " ".join(f"{k} {v[0]:.1f} ms {v[1]:.1f} MiB" for k, v in res.items()),
      f"ratio {res['torch'][0] / res['fourier'][0]:.2f}")
