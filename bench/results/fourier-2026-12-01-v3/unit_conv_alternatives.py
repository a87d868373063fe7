"""Other ways to run C4's five unit convolutions (32 -> 32, 3x3, padding 1, batch 8, 32x32, float32),
interleaved in one process (medians of 20 rounds after 3 warm-up rounds), ms for all five:

- ``onednn``: five F.conv2d calls on contiguous (NCHW) images, what the backend does;
- ``onednn_nhwc``: the same on channels_last images (oneDNN's brgconv, no reorders; the images would
  have to be written NHWC by the mixes, which is what v4/v5 tried);
- ``grouped``: one grouped F.conv2d (groups=5) over the five images side by side in the channels;
- ``nnpack``: five ``torch._nnpack_spatial_convolution`` calls (NNPACK, in torch's CPU build);
- ``native``: five ``aten._slow_conv2d_forward`` calls (PyTorch's own im2col + GEMM convolution);
- ``*_w``: the weight gradients (``aten.convolution_backward``, weight only) of the same layouts.

    python bench/results/fourier-2026-12-01-v3/unit_conv_alternatives.py THREADS
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]))
assert torch._nnpack_available()      # also initialises NNPACK (its calls fail before this)
B, C, H, K = 8, 32, 32, 5
gen = torch.Generator().manual_seed(0)
xs = [torch.randn(B, C, H, H, generator=gen) for _ in range(K)]
ws = [torch.randn(C, C, 3, 3, generator=gen) for _ in range(K)]
gys = [torch.randn(B, C, H, H, generator=gen) for _ in range(K)]
cl = [x.to(memory_format=torch.channels_last) for x in xs]
cl_w = [w.to(memory_format=torch.channels_last) for w in ws]
cl_g = [g.to(memory_format=torch.channels_last) for g in gys]
xg, wg, gg = torch.cat(xs, 1), torch.cat(ws), torch.cat(gys, 1)


def weight_grad(g, x, w, groups=1):
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], groups,
                                               [False, True, False])[1]


contenders = {
    "onednn": lambda: [F.conv2d(x, w, padding=1) for x, w in zip(xs, ws)],
    "onednn_nhwc": lambda: [F.conv2d(x, w, padding=1) for x, w in zip(cl, cl_w)],
    "grouped": lambda: F.conv2d(xg, wg, padding=1, groups=K),
    "nnpack": lambda: [torch._nnpack_spatial_convolution(x, w, None, [1, 1]) for x, w in zip(xs, ws)],
    "native": lambda: [torch.ops.aten._slow_conv2d_forward(x, w, [3, 3], None, [1, 1], [1, 1]) for x, w in zip(xs, ws)],
    "onednn_w": lambda: [weight_grad(g, x, w) for g, x, w in zip(gys, xs, ws)],
    "onednn_nhwc_w": lambda: [weight_grad(g, x, w) for g, x, w in zip(cl_g, cl, cl_w)],
    "grouped_w": lambda: weight_grad(gg, xg, wg, K),
    "native_w": lambda: [torch.ops.aten._slow_conv2d_backward.output_mask(g, x, w, [3, 3], [1, 1], [1, 1],
                                                                         [False, True, False])[1]
                         for g, x, w in zip(gys, xs, ws)],
}
ref = F.conv2d(xs[0], ws[0], padding=1)
err = ((torch._nnpack_spatial_convolution(xs[0], ws[0], None, [1, 1]) - ref).abs().max() / ref.abs().max()).item()
for fn in contenders.values():
    for _ in range(3):
        fn()
times = {k: [] for k in contenders}
for _ in range(20):
    for k, fn in contenders.items():
        t = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t)
print(f"| {sys.argv[1]} | " + " | ".join(f"{statistics.median(v) * 1e3:.2f}" for v in times.values())
      + f" | {err:.1e} |")
