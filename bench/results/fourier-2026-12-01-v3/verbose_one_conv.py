"""oneDNN's own times (verbose log) for one C4 unit convolution (32 -> 32, 3x3, padding 1, batch 8,
32x32, float32, one thread) on a contiguous image and on a channels_last one, after three warm-up calls;
then the page faults (getrusage) per call over 100 calls of each, the output freed every time.

    python bench/results/fourier-2026-12-01-v3/verbose_one_conv.py 2>&1 | grep -E "^----|exec"

(verbose.txt: three runs, each verbose line cut to the primitive, implementation and time.)
"""
import resource

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
x, w = torch.randn(8, 32, 32, 32), torch.randn(32, 32, 3, 3)
x_cl, w_cl = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
images = {"contiguous": (x, w), "channels_last": (x_cl, w_cl)}
for _ in range(3):
    F.conv2d(x, w, padding=1)
    F.conv2d(x_cl, w_cl, padding=1)
for name, (a, b) in images.items():
    print("----", name, flush=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        F.conv2d(a, b, padding=1)
for name, (a, b) in images.items():
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        F.conv2d(a, b, padding=1)
    print(f"exec {name}: {(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / 100:.0f} page faults per call")
