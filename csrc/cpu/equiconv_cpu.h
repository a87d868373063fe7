// The fused CPU orbit convolution (see csrc/equiconv.h for the maths), shared by
// csrc/cpu/lift_conv.cpp and csrc/cpu/group_conv.cpp.
//
// Forward: one task per output row (b, g, i). The task gathers the kh rows of the view act(x, g⁻¹)
// that the row needs straight from x through the pixel table (a [K, Wo] row patch, never a full
// view), then a register-blocked GEMM against the per-element weights Wg[g] gives all C_out rows,
// written to their slot of the output stack (contiguous or channels_last) in place.
// Grad input: one task per (b, block of input planes): one transposed GEMM per output row, scattered
// back through the same pixel table into private plane buffers (no atomics).
// Grad weight: the K = m·C·kh·kw weight taps are split over threads; each thread owns its taps and
// sums over (b, g, i, j) in a fixed order, so results do not depend on the thread count.
// Inner loops vectorise (AVX2+FMA copy picked at run time on x86-64, baseline otherwise).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "equiconv.h"

#define EQUIFAST_MK_NS mk_base
#define EQUIFAST_MK_JB 8
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_JB

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EQUIFAST_HAVE_AVX2_COPY 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define EQUIFAST_MK_NS mk_avx2
#define EQUIFAST_MK_JB 16
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_JB
#pragma GCC pop_options
#endif

namespace equifast {
namespace cpu {

template <typename T>
struct Micro {
  void (*gemm)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t);
  void (*dots)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t);
  int64_t jb;
};

inline bool use_avx2() {
#ifdef EQUIFAST_HAVE_AVX2_COPY
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

template <typename T>
Micro<T> micro() {
#ifdef EQUIFAST_HAVE_AVX2_COPY
  if (use_avx2()) return {&mk_avx2::gemm_acc<T>, &mk_avx2::dots_acc<T>, mk_avx2::kJB};
#endif
  return {&mk_base::gemm_acc<T>, &mk_base::dots_acc<T>, mk_base::kJB};
}

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Valid output columns [jlo, jhi) for a tap whose input column is c0 + j·sw.
inline void col_range(const Geom& g, int64_t c0, int64_t& jlo, int64_t& jhi) {
  jlo = c0 >= 0 ? 0 : (-c0 + g.sw - 1) / g.sw;
  jhi = (g.W - 1 - c0) < 0 ? 0 : std::min<int64_t>(g.Wo, (g.W - 1 - c0) / g.sw + 1);
  if (jhi < jlo) jhi = jlo;
}

// Row patch of output row i for copy g: col[k - kb][j] = xview[b, h, c, i·sh − pt + u·dh, j·sw − pl + v·dw]
// for k in [kb, ke), through xoff (this element's row of element offsets: pixel p -> x offset).
template <typename T>
void build_col(const Geom& g, const T* xb, const int64_t* xoff, int64_t i, int64_t kb, int64_t ke, T* col,
               int64_t ldc) {
  const int64_t KK = g.kh * g.kw;
  for (int64_t k = kb; k < ke; ++k) {
    T* dst = col + (k - kb) * ldc;
    std::fill(dst, dst + ldc, T(0));
    const int64_t v = k % g.kw, u = (k / g.kw) % g.kh, hc = k / KK, c = hc % g.C, h = hc / g.C;
    const int64_t r = i * g.sh - g.pt + u * g.dh;
    if (r < 0 || r >= g.H) continue;
    const T* base = xb + h * g.xs[1] + c * g.xs[2];
    const int64_t c0 = v * g.dw - g.pl;
    const int64_t* xr = xoff + r * g.W + c0;
    int64_t jlo, jhi;
    col_range(g, c0, jlo, jhi);
    if (g.sw == 1) {
      for (int64_t j = jlo; j < jhi; ++j) dst[j] = base[xr[j]];
    } else {
      for (int64_t j = jlo; j < jhi; ++j) dst[j] = base[xr[j * g.sw]];
    }
  }
}

// xoff[g][p] = element offset (row·stride_h + col·stride_w) of pixel xperm[g][p]
inline at::Tensor pixel_offsets(const Prepared& p) {
  const Geom& g = p.geom;
  return (at::floor_divide(p.xperm, g.W) * g.xs[3] + at::remainder(p.xperm, g.W) * g.xs[4]).contiguous();
}

template <typename T>
void forward(const Prepared& p, const T* bias, at::Tensor& out) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), HW = g.H * g.W, Wop = round_up(g.Wo, mk.jb);
  at::Tensor xoff_t = pixel_offsets(p);
  const int64_t* xoff = xoff_t.data_ptr<int64_t>();
  const T* x = p.x.data_ptr<T>();
  const T* Wg = p.Wg.data_ptr<T>();
  T* o_ptr = out.data_ptr<T>();
  const int64_t os[5] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3), out.stride(4)};
  const int64_t rows = g.B * g.n * g.Ho;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.Co * K * Wop / 16));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> col(K * Wop), acc(g.Co * Wop);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t % g.Ho, e = (t / g.Ho) % g.n, b = t / (g.Ho * g.n);
      build_col(g, x + b * g.xs[0], xoff + e * HW, i, 0, K, col.data(), Wop);
      for (int64_t o = 0; o < g.Co; ++o) std::fill(acc.data() + o * Wop, acc.data() + (o + 1) * Wop, bias ? bias[o] : T(0));
      mk.gemm(g.Co, K, Wop, Wg + e * g.Co * K, K, col.data(), Wop, acc.data(), Wop);
      T* ob = o_ptr + b * os[0] + e * os[1] + i * os[3];
      if (os[4] == 1) {
        for (int64_t o = 0; o < g.Co; ++o) std::copy(acc.data() + o * Wop, acc.data() + o * Wop + g.Wo, ob + o * os[2]);
      } else {
        for (int64_t j = 0; j < g.Wo; ++j)
          for (int64_t o = 0; o < g.Co; ++o) ob[o * os[2] + j * os[4]] = acc[o * Wop + j];
      }
    }
  });
}

// Stage gy[b, e, :, i, :] (contiguous grad_out) into a zero-padded [Co, Wop] buffer.
template <typename T>
inline void stage_grad_row(const Geom& g, const T* gy, int64_t b, int64_t e, int64_t i, T* buf, int64_t Wop) {
  const T* src = gy + ((b * g.n + e) * g.Co) * g.Ho * g.Wo + i * g.Wo;
  for (int64_t o = 0; o < g.Co; ++o) {
    std::copy(src + o * g.Ho * g.Wo, src + o * g.Ho * g.Wo + g.Wo, buf + o * Wop);
    std::fill(buf + o * Wop + g.Wo, buf + (o + 1) * Wop, T(0));
  }
}

// gx[b, h, c, XP[e][r, q]] += Σ_{e, o, u, v} Wg[e][o][k] · gy[b, e, o, i, j]
// Tasks: (b, block of input planes (h, c)); per output row one GEMM gives the block's taps for all
// C_out at once, scattered through the pixel table into the task's private planes.
template <typename T>
void grad_input(const Prepared& p, const at::Tensor& gy_c, at::Tensor& gx) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), KK = g.kh * g.kw, HW = g.H * g.W, Wop = round_up(g.Wo, mk.jb);
  const int64_t planes = g.m * g.C;
  const int64_t want_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t nblk = std::min<int64_t>(planes, std::max<int64_t>(1, (want_tasks + g.B - 1) / std::max<int64_t>(1, g.B)));
  const int64_t per = (planes + nblk - 1) / nblk;
  const int64_t nblocks = (planes + per - 1) / per;
  at::Tensor WgT_t = p.Wg.transpose(1, 2).contiguous();  // [n, K, Co]
  const T* WgT = WgT_t.data_ptr<T>();
  const int64_t* xp = p.xperm.data_ptr<int64_t>();
  const T* gy = gy_c.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  int64_t gs[5];
  if (gx.dim() == 4) { gs[0] = gx.stride(0); gs[1] = 0; gs[2] = gx.stride(1); gs[3] = gx.stride(2); gs[4] = gx.stride(3); }
  else for (int d = 0; d < 5; ++d) gs[d] = gx.stride(d);
  at::parallel_for(0, g.B * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> plane(per * HW), gyb(g.Co * Wop), gcol(per * KK * Wop);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, b = t / nblocks;
      const int64_t hc0 = blk * per, hc1 = std::min<int64_t>(planes, hc0 + per), np = hc1 - hc0;
      std::fill(plane.begin(), plane.end(), T(0));
      for (int64_t e = 0; e < g.n; ++e) {
        const int64_t* xpe = xp + e * HW;
        for (int64_t i = 0; i < g.Ho; ++i) {
          stage_grad_row(g, gy, b, e, i, gyb.data(), Wop);
          std::fill(gcol.begin(), gcol.begin() + np * KK * Wop, T(0));
          mk.gemm(np * KK, g.Co, Wop, WgT + (e * K + hc0 * KK) * g.Co, g.Co, gyb.data(), Wop, gcol.data(), Wop);
          for (int64_t u = 0; u < g.kh; ++u) {
            const int64_t r = i * g.sh - g.pt + u * g.dh;
            if (r < 0 || r >= g.H) continue;
            for (int64_t v = 0; v < g.kw; ++v) {
              const int64_t c0 = v * g.dw - g.pl;
              int64_t jlo, jhi;
              col_range(g, c0, jlo, jhi);
              const int64_t* xr = xpe + r * g.W + c0;
              for (int64_t q = 0; q < np; ++q) {
                const T* src = gcol.data() + (q * KK + u * g.kw + v) * Wop;
                T* pl = plane.data() + q * HW;
                for (int64_t j = jlo; j < jhi; ++j) pl[xr[j * g.sw]] += src[j];
              }
            }
          }
        }
      }
      for (int64_t q = 0; q < np; ++q) {
        const int64_t hc = hc0 + q, h = hc / g.C, c = hc % g.C;
        T* dst = gxp + b * gs[0] + h * gs[1] + c * gs[2];
        const T* pl = plane.data() + q * HW;
        for (int64_t pix = 0; pix < HW; ++pix) dst[(pix / g.W) * gs[3] + (pix % g.W) * gs[4]] = pl[pix];
      }
    }
  });
}

// gWg[e][o][k] = Σ_{b, i, j} gy[b, e, o, i, j] · col[b, e, k, i, j]   ([n, Co, K], T)
template <typename T>
at::Tensor grad_weight_partials(const Prepared& p, const at::Tensor& gy_c) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), HW = g.H * g.W, Wop = round_up(g.Wo, mk.jb);
  at::Tensor xoff_t = pixel_offsets(p);
  const int64_t* xoff = xoff_t.data_ptr<int64_t>();
  const T* x = p.x.data_ptr<T>();
  const T* gy = gy_c.data_ptr<T>();
  at::Tensor gWg = at::zeros({g.n, g.Co, K}, p.Wg.options());
  T* gw = gWg.data_ptr<T>();
  at::parallel_for(0, K, 1, [&](int64_t kb, int64_t ke) {
    const int64_t Kb = ke - kb;
    std::vector<T> col(Kb * Wop), gyb(g.Co * Wop), part(g.n * g.Co * Kb, T(0));
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t e = 0; e < g.n; ++e)
        for (int64_t i = 0; i < g.Ho; ++i) {
          stage_grad_row(g, gy, b, e, i, gyb.data(), Wop);
          build_col(g, x + b * g.xs[0], xoff + e * HW, i, kb, ke, col.data(), Wop);
          mk.dots(g.Co, Kb, Wop, gyb.data(), Wop, col.data(), Wop, part.data() + e * g.Co * Kb, Kb);
        }
    for (int64_t e = 0; e < g.n; ++e)
      for (int64_t o = 0; o < g.Co; ++o)
        std::copy(part.data() + (e * g.Co + o) * Kb, part.data() + (e * g.Co + o + 1) * Kb, gw + (e * g.Co + o) * K + kb);
  });
  return gWg;
}

// ------------------------------------------------------------------ op-level entry points
inline void check_cpu(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, ": the CPU kernel got a tensor on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got ", x.scalar_type());
}

inline at::Tensor run_forward(const char* op, const Prepared& p, const c10::optional<at::Tensor>& bias) {
  const Geom& g = p.geom;
  check_bias(op, bias, g, p.x);
  at::Tensor out = empty_stack(g, p.x_channels_last, p.x.options());
  if (out.numel() == 0) return out;
  at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu", [&] {
    forward<scalar_t>(p, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out);
  });
  return out;
}

inline std::tuple<at::Tensor, at::Tensor> run_backward(const char* op, const Prepared& p, const at::Tensor& grad_out,
                                                        const at::Tensor& weight, std::array<bool, 2> mask) {
  const Geom& g = p.geom;
  check_grad_out(op, grad_out, g);
  at::Tensor gy = grad_out.to(p.x.scalar_type()).contiguous();
  at::Tensor gx = p.x.new_empty({0}), gw = p.x.new_empty({0});
  if (mask[0]) {
    if (p.x.dim() == 5)
      gx = p.x_channels_last ? at::empty({g.B, g.H, g.W, g.m, g.C}, p.x.options()).permute({0, 3, 4, 1, 2})
                             : at::empty({g.B, g.m, g.C, g.H, g.W}, p.x.options());
    else
      gx = at::empty_like(p.x, p.x_channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    if (gx.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu", [&] { grad_input<scalar_t>(p, gy, gx); });
    }
  }
  if (mask[1]) {
    if (g.B == 0) {
      gw = at::zeros_like(weight, at::MemoryFormat::Contiguous);
    } else {
      at::Tensor gWg;
      AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu", [&] { gWg = grad_weight_partials<scalar_t>(p, gy); });
      gw = fold_grad_weight(p, gWg, weight);
    }
  }
  return {gx, gw};
}

}  // namespace cpu
}  // namespace equifast
