// The CUDA kernels of equifast_C::lift_conv, group_conv and their backward ops (maths and entry
// points in csrc/equiconv.h; registered at the end of this file).
//
// forward_kernel: grid (B × item chunks, C_out tiles). A block owns one image b, one tile of OT output
// channels and a chunk of the n·Ho·Wo (copy, pixel) items, so one launch writes every copy to its slot.
// For each input plane (copy h, channel c) the block stages the plane in shared memory once and every
// thread reads it through the pixel table of its own copy g (rotated indexing from shared memory);
// planes larger than 48 KiB are read from global memory through the same table instead.
// grad_input_kernel: one thread per input element, a gather through the inverse pixel table (no atomics).
// grad_weight_kernel: one block per (tap k, copy g, C_out tile, position chunk), a fixed-order block
// reduction into per-chunk partials that are summed afterwards; no atomics anywhere, so the backward is
// deterministic and needs no special path under torch.use_deterministic_algorithms(True).
// The kernels read the pixel map as an int64 table [n, H·W] on the device (pixel_table_long: built per
// call from an affine map or the identity). All offsets are 64-bit. float16 / bfloat16 accumulate in float.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <array>

#include <torch/library.h>

#include "equiconv.h"

namespace equifast {
namespace cuda {
namespace {

constexpr int kOT = 8;          // output channels per thread / per block tile
constexpr int kThreads = 256;   // threads per block
constexpr int64_t kMaxSmemBytes = 48 * 1024;

__host__ __device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

struct Strides5 {
  int64_t s[5];
};

inline Strides5 strides5(const at::Tensor& t) {
  Strides5 r{};
  if (t.dim() == 4) {
    r.s[0] = t.stride(0); r.s[1] = 0; r.s[2] = t.stride(1); r.s[3] = t.stride(2); r.s[4] = t.stride(3);
  } else {
    for (int d = 0; d < 5; ++d) r.s[d] = t.stride(d);
  }
  return r;
}

template <typename T, bool SMEM>
__global__ void __launch_bounds__(kThreads) forward_kernel(Geom g, const T* __restrict__ x,
                                                           const int64_t* __restrict__ xperm,
                                                           const T* __restrict__ Wg, const T* __restrict__ bias,
                                                           T* __restrict__ out, Strides5 os, int64_t chunks) {
  using acc_t = at::opmath_type<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* plane = reinterpret_cast<T*>(smem_raw);
  const int64_t HW = g.H * g.W, KK = g.kh * g.kw, K = g.K(), HoWo = g.Ho * g.Wo;
  const int64_t b = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kOT;
  const int64_t item = chunk * blockDim.x + threadIdx.x;
  const bool active = item < g.n * HoWo;
  const int64_t e = active ? item / HoWo : 0, pix = active ? item % HoWo : 0;
  const int64_t i = pix / g.Wo, j = pix % g.Wo;
  acc_t acc[kOT];
#pragma unroll
  for (int t = 0; t < kOT; ++t) acc[t] = (bias != nullptr && o0 + t < g.Co) ? static_cast<acc_t>(bias[o0 + t]) : acc_t(0);
  const int64_t* xp = xperm + e * HW;
  const T* wbase = Wg + (e * g.Co + o0) * K;
  const int nt = static_cast<int>(imin64(kOT, g.Co - o0));
  for (int64_t hc = 0; hc < g.m * g.C; ++hc) {
    const int64_t h = hc / g.C, c = hc % g.C;
    const T* xb = x + b * g.xs[0] + h * g.xs[1] + c * g.xs[2];
    if (SMEM) {
      __syncthreads();
      // the plane fits in shared memory (<= 48 KiB), so its pixel index and width fit 32 bits: 32-bit division
      const int W32 = static_cast<int>(g.W);
      for (int q = threadIdx.x; q < static_cast<int>(HW); q += blockDim.x)
        plane[q] = xb[static_cast<int64_t>(q / W32) * g.xs[3] + static_cast<int64_t>(q % W32) * g.xs[4]];
      __syncthreads();
    }
    if (!active) continue;
    for (int64_t u = 0; u < g.kh; ++u) {
      const int64_t r = i * g.sh - g.pt + u * g.dh;
      if (r < 0 || r >= g.H) continue;
      for (int64_t v = 0; v < g.kw; ++v) {
        const int64_t q = j * g.sw - g.pl + v * g.dw;
        if (q < 0 || q >= g.W) continue;
        const int64_t p = xp[r * g.W + q];
        const acc_t val = SMEM ? static_cast<acc_t>(plane[p])
                               : static_cast<acc_t>(xb[(p / g.W) * g.xs[3] + (p % g.W) * g.xs[4]]);
        const T* wk = wbase + hc * KK + u * g.kw + v;
        // fully unrolled with a guard (not a loop to nt), so acc stays in registers, not local memory
#pragma unroll
        for (int t = 0; t < kOT; ++t)
          if (t < nt) acc[t] += static_cast<acc_t>(wk[t * K]) * val;
      }
    }
  }
  if (!active) return;
  T* ob = out + b * os.s[0] + e * os.s[1] + i * os.s[3] + j * os.s[4];
#pragma unroll
  for (int t = 0; t < kOT; ++t)
    if (t < nt) ob[(o0 + t) * os.s[2]] = static_cast<T>(acc[t]);
}

// gx[b, h, c, p] = Σ_e Σ_{u, v} Σ_o gy[b, e, o, i, j] · Wg[e][o][k(h, c, u, v)] with (i, j) the output
// pixels whose tap (u, v) reads view pixel xinv[e][p].
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_input_kernel(Geom g, const T* __restrict__ gy,
                                                              const int64_t* __restrict__ xinv,
                                                              const T* __restrict__ Wg, T* __restrict__ gx,
                                                              Strides5 gs, int64_t total) {
  using acc_t = at::opmath_type<T>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, K = g.K();
  const int64_t p = idx % HW, c = (idx / HW) % g.C, h = (idx / (HW * g.C)) % g.m, b = idx / (HW * g.C * g.m);
  acc_t acc = 0;
  for (int64_t e = 0; e < g.n; ++e) {
    const int64_t q = xinv[e * HW + p];
    const int64_t r = q / g.W, col = q % g.W;
    const T* gye = gy + (b * g.n + e) * g.Co * HoWo;
    const T* we = Wg + e * g.Co * K;
    for (int64_t u = 0; u < g.kh; ++u) {
      const int64_t tr = r + g.pt - u * g.dh;
      if (tr < 0 || tr % g.sh != 0) continue;
      const int64_t i = tr / g.sh;
      if (i >= g.Ho) continue;
      for (int64_t v = 0; v < g.kw; ++v) {
        const int64_t tc = col + g.pl - v * g.dw;
        if (tc < 0 || tc % g.sw != 0) continue;
        const int64_t jj = tc / g.sw;
        if (jj >= g.Wo) continue;
        const int64_t k = ((h * g.C + c) * g.kh + u) * g.kw + v;
        const T* gyp = gye + i * g.Wo + jj;
        const T* wp = we + k;
        for (int64_t o = 0; o < g.Co; ++o) acc += static_cast<acc_t>(gyp[o * HoWo]) * static_cast<acc_t>(wp[o * K]);
      }
    }
  }
  gx[b * gs.s[0] + h * gs.s[1] + c * gs.s[2] + (p / g.W) * gs.s[3] + (p % g.W) * gs.s[4]] = static_cast<T>(acc);
}

// partial[chunk, e, o, k] = Σ_{positions in chunk} gy[b, e, o, i, j] · xview_e[b, tap k at (i, j)]
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_weight_kernel(Geom g, const T* __restrict__ x,
                                                               const int64_t* __restrict__ xperm,
                                                               const T* __restrict__ gy,
                                                               at::opmath_type<T>* __restrict__ partial,
                                                               int64_t per_chunk, int64_t otiles) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t red[kOT][kThreads];
  const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo, K = g.K(), KK = g.kh * g.kw, P = g.B * HoWo;
  const int64_t k = blockIdx.x;
  const int64_t e = blockIdx.y / otiles, o0 = (blockIdx.y % otiles) * kOT;
  const int64_t chunk = blockIdx.z;
  const int nt = static_cast<int>(imin64(kOT, g.Co - o0));
  const int64_t v = k % g.kw, u = (k / g.kw) % g.kh, hc = k / KK, c = hc % g.C, h = hc / g.C;
  const int64_t* xp = xperm + e * HW;
  acc_t acc[kOT];
#pragma unroll
  for (int t = 0; t < kOT; ++t) acc[t] = 0;
  const int64_t begin = chunk * per_chunk, end = imin64(P, begin + per_chunk);
  for (int64_t pos = begin + threadIdx.x; pos < end; pos += blockDim.x) {
    const int64_t b = pos / HoWo, pix = pos % HoWo, i = pix / g.Wo, j = pix % g.Wo;
    const int64_t r = i * g.sh - g.pt + u * g.dh, q = j * g.sw - g.pl + v * g.dw;
    if (r < 0 || r >= g.H || q < 0 || q >= g.W) continue;
    const int64_t pp = xp[r * g.W + q];
    const acc_t val = static_cast<acc_t>(
        x[b * g.xs[0] + h * g.xs[1] + c * g.xs[2] + (pp / g.W) * g.xs[3] + (pp % g.W) * g.xs[4]]);
    const T* gyp = gy + ((b * g.n + e) * g.Co + o0) * HoWo + pix;
#pragma unroll
    for (int t = 0; t < kOT; ++t)
      if (t < nt) acc[t] += static_cast<acc_t>(gyp[t * HoWo]) * val;
  }
#pragma unroll
  for (int t = 0; t < kOT; ++t) red[t][threadIdx.x] = acc[t];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
#pragma unroll
      for (int t = 0; t < kOT; ++t) red[t][threadIdx.x] += red[t][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x < nt) {
    const int t = threadIdx.x;
    partial[((chunk * g.n + e) * g.Co + o0 + t) * K + k] = red[t][0];
  }
}

}  // namespace

struct Cuda {
  static constexpr const char* kName = "cuda";
  static void check_input(const std::string& op, const at::Tensor& x);
  static at::Tensor forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias);
  static std::tuple<at::Tensor, at::Tensor> backward(const std::string& op, const Prepared& p,
                                                     const at::Tensor& grad_out, const at::Tensor& weight,
                                                     std::array<bool, 2> output_mask);
};

void Cuda::check_input(const std::string& op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": the CUDA kernel got a tensor on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 ||
              x.scalar_type() == at::kDouble, op,
              ": the CUDA kernel supports float32, float16, bfloat16 and float64, got ", x.scalar_type());
}

at::Tensor Cuda::forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias) {
  const Geom& g = p.geom;
  c10::cuda::CUDAGuard guard(p.x.device());
  at::Tensor out = empty_stack(g, p.x_channels_last, p.x.options());
  if (out.numel() == 0) return out;
  at::Tensor bt = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const at::Tensor xperm = pixel_table_long(p);
  const int64_t items = g.n * g.Ho * g.Wo;
  const int64_t chunks = (items + kThreads - 1) / kThreads;
  const int64_t otiles = (g.Co + kOT - 1) / kOT;
  TORCH_CHECK(g.B * chunks < (int64_t(1) << 31) && otiles <= 65535, op, ": problem too large for one launch");
  const dim3 grid(static_cast<unsigned>(g.B * chunks), static_cast<unsigned>(otiles));
  const Strides5 os = strides5(out);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_forward", [&] {
    const int64_t smem = g.H * g.W * static_cast<int64_t>(sizeof(scalar_t));
    const scalar_t* bptr = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
    if (smem <= kMaxSmemBytes) {
      forward_kernel<scalar_t, true><<<grid, kThreads, smem, stream>>>(
          g, p.x.data_ptr<scalar_t>(), xperm.data_ptr<int64_t>(), p.Wg.data_ptr<scalar_t>(), bptr,
          out.data_ptr<scalar_t>(), os, chunks);
    } else {
      forward_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
          g, p.x.data_ptr<scalar_t>(), xperm.data_ptr<int64_t>(), p.Wg.data_ptr<scalar_t>(), bptr,
          out.data_ptr<scalar_t>(), os, chunks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> Cuda::backward(const std::string& op, const Prepared& p,
                                                  const at::Tensor& grad_out, const at::Tensor& weight,
                                                  std::array<bool, 2> output_mask) {
  const Geom& g = p.geom;
  c10::cuda::CUDAGuard guard(p.x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor gy = grad_out.to(p.x.scalar_type()).contiguous();
  at::Tensor gx = p.x.new_empty({0}), gw = p.x.new_empty({0});
  const int64_t HW = g.H * g.W;
  const at::Tensor xperm = pixel_table_long(p);
  if (output_mask[0]) {
    gx = empty_grad_input(g, p.x, p.x_channels_last);
    const int64_t total = g.B * g.m * g.C * HW;
    if (total > 0) {
      at::Tensor xinv = at::argsort(xperm, /*stable=*/true, /*dim=*/1).contiguous();
      const Strides5 gs = strides5(gx);
      const int64_t blocks = (total + kThreads - 1) / kThreads;
      TORCH_CHECK(blocks < (int64_t(1) << 31), op, ": problem too large for one launch");
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_grad_input", [&] {
        grad_input_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            g, gy.data_ptr<scalar_t>(), xinv.data_ptr<int64_t>(), p.Wg.data_ptr<scalar_t>(),
            gx.data_ptr<scalar_t>(), gs, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
  if (output_mask[1]) {
    const int64_t K = g.K(), P = g.B * g.Ho * g.Wo;
    if (P == 0 || g.Co == 0) {
      gw = at::zeros_like(weight, at::MemoryFormat::Contiguous);
    } else {
      const int64_t otiles = (g.Co + kOT - 1) / kOT;
      int64_t per_chunk = int64_t(kThreads) * 16;
      int64_t chunks = (P + per_chunk - 1) / per_chunk;
      if (chunks > 65535) {
        chunks = 65535;
        per_chunk = (P + chunks - 1) / chunks;
        chunks = (P + per_chunk - 1) / per_chunk;
      }
      TORCH_CHECK(K < (int64_t(1) << 31) && g.n * otiles <= 65535, op, ": problem too large for one launch");
      const dim3 grid(static_cast<unsigned>(K), static_cast<unsigned>(g.n * otiles), static_cast<unsigned>(chunks));
      const auto acc_type = at::toOpMathType(p.x.scalar_type());
      at::Tensor partial = at::zeros({chunks, g.n, g.Co, K}, p.x.options().dtype(acc_type));
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "equifast_cuda_grad_weight", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        grad_weight_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
            g, p.x.data_ptr<scalar_t>(), xperm.data_ptr<int64_t>(), gy.data_ptr<scalar_t>(),
            partial.data_ptr<acc_t>(), per_chunk, otiles);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      gw = fold_grad_weight(p, partial.sum(0), weight);
    }
  }
  return {gx, gw};
}

}  // namespace cuda
}  // namespace equifast

TORCH_LIBRARY_IMPL(equifast_C, CUDA, m) { equifast::register_kernels<equifast::cuda::Cuda>(m); }
