// The CUDA kernels of equifast_C::lift_conv, group_conv and their backward ops, with the host code that
// plans their launches (maths and entry points in csrc/equiconv.h; struct Cuda and the registration in
// csrc/cuda/equiconv_kernel.cu). Device code and launch planning only, no CUDA runtime call: launches go
// through a launcher, so tests/test_cuda_emulated.py compiles this header as plain C++ (with
// EQUIFAST_EMULATE_CUDA and its own blockIdx, threadIdx, __syncthreads and shared memory) and runs the
// kernels on the host, block by block, one std::thread per CUDA thread.
//
// forward_kernel: grid (B × item chunks, C_out tiles). A block owns one image b, one tile of kOT output
// channels and a chunk of the n·Ho·Wo (copy, pixel) items, so one launch writes every copy to its slot.
// For each input plane (copy h, channel c) the block stages the plane in shared memory once and every
// thread reads it through the pixel map of its own copy g (rotated indexing from shared memory);
// planes larger than 48 KiB are read from global memory through the same map instead.
// grad_input_kernel: one thread per input element, a gather through the inverse pixel map (no atomics).
// grad_weight_kernel: one block per (tap k, copy g, C_out tile, position chunk), a fixed-order block
// reduction into per-chunk partials that are summed afterwards; no atomics anywhere, so the backward is
// deterministic and needs no special path under torch.use_deterministic_algorithms(True).
//
// The pixel map is read in its own form (csrc/equiconv.h): the identity and the affine maps of
// rotations / flips by multiples of 90° as coefficients passed by value (AffineMaps; the inverse that
// grad input reads is affine too: no per-size table, no argsort), a pixel table in the index type
// (int32 unless the int64 instantiation runs; its inverse for grad input is one scatter kernel).
// Index type: every kernel is instantiated for I = int32_t and int64_t and the host picks int32 when
// every tensor and geometry value involved is below kIndex32Limit (fits_index32); the int64 instantiation
// stays for huge tensors. Inside the kernels there is no `/` or `%`: divisions by loop-invariant values
// are a multiply-high and a shift (FastDiv, csrc/cuda/index_math.h), loops carry their counters
// (MixedRadix3), and accumulators are fully unrolled register arrays. tools/cuda_compile_check.sh
// reads the SASS and fails on local memory or a call to a 64-bit division routine.
// float16 / bfloat16 accumulate in float.

#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/index_math.h"
#include "equiconv.h"

namespace equifast {
namespace cuda {

#if !defined(EQUIFAST_EMULATE_CUDA)
// The block's dynamic shared memory (the emulation defines its own).
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return reinterpret_cast<T*>(smem_raw);
}
#endif

namespace {

constexpr int kOT = 8;          // output channels per thread / per block tile
constexpr int kThreads = 256;   // threads per block; every kernel says __launch_bounds__(kThreads, 1): with
                                // the block size alone ptxas (CUDA 13) trades registers for occupancy
                                // and spills accumulators to local memory (tools/cuda_compile_check.sh)
constexpr int64_t kMaxSmemBytes = 48 * 1024;
// Largest value the int32 instantiation may see: 2^31 less a margin for loop counters that step one
// block (<= 1024 threads) past their end.
constexpr int64_t kIndex32Limit = (int64_t(1) << 31) - 4096;

// ------------------------------------------------------------------ geometry in the index type
template <typename I>
struct Shape {
  I B, m, C, H, W, Co, kh, kw, n, Ho, Wo;
  I sh, sw, pt, pl, dh, dw;
  I xs[5];  // input strides (b, copy, c, row, col)
  I K, KK, HW, HoWo;
};

template <typename I>
Shape<I> shape_of(const Geom& g) {
  Shape<I> s;
  s.B = I(g.B); s.m = I(g.m); s.C = I(g.C); s.H = I(g.H); s.W = I(g.W); s.Co = I(g.Co);
  s.kh = I(g.kh); s.kw = I(g.kw); s.n = I(g.n); s.Ho = I(g.Ho); s.Wo = I(g.Wo);
  s.sh = I(g.sh); s.sw = I(g.sw); s.pt = I(g.pt); s.pl = I(g.pl); s.dh = I(g.dh); s.dw = I(g.dw);
  for (int d = 0; d < 5; ++d) s.xs[d] = I(g.xs[d]);
  s.K = I(g.K()); s.KK = I(g.kh * g.kw); s.HW = I(g.H * g.W); s.HoWo = I(g.Ho * g.Wo);
  return s;
}

template <typename I>
struct Strides5 {
  I s[5];
};

template <typename I>
Strides5<I> strides5(const at::Tensor& t) {
  Strides5<I> r{};
  if (t.dim() == 4) {
    r.s[0] = I(t.stride(0)); r.s[1] = 0; r.s[2] = I(t.stride(1)); r.s[3] = I(t.stride(2)); r.s[4] = I(t.stride(3));
  } else {
    for (int d = 0; d < 5; ++d) r.s[d] = I(t.stride(d));
  }
  return r;
}

// ------------------------------------------------------------------ pixel maps as the kernels read them
// The affine form (AffineView, AffineMaps) is in csrc/cuda/index_math.h; a table:
template <typename I>
struct TableView {
  const I* t;  // row e of the table
  I W, xs3, xs4;
  FastDiv<I> by_W;
  __device__ __forceinline__ I plane_row(I r) const { return r * W; }
  __device__ __forceinline__ I plane_at(I row, I q) const { return t[row + q]; }
  __device__ __forceinline__ I input_row(I r) const { return r * W; }
  __device__ __forceinline__ I input_at(I row, I q) const {
    I R, Q;
    by_W.divmod(t[row + q], R, Q);
    return R * xs3 + Q * xs4;
  }
};

// A table [n, H·W] of I: view pixel r·W + q of copy e reads input pixel t[e][r·W + q].
template <typename I>
struct TableMaps {
  const I* t;
  I HW, W, xs3, xs4;
  FastDiv<I> by_W;
  __device__ __forceinline__ TableView<I> view(I e) const { return {t + e * HW, W, xs3, xs4, by_W}; }
  __device__ __forceinline__ void map(I e, I r, I q, I& R, I& Q) const { by_W.divmod(t[e * HW + r * W + q], R, Q); }
};

// ------------------------------------------------------------------ kernels
// out[b, e, o, i, j] = bias[o] + Σ_{h, c, u, v} Wg[e][o][k(h, c, u, v)] · x[b, h, c, XP_e(r, q)]
template <typename T, typename I, typename Maps, bool SMEM>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(Shape<I> g, Maps maps, const T* __restrict__ x,
                                                           const T* __restrict__ Wg, const T* __restrict__ bias,
                                                           T* __restrict__ out, Strides5<I> os, FastDiv<I> by_chunks,
                                                           FastDiv<I> by_HoWo, FastDiv<I> by_Wo,
                                                           MixedRadix3<I> stage) {
  using acc_t = at::opmath_type<T>;
  T* plane = dynamic_smem<T>();
  I b, chunk;
  by_chunks.divmod(I(blockIdx.x), b, chunk);
  const I o0 = I(blockIdx.y) * kOT;
  const I item = chunk * kThreads + I(threadIdx.x);
  const bool active = item < g.n * g.HoWo;
  I e = 0, pix = 0, i = 0, j = 0;
  if (active) {
    by_HoWo.divmod(item, e, pix);
    by_Wo.divmod(pix, i, j);
  }
  acc_t acc[kOT];
#pragma unroll
  for (int t = 0; t < kOT; ++t) acc[t] = (bias != nullptr && o0 + t < g.Co) ? static_cast<acc_t>(bias[o0 + t]) : acc_t(0);
  const auto xm = maps.view(e);
  const T* wk = Wg + (e * g.Co + o0) * g.K;  // walks k = ((h·C + c)·kh + u)·kw + v
  const int nt = g.Co - o0 < kOT ? static_cast<int>(g.Co - o0) : kOT;
  const I r0 = i * g.sh - g.pt, q0 = j * g.sw - g.pl;
  const T* xh = x + b * g.xs[0];
  I srow = 0, scol = 0;  // where this thread starts staging a plane: pixel threadIdx.x
  if (SMEM) {
    I unused;
    stage.split(I(threadIdx.x), unused, srow, scol);
  }
  for (I h = 0; h < g.m; ++h, xh += g.xs[1]) {
    const T* xb = xh;
    for (I c = 0; c < g.C; ++c, xb += g.xs[2], wk += g.KK) {
      if (SMEM) {
        __syncthreads();
        // plane[row·W + col] = xb[row·xs3 + col·xs4], walking (row, col) by kThreads
        I unused = 0, row = srow, col = scol;
        for (I p = I(threadIdx.x); p < g.HW; p += kThreads) {
          plane[p] = xb[row * g.xs[3] + col * g.xs[4]];
          stage.advance(unused, row, col);
        }
        __syncthreads();
      }
      if (!active) continue;
      I r = r0;
      for (I u = 0; u < g.kh; ++u, r += g.dh) {
        if (r < 0 || r >= g.H) continue;
        const I prow = SMEM ? xm.plane_row(r) : xm.input_row(r);
        const T* wu = wk + u * g.kw;
        I q = q0;
        for (I v = 0; v < g.kw; ++v, q += g.dw) {
          if (q < 0 || q >= g.W) continue;
          const acc_t val = SMEM ? static_cast<acc_t>(plane[xm.plane_at(prow, q)])
                                 : static_cast<acc_t>(xb[xm.input_at(prow, q)]);
          const T* wt = wu + v;
          // fully unrolled with a guard (not a loop to nt), so acc stays in registers, not local memory
#pragma unroll
          for (int t = 0; t < kOT; ++t)
            if (t < nt) acc[t] += static_cast<acc_t>(wt[t * g.K]) * val;
        }
      }
    }
  }
  if (!active) return;
  T* ob = out + b * os.s[0] + e * os.s[1] + i * os.s[3] + j * os.s[4] + o0 * os.s[2];
#pragma unroll
  for (int t = 0; t < kOT; ++t)
    if (t < nt) ob[t * os.s[2]] = static_cast<T>(acc[t]);
}

// gx[b, h, c, R, Q] = Σ_e Σ_{u, v} Σ_o gy[b, e, o, i, j] · Wg[e][o][k(h, c, u, v)] with (i, j) the output
// pixels whose tap (u, v) reads view pixel (r, q) = XP_e⁻¹(R, Q) (inv: the inverse maps).
template <typename T, typename I, typename Maps>
__global__ void __launch_bounds__(kThreads, 1) grad_input_kernel(Shape<I> g, Maps inv, const T* __restrict__ gy,
                                                              const T* __restrict__ Wg, T* __restrict__ gx,
                                                              Strides5<I> gs, I total, FastDiv<I> by_W,
                                                              FastDiv<I> by_HW, FastDiv<I> by_C, FastDiv<I> by_m,
                                                              FastDiv<I> by_sh, FastDiv<I> by_sw) {
  using acc_t = at::opmath_type<T>;
  const int64_t idx64 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx64 >= total) return;
  const I idx = I(idx64);
  I rest, p, R, Q, bh, c, b, h;
  by_HW.divmod(idx, rest, p);
  by_W.divmod(p, R, Q);
  by_C.divmod(rest, bh, c);
  by_m.divmod(bh, b, h);
  const I k0 = (h * g.C + c) * g.KK;
  acc_t acc = 0;
  for (I e = 0; e < g.n; ++e) {
    I r, q;
    inv.map(e, R, Q, r, q);
    const T* gye = gy + (b * g.n + e) * g.Co * g.HoWo;
    const T* we = Wg + e * g.Co * g.K + k0;
    // tap u reads row r from output row i when r + pt − u·dh = i·sh; that row decreases with u
    I tr = r + g.pt;
    for (I u = 0; u < g.kh; ++u, tr -= g.dh) {
      if (tr < 0) break;
      I i, ri;
      by_sh.divmod(tr, i, ri);
      if (ri != 0 || i >= g.Ho) continue;
      I tc = q + g.pl;
      for (I v = 0; v < g.kw; ++v, tc -= g.dw) {
        if (tc < 0) break;
        I jj, rj;
        by_sw.divmod(tc, jj, rj);
        if (rj != 0 || jj >= g.Wo) continue;
        const T* gyp = gye + i * g.Wo + jj;
        const T* wp = we + u * g.kw + v;
        for (I o = 0; o < g.Co; ++o, gyp += g.HoWo, wp += g.K)
          acc += static_cast<acc_t>(*gyp) * static_cast<acc_t>(*wp);
      }
    }
  }
  gx[b * gs.s[0] + h * gs.s[1] + c * gs.s[2] + R * gs.s[3] + Q * gs.s[4]] = static_cast<T>(acc);
}

// partial[chunk, e, o, k] = Σ_{positions in chunk} gy[b, e, o, i, j] · xview_e[b, tap k at (i, j)]
template <typename T, typename I, typename Maps>
__global__ void __launch_bounds__(kThreads, 1) grad_weight_kernel(Shape<I> g, Maps maps, const T* __restrict__ x,
                                                               const T* __restrict__ gy,
                                                               at::opmath_type<T>* __restrict__ partial,
                                                               I per_chunk, FastDiv<I> by_otiles, FastDiv<I> by_kw,
                                                               FastDiv<I> by_kh, FastDiv<I> by_C,
                                                               MixedRadix3<I> walk) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t red[kOT][kThreads];
  const I k = I(blockIdx.x), chunk = I(blockIdx.z);
  I e, ot, hcu, v, hc, u, h, c;
  by_otiles.divmod(I(blockIdx.y), e, ot);
  by_kw.divmod(k, hcu, v);
  by_kh.divmod(hcu, hc, u);
  by_C.divmod(hc, h, c);
  const I o0 = ot * kOT;
  const int nt = g.Co - o0 < kOT ? static_cast<int>(g.Co - o0) : kOT;
  const auto xm = maps.view(e);
  const T* xhc = x + h * g.xs[1] + c * g.xs[2];
  const T* gye = gy + (e * g.Co + o0) * g.HoWo;
  const I du = u * g.dh - g.pt, dv = v * g.dw - g.pl;
  acc_t acc[kOT];
#pragma unroll
  for (int t = 0; t < kOT; ++t) acc[t] = 0;
  const I begin = chunk * per_chunk;
  const I end = g.B * g.HoWo - begin < per_chunk ? g.B * g.HoWo : begin + per_chunk;
  I b, i, j;
  walk.split(begin + I(threadIdx.x), b, i, j);
  for (I pos = begin + I(threadIdx.x); pos < end; pos += kThreads, walk.advance(b, i, j)) {
    const I r = i * g.sh + du, q = j * g.sw + dv;
    if (r < 0 || r >= g.H || q < 0 || q >= g.W) continue;
    const acc_t val = static_cast<acc_t>(xhc[b * g.xs[0] + xm.input_at(xm.input_row(r), q)]);
    const T* gyp = gye + b * g.n * g.Co * g.HoWo + i * g.Wo + j;
#pragma unroll
    for (int t = 0; t < kOT; ++t)
      if (t < nt) acc[t] += static_cast<acc_t>(gyp[t * g.HoWo]) * val;
  }
#pragma unroll
  for (int t = 0; t < kOT; ++t) red[t][threadIdx.x] = acc[t];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) {
#pragma unroll
      for (int t = 0; t < kOT; ++t) red[t][threadIdx.x] += red[t][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (static_cast<int>(threadIdx.x) < nt) {
    const int t = threadIdx.x;
    partial[((chunk * g.n + e) * g.Co + o0 + t) * g.K + k] = red[t][0];
  }
}

// inv[e][t[e][p]] = p: the inverse of each row of a pixel table (rows are permutations; inv starts at -1
// so that a row that is not one leaves a -1 the host detects).
template <typename I>
__global__ void __launch_bounds__(kThreads, 1) invert_table_kernel(const I* __restrict__ t, I* __restrict__ inv, I total,
                                                                FastDiv<I> by_HW) {
  const int64_t idx64 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx64 >= total) return;
  const I idx = I(idx64);
  I e, p;
  by_HW.divmod(idx, e, p);
  inv[e * by_HW.d + t[idx]] = p;
}

// ------------------------------------------------------------------ host side
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements a tensor's offsets reach (1 + the largest offset), at least its element count.
inline int64_t reach(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return std::max<int64_t>(last + 1, t.numel());
}

// Whether the int32 instantiation covers this call: every tensor the kernels index (input, output /
// grad out, grad input, Wg, tables, the grad-weight partials: `extra`) and every geometry value (padded
// extents bound every row / column the taps compute) below kIndex32Limit. The products inside the
// kernels are offsets into those tensors (or pieces of one), so none exceeds these bounds.
inline bool fits_index32(const Prepared& p, int64_t extra) {
  const Geom& g = p.geom;
  const int64_t out_numel = g.B * g.n * g.Co * g.Ho * g.Wo;       // checked in set_conv_geometry
  const int64_t x_numel = g.B * g.m * g.C * g.H * g.W;            // = p.x.numel()
  const int64_t rows = (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;  // <= H + padding (checked geometry)
  const int64_t cols = (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  for (int64_t v : {reach(p.x), x_numel, out_numel, p.Wg.numel(), g.n * g.H * g.W, extra, rows, cols,
                    g.pt + g.H, g.pl + g.W, g.m * g.C * g.kh * g.kw})
    if (v >= kIndex32Limit) return false;
  return true;
}

template <typename F>
void dispatch_index(bool index32, F&& f) {
  if (index32) f(int32_t{});
  else f(int64_t{});
}

// The pixel map as affine coefficients (the identity: one copy of [1 0 0; 0 1 0]); `inverse` gives the
// inverse maps (invert_affine): the view pixel of input pixel (R, Q).
template <typename I>
AffineMaps<I> affine_maps(const Prepared& p, bool inverse) {
  const Geom& g = p.geom;
  AffineMaps<I> m{};
  m.W = I(g.W); m.xs3 = I(g.xs[3]); m.xs4 = I(g.xs[4]);
  static const int64_t kIdentity[6] = {1, 0, 0, 0, 1, 0};
  const bool identity = p.xmap.kind == PixelMap::kIdentity;
  m.copies = identity ? 1 : I(g.n);
  for (int64_t e = 0; e < int64_t(m.copies); ++e) {
    const int64_t* c = identity ? kIdentity : p.xmap.affine.data() + 6 * e;
    int64_t a[6] = {c[0], c[1], c[2], c[3], c[4], c[5]};
    if (inverse) invert_affine(c, a);
    for (int t = 0; t < 6; ++t) m.a[e][t] = I(a[t]);
  }
  return m;
}

// The pixel map as a table [n, H·W] of I (a table given as int64 becomes int32 when I is int32: H·W
// is below 2^31 then); an affine map only when it has more than kMaxAffineCopies copies.
template <typename I>
at::Tensor table_of(const Prepared& p) {
  const auto dtype = std::is_same<I, int32_t>::value ? at::kInt : at::kLong;
  if (p.xmap.kind == PixelMap::kTable) return p.xmap.table.to(dtype).contiguous();
  return pixel_table(p, dtype);
}

template <typename I>
TableMaps<I> table_maps(const Prepared& p, const at::Tensor& t) {
  const Geom& g = p.geom;
  return {t.data_ptr<I>(), I(g.H * g.W), I(g.W), I(g.xs[3]), I(g.xs[4]), FastDiv<I>(I(g.W))};
}

inline bool needs_table(const Prepared& p) {
  return p.xmap.kind == PixelMap::kTable || (p.xmap.kind == PixelMap::kAffine && p.geom.n > kMaxAffineCopies);
}

// Calls f(maps) with the pixel map in the form the kernels read (inverse: for grad input); `keep`
// holds any table until the launches are queued.
template <typename I, typename Launch, typename F>
void with_maps(const std::string& op, const Prepared& p, bool inverse, const Launch& launch, at::Tensor& keep, F&& f) {
  if (!needs_table(p)) {
    f(affine_maps<I>(p, inverse));
    return;
  }
  at::Tensor t = table_of<I>(p);
  if (inverse) {
    const int64_t total = t.numel();
    at::Tensor inv = at::full_like(t, -1);
    if (total > 0) {
      launch(&invert_table_kernel<I>, dim3(static_cast<unsigned>(ceil_div(total, kThreads))), size_t(0),
             t.data_ptr<I>(), inv.data_ptr<I>(), I(total), FastDiv<I>(I(p.geom.H * p.geom.W)));
      TORCH_CHECK(inv.min().item<int64_t>() >= 0, op,
                  ": every row of the pixel permutation table must be a permutation of 0..", p.geom.H * p.geom.W - 1);
    }
    t = inv;
  }
  keep = t;
  f(table_maps<I>(p, t));
}

// The forward and backward of struct Cuda (equiconv_kernel.cu), over a launcher: launch(kernel, grid,
// dynamic shared bytes, args...) starts the kernel with kThreads threads per block on the GPU, or runs
// its plain C++ form on the host (tests/test_cuda_emulated.py). `width` forces the int64 instantiation
// (tests); kAuto picks int32 where fits_index32 allows.
enum class IndexWidth { kAuto, k64 };

template <typename Launch>
at::Tensor forward_impl(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias,
                        const Launch& launch, IndexWidth width = IndexWidth::kAuto) {
  const Geom& g = p.geom;
  at::Tensor out = empty_stack(g, p.x_channels_last, p.x.options());
  if (out.numel() == 0) return out;
  at::Tensor bt = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const int64_t items = g.n * g.Ho * g.Wo;
  const int64_t chunks = ceil_div(items, kThreads);
  const int64_t otiles = ceil_div(g.Co, kOT);
  TORCH_CHECK(g.B * chunks < (int64_t(1) << 31) && otiles <= 65535, op, ": problem too large for one launch");
  const dim3 grid(static_cast<unsigned>(g.B * chunks), static_cast<unsigned>(otiles));
  at::Tensor keep;
  dispatch_index(width == IndexWidth::kAuto && fits_index32(p, 0), [&](auto index_tag) {
    using I = decltype(index_tag);
    const Shape<I> s = shape_of<I>(g);
    const Strides5<I> os = strides5<I>(out);
    with_maps<I>(op, p, /*inverse=*/false, launch, keep, [&](auto maps) {
      using Maps = decltype(maps);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_forward", [&] {
        const int64_t smem = g.H * g.W * static_cast<int64_t>(sizeof(scalar_t));
        const scalar_t* bptr = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
        const FastDiv<I> by_chunks{I(chunks)}, by_HoWo{I(g.Ho * g.Wo)}, by_Wo{I(g.Wo)};
        if (smem <= kMaxSmemBytes) {
          launch(&forward_kernel<scalar_t, I, Maps, true>, grid, static_cast<size_t>(smem), s, maps,
                 p.x.data_ptr<scalar_t>(), p.Wg.data_ptr<scalar_t>(), bptr, out.data_ptr<scalar_t>(), os, by_chunks,
                 by_HoWo, by_Wo, MixedRadix3<I>(I(g.H), I(g.W), I(kThreads)));
        } else {
          launch(&forward_kernel<scalar_t, I, Maps, false>, grid, size_t(0), s, maps, p.x.data_ptr<scalar_t>(),
                 p.Wg.data_ptr<scalar_t>(), bptr, out.data_ptr<scalar_t>(), os, by_chunks, by_HoWo, by_Wo,
                 MixedRadix3<I>());
        }
      });
    });
  });
  return out;
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> backward_impl(const std::string& op, const Prepared& p, const at::Tensor& grad_out,
                                                 const at::Tensor& weight, std::array<bool, 2> output_mask,
                                                 const Launch& launch, IndexWidth width = IndexWidth::kAuto) {
  const Geom& g = p.geom;
  at::Tensor gy = grad_out.to(p.x.scalar_type()).contiguous();
  at::Tensor gx = p.x.new_empty({0}), gw = p.x.new_empty({0});
  const int64_t K = g.K(), P = g.B * g.Ho * g.Wo, otiles = ceil_div(g.Co, kOT);
  // grad weight: positions split into chunks of per_chunk (at most 65535 chunks)
  int64_t per_chunk = int64_t(kThreads) * 16, chunks = ceil_div(P, per_chunk);
  if (chunks > 65535) {
    per_chunk = ceil_div(P, 65535);
    chunks = ceil_div(P, per_chunk);
  }
  const bool want_gw = output_mask[1] && P > 0 && g.Co > 0;
  const int64_t partial_numel = want_gw ? chunks * g.n * g.Co * K : 0;  // bounded by chunks·|Wg|: no overflow
  const bool index32 = width == IndexWidth::kAuto && fits_index32(p, std::max(partial_numel, per_chunk + kThreads));
  if (output_mask[0]) {
    gx = empty_grad_input(g, p.x, p.x_channels_last);
    const int64_t total = g.B * g.m * g.C * g.H * g.W;
    if (total > 0) {
      const int64_t blocks = ceil_div(total, kThreads);
      TORCH_CHECK(blocks < (int64_t(1) << 31), op, ": problem too large for one launch");
      at::Tensor keep;
      dispatch_index(index32, [&](auto index_tag) {
        using I = decltype(index_tag);
        const Shape<I> s = shape_of<I>(g);
        const Strides5<I> gs = strides5<I>(gx);
        with_maps<I>(op, p, /*inverse=*/true, launch, keep, [&](auto inv) {
          using Maps = decltype(inv);
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_grad_input", [&] {
            launch(&grad_input_kernel<scalar_t, I, Maps>, dim3(static_cast<unsigned>(blocks)), size_t(0), s, inv,
                   gy.data_ptr<scalar_t>(), p.Wg.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gs, I(total),
                   FastDiv<I>(I(g.W)), FastDiv<I>(I(g.H * g.W)), FastDiv<I>(I(g.C)), FastDiv<I>(I(g.m)),
                   FastDiv<I>(I(g.sh)), FastDiv<I>(I(g.sw)));
          });
        });
      });
    }
  }
  if (output_mask[1]) {
    if (!want_gw) {
      gw = at::zeros_like(weight, at::MemoryFormat::Contiguous);
    } else {
      TORCH_CHECK(K < (int64_t(1) << 31) && g.n * otiles <= 65535, op, ": problem too large for one launch");
      const dim3 grid(static_cast<unsigned>(K), static_cast<unsigned>(g.n * otiles), static_cast<unsigned>(chunks));
      const auto acc_type = at::toOpMathType(p.x.scalar_type());
      at::Tensor partial = at::empty({chunks, g.n, g.Co, K}, p.x.options().dtype(acc_type));
      at::Tensor keep;
      dispatch_index(index32, [&](auto index_tag) {
        using I = decltype(index_tag);
        const Shape<I> s = shape_of<I>(g);
        with_maps<I>(op, p, /*inverse=*/false, launch, keep, [&](auto maps) {
          using Maps = decltype(maps);
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_grad_weight", [&] {
            using acc_t = at::opmath_type<scalar_t>;
            launch(&grad_weight_kernel<scalar_t, I, Maps>, grid, size_t(0), s, maps, p.x.data_ptr<scalar_t>(),
                   gy.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), I(per_chunk), FastDiv<I>(I(otiles)),
                   FastDiv<I>(I(g.kw)), FastDiv<I>(I(g.kh)), FastDiv<I>(I(g.C)),
                   MixedRadix3<I>(I(g.Ho), I(g.Wo), I(kThreads)));
          });
        });
      });
      gw = fold_grad_weight(p, partial.sum(0), weight);
    }
  }
  return {gx, gw};
}

}  // namespace
}  // namespace cuda
}  // namespace equifast
