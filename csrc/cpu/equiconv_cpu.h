// The fused CPU orbit convolution (see csrc/equiconv.h for the maths), shared by
// csrc/cpu/lift_conv.cpp and csrc/cpu/group_conv.cpp. Every pass is a register-tiled GEMM
// (cpu/microkernels.h) against a patch gathered straight from x through the pixel table, so no
// rotated view of x is ever materialised:
//
// Forward: one task per (b, g, chunk of output positions). The task gathers the [K, positions]
// patch of the view act(x, g⁻¹) (in K blocks of at most 128 taps) and multiplies it by Wg[g]
// ([C_out, K]), writing all C_out channels straight into slot g of the output stack: rows o for a
// contiguous stack, rows of positions (o contiguous) for a channels_last one. Bias seeds the tile.
// Grad input: one task per (b, block of input planes (h, c)); per output row one GEMM gives the
// block's taps for all C_out at once, scattered through the same pixel table into private planes.
// Grad weight: gWg[g][k, o] = Σ_{b, p} patch[k, p] · gy[b, g, o, p], one task per (g, chunk of the
// batch); the batch chunks depend on the shape only and are summed in order, so the result is
// bitwise independent of the thread count. No atomics anywhere.
// The GEMM is compiled for the baseline ISA, AVX2+FMA and AVX-512; the best copy the CPU runs is
// picked at run time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "equiconv.h"

#define EQUIFAST_MK_NS mk_base
#define EQUIFAST_MK_VBYTES 16
#define EQUIFAST_MK_MR 6
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#undef EQUIFAST_MK_MR

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EQUIFAST_HAVE_X86_COPIES 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define EQUIFAST_MK_NS mk_avx2
#define EQUIFAST_MK_VBYTES 32
#define EQUIFAST_MK_MR 6
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#undef EQUIFAST_MK_MR
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define EQUIFAST_MK_NS mk_avx512
#define EQUIFAST_MK_VBYTES 64
#define EQUIFAST_MK_MR 8
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#undef EQUIFAST_MK_MR
#pragma GCC pop_options
#endif

namespace equifast {
namespace cpu {

using Init = mk_base::Init;

template <typename T>
struct Micro {
  void (*gemm)(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t, int, const T*);
  void (*transpose)(int64_t, int64_t, const T*, int64_t, T*, int64_t);
  int64_t nb;  // column block: B rows (and a column bias) must be readable up to a multiple of it
};

// "avx512", "avx2" or "baseline": the GEMM copy this CPU runs (EQUIFAST_CPU_ISA=avx2|baseline caps it).
inline const char* isa() {
#ifdef EQUIFAST_HAVE_X86_COPIES
  static const char* chosen = [] {
    const char* cap = std::getenv("EQUIFAST_CPU_ISA");
    const std::string c = cap ? cap : "";
    if (c != "baseline" && c != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
      return "avx512";
    if (c != "baseline" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
    return "baseline";
  }();
  return chosen;
#else
  return "baseline";
#endif
}

template <typename T>
Micro<T> micro() {
#ifdef EQUIFAST_HAVE_X86_COPIES
  const std::string which = isa();
  if (which == "avx512") return {&mk_avx512::gemm<T>, &mk_avx512::transpose<T>, mk_avx512::block_n<T>()};
  if (which == "avx2") return {&mk_avx2::gemm<T>, &mk_avx2::transpose<T>, mk_avx2::block_n<T>()};
#endif
  return {&mk_base::gemm<T>, &mk_base::transpose<T>, mk_base::block_n<T>()};
}

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Valid output columns [jlo, jhi) for a tap whose input column is c0 + j·sw.
inline void col_range(const Geom& g, int64_t c0, int64_t& jlo, int64_t& jhi) {
  jlo = c0 >= 0 ? 0 : (-c0 + g.sw - 1) / g.sw;
  jhi = (g.W - 1 - c0) < 0 ? 0 : std::min<int64_t>(g.Wo, (g.W - 1 - c0) / g.sw + 1);
  if (jhi < jlo) jhi = jlo;
}

// Rows [r0, r1) of the view act(x[b], g⁻¹), every plane (h, c): row r of plane (h, c) starts at
// ptr + h·sh + c·sc + (r − r0)·sr. Read in place when the view is x itself with unit column stride
// and the conv has column stride 1; otherwise gathered once through the pixel table into buf (one
// small tile per task), split by column stride into polyphase rows: phase φ (at + φ·sp) holds
// columns φ, φ + sw, φ + 2·sw, ... So every row of the patch below is a contiguous copy.
template <typename T>
struct ViewRows {
  const T* ptr;
  int64_t sh, sc, sr, sp, r0;
};

template <typename T>
ViewRows<T> view_rows(const Geom& g, bool in_place, const T* xb, const int64_t* xoff, int64_t r0, int64_t r1,
                      std::vector<T>& buf) {
  if (in_place) return {xb, g.xs[1], g.xs[2], g.xs[3], 0, 0};
  const int64_t nr = std::max<int64_t>(0, r1 - r0), sp = ceil_div(g.W, g.sw), sr = g.sw * sp, plane = nr * sr;
  if (static_cast<int64_t>(buf.size()) < g.m * g.C * plane) buf.resize(g.m * g.C * plane);
  for (int64_t h = 0; h < g.m; ++h)
    for (int64_t c = 0; c < g.C; ++c) {
      const T* base = xb + h * g.xs[1] + c * g.xs[2];
      T* dst = buf.data() + (h * g.C + c) * plane;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t* xo = xoff + r * g.W;
        T* row = dst + (r - r0) * sr;
        for (int64_t phase = 0; phase < g.sw; ++phase)
          for (int64_t t = 0, q = phase; q < g.W; ++t, q += g.sw) row[phase * sp + t] = base[xo[q]];
      }
    }
  return {buf.data(), g.C * plane, plane, sr, sp, r0};
}

// View rows that output rows [i0, i1] read: [r0, r1) within the image.
inline void rows_needed(const Geom& g, int64_t i0, int64_t i1, int64_t& r0, int64_t& r1) {
  r0 = std::max<int64_t>(0, i0 * g.sh - g.pt);
  r1 = std::min<int64_t>(g.H, i1 * g.sh - g.pt + (g.kh - 1) * g.dh + 1);
}

// Patch of output positions [p0, p0 + np) (p = i·Wo + j):
//   col[k - kb][p - p0] = xview[h, c, i·sh − pt + u·dh, j·sw − pl + v·dw]   for k in [kb, ke)
// zero outside the image; each row of col is zero-filled up to ldc.
template <typename T>
void build_col(const Geom& g, const ViewRows<T>& vr, int64_t p0, int64_t np, int64_t kb, int64_t ke, T* col,
               int64_t ldc) {
  const int64_t KK = g.kh * g.kw;
  for (int64_t k = kb; k < ke; ++k) {
    T* dst = col + (k - kb) * ldc;
    const int64_t v = k % g.kw, u = (k / g.kw) % g.kh, hc = k / KK, c = hc % g.C, h = hc / g.C;
    const T* plane = vr.ptr + h * vr.sh + c * vr.sc;
    const int64_t c0 = v * g.dw - g.pl;
    const int64_t phase = ((c0 % g.sw) + g.sw) % g.sw;
    int64_t jlo, jhi;
    col_range(g, c0, jlo, jhi);
    for (int64_t pp = p0; pp < p0 + np;) {
      const int64_t i = pp / g.Wo, j0 = pp - i * g.Wo, j1 = std::min(g.Wo, j0 + (p0 + np - pp));
      const int64_t r = i * g.sh - g.pt + u * g.dh;
      T* d = dst + (pp - p0) - j0;  // d[j]: column j of output row i
      const bool row_ok = r >= 0 && r < g.H;
      const int64_t a = row_ok ? std::min(j1, std::max(j0, jlo)) : j1, z = row_ok ? std::max(a, std::min(j1, jhi)) : j1;
      // src[j]: column j·sw + c0 of view row r (its polyphase row when sw > 1)
      for (int64_t j = j0; j < a; ++j) d[j] = T(0);
      if (a < z) {
        const T* src = plane + (r - vr.r0) * vr.sr + phase * vr.sp + (c0 - phase) / g.sw;
        for (int64_t j = a; j < z; ++j) d[j] = src[j];
      }
      for (int64_t j = z; j < j1; ++j) d[j] = T(0);
      pp += j1 - j0;
    }
    std::fill(dst + np, dst + ldc, T(0));
  }
}

// xoff[g][p] = element offset (row·stride_h + col·stride_w) of pixel xperm[g][p]
inline at::Tensor pixel_offsets(const Prepared& p) {
  const Geom& g = p.geom;
  if (g.xs[3] == g.W * g.xs[4]) return g.xs[4] == 1 ? p.xperm : (p.xperm * g.xs[4]).contiguous();  // dense rows
  return (at::floor_divide(p.xperm, g.W) * g.xs[3] + at::remainder(p.xperm, g.W) * g.xs[4]).contiguous();
}

// Wg^T with all elements side by side, [K, n·Co + nb] (zero columns past n·Co): the B operand of
// the channels_last forward, whose columns are (element, output channel).
inline at::Tensor weights_k_major(const Prepared& p, int64_t nb) {
  const Geom& g = p.geom;
  return at::constant_pad_nd(p.Wg.permute({2, 0, 1}).reshape({g.K(), g.n * g.Co}), {0, nb}).contiguous();
}

// Elements per task: when the pixel table is the identity (canonical frame, group_conv) every
// element reads the same patch, so one GEMM over all n·C_out rows serves them (the patch is built
// once instead of n times); otherwise one element per task.
inline int64_t elements_per_task(const Prepared& p) { return p.identity_x ? p.geom.n : 1; }

template <typename T>
void forward(const Prepared& p, const T* bias, at::Tensor& out) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), HW = g.H * g.W, P = g.Ho * g.Wo, NB = mk.nb;
  const int64_t E = elements_per_task(p), nblk = g.n / E, rows_out = E * g.Co;
  const int64_t nkc = ceil_div(K, 128), KC = ceil_div(K, nkc);  // K blocks of at most 128 taps
  // positions per task: whole rows where possible, so that few view rows are staged twice
  const int64_t NP = std::min(round_up(P, NB), std::max(NB, round_up(65536 / KC, NB)));
  const int64_t chunks = ceil_div(P, NP);
  // A stack's positions flatten (row stride = Wo · column stride); its (element, channel) pairs
  // too: rows e·Co + o of a contiguous stack, columns of a channels_last one (o innermost).
  const bool cl = p.x_channels_last;
  const int64_t os0 = out.stride(0), os1 = out.stride(1), os_o = out.stride(2), os_p = out.stride(4);
  TORCH_INTERNAL_ASSERT(out.stride(3) == g.Wo * os_p && os1 == g.Co * os_o && (cl ? os_o == 1 : os_p == 1));
  at::Tensor xoff_t = pixel_offsets(p);
  const bool in_place = p.identity_x && g.xs[4] == 1 && g.sw == 1;
  at::Tensor WgT_t = cl ? weights_k_major(p, NB) : at::Tensor();
  const int64_t ldw = g.n * g.Co + NB;
  std::vector<T> bias_rep(ldw, T(0));  // bias[o] for every (element, o)
  if (bias)
    for (int64_t e = 0; e < g.n; ++e) std::copy(bias, bias + g.Co, bias_rep.begin() + e * g.Co);
  const int64_t* xoff = xoff_t.data_ptr<int64_t>();
  const T* x = p.x.data_ptr<T>();
  const T* Wg = p.Wg.data_ptr<T>();
  const T* WgT = cl ? WgT_t.data_ptr<T>() : nullptr;
  T* o_ptr = out.data_ptr<T>();
  at::parallel_for(0, g.B * nblk * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(KC * NP), rows;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ch = t % chunks, e0 = (t / chunks) % nblk * E, b = t / (chunks * nblk);
      const int64_t p0 = ch * NP, np = std::min(NP, P - p0), npad = round_up(np, NB);
      int64_t r0, r1;
      rows_needed(g, p0 / g.Wo, (p0 + np - 1) / g.Wo, r0, r1);
      const ViewRows<T> vr = view_rows(g, in_place, x + b * g.xs[0], xoff + e0 * HW, r0, r1, rows);
      T* ob = o_ptr + b * os0 + e0 * os1 + p0 * os_p;
      const T* brep = bias_rep.data() + e0 * g.Co;
      for (int64_t kb = 0; kb < K; kb += KC) {
        const int64_t kc = std::min(KC, K - kb);
        build_col(g, vr, p0, np, kb, kb + kc, col.data(), npad);
        if (!cl) {  // out[(e, o), p] = Σ_k Wg[e][o, k] · col[k, p]
          const int init = kb > 0 ? Init::kAccumulate : bias ? Init::kRowBias : Init::kZero;
          mk.gemm(rows_out, np, kc, Wg + e0 * g.Co * K + kb, K, 1, col.data(), npad, ob, os_o, init, brep);
        } else {    // out[p, (e, o)] = Σ_k col[k, p] · Wg[e][o, k]
          const int init = kb > 0 ? Init::kAccumulate : bias ? Init::kColBias : Init::kZero;
          mk.gemm(np, rows_out, kc, col.data(), 1, npad, WgT + kb * ldw + e0 * g.Co, ldw, ob, os_p, init, brep);
        }
      }
    }
  });
}

// Stage rows (e, o) = (e0 .. e0 + E, all o) of gy[b, :, :, i, :] (contiguous grad_out) into a
// zero-padded [E·Co, ld] buffer.
template <typename T>
inline void stage_grad_rows(const Geom& g, const T* gy, int64_t b, int64_t e0, int64_t E, int64_t i, T* buf,
                            int64_t ld) {
  const int64_t P = g.Ho * g.Wo;
  const T* src = gy + ((b * g.n + e0) * g.Co) * P + i * g.Wo;
  for (int64_t r = 0; r < E * g.Co; ++r) {
    std::copy(src + r * P, src + r * P + g.Wo, buf + r * ld);
    std::fill(buf + r * ld + g.Wo, buf + (r + 1) * ld, T(0));
  }
}

// gx[b, h, c, XP[e][r, q]] += Σ_{e, o, u, v} Wg[e][o][k] · gy[b, e, o, i, j]
// Tasks: (b, block of input planes (h, c)); per output row one GEMM gives the block's taps for all
// C_out (and, with an identity pixel table, all elements at once), scattered through the pixel
// table into the task's private planes.
template <typename T>
void grad_input(const Prepared& p, const at::Tensor& gy_c, at::Tensor& gx) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t KK = g.kh * g.kw, HW = g.H * g.W, Wop = round_up(g.Wo, mk.nb);
  const int64_t E = elements_per_task(p), red = E * g.Co;  // reduction: (element, output channel)
  const int64_t planes = g.m * g.C;
  const int64_t want_tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t nblk = std::min<int64_t>(planes, std::max<int64_t>(1, ceil_div(want_tasks, std::max<int64_t>(1, g.B))));
  const int64_t per = ceil_div(planes, nblk);
  const int64_t nblocks = ceil_div(planes, per);
  at::Tensor WgT_t = weights_k_major(p, 0);  // [K, n·Co]: WgT[k, (e, o)] = Wg[e][o][k]
  const int64_t ldw = g.n * g.Co;
  const T* WgT = WgT_t.data_ptr<T>();
  const int64_t* xp = p.xperm.data_ptr<int64_t>();
  const T* gy = gy_c.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  int64_t gs[5];
  if (gx.dim() == 4) { gs[0] = gx.stride(0); gs[1] = 0; gs[2] = gx.stride(1); gs[3] = gx.stride(2); gs[4] = gx.stride(3); }
  else for (int d = 0; d < 5; ++d) gs[d] = gx.stride(d);
  at::parallel_for(0, g.B * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> plane(per * HW), gyb(red * Wop), gcol(per * KK * Wop);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, b = t / nblocks;
      const int64_t hc0 = blk * per, hc1 = std::min<int64_t>(planes, hc0 + per), np = hc1 - hc0;
      std::fill(plane.begin(), plane.end(), T(0));
      for (int64_t e0 = 0; e0 < g.n; e0 += E) {
        const int64_t* xpe = xp + e0 * HW;
        for (int64_t i = 0; i < g.Ho; ++i) {
          stage_grad_rows(g, gy, b, e0, E, i, gyb.data(), Wop);
          // gcol[k, j] = Σ_{e, o} Wg[e][o, k] · gy[(e, o), j] for this block's taps k
          mk.gemm(np * KK, g.Wo, red, WgT + hc0 * KK * ldw + e0 * g.Co, ldw, 1, gyb.data(), Wop, gcol.data(), Wop,
                  Init::kZero, nullptr);
          for (int64_t u = 0; u < g.kh; ++u) {
            const int64_t r = i * g.sh - g.pt + u * g.dh;
            if (r < 0 || r >= g.H) continue;
            for (int64_t v = 0; v < g.kw; ++v) {
              const int64_t c0 = v * g.dw - g.pl;
              int64_t jlo, jhi;
              col_range(g, c0, jlo, jhi);
              const int64_t* xr = xpe + r * g.W;
              for (int64_t q = 0; q < np; ++q) {
                const T* src = gcol.data() + (q * KK + u * g.kw + v) * Wop;
                T* pl = plane.data() + q * HW;
                if (p.identity_x) {  // the pixel table is the identity: a plain (vectorisable) row update
                  T* row = pl + r * g.W;
                  for (int64_t j = jlo; j < jhi; ++j) row[c0 + j * g.sw] += src[j];
                } else {
                  for (int64_t j = jlo; j < jhi; ++j) pl[xr[c0 + j * g.sw]] += src[j];
                }
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

// gWg[e][o][k] = Σ_{b, p} gy[b, e, o, p] · col[b, e, k, p]   ([n, Co, K], T)
// Computed as [K, (e, o)] = col · gy^T per (block of elements, chunk of the batch); the chunks are
// fixed by the shape and summed in order. With an identity pixel table one patch serves all n
// elements (elements_per_task).
template <typename T>
at::Tensor grad_weight_partials(const Prepared& p, const at::Tensor& gy_c) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), HW = g.H * g.W, P = g.Ho * g.Wo;
  const int64_t E = elements_per_task(p), nblk = g.n / E, cols = E * g.Co, ldt = round_up(cols, mk.nb);
  const int64_t ldp = g.n * g.Co;  // row stride of a partial: all (e, o)
  const int64_t NP = std::min(P, std::max<int64_t>(64, 32768 / K));  // positions per patch
  // About 16 tasks, but no more partial copies of gWg than fit in 64 MiB (beyond one); shape-only.
  const int64_t copies_cap = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(1, K * ldp));
  const int64_t want = std::min({g.B, std::max<int64_t>(1, ceil_div(16, nblk)), copies_cap});
  const int64_t per_b = ceil_div(g.B, want);
  const int64_t nbc = ceil_div(g.B, per_b);
  at::Tensor xoff_t = pixel_offsets(p);
  const bool in_place = p.identity_x && g.xs[4] == 1 && g.sw == 1;
  const int64_t* xoff = xoff_t.data_ptr<int64_t>();
  const T* x = p.x.data_ptr<T>();
  const T* gy = gy_c.data_ptr<T>();
  at::Tensor parts = at::zeros({nbc, K, ldp}, p.Wg.options());
  T* part = parts.data_ptr<T>();
  at::parallel_for(0, nblk * nbc, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(K * NP), gyT(NP * ldt, T(0)), rows;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t e0 = t / nbc * E, bc = t % nbc;
      T* acc = part + bc * K * ldp + e0 * g.Co;  // columns (e0 .. e0 + E, o) of this chunk's partial
      for (int64_t b = bc * per_b; b < std::min(g.B, (bc + 1) * per_b); ++b)
        for (int64_t p0 = 0; p0 < P; p0 += NP) {
          const int64_t np = std::min(NP, P - p0);
          int64_t r0, r1;
          rows_needed(g, p0 / g.Wo, (p0 + np - 1) / g.Wo, r0, r1);
          build_col(g, view_rows(g, in_place, x + b * g.xs[0], xoff + e0 * HW, r0, r1, rows), p0, np, 0, K,
                    col.data(), NP);
          mk.transpose(cols, np, gy + ((b * g.n + e0) * g.Co) * P + p0, P, gyT.data(), ldt);
          // acc[k, (e, o)] += Σ_q col[k, q] · gy[(e, o), q]
          mk.gemm(K, cols, np, col.data(), NP, 1, gyT.data(), ldt, acc, ldp, Init::kAccumulate, nullptr);
        }
    }
  });
  for (int64_t bc = 1; bc < nbc; ++bc) parts[0].add_(parts[bc]);  // fixed order
  return parts[0].view({K, g.n, g.Co}).permute({1, 2, 0}).contiguous();
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
    gx = empty_grad_input(g, p.x, p.x_channels_last);
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
