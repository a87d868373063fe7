"""The CUDA kernels' own source, run on the CPU: csrc/cuda/kernels.cuh (the kernels and their launch
planning; no CUDA runtime call) compiled as plain C++ with EQUIFAST_EMULATE_CUDA, blockIdx / threadIdx
/ __syncthreads / shared memory provided here, and each launch run block by block with one std::thread
per CUDA thread (a std::barrier for __syncthreads). The entry points are csrc/equiconv.h's, as on the
GPU, so argument checks, pixel-map forms, index-width choice, grad-weight partials and their fold are
the production code; only the launcher differs. Compared with the reference backend (float64) over
groups, frames, strides, padding, dilation, non-square kernels and images, layouts, the int32 and the
forced int64 instantiation, the shared-memory and global-memory forward paths, pixel tables (int32 /
int64) and more affine copies than the kernels take by value.

This is what can be checked without a GPU: the index arithmetic, the maps, the loop structure and the
block-level synchronisation of the real kernel source. It cannot show GPU-only faults (warp-level
races the barrier emulation hides, device memory errors, the nvcc build): those are for
tests/test_cuda_kernels.py and ``make sanitize`` on a GPU. Compiles the harness once per source
version (torch.utils.cpp_extension.load_inline into torch's extension cache, the name carrying a hash
of the harness and headers; about a minute); skipped without a C++ compiler.

With sanitizers (out-of-bounds reads and writes of every tensor the kernels touch, and signed overflow
in the int32 instantiation):
    EQUIFAST_EMULATE_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-wrapv" \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 python -m pytest tests/test_cuda_emulated.py"""
import hashlib
import os
import shutil

import pytest
import torch

import equifast
from equifast.backends._compiled import group_tables, lift_tables, pixel_table
from helpers import make_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = ["csrc/cuda/kernels.cuh", "csrc/cuda/index_math.h", "csrc/equiconv.h"]

HARNESS = r"""
#include <torch/extension.h>

#include <barrier>
#include <cstddef>
#include <thread>
#include <vector>

// ---- what nvcc would provide
#define EQUIFAST_EMULATE_CUDA 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  /* one block runs at a time: a static is the block's shared memory */

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct EmuIdx { unsigned x = 0, y = 0, z = 0; };
thread_local EmuIdx threadIdx, blockIdx;
static std::barrier<>* g_barrier = nullptr;
static void* g_dynamic_smem = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }

namespace equifast {
namespace cuda {
template <typename T>
T* dynamic_smem() { return static_cast<T*>(g_dynamic_smem); }
}  // namespace cuda
}  // namespace equifast

#include "cuda/kernels.cuh"

namespace {
using namespace equifast;
using namespace equifast::cuda;

// kThreads persistent threads per launch walk the blocks in order; a barrier ends every block, so a
// block's shared memory is free for the next one.
struct EmuLaunch {
  template <typename... KArgs, typename... Args>
  void operator()(void (*kernel)(KArgs...), dim3 grid, size_t smem, Args&&... args) const {
    std::vector<std::max_align_t> mem(smem / sizeof(std::max_align_t) + 1);
    g_dynamic_smem = mem.data();
    std::barrier<> bar(kThreads);
    g_barrier = &bar;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < unsigned(kThreads); ++t)
      threads.emplace_back([&, t] {
        threadIdx = {t, 0, 0};
        for (unsigned z = 0; z < grid.z; ++z)
          for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
              blockIdx = {x, y, z};
              kernel(args...);
              bar.arrive_and_wait();
            }
      });
    for (auto& th : threads) th.join();
  }
};

IndexWidth g_width = IndexWidth::kAuto;

struct Emu {
  static constexpr const char* kName = "emulated cuda";
  static void check_input(const std::string& op, const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu(), op, ": the emulation runs on CPU tensors");
  }
  static at::Tensor forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias) {
    return forward_impl(op, p, bias, EmuLaunch{}, g_width);
  }
  static std::tuple<at::Tensor, at::Tensor> backward(const std::string& op, const Prepared& p,
                                                     const at::Tensor& grad_out, const at::Tensor& weight,
                                                     std::array<bool, 2> output_mask) {
    return backward_impl(op, p, grad_out, weight, output_mask, EmuLaunch{}, g_width);
  }
};
}  // namespace

at::Tensor lift(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> b, at::Tensor xmap, at::Tensor kperm,
                int64_t n, std::vector<int64_t> st, std::vector<int64_t> pd, std::vector<int64_t> dl, bool wide) {
  g_width = wide ? IndexWidth::k64 : IndexWidth::kAuto;
  return equifast::lift_conv_forward<Emu>(x, w, b, xmap, kperm, n, st, pd, dl);
}
std::vector<at::Tensor> lift_backward(at::Tensor gy, at::Tensor x, at::Tensor w, at::Tensor xmap, at::Tensor kperm,
                                      int64_t n, std::vector<int64_t> st, std::vector<int64_t> pd,
                                      std::vector<int64_t> dl, bool wide) {
  g_width = wide ? IndexWidth::k64 : IndexWidth::kAuto;
  auto r = equifast::lift_conv_backward<Emu>(gy, x, w, xmap, kperm, n, st, pd, dl, c10::List<bool>({true, true}));
  return {std::get<0>(r), std::get<1>(r)};
}
at::Tensor group(at::Tensor s, at::Tensor w, c10::optional<at::Tensor> b, at::Tensor slot, at::Tensor kperm,
                 std::vector<int64_t> st, std::vector<int64_t> pd, std::vector<int64_t> dl, bool wide) {
  g_width = wide ? IndexWidth::k64 : IndexWidth::kAuto;
  return equifast::group_conv_forward<Emu>(s, w, b, slot, kperm, st, pd, dl);
}
std::vector<at::Tensor> group_backward(at::Tensor gy, at::Tensor s, at::Tensor w, at::Tensor slot, at::Tensor kperm,
                                       std::vector<int64_t> st, std::vector<int64_t> pd, std::vector<int64_t> dl,
                                       bool wide) {
  g_width = wide ? IndexWidth::k64 : IndexWidth::kAuto;
  auto r = equifast::group_conv_backward<Emu>(gy, s, w, slot, kperm, st, pd, dl, c10::List<bool>({true, true}));
  return {std::get<0>(r), std::get<1>(r)};
}
"""


@pytest.fixture(scope="module")
def emu():
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler to build the emulation of the CUDA kernels")
    from torch.utils import cpp_extension
    extra = os.environ.get("EQUIFAST_EMULATE_CFLAGS", "").split()  # e.g. sanitizers, see the module doc
    digest = hashlib.sha1((HARNESS + " ".join(extra)).encode())
    for h in HEADERS:
        with open(os.path.join(ROOT, h), "rb") as f:
            digest.update(f.read())
    return cpp_extension.load_inline(
        name=f"equifast_cuda_emulated_{digest.hexdigest()[:12]}", cpp_sources=[HARNESS],
        functions=["lift", "lift_backward", "group", "group_backward"],
        extra_cflags=["-O2", "-std=c++20", "-Wno-unknown-pragmas", "-I" + os.path.join(ROOT, "csrc")] + extra,
        extra_ldflags=[f for f in extra if f.startswith("-fsanitize")],
        with_cuda=False, verbose=False)


def _conv_args(plan):
    return list(plan.stride), list(plan.padding), list(plan.dilation)


def _reference(op, x, w, b, gy, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w)]
    out = getattr(equifast, op)(leaves[0], leaves[1], b, backend="reference", **kw)
    out.backward(gy)
    return out.detach(), leaves[0].grad, leaves[1].grad


def _check(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


LIFT_CASES = [
    # group, frame, H, W, kh, kw, stride, padding, dilation, channels_last
    ("C4", "view", 7, 7, 3, 3, 1, 1, 1, False),
    ("D4", "view", 6, 6, 3, 2, (2, 1), (0, 1, 2, 0), 1, False),
    ("D4", "view", 9, 9, 3, 3, 2, 2, 2, True),
    ("D1", "view", 5, 8, 2, 3, 1, 1, (1, 2), False),
    ("C2", "view", 6, 9, 3, 3, (1, 3), 0, 1, True),
    ("C4", "canonical", 7, 7, 3, 3, 1, 1, 1, False),
    ("D4", "canonical", 8, 5, 3, 3, 2, (1, 0, 0, 2), 1, False),
    ("C1", "view", 6, 7, 3, 3, 1, 1, 1, False),
]


@pytest.mark.parametrize("wide", [False, True], ids=["int32", "int64"])
@pytest.mark.parametrize("case", LIFT_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-k{c[4]}{c[5]}")
def test_lift_matches_reference(emu, case, wide):
    group, frame, H, W, kh, kw, stride, padding, dilation, channels_last = case
    x, w, b = make_problem("lift_conv", group, B=2, C_in=2, C_out=9, H=H, W=W, k=kh, kw=kw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = equifast._args.make_plan(group, stride, padding, dilation, frame, kh, kw, "lift_conv")
    xmap, kperm = lift_tables(plan, H, W, kh, kw, "cpu")
    st, pd, dl = _conv_args(plan)
    kw_args = dict(group=group, frame=frame, stride=stride, padding=padding, dilation=dilation)
    ref_out = equifast.lift_conv(x, w, b, backend="reference", **kw_args)
    gy = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_out, ref_gx, ref_gw = _reference("lift_conv", x, w, b, gy, **kw_args)
    out = emu.lift(x, w, b, xmap, kperm, plan.order, st, pd, dl, wide)
    _check(out, ref_out, "forward")
    gx, gw = emu.lift_backward(gy, x, w, xmap, kperm, plan.order, st, pd, dl, wide)
    _check(gx, ref_gx, "grad input")
    _check(gw, ref_gw, "grad weight")
    if xmap.dim() == 3:  # the same map as int64 and int32 pixel tables
        for table in (pixel_table(xmap, plan.order, H, W), pixel_table(xmap, plan.order, H, W).int()):
            _check(emu.lift(x, w, b, table, kperm, plan.order, st, pd, dl, wide), ref_out, "forward, table")
            tgx, tgw = emu.lift_backward(gy, x, w, table, kperm, plan.order, st, pd, dl, wide)
            _check(tgx, ref_gx, "grad input, table")
            _check(tgw, ref_gw, "grad weight, table")


@pytest.mark.parametrize("wide", [False, True], ids=["int32", "int64"])
def test_lift_global_memory_path(emu, wide):
    """A float64 plane of 80x80 (51 KB) is above the 48 KiB shared-memory limit: read from global memory."""
    x, w, b = make_problem("lift_conv", "C4", B=1, C_in=1, C_out=3, H=80, W=80, k=3)
    plan = equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, kperm = lift_tables(plan, 80, 80, 3, 3, "cpu")
    gy = torch.randn(1, 4, 3, 80, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref_out, ref_gx, ref_gw = _reference("lift_conv", x, w, b, gy, group="C4", padding=1)
    _check(emu.lift(x, w, b, xmap, kperm, 4, [1, 1], [1, 1, 1, 1], [1, 1], wide), ref_out, "forward")
    gx, gw = emu.lift_backward(gy, x, w, xmap, kperm, 4, [1, 1], [1, 1, 1, 1], [1, 1], wide)
    _check(gx, ref_gx, "grad input")
    _check(gw, ref_gw, "grad weight")


def test_more_affine_copies_than_by_value(emu):
    x, w, b = make_problem("lift_conv", "D4", B=1, C_in=2, C_out=3, H=6, W=6, k=3)
    plan = equifast._args.make_plan("D4", 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, kperm = lift_tables(plan, 6, 6, 3, 3, "cpu")
    pick = torch.tensor([e % 8 for e in range(17)])
    args = ([1, 1], [1, 1, 1, 1], [1, 1], False)
    out8 = emu.lift(x, w, b, xmap, kperm, 8, *args)
    out17 = emu.lift(x, w, b, xmap[pick].contiguous(), kperm, 17, *args)
    _check(out17, out8[:, pick], "forward")
    gy17 = torch.randn(out17.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    gy8 = torch.zeros_like(out8).index_add_(1, pick, gy17)
    for got, want in zip(emu.lift_backward(gy17, x, w, xmap[pick].contiguous(), kperm, 17, *args),
                         emu.lift_backward(gy8, x, w, xmap, kperm, 8, *args)):
        _check(got, want, "backward")


GROUP_CASES = [
    ("C4", "view", 6, 6, 3, 1, 1, False),
    ("D4", "view", 7, 5, 3, 2, 1, True),
    ("D4", "canonical", 6, 6, 2, 1, (0, 1, 1, 0), False),
    ("C2", "canonical", 5, 7, 3, (1, 2), 2, False),
]


@pytest.mark.parametrize("wide", [False, True], ids=["int32", "int64"])
@pytest.mark.parametrize("case", GROUP_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-k{c[4]}")
def test_group_conv_matches_reference(emu, case, wide):
    group, frame, H, W, k, stride, padding, permuted = case
    s, w, b = make_problem("group_conv", group, B=2, C_in=2, C_out=5, H=H, W=W, k=k)
    if permuted:  # a field-major [B, C, n, H, W] tensor seen as [B, n, C, H, W]
        s = s.transpose(1, 2).contiguous().transpose(1, 2)
    plan = equifast._args.make_plan(group, stride, padding, 1, frame, k, k, "group_conv")
    slot, kperm = group_tables(plan, k, k, "cpu")
    st, pd, dl = _conv_args(plan)
    kw_args = dict(group=group, frame=frame, stride=stride, padding=padding)
    ref_out = equifast.group_conv(s, w, b, backend="reference", **kw_args)
    gy = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref_out, ref_gx, ref_gw = _reference("group_conv", s, w, b, gy, **kw_args)
    _check(emu.group(s, w, b, slot, kperm, st, pd, dl, wide), ref_out, "forward")
    gx, gw = emu.group_backward(gy, s, w, slot, kperm, st, pd, dl, wide)
    _check(gx, ref_gx, "grad input")
    _check(gw, ref_gw, "grad weight")


def test_table_that_is_not_a_permutation_is_refused(emu):
    x, w, _ = make_problem("lift_conv", "C4", B=1, C_in=1, C_out=2, H=5, W=5, bias=False)
    plan = equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, kperm = lift_tables(plan, 5, 5, 3, 3, "cpu")
    bad = pixel_table(xmap, 4, 5, 5).clone()
    bad[1, 0] = bad[1, 1]
    with pytest.raises(RuntimeError, match="permutation"):
        emu.lift(x, w, None, bad, kperm, 4, [1, 1], [1, 1, 1, 1], [1, 1], False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lift_low_precision(emu, dtype):
    """float32 / float16 / bfloat16 storage, float accumulation: within the storage type's rounding of
    the float64 reference on the same (rounded) inputs."""
    x, w, b = (t.to(dtype) for t in make_problem("lift_conv", "D4", B=2, C_in=3, C_out=4, H=7, W=7, k=3))
    plan = equifast._args.make_plan("D4", 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, kperm = lift_tables(plan, 7, 7, 3, 3, "cpu")
    gy = torch.randn(2, 8, 4, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ref_out, ref_gx, ref_gw = _reference("lift_conv", x.double(), w.double(), b.double(), gy, group="D4", padding=1)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    args = ([1, 1], [1, 1, 1, 1], [1, 1], False)
    out = emu.lift(x, w, b, xmap, kperm, 8, *args)
    gx, gw = emu.lift_backward(gy.to(dtype), x, w, xmap, kperm, 8, *args)
    assert out.dtype == gx.dtype == gw.dtype == dtype
    for got, want, what in ((out, ref_out, "forward"), (gx, ref_gx, "grad input"), (gw, ref_gw, "grad weight")):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item(),
                                   msg=lambda m, what=what: f"{what}: {m}")
