# Usage: python input_grad_call.py THREADS CHANNELS BATCH  (from the repository root): one unit's input gradient (3x3,
# padding 1, stride 1, 32x32, float32, NCHW) as oneDNN's backward-data call (aten.convolution_backward, input only) and
# as a forward conv2d of grad_out with the flipped, transposed filters; checks they agree, then 40 rounds interleaved
# (order alternating), medians.
import statistics, sys, time
import torch
import torch.nn.functional as F
torch.set_num_threads(int(sys.argv[1]))
C, B = int(sys.argv[2]), int(sys.argv[3])
x, w, gy = torch.randn(B, C, 32, 32), torch.randn(C, C, 3, 3), torch.randn(B, C, 32, 32)
w_t = w.flip(-1, -2).transpose(0, 1).contiguous()
fns = {"backward_data": lambda: torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                                                     1, [True, False, False])[0],
       "flipped_conv": lambda: F.conv2d(gy, w_t, None, 1, 1)}
a, b = fns["backward_data"](), fns["flipped_conv"]()
assert (a - b).abs().max() <= 1e-5 * a.abs().max(), (a - b).abs().max()
res = {k: [] for k in fns}
for _ in range(5):
    for f in fns.values():
        f()
for r in range(40):
    for k in (list(fns) if r % 2 else list(fns)[::-1]):
        t = time.perf_counter(); fns[k](); res[k].append(time.perf_counter() - t)
m = {k: statistics.median(v) * 1e3 for k, v in res.items()}
print(f"{sys.argv[1]} thread(s), {C}->{C}, B={B}: backward_data {m['backward_data']:.3f} ms, flipped conv "
      f"{m['flipped_conv']:.3f} ms, ratio {m['backward_data'] / m['flipped_conv']:.2f}")
