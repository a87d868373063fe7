// The CPU kernels of equifast_C::lift_conv, group_conv and their backward ops (see csrc/equiconv.h
// for the maths and the entry points; registered at the end of this file). Every pass is a
// register-tiled GEMM (cpu/microkernels.h) against a patch gathered straight from x through the
// pixel map, so no rotated view of x is ever materialised:
//
// forward_kernel: one task per (b, g, chunk of output positions). The task stages the view rows it
// reads, gathers the [K, positions] patch of the view act(x, g⁻¹) (in K blocks of at most 128 taps)
// and multiplies it by Wg[g] ([C_out, K]), writing all C_out channels straight into slot g of the
// output stack: rows o for a contiguous stack, rows of positions (o contiguous) for a channels_last
// one. Bias seeds the tile.
// grad_input_kernel: one task per (b, block of input planes (h, c)); per output row one GEMM gives the
// block's taps for all C_out at once, scattered through the same pixel map into private planes.
// grad_weight_kernel: gWg[g][k, o] = Σ_{b, p} patch[k, p] · gy[b, g, o, p], one task per (g, chunk of
// the batch); the batch chunks depend on the shape only and are summed in order, so the result is
// bitwise independent of the thread count. No atomics anywhere.
// The pixel map is read where it is used: an affine map (rotations and flips by 90°, the identity)
// as offsets computed from (g, r, q), a table row by row; nothing of size n·H·W is built per call.
// Staging buffers hold only what is read: the view rows the task's output rows read and, per row,
// the column phases (j·sw + const) its taps read, so a large stride never allocates for the columns
// or rows it skips.
// The GEMM is compiled for the baseline ISA, AVX2+FMA and AVX-512; the best copy the CPU runs is
// picked at run time.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <torch/library.h>

#include "equiconv.h"
#include "cpu/isa.h"

#define EQUIFAST_MK_NS mk_base
#define EQUIFAST_MK_VBYTES 16
#define EQUIFAST_MK_MR 6
#include "cpu/microkernels.h"
#undef EQUIFAST_MK_NS
#undef EQUIFAST_MK_VBYTES
#undef EQUIFAST_MK_MR

#ifdef EQUIFAST_HAVE_X86_COPIES  // cpu/isa.h
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

// Valid output columns [jlo, jhi) for a tap whose input column is c0 + j·sw. No overflow for any
// checked geometry: c0 = v·dw − pl >= −pl, and W − 1 − c0 <= W + pl − 1 < W + pl + pr.
inline void col_range(const Geom& g, int64_t c0, int64_t& jlo, int64_t& jhi) {
  jlo = c0 >= 0 ? 0 : (-c0 - 1) / g.sw + 1;
  jhi = (g.W - 1 - c0) < 0 ? 0 : std::min<int64_t>(g.Wo, (g.W - 1 - c0) / g.sw + 1);
  if (jhi < jlo) jhi = jlo;
}

// Where copy e reads view pixel (r, q): for an affine map (the identity included) the input offset
// base + r·dr + q·dq (elements) and the pixel index pbase + r·pr + q·pq; for a table, row e of it.
struct ElementMap {
  bool table = false;
  int64_t base = 0, dr = 0, dq = 0;
  int64_t pbase = 0, pr = 0, pq = 0;
  const int32_t* t32 = nullptr;
  const int64_t* t64 = nullptr;
  int64_t W = 0, xs3 = 0, xs4 = 0;
  int64_t pixel(int64_t r, int64_t q) const {
    if (!table) return pbase + r * pr + q * pq;
    const int64_t i = r * W + q;
    return t32 ? static_cast<int64_t>(t32[i]) : t64[i];
  }
  int64_t offset(int64_t r, int64_t q) const {
    if (!table) return base + r * dr + q * dq;
    const int64_t p = pixel(r, q);
    return (p / W) * xs3 + (p % W) * xs4;
  }
};

inline ElementMap element_map(const Prepared& p, int64_t e) {
  const Geom& g = p.geom;
  ElementMap em;
  em.W = g.W; em.xs3 = g.xs[3]; em.xs4 = g.xs[4];
  if (p.xmap.kind == PixelMap::kTable) {
    em.table = true;
    if (p.xmap.table.scalar_type() == at::kInt) em.t32 = p.xmap.table.data_ptr<int32_t>() + e * g.H * g.W;
    else em.t64 = p.xmap.table.data_ptr<int64_t>() + e * g.H * g.W;
    return em;
  }
  static const int64_t kIdentity[6] = {1, 0, 0, 0, 1, 0};
  const int64_t* a = p.xmap.kind == PixelMap::kAffine ? p.xmap.affine.data() + 6 * e : kIdentity;
  // input row = a0·r + a1·q + a2, column = a3·r + a4·q + a5
  em.base = a[2] * g.xs[3] + a[5] * g.xs[4];
  em.dr = a[0] * g.xs[3] + a[3] * g.xs[4];
  em.dq = a[1] * g.xs[3] + a[4] * g.xs[4];
  em.pbase = a[2] * g.W + a[5];
  em.pr = a[0] * g.W + a[3];
  em.pq = a[1] * g.W + a[4];
  return em;
}

// The column phases the taps read: tap v reads columns c0 + j·sw (c0 = v·dw − pl), all in phase
// c0 mod sw. Only phases some tap reads are staged, each as a polyphase row of ceil(W / sw) entries
// (phase φ holds columns φ, φ + sw, φ + 2·sw, ...), so every row of the patch is a contiguous copy.
struct ColPhases {
  std::vector<int64_t> phases;  // distinct phases read (each < W)
  std::vector<int64_t> vslot;   // vslot[v]: index of tap v's phase in `phases` (-1: v reads no column)
  int64_t sp = 0;               // entries per phase
};

inline ColPhases col_phases(const Geom& g) {
  ColPhases cp;
  cp.sp = (g.W - 1) / g.sw + 1;
  cp.vslot.assign(static_cast<size_t>(g.kw), -1);
  for (int64_t v = 0; v < g.kw; ++v) {
    const int64_t c0 = v * g.dw - g.pl;
    int64_t jlo, jhi;
    col_range(g, c0, jlo, jhi);
    if (jlo >= jhi) continue;
    int64_t phase = c0 % g.sw;
    if (phase < 0) phase += g.sw;
    auto it = std::find(cp.phases.begin(), cp.phases.end(), phase);
    if (it == cp.phases.end()) it = cp.phases.insert(cp.phases.end(), phase);
    cp.vslot[v] = it - cp.phases.begin();
  }
  return cp;
}

// Rows of the view act(x[b], g⁻¹), every plane (h, c): row r of plane (h, c) starts at
// ptr + h·sh + c·sc + slot(r)·sr, phase s of it at + s·sp. Read in place when the map reads rows
// left to right with unit step (dq = 1: the identity with unit column stride, a vertical flip) and
// the conv has column stride 1; otherwise the rows the task reads are staged once into buf.
template <typename T>
struct ViewRows {
  const T* ptr;
  int64_t sh, sc, sr, sp, r0;
  const int64_t* rslot;  // staged: view row r is staged row rslot[r − r0]; null: row r at (r − r0)·sr
  const int64_t* vslot;  // phase index of tap v
  const T* row(const T* plane, int64_t r) const { return plane + (rslot ? rslot[r - r0] : r - r0) * sr; }
};

inline bool reads_in_place(const Geom& g, const ElementMap& em) { return !em.table && em.dq == 1 && g.sw == 1; }

// View rows that output rows [i0, i1] read, within the image: [r0, r1), and which of them are read
// (slot[r − r0] = index among the rows read, or -1); returns how many are read.
inline int64_t rows_read(const Geom& g, int64_t i0, int64_t i1, int64_t& r0, int64_t& r1, std::vector<int64_t>& slot) {
  r0 = std::max<int64_t>(0, i0 * g.sh - g.pt);
  r1 = std::min<int64_t>(g.H, i1 * g.sh - g.pt + (g.kh - 1) * g.dh + 1);
  if (r1 < r0) r1 = r0;
  slot.assign(static_cast<size_t>(r1 - r0), -1);
  for (int64_t i = i0; i <= i1; ++i)
    for (int64_t u = 0; u < g.kh; ++u) {
      const int64_t r = i * g.sh - g.pt + u * g.dh;
      if (r >= r0 && r < r1) slot[r - r0] = 0;
    }
  int64_t count = 0;
  for (auto& s : slot)
    if (s >= 0) s = count++;
  return count;
}

template <typename T>
ViewRows<T> view_rows(const Geom& g, const ElementMap& em, const ColPhases& cp, const T* xb, int64_t i0, int64_t i1,
                      std::vector<int64_t>& rslot, std::vector<T>& buf) {
  if (reads_in_place(g, em)) return {xb + em.base, g.xs[1], g.xs[2], em.dr, 0, 0, nullptr, cp.vslot.data()};
  int64_t r0, r1;
  const int64_t nr = rows_read(g, i0, i1, r0, r1, rslot);
  const int64_t nph = static_cast<int64_t>(cp.phases.size()), sr = nph * cp.sp, plane = nr * sr;
  if (static_cast<int64_t>(buf.size()) < g.m * g.C * plane) buf.resize(g.m * g.C * plane);
  for (int64_t h = 0; h < g.m; ++h)
    for (int64_t c = 0; c < g.C; ++c) {
      const T* base = xb + h * g.xs[1] + c * g.xs[2];
      T* dst = buf.data() + (h * g.C + c) * plane;
      for (int64_t r = r0; r < r1; ++r) {
        if (rslot[r - r0] < 0) continue;
        T* row = dst + rslot[r - r0] * sr;
        for (int64_t s = 0; s < nph; ++s) {
          const int64_t phase = cp.phases[s], count = (g.W - 1 - phase) / g.sw + 1;
          T* out = row + s * cp.sp;
          if (!em.table) {
            const T* src = base + em.offset(r, phase);
            const int64_t step = em.dq * g.sw;
            for (int64_t t = 0; t < count; ++t) out[t] = src[t * step];
          } else {
            for (int64_t t = 0; t < count; ++t) out[t] = base[em.offset(r, phase + t * g.sw)];
          }
        }
      }
    }
  return {buf.data(), g.C * plane, plane, sr, cp.sp, r0, rslot.data(), cp.vslot.data()};
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
    int64_t phase = c0 % g.sw;
    if (phase < 0) phase += g.sw;
    int64_t jlo, jhi;
    col_range(g, c0, jlo, jhi);
    for (int64_t pp = p0; pp < p0 + np;) {
      const int64_t i = pp / g.Wo, j0 = pp - i * g.Wo, j1 = std::min(g.Wo, j0 + (p0 + np - pp));
      const int64_t r = i * g.sh - g.pt + u * g.dh;
      T* d = dst + (pp - p0) - j0;  // d[j]: column j of output row i
      const bool row_ok = r >= 0 && r < g.H && jlo < jhi;
      const int64_t a = row_ok ? std::min(j1, std::max(j0, jlo)) : j1, z = row_ok ? std::max(a, std::min(j1, jhi)) : j1;
      // src[j]: column j·sw + c0 of view row r (its polyphase row when sw > 1)
      for (int64_t j = j0; j < a; ++j) d[j] = T(0);
      if (a < z) {
        const T* src = vr.row(plane, r) + vr.vslot[v] * vr.sp + (c0 - phase) / g.sw;
        for (int64_t j = a; j < z; ++j) d[j] = src[j];
      }
      for (int64_t j = z; j < j1; ++j) d[j] = T(0);
      pp += j1 - j0;
    }
    std::fill(dst + np, dst + ldc, T(0));
  }
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
inline int64_t elements_per_task(const Prepared& p) { return p.xmap.identity() ? p.geom.n : 1; }

template <typename T>
void forward_kernel(const Prepared& p, const T* bias, at::Tensor& out) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), P = g.Ho * g.Wo, NB = mk.nb;
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
  const ColPhases cp = col_phases(g);
  at::Tensor WgT_t = cl ? weights_k_major(p, NB) : at::Tensor();
  const int64_t ldw = g.n * g.Co + NB;
  std::vector<T> bias_rep(ldw, T(0));  // bias[o] for every (element, o)
  if (bias)
    for (int64_t e = 0; e < g.n; ++e) std::copy(bias, bias + g.Co, bias_rep.begin() + e * g.Co);
  const T* x = p.x.data_ptr<T>();
  const T* Wg = p.Wg.data_ptr<T>();
  const T* WgT = cl ? WgT_t.data_ptr<T>() : nullptr;
  T* o_ptr = out.data_ptr<T>();
  at::parallel_for(0, g.B * nblk * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(KC * NP), rows;
    std::vector<int64_t> rslot;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ch = t % chunks, e0 = (t / chunks) % nblk * E, b = t / (chunks * nblk);
      const int64_t p0 = ch * NP, np = std::min(NP, P - p0), npad = round_up(np, NB);
      const ViewRows<T> vr = view_rows(g, element_map(p, e0), cp, x + b * g.xs[0], p0 / g.Wo, (p0 + np - 1) / g.Wo,
                                       rslot, rows);
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
void grad_input_kernel(const Prepared& p, const at::Tensor& gy_c, at::Tensor& gx) {
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
        const ElementMap em = element_map(p, e0);  // used when the map is not the identity (then E = 1)
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
              if (jlo >= jhi) continue;
              for (int64_t q = 0; q < np; ++q) {
                const T* src = gcol.data() + (q * KK + u * g.kw + v) * Wop;
                T* pl = plane.data() + q * HW;
                if (p.xmap.identity()) {  // a plain (vectorisable) row update
                  T* row = pl + r * g.W;
                  for (int64_t j = jlo; j < jhi; ++j) row[c0 + j * g.sw] += src[j];
                } else if (!em.table) {   // affine: pixel pbase + r·pr + col·pq
                  T* row = pl + em.pbase + r * em.pr;
                  const int64_t step = em.pq * g.sw;
                  T* first = row + (c0 + jlo * g.sw) * em.pq;
                  for (int64_t j = jlo; j < jhi; ++j) first[(j - jlo) * step] += src[j];
                } else {
                  for (int64_t j = jlo; j < jhi; ++j) pl[em.pixel(r, c0 + j * g.sw)] += src[j];
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
at::Tensor grad_weight_kernel(const Prepared& p, const at::Tensor& gy_c) {
  const Geom& g = p.geom;
  const Micro<T> mk = micro<T>();
  const int64_t K = g.K(), P = g.Ho * g.Wo;
  const int64_t E = elements_per_task(p), nblk = g.n / E, cols = E * g.Co, ldt = round_up(cols, mk.nb);
  const int64_t ldp = g.n * g.Co;  // row stride of a partial: all (e, o)
  const int64_t NP = std::min(P, std::max<int64_t>(64, 32768 / K));  // positions per patch
  // About 16 tasks, but no more partial copies of gWg than fit in 64 MiB (beyond one); shape-only.
  const int64_t copies_cap = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(1, K * ldp));
  const int64_t want = std::min({g.B, std::max<int64_t>(1, ceil_div(16, nblk)), copies_cap});
  const int64_t per_b = ceil_div(g.B, want);
  const int64_t nbc = ceil_div(g.B, per_b);
  const ColPhases cp = col_phases(g);
  const T* x = p.x.data_ptr<T>();
  const T* gy = gy_c.data_ptr<T>();
  at::Tensor parts = at::zeros({nbc, K, ldp}, p.Wg.options());
  T* part = parts.data_ptr<T>();
  at::parallel_for(0, nblk * nbc, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(K * NP), gyT(NP * ldt, T(0)), rows;
    std::vector<int64_t> rslot;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t e0 = t / nbc * E, bc = t % nbc;
      const ElementMap em = element_map(p, e0);
      T* acc = part + bc * K * ldp + e0 * g.Co;  // columns (e0 .. e0 + E, o) of this chunk's partial
      for (int64_t b = bc * per_b; b < std::min(g.B, (bc + 1) * per_b); ++b)
        for (int64_t p0 = 0; p0 < P; p0 += NP) {
          const int64_t np = std::min(NP, P - p0);
          build_col(g, view_rows(g, em, cp, x + b * g.xs[0], p0 / g.Wo, (p0 + np - 1) / g.Wo, rslot, rows), p0, np,
                    0, K, col.data(), NP);
          mk.transpose(cols, np, gy + ((b * g.n + e0) * g.Co) * P + p0, P, gyT.data(), ldt);
          // acc[k, (e, o)] += Σ_q col[k, q] · gy[(e, o), q]
          mk.gemm(K, cols, np, col.data(), NP, 1, gyT.data(), ldt, acc, ldp, Init::kAccumulate, nullptr);
        }
    }
  });
  for (int64_t bc = 1; bc < nbc; ++bc) parts[0].add_(parts[bc]);  // fixed order
  return parts[0].view({K, g.n, g.Co}).permute({1, 2, 0}).contiguous();
}

// ------------------------------------------------------------------ the device's forward / backward
struct Cpu {
  static constexpr const char* kName = "cpu";

  static void check_input(const std::string& op, const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu(), op, ": the CPU kernel got a tensor on ", x.device());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                ": the CPU kernel supports float32 and float64, got ", x.scalar_type());
  }

  static at::Tensor forward(const std::string& op, const Prepared& p, const c10::optional<at::Tensor>& bias) {
    const Geom& g = p.geom;
    at::Tensor out = empty_stack(g, p.x_channels_last, p.x.options());
    if (out.numel() == 0) return out;
    at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu_forward", [&] {
      forward_kernel<scalar_t>(p, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out);
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> backward(const std::string& op, const Prepared& p,
                                                     const at::Tensor& grad_out, const at::Tensor& weight,
                                                     std::array<bool, 2> output_mask) {
    const Geom& g = p.geom;
    at::Tensor gy = grad_out.to(p.x.scalar_type()).contiguous();
    at::Tensor gx = p.x.new_empty({0}), gw = p.x.new_empty({0});
    if (output_mask[0]) {
      gx = empty_grad_input(g, p.x, p.x_channels_last);
      if (gx.numel() > 0) {
        AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu_grad_input",
                                   [&] { grad_input_kernel<scalar_t>(p, gy, gx); });
      }
    }
    if (output_mask[1]) {
      if (g.B == 0 || g.Co == 0) {
        gw = at::zeros_like(weight, at::MemoryFormat::Contiguous);
      } else {
        at::Tensor gWg;
        AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "equifast_cpu_grad_weight",
                                   [&] { gWg = grad_weight_kernel<scalar_t>(p, gy); });
        gw = fold_grad_weight(p, gWg, weight);
      }
    }
    return {gx, gw};
  }
};

}  // namespace cpu
}  // namespace equifast

// Which copy of the CPU GEMM runs here ("avx512", "avx2" or "baseline"; EQUIFAST_CPU_ISA caps it).
std::string cpu_isa() { return equifast::cpu::isa(); }

TORCH_LIBRARY_FRAGMENT(equifast_C, m) { m.def("cpu_isa() -> str", &cpu_isa); }

TORCH_LIBRARY_IMPL(equifast_C, CPU, m) { equifast::register_kernels<equifast::cpu::Cpu>(m); }
